"""The c=1 inline fast path (issue 18, app/embedding.py Embedder._inline): a small request to an
idle model is embedded on the event loop, with the same answers, errors and cache as the pool
path; a large image or a busy model always takes the pool.

Which path answered is read from imgsim_inline_total on /metrics; nothing here times anything.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from image_bytes import encode, multipart_files, png, tiled_tiff
from PIL import Image
from test_attacks import raw, serve

from app import images
from app.config import Settings
from app.embedding import INLINE_MAX_PIXELS
from app.main import create_app


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name{labels}`` in a /metrics page (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.split()[-1])
    return 0.0


def inline_count(client: TestClient) -> float:
    return metric(client.get("/metrics").text, "imgsim_inline_total", model="mnist")


def fallbacks(client: TestClient, reason: str) -> float:
    text = client.get("/metrics").text
    return metric(text, "imgsim_inline_fallback_total", model="mnist", reason=reason)


def direct_distance(client: TestClient, a: bytes, b: bytes) -> float:
    """The distance from the served model's TorchScript module run here, not by the service."""
    served = client.app.state.registry.models["mnist"]
    card = served.card
    xs = [images.decode(data, card.mode, card.size, 40_000_000) for data in (a, b)]
    with torch.inference_mode():
        ea, eb = served.module(torch.stack(xs))
    return math.dist(ea.tolist(), eb.tolist())


def similarity(client: TestClient, a: bytes, b: bytes) -> httpx.Response:
    return client.post("/similarity", files=multipart_files(image_a=a, image_b=b))


def wait_idle(client: TestClient) -> None:
    """Until every inference worker waits for work: a worker that has just handed back a result
    (the warm-up's, a request's) counts as busy for a moment, and a busy model takes the pool."""
    for served in client.app.state.registry.models.values():
        for _ in range(3000):
            if served.batcher.idle_workers == served.batcher.workers:
                break
            threading.Event().wait(0.01)
        assert served.batcher.idle_workers == served.batcher.workers


@contextmanager
def started(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        wait_idle(client)
        yield client


@pytest.fixture
def inline_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    # The forward-time bound raised: the tiny tower is far below 2 ms, but these tests assert
    # which path answered, so that must not depend on how busy the box was at warm-up.
    with started(make_settings(inline_max_forward_ms=1000.0, inference_workers=1)) as client:
        yield client


@pytest.fixture
def pool_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with started(make_settings(inline_max_bytes=0)) as client:
        yield client


# --- through a real process ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_server_answers_the_same_inline_and_through_the_pool(model_store, digits, tmp_path):
    pairs = [(digits["3"][0], digits["7"][0]), (digits["1"][0], digits["1"][1])]
    answers: dict[str, list[float]] = {}
    counts: dict[str, float] = {}
    for name, settings in {
        "inline": {"inline_max_forward_ms": 1000.0},
        "pool": {"inline_max_bytes": 0},
    }.items():
        server = serve(model_store, tmp_path / f"{name}.log", data_dir=tmp_path / name, **settings)
        try:
            answers[name] = []
            for a, b in pairs:  # one at a time: concurrency 1
                r = httpx.post(
                    f"{server.base}/similarity",
                    files=multipart_files(image_a=a, image_b=b),
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                answers[name].append(r.json()["distance"])
            page = httpx.get(f"{server.base}/metrics", timeout=10).text
            counts[name] = metric(page, "imgsim_inline_total", model="mnist")
        finally:
            server.stop()
    assert answers["inline"] == pytest.approx(answers["pool"], rel=1e-5, abs=1e-6)
    assert counts == {"inline": len(pairs), "pool": 0}


@pytest.mark.slow
def test_a_request_arriving_while_another_is_in_progress_takes_the_pool(
    model_store, digits, tmp_path
):
    """Under steady load every request would find the model idle (the one before it ran
    inline) and run inline too, one at a time and unbatched: a request that is not the only one
    the server is answering takes the pool."""
    server = serve(
        model_store, tmp_path / "s.log", data_dir=tmp_path / "d", inline_max_forward_ms=1000.0
    )
    a, b = digits["3"][0], digits["7"][0]

    def pair() -> None:
        r = httpx.post(
            f"{server.base}/similarity", files=multipart_files(image_a=a, image_b=b), timeout=30
        )
        assert r.status_code == 200, r.text

    def count(name: str, **labels: str) -> float:
        return metric(httpx.get(f"{server.base}/metrics", timeout=10).text, name, **labels)

    try:
        pair()  # alone: inline
        assert count("imgsim_inline_total", model="mnist") == 1
        held = raw(server.port)  # a request whose head is in and whose body never completes
        held.sendall(
            b"POST /similarity HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=zz\r\n\r\n--zz\r\n"
        )
        pair()  # its head reached the server before this connection was even opened
        assert count("imgsim_inline_total", model="mnist") == 1
        assert count("imgsim_inline_fallback_total", model="mnist", reason="busy") == 1
        held.close()
        for _ in range(50):  # alone again once the server has seen that connection close
            pair()
            if count("imgsim_inline_total", model="mnist") == 2:
                break
        assert count("imgsim_inline_total", model="mnist") == 2
    finally:
        server.stop()


# --- which requests take it ---------------------------------------------------------------------


def test_a_small_pair_is_answered_inline_with_the_models_distance(inline_client, digits):
    a, b = digits["3"][0], digits["7"][0]
    r = similarity(inline_client, a, b)
    assert r.status_code == 200, r.text
    assert r.json()["distance"] == pytest.approx(direct_distance(inline_client, a, b), rel=1e-5)
    assert r.json()["warnings"] == []
    assert inline_count(inline_client) == 1


def test_an_image_over_inline_max_bytes_takes_the_pool(inline_client, digits):
    big = png(size=(300, 300), mode="L", seed=5)  # noise: ~90 KB, over the default 64 KiB
    assert len(big) > inline_client.app.state.settings.inline_max_bytes
    r = similarity(inline_client, digits["3"][0], big)
    assert r.status_code == 200, r.text
    expected = direct_distance(inline_client, digits["3"][0], big)
    assert r.json()["distance"] == pytest.approx(expected, rel=1e-5)
    assert inline_count(inline_client) == 0
    assert fallbacks(inline_client, "bytes") == 1


@pytest.mark.parametrize(
    "large",
    [
        encode(Image.new("L", (600, 600), 128), "PNG"),  # small file, 360,000 pixels
        tiled_tiff((64, 64), tile=1024, value=200),  # a small image in 1024x1024 tiles
    ],
    ids=["png-600x600", "tiff-1024-tiles"],
)
def test_an_image_over_the_inline_pixel_cap_takes_the_pool(inline_client, digits, large):
    assert len(large) < 64 * 1024
    assert images.survey(large, (28, 28), 40_000_000)[1] > INLINE_MAX_PIXELS
    r = similarity(inline_client, digits["3"][0], large)
    assert r.status_code == 200, r.text  # within max_image_pixels: the pool decodes it
    expected = direct_distance(inline_client, digits["3"][0], large)
    assert r.json()["distance"] == pytest.approx(expected, rel=1e-5)
    assert inline_count(inline_client) == 0
    assert fallbacks(inline_client, "pixels") == 1


def test_more_than_two_images_take_the_pool(inline_client, digits):
    three = multipart_files(images=[digits[str(i)][0] for i in range(3)])
    assert inline_client.post("/similarity/matrix", files=three).status_code == 200
    assert inline_count(inline_client) == 0


def test_a_request_sent_while_the_model_is_busy_takes_the_pool(inline_client, digits):
    """An inference worker held inside a forward pass (on an Event), and a first request's
    images queued behind it: a second request must queue too, not run on the loop."""
    batcher = inline_client.app.state.registry.models["mnist"].batcher
    forward, entered, gate = batcher.forward, threading.Event(), threading.Event()

    def held(x: torch.Tensor) -> torch.Tensor:  # only the workers wait: the loop never does
        if threading.current_thread().name.startswith("batcher-"):
            entered.set()
            assert gate.wait(30)
        return forward(x)

    batcher.forward = held
    blank = torch.zeros(1, 28, 28, dtype=torch.uint8)
    results: dict[str, object] = {}

    def occupy() -> None:  # a caller on its own loop, straight to the batcher
        results["occupier"] = asyncio.run(batcher.embed(blank))

    def send(name: str, a: bytes, b: bytes) -> None:
        results[name] = similarity(inline_client, a, b)

    threads = [threading.Thread(target=occupy)]
    try:
        threads[0].start()
        assert entered.wait(30)
        assert batcher.idle_workers < batcher.workers
        pairs = {
            "first": (digits["3"][0], digits["7"][0]),
            "second": (digits["1"][0], digits["2"][0]),
        }
        for name, (a, b) in pairs.items():
            threads.append(threading.Thread(target=send, args=(name, a, b)))
            threads[-1].start()
            for _ in range(3000):  # until its images wait in the queue (or it was answered)
                if batcher.queued >= 2 * (len(threads) - 1) or name in results:
                    break
                threading.Event().wait(0.01)
            assert name not in results, "answered while the only worker was held"
        assert inline_count(inline_client) == 0
        assert fallbacks(inline_client, "busy") == 2
    finally:
        gate.set()
        for thread in threads:
            thread.join(30)
    for name, (a, b) in pairs.items():
        r = results[name]
        assert r.status_code == 200, r.text
        expected = direct_distance(inline_client, a, b)
        assert r.json()["distance"] == pytest.approx(expected, rel=1e-5)
    # Idle again: the next request runs inline.
    wait_idle(inline_client)
    assert similarity(inline_client, digits["5"][0], digits["6"][0]).status_code == 200
    assert inline_count(inline_client) == 1


# --- same errors, same cache --------------------------------------------------------------------


def test_over_the_request_pixel_budget_is_the_same_413_inline(make_settings, digits):
    pair = (digits["3"][0], digits["7"][0])  # 2 x 784 pixels, over a budget of 1000
    answers = []
    for inline_max_bytes in (64 * 1024, 0):
        settings = make_settings(
            max_request_pixels=1000, inline_max_forward_ms=1000.0, inline_max_bytes=inline_max_bytes
        )
        with started(settings) as client:
            r = similarity(client, *pair)
            answers.append((r.status_code, r.json()))
            assert inline_count(client) == (1 if inline_max_bytes else 0)
    assert answers[0] == answers[1]
    assert answers[0][0] == 413 and "max_request_pixels" in answers[0][1]["detail"]


def test_an_undecodable_image_is_the_same_400_inline(inline_client, pool_client, digits):
    inline = similarity(inline_client, digits["3"][0], b"not an image at all")
    pooled = similarity(pool_client, digits["3"][0], b"not an image at all")
    assert inline.status_code == pooled.status_code == 400
    assert inline.json() == pooled.json()
    assert inline.json()["detail"].startswith("image_b: not a decodable image")
    assert inline_count(inline_client) == 1 and inline_count(pool_client) == 0


def test_a_repeated_request_is_served_from_the_cache_inline(inline_client, digits):
    def hits() -> float:
        return metric(inline_client.get("/metrics").text, "imgsim_cache_hits_total", model="mnist")

    a, b = digits["2"][0], digits["8"][0]
    first = similarity(inline_client, a, b).json()["distance"]
    assert hits() == 0
    assert similarity(inline_client, a, b).json()["distance"] == first
    assert hits() == 2
    assert inline_count(inline_client) == 2


def test_the_cache_is_partitioned_by_api_key_inline(make_settings, digits):
    one, two, admin = "key-one-0123456789", "key-two-0123456789", "admin-key-0123456789"
    settings = make_settings(
        api_keys=f"{one},{two}", admin_keys=admin, inline_max_forward_ms=1000.0
    )
    files = multipart_files(image=digits["4"][0])
    with started(settings) as client:
        for key in (one, two, one):
            r = client.post("/embed", files=files, headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
        page = client.get("/metrics", headers={"X-API-Key": admin}).text
    assert metric(page, "imgsim_cache_hits_total", model="mnist") == 1  # only the same key's
    assert metric(page, "imgsim_inline_total", model="mnist") == 3


def test_a_missed_deadline_is_a_503_inline(make_settings, digits):
    settings = make_settings(request_timeout_s=1e-6, inline_max_forward_ms=1000.0)
    with started(settings) as client:
        r = similarity(client, digits["3"][0], digits["7"][0])
        assert r.status_code == 503 and "did not answer in time" in r.json()["detail"]
        assert inline_count(client) == 1
        rejected = metric(
            client.get("/metrics").text, "imgsim_rejected_total", model="mnist", reason="deadline"
        )
        assert rejected == 1
