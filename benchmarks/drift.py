"""What the drift gauge and the set distance read on real data (issue 19), for docs/setdistance.md.

    nice -n 10 python -m benchmarks.drift --data-dir ../shared/data      # ~8 min on 2 cores
    nice -n 10 python -m benchmarks.drift --data-dir ../shared/data --live   # through the service

For each shipped model and image source, random subsets of N test images (seed 0) are encoded
as the service would receive them (MNIST as PNG, CIFAR-10 as the JPEG files), decoded by
app.images, embedded in float32 and compared with the card's validation statistics: exactly the
number ``imgsim_drift_frechet`` shows once the service has embedded those N images. Then class
against class and two halves of one class, as POST /similarity/sets answers them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image

from app import artifact, images
from app.setdistance import GaussianStats, frechet_distance, mean_distance
from training.data import list_class_folders

SIZES = (100, 1000, 5000)
IN_DISTRIBUTION = {("mnist", "MNIST test"), ("cifar10", "CIFAR-10 test")}


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def sources(data_dir: Path) -> dict[str, tuple[list[bytes], list[int]]]:
    """Encoded test images and labels per source."""
    out = {}
    for name, cls in (("MNIST test", tvd.MNIST), ("Fashion-MNIST test", tvd.FashionMNIST)):
        ds = cls(str(data_dir), train=False, download=False)
        out[name] = ([png(a) for a in ds.data.numpy()], ds.targets.tolist())
    _, items = list_class_folders(data_dir / "cifar10" / "test")
    out["CIFAR-10 test"] = ([p.read_bytes() for p, _ in items], [c for _, c in items])
    return out


def embed(art: artifact.Artifact, blobs: list[bytes]) -> np.ndarray:
    card = art.card
    xs = [images.decode(b, card.mode, card.size, 10**8) for b in blobs]
    with torch.inference_mode():
        out = [art.module(torch.stack(xs[i : i + 500])) for i in range(0, len(xs), 500)]
    return torch.cat(out).double().numpy()  # (N, D)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.drift")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--json", type=Path)
    p.add_argument("--live", action="store_true", help="measure through a real service instead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = sources(args.data_dir)
    if args.live:
        rows = live(data, args.store)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        return 0
    rng = np.random.default_rng(0)
    results: list[dict] = []
    for model in ("mnist", "cifar10"):
        art = artifact.load(args.store / model)
        ref = art.card.embedding_stats
        assert ref is not None, f"{model}: run python -m training.reference_stats first"
        ref_stats = GaussianStats(ref.images, np.asarray(ref.mean), np.asarray(ref.covariance))
        for source, (blobs, labels) in data.items():
            emb = embed(art, blobs)
            row = {"model": model, "source": source}
            for n in SIZES:
                pick = rng.choice(len(emb), size=min(n, len(emb)), replace=False)
                row[f"drift@{n}"] = frechet_distance(ref_stats, GaussianStats.of(emb[pick]))
            y = np.asarray(labels)
            if (model, source) in IN_DISTRIBUTION:
                a, b = emb[y == 0], emb[y == 1]
                half = len(a) // 2
                row["class0_vs_class1"] = frechet_distance(GaussianStats.of(a), GaussianStats.of(b))
                row["class0_halves"] = frechet_distance(
                    GaussianStats.of(a[:half]), GaussianStats.of(a[half:])
                )
                row["mean_distance_0v1"] = mean_distance(a, b)
                row["mean_distance_halves"] = mean_distance(a[:half], a[half:])
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def live(data: dict[str, tuple[list[bytes], list[int]]], store: Path, n: int = 5000) -> list[dict]:
    """The same through a real ``python -m app`` at its default precision: images sent as
    /similarity/sets requests (each embedding feeds the monitor), then GET /models/{m}/drift."""
    import os
    import socket
    import subprocess
    import time

    import httpx

    combos = [
        ("mnist", "MNIST test"), ("mnist", "CIFAR-10 test"),
        ("cifar10", "CIFAR-10 test"), ("cifar10", "MNIST test"),
    ]  # fmt: skip
    rows = []
    for model, source in combos:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "IMGSIM_MODEL_STORE": str(store), "IMGSIM_PORT": str(port)}
        env["IMGSIM_API_KEYS"] = ""
        proc = subprocess.Popen([sys.executable, "-m", "app"], env=env, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            blobs = data[source][0][:n]
            row: dict = {"model": model, "source": source, "service": True}
            for start in range(0, len(blobs), 500):
                chunk = blobs[start : start + 500]
                files = [("set_a", b) for b in chunk[:250]] + [("set_b", b) for b in chunk[250:]]
                r = httpx.post(
                    f"{base}/similarity/sets", files=files, data={"model": model}, timeout=120
                )
                r.raise_for_status()
                if start + 500 in (1000, n):
                    drift = httpx.get(f"{base}/models/{model}/drift", timeout=10).json()
                    row[f"drift@{drift['images']}"] = drift["frechet_distance"]
            models = httpx.get(f"{base}/models", timeout=10).json()["models"]
            row["precision"] = next(m["precision"] for m in models if m["name"] == model)
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


if __name__ == "__main__":
    sys.exit(main())
