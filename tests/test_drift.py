"""Drift: card statistics (training.reference_stats), app/drift.py, GET /models/{model}/drift,
the imgsim_drift_* gauges, and all of it against /similarity/sets and the CLI in a real server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from fastapi.testclient import TestClient
from test_server import free_port, start, wait_ready
from test_setdistance import reference_frechet
from towers import TinyTower

from app import artifact
from app.batching import Batcher
from app.drift import DriftMonitor
from app.main import create_app
from app.setdistance import GaussianStats, frechet_distance
from training import setdistance
from training.data import load_dataset
from training.evaluate import embed_all
from training.reference_stats import add_reference_stats

DIGITS = FIXTURES / "mnist_small"
ROOT = Path(__file__).parents[1]


def digit_files(*digits: str) -> list[Path]:
    return [p for d in digits for p in sorted((DIGITS / d).glob("*.png"))]


@pytest.fixture(scope="session")
def drift_store(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test towers; mnist's card with validation statistics of the committed digits."""
    store = tmp_path_factory.mktemp("drift_store")
    shutil.copytree(model_store, store, dirs_exist_ok=True)
    add_reference_stats(store / "mnist", FIXTURES, dataset=f"folder:{DIGITS}")
    return store


def test_reference_stats_are_the_validation_split_and_keep_the_version(drift_store, model_store):
    before = artifact.load(model_store / "mnist")
    after = artifact.load(drift_store / "mnist")  # still loads: model.pt untouched, sha matches
    assert (after.card.version, after.card.sha256) == (before.card.version, before.card.sha256)
    stats = after.card.embedding_stats
    assert stats is not None and stats.source == "validation split"
    val = load_dataset(f"folder:{DIGITS}", FIXTURES, channels=1, image_size=28, seed=0).val
    expected = GaussianStats.of(embed_all(after.module, val.images))
    assert stats.images == expected.count == len(val)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, expected.cov, rtol=1e-12, atol=1e-15)


def test_cards_without_statistics_still_load(drift_store):
    # A card as exported before the field existed: the same JSON without it.
    data = json.loads((drift_store / "mnist" / artifact.CARD_FILE).read_text())
    assert data.pop("embedding_stats") is not None
    card = artifact.ModelCard.model_validate(data)
    assert card.embedding_stats is None
    assert DriftMonitor(card, 100).report().frechet_distance is None
    for shipped in ("mnist", "cifar10"):  # and the shipped ones now have it
        assert artifact.read_card(ROOT / "model_store" / shipped).embedding_stats is not None


def test_monitor_covers_a_sliding_window(drift_store):
    card = artifact.read_card(drift_store / "mnist")
    ref = card.embedding_stats
    ref_stats = GaussianStats(ref.images, np.array(ref.mean), np.array(ref.covariance))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 16))
    monitor = DriftMonitor(card, window_images=10)
    assert monitor.report().frechet_distance is None and monitor.images() == 0
    for start_row in range(0, 25, 5):
        monitor.update(x[start_row : start_row + 5])
    # After 10 and 20 images the current window became the previous one: rows 10..24 remain.
    report = monitor.report()
    assert report.images == monitor.images() == 15
    expected = frechet_distance(ref_stats, GaussianStats.of(x[10:]))
    assert report.frechet_distance == pytest.approx(expected, rel=1e-9)
    assert report.mean_shift == pytest.approx(np.linalg.norm(x[10:].mean(0) - ref_stats.mean))
    assert monitor.report() is report  # nothing new: not computed again
    monitor.update(x[:1])
    assert monitor.report().images == 16


@pytest.fixture
def server_process() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture
def drift_client(drift_store, make_settings) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(model_store=drift_store))) as c:
        yield c


def gauge(text: str, name: str, model: str) -> float | None:
    m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.MULTILINE)
    return float(m.group(1)) if m else None


def test_drift_follows_the_embeddings_served(drift_client, drift_store):
    client = drift_client
    start_report = client.get("/models/mnist/drift").json()
    assert start_report["images"] == 0  # the warm-up's blank images are not traffic
    assert start_report["frechet_distance"] is None and start_report["reference_images"] > 2

    embs = []
    for path in digit_files("3", "8"):
        r = client.post("/embed", files={"image": path.read_bytes()})
        embs.append(r.json()["embedding"])
    client.post("/embed", files={"image": digit_files("3")[0].read_bytes()})  # cached: not again

    report = client.get("/models/mnist/drift").json()
    card = artifact.read_card(drift_store / "mnist")
    ref = card.embedding_stats
    ref_stats = GaussianStats(ref.images, np.array(ref.mean), np.array(ref.covariance))
    expected = frechet_distance(ref_stats, GaussianStats.of(np.array(embs)))
    assert report["model"] == "mnist" and report["model_version"] == card.version
    assert report["images"] == 60 and report["window_images"] == 10_000
    assert report["frechet_distance"] == pytest.approx(expected, rel=1e-6)

    metrics = client.get("/metrics").text
    assert gauge(metrics, "imgsim_drift_frechet", "mnist") == pytest.approx(expected, rel=1e-6)
    assert gauge(metrics, "imgsim_drift_images", "mnist") == 60
    # cifar10's card has no statistics: a count, but no distance.
    assert gauge(metrics, "imgsim_drift_frechet", "cifar10") is None
    assert gauge(metrics, "imgsim_drift_images", "cifar10") == 0
    other = client.get("/models/cifar10/drift").json()
    assert other["frechet_distance"] is None and other["reference_images"] is None


def test_drift_route_errors(drift_client, drift_store, make_settings):
    r = drift_client.get("/models/nope/drift")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["detail"]
    assert drift_client.get("/models/bad%20name/drift").status_code == 422
    settings = make_settings(model_store=drift_store, drift_window_images=0)
    with TestClient(create_app(settings)) as client:
        r = client.get("/models/mnist/drift")
        assert r.status_code == 404 and "IMGSIM_DRIFT_WINDOW_IMAGES=0" in r.json()["detail"]
        assert "imgsim_drift_images{" not in client.get("/metrics").text


@pytest.mark.slow
def test_real_server_sets_drift_and_cli_agree(drift_store, server_process, monkeypatch, tmp_path):
    """One uvicorn process: /embed, /similarity/sets, the drift view and gauge, and the CLI."""
    monkeypatch.setenv("IMGSIM_INFERENCE_PRECISION", "float32")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["-m", "app", "--port", str(port)], drift_store, port)
    server_process.append(proc)
    wait_ready(proc, base)

    threes, eights = digit_files("3"), digit_files("8")

    def embed(paths: list[Path]) -> np.ndarray:
        rows = [
            httpx.post(f"{base}/embed", files={"image": p.read_bytes()}, timeout=10).json()[
                "embedding"
            ]
            for p in paths
        ]
        return np.array(rows, dtype=np.float64)

    a, b = embed(threes), embed(eights)
    files = [("set_a", p.read_bytes()) for p in threes] + [
        ("set_b", p.read_bytes()) for p in eights
    ]
    r = httpx.post(f"{base}/similarity/sets", files=files, timeout=30)
    assert r.status_code == 200, r.text
    online = r.json()["frechet_distance"]
    assert online == pytest.approx(reference_frechet(a, b), rel=1e-6)

    # The drift view covers the 60 embeddings (the set request hit the cache), and so does the
    # CLI on a folder of the same images against the same card statistics.
    drift = httpx.get(f"{base}/models/mnist/drift", timeout=10).json()
    metrics = httpx.get(f"{base}/metrics", timeout=10).text
    folder = tmp_path / "seen"
    folder.mkdir()
    for p in threes + eights:
        shutil.copy(p, folder / f"{p.parent.name}-{p.name}")
    offline = setdistance.compare_folders(drift_store / "mnist", folder, None)
    assert drift["images"] == offline["n_a"] == 60
    assert drift["frechet_distance"] == pytest.approx(offline["frechet_distance"], rel=1e-6)
    assert gauge(metrics, "imgsim_drift_frechet", "mnist") == pytest.approx(
        offline["frechet_distance"], rel=1e-6
    )
    offline_sets = setdistance.compare_folders(drift_store / "mnist", DIGITS / "3", DIGITS / "8")
    assert offline_sets["frechet_distance"] == pytest.approx(online, rel=1e-6)
    assert json.loads(json.dumps(offline_sets))  # plain JSON, as the CLI prints it


def test_batcher_feeds_the_observer_from_its_worker_thread():
    torch.manual_seed(0)
    tower = TinyTower(channels=1).eval()
    seen: list[tuple[str, np.ndarray]] = []

    def observer(emb: np.ndarray) -> None:
        seen.append((threading.current_thread().name, emb.copy()))
        raise RuntimeError("a broken observer must not fail the request")

    async def run() -> list[torch.Tensor]:
        batcher = Batcher(tower, name="tiny", max_batch_size=8)
        batcher.observer = observer
        batcher.start()
        try:
            xs = [torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8) for _ in range(5)]
            return await batcher.embed_many(xs)
        finally:
            await batcher.stop()

    out = asyncio.run(run())
    assert all(name.startswith("batcher-tiny") for name, _ in seen)  # not the event loop
    got = np.concatenate([emb for _, emb in seen])
    np.testing.assert_array_equal(got, torch.stack(out).numpy())


def test_malformed_card_statistics_are_refused(drift_store):
    data = json.loads((drift_store / "mnist" / artifact.CARD_FILE).read_text())
    data["embedding_stats"]["covariance"] = data["embedding_stats"]["covariance"][:-1]
    with pytest.raises(ValueError, match="covariance must be 16 x 16"):
        artifact.ModelCard.model_validate(data)
