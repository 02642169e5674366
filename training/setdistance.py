"""Fréchet distance between two folders of images in a model's embedding space, any size.

    python -m training.setdistance model_store/mnist FOLDER_A FOLDER_B
    python -m training.setdistance model_store/mnist FOLDER_A --reference   # vs the card's
                                                       # validation statistics: the drift number

The same number as POST /similarity/sets on the same images (docs/setdistance.md): images are
decoded exactly as the service decodes them (app.images), embedded by the exported model.pt, and
compared by app.setdistance. Streamed in batches: memory holds one batch of images plus D floats
per image for the mean pairwise distance (``--no-mean-distance`` drops that too). Files that are
not usable images are skipped with a warning (the service refuses the whole request instead).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app import artifact, images
from app.config import Settings
from app.precision import Precision, autocast
from app.setdistance import GaussianStats, RunningStats, frechet_distance, mean_distance
from training.data import IMAGE_SUFFIXES

log = logging.getLogger("training")

MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


class FolderEmbedder:
    """Decode (in threads, like the service's decode pool) and embed files in batches."""

    def __init__(
        self, art: artifact.Artifact, batch_size: int = 256, precision: Precision = "float32"
    ) -> None:
        self.art = art
        self.batch_size = batch_size
        self.precision = precision
        self.pool = ThreadPoolExecutor(4)

    def _decode(self, path: Path) -> torch.Tensor | None:
        card = self.art.card
        try:
            return images.decode(path.read_bytes(), card.mode, card.size, MAX_IMAGE_PIXELS)
        except images.ImageError as e:
            log.warning("skipping %s: %s", path, e)
            return None

    def batches(self, paths: list[Path], desc: str) -> Iterator[torch.Tensor]:
        """Embeddings (B, D) float32, one batch at a time."""
        with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr) as bar:
            for start in range(0, len(paths), self.batch_size):
                chunk = paths[start : start + self.batch_size]
                xs = [x for x in self.pool.map(self._decode, chunk) if x is not None]
                bar.update(len(chunk))
                if not xs:
                    continue
                with torch.inference_mode(), autocast(self.precision):
                    out = self.art.module(torch.stack(xs))  # (B, D)
                yield out.float()


def folder_stats(
    embedder: FolderEmbedder, folder: Path, desc: str, keep: bool
) -> tuple[RunningStats, np.ndarray | None]:
    """Running statistics of a folder's embeddings, and the embeddings (N, D) if ``keep``."""
    paths = list_images(folder)
    running = RunningStats(embedder.art.card.embedding_dim)
    kept: list[np.ndarray] = []
    for emb in embedder.batches(paths, desc):
        running.update(emb)
        if keep:
            kept.append(emb.numpy())
    if running.count < 2:
        raise ValueError(f"{folder}: {running.count} usable image(s); need at least 2")
    return running, (np.concatenate(kept) if keep else None)


def compare_folders(
    model_dir: Path,
    folder_a: Path,
    folder_b: Path | None,
    *,
    batch_size: int = 256,
    precision: Precision = "float32",
    with_mean_distance: bool = True,
) -> dict:
    """The /similarity/sets answer for two folders, or for one folder vs the card's statistics
    (``folder_b=None``; then there is no mean_distance)."""
    art = artifact.load(model_dir)
    card = art.card
    embedder = FolderEmbedder(art, batch_size, precision)
    keep = with_mean_distance and folder_b is not None
    a, emb_a = folder_stats(embedder, folder_a, "set a", keep)
    if folder_b is None:
        ref = card.embedding_stats
        if ref is None:
            raise ValueError(
                f"{model_dir}: the card has no embedding_stats; add them with "
                f"python -m training.reference_stats {model_dir}"
            )
        stats_b = GaussianStats(ref.images, np.asarray(ref.mean), np.asarray(ref.covariance))
        emb_b = None
    else:
        b, emb_b = folder_stats(embedder, folder_b, "set b", keep)
        stats_b = b.stats()
    result = {
        "model": card.name,
        "model_version": card.version,
        "frechet_distance": frechet_distance(a.stats(), stats_b),
        "n_a": a.count,
        "n_b": stats_b.count,
        "mean_distance": None,
        "dim": card.embedding_dim,
    }
    if emb_a is not None and emb_b is not None:
        result["mean_distance"] = mean_distance(emb_a, emb_b)
    if folder_b is None:
        result["reference"] = ref.source
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(
        prog="python -m training.setdistance", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("folder_a", type=Path)
    p.add_argument("folder_b", type=Path, nargs="?")
    p.add_argument(
        "--reference",
        action="store_true",
        help="compare FOLDER_A with the model card's validation statistics (no FOLDER_B)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-mean-distance", action="store_true", help="skip the O(N_a N_b) mean")
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="run the model as the service does with IMGSIM_INFERENCE_PRECISION",
    )
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if (args.folder_b is None) != args.reference:
        p.error("give FOLDER_B, or --reference to compare with the card's statistics")
    try:
        result = compare_folders(
            args.model_dir,
            args.folder_a,
            args.folder_b,
            batch_size=args.batch_size,
            precision=args.precision,
            with_mean_distance=not args.no_mean_distance,
        )
    except (FileNotFoundError, ValueError, artifact.ArtifactError) as e:
        log.error("%s", e)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
