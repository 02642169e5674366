"""/healthz, /readyz (before start-up, ready, during shutdown) and GET /models."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png
from towers import CALIBRATION, THRESHOLD, export_tower

from app.config import usable_cores
from app.main import create_app


@pytest.fixture(scope="module")
def heavy_store(tmp_path_factory: pytest.TempPathFactory):
    """mnist (tiny) and a tower on 512x512 RGB, whose conv alone costs 113 MFLOP per image."""
    store = tmp_path_factory.mktemp("heavy_store")
    export_tower(store / "mnist", channels=1, size=28, seed=0)
    export_tower(store / "photos512", channels=3, size=512, seed=1)
    return store


def test_healthz_is_always_ok(settings):
    app = create_app(settings)
    assert TestClient(app).get("/healthz").json() == {"status": "ok"}  # even before start-up


def test_readyz_is_503_before_the_models_are_loaded(settings):
    client = TestClient(create_app(settings))  # no `with`: the lifespan has not run
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    assert r.json() == {
        "status": "not ready",
        "models": {},
        "detail": "starting: models are loading",
    }
    r = client.post("/embed", files=multipart_files(image=png()))
    assert r.status_code == 503
    assert r.json() == {"detail": "not ready: starting: models are loading"}


def test_readyz_once_warmed_up(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "models": {"cifar10": "up", "mnist": "up"},
        "detail": None,
    }


def test_readyz_is_503_until_every_model_is_warmed_up_or_refused(heavy_store, make_settings):
    """Polled while the lifespan starts: mnist warms up first, then photos512 (sorted), and
    /readyz stays 503 until both are done, though mnist alone could already serve."""
    app = create_app(make_settings(model_store=heavy_store))
    seen: list[tuple[int, dict[str, str]]] = []

    async def start_while_polling() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            started = asyncio.Event()

            async def poll() -> None:
                while not started.is_set():
                    r = await client.get("/readyz")
                    seen.append((r.status_code, r.json()["models"]))
                    await asyncio.sleep(0.002)

            poller = asyncio.create_task(poll())
            async with app.router.lifespan_context(app):
                started.set()
                await poller
                return await client.get("/readyz")

    final = asyncio.run(start_while_polling())
    assert final.status_code == 200
    assert final.json()["models"] == {"mnist": "up", "photos512": "up"}
    assert seen and {status for status, _ in seen} == {503}
    assert {"mnist": "up", "photos512": "warming up"} in [models for _, models in seen]


def test_a_costly_model_gets_a_worker_per_core_a_cheap_one_one(heavy_store, make_settings):
    # Decided from the FLOPs of one forward pass, not from a timing: the same on every start.
    with TestClient(create_app(make_settings(model_store=heavy_store))) as client:
        models = {m["name"]: m["inference_workers"] for m in client.get("/models").json()["models"]}
    assert models == {"mnist": 1, "photos512": usable_cores()}


def test_readyz_is_503_once_shutdown_began(settings):
    app = create_app(settings)
    with TestClient(app):
        pass  # lifespan ran start-up and shutdown
    r = TestClient(app).get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"] == "shutting down"


def test_models_lists_the_cards(client):
    body = client.get("/models").json()
    assert body["default"] == "mnist" and body["failed"] == []
    by_name = {m["name"]: m for m in body["models"]}
    mnist = by_name["mnist"]
    assert mnist["default"] is True and by_name["cifar10"]["default"] is False
    assert mnist["input"] == {"channels": 1, "height": 28, "width": 28}
    assert mnist["embedding_dim"] == 16 and mnist["threshold"] == THRESHOLD
    assert mnist["calibration"]["slope"] == CALIBRATION.slope
    assert len(mnist["version"]) == 12
    assert "training" not in mnist and "sha256" not in mnist
    # auto: the tiny test tower costs far less than SPLIT_MIN_MFLOPS, so one worker
    assert mnist["precision"] == "float32" and mnist["inference_workers"] == 1


def test_models_says_how_each_model_is_run(make_settings):
    settings = make_settings(inference_precision="bfloat16", inference_workers=2)
    with TestClient(create_app(settings)) as client:
        models = client.get("/models").json()["models"]
        r = client.post("/similarity", files=multipart_files(image_a=png(), image_b=png(seed=1)))
    assert {(m["precision"], m["inference_workers"]) for m in models} == {("bfloat16", 2)}
    assert r.status_code == 200 and 0 < r.json()["distance"] < 2.01  # unit vectors, bf16 rounding


def test_unknown_path_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    r = client.get("/similarity")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}
