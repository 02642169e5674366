"""app.main: capacity errors are 503 + Retry-After, and the OpenAPI schema is useful."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png

from app.main import create_app


class Gate:
    """Holds every forward pass until opened; wraps the real module."""

    def __init__(self, forward) -> None:
        self.forward = forward
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, x):
        self.entered.set()
        self.opened.wait(10)
        return self.forward(x)


@pytest.fixture
def gated(make_settings):
    def make(**overrides):
        # The gate holds the inference workers' forward pass: requests must queue for them, not
        # take the inline path on the event loop (tests/test_inline.py covers that one).
        client = TestClient(create_app(make_settings(**{"inline_max_bytes": 0, **overrides})))
        client.__enter__()
        batcher = client.app.state.registry.get("mnist").batcher
        gate = Gate(batcher.forward)
        batcher.forward = gate
        return client, gate

    opened = []
    yield lambda **kw: opened.append(make(**kw)) or opened[-1]
    for client, gate in opened:
        gate.opened.set()
        client.__exit__(None, None, None)


def embed(client, seed):
    return client.post("/embed", files=multipart_files(image=png(seed=seed)))


def test_full_queue_is_503_with_retry_after(gated):
    client, gate = gated(queue_max=2, max_candidates=1, max_matrix_images=2)
    batcher = client.app.state.registry.get("mnist").batcher
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(embed, client, 1)
        assert gate.entered.wait(5)  # the worker holds image 1
        queued = [pool.submit(embed, client, seed) for seed in (2, 3)]
        deadline = time.monotonic() + 5
        while batcher.queued < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = embed(client, 4)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "model 'mnist' has 2 images queued (limit 2); retry later"
        gate.opened.set()
        assert running.result().status_code == 200
        assert [q.result().status_code for q in queued] == [200, 200]
    rejected = client.app.state.metrics.registry.get_sample_value(
        "imgsim_rejected_total", {"model": "mnist", "reason": "queue_full"}
    )
    assert rejected == 1


def test_deadline_is_503_with_retry_after(gated):
    client, gate = gated(request_timeout_s=0.3)
    r = embed(client, 1)  # the gate never opens: only the deadline can answer this request
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["detail"] == "model 'mnist' did not answer in time; retry later"
    assert not gate.opened.is_set()


def test_openapi_describes_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/healthz", "/readyz", "/models", "/metrics", "/embed", "/verify",
        "/similarity", "/similarity/one-to-many", "/similarity/matrix", "/calibrate",
        "/models/{model}/profiles", "/models/{model}/profiles/{name}", "/models/{model}/card",
        "/models/{model}/plots/{plot}",
        "/similarity/sets", "/models/{model}/drift",
        "/galleries", "/galleries/{gallery}", "/galleries/{gallery}/subjects",
        "/galleries/{gallery}/subjects/{subject}", "/galleries/{gallery}/subjects/{subject}/images",
        "/galleries/{gallery}/subjects/{subject}/images/{image_id}",
        "/galleries/{gallery}/verify", "/galleries/{gallery}/identify",
        "/galleries/{gallery}/reembed",
    }  # fmt: skip
    verify = paths["/verify"]["post"]
    assert {"400", "404", "413", "422", "503"} <= set(verify["responses"])
    body = verify["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    fields = schema["components"]["schemas"][body]["properties"]
    assert {"image_a", "image_b", "model", "threshold", "far", "profile"} == set(fields)
    assert {"409"} <= set(verify["responses"])
    assert schema["components"]["schemas"]["VerifyResponse"]["examples"]
