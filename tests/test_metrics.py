"""app.metrics: /metrics exposes HTTP counts by route template and the pipeline histograms."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files
from prometheus_client.parser import text_string_to_metric_families
from test_server import ROOT, free_port

from app.main import create_app


def test_metrics_expose_requests_and_pipeline(client, digits):
    client.post("/embed", files=multipart_files(image=digits["3"][0]))
    client.post("/embed", files=multipart_files(image=digits["3"][0]))  # a cache hit
    client.post("/embed", files=multipart_files(image=b"junk"))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'http_requests_total{handler="/embed",method="POST",status="200"} 2.0',
        'http_requests_total{handler="/embed",method="POST",status="400"} 1.0',
        'imgsim_cache_hits_total{model="mnist"} 1.0',
        'imgsim_cache_misses_total{model="mnist"} 2.0',
        'imgsim_batch_size_count{model="mnist"}',
        'imgsim_inference_seconds_count{model="mnist"}',
        'imgsim_queue_wait_seconds_count{model="mnist"}',
        'imgsim_decode_seconds_count{model="mnist"} 2.0',
        "imgsim_upload_read_seconds_count 3.0",
        'http_request_duration_seconds_bucket{handler="/embed"',
    ]:
        assert line in text, line
    assert "/metrics" not in [
        part.split('"')[1] for part in text.splitlines() if part.startswith("http_requests_total")
    ]


def test_untemplated_paths_do_not_grow_the_label_set(client):
    for i in range(5):
        client.get(f"/scan/{i}")
    handlers = {
        line.split('handler="')[1].split('"')[0]
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("http_requests_total")
    }
    assert not any(h.startswith("/scan") for h in handlers)


def test_many_apps_in_one_process_do_not_clash(settings):
    for _ in range(3):
        with TestClient(create_app(settings)) as client:
            assert client.get("/metrics").status_code == 200


# --- several worker processes: one scrape counts them all ------------------------------------

ADMIN_KEY = "admin-key-0123456789"
CLIENT_KEY = "client-key-0123456789"


@pytest.fixture
def two_workers(model_store: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """A real `python -m app --workers 2` with keys on -> (process, base url, its TMPDIR)."""
    port, tmp = free_port(), tmp_path / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "IMGSIM_MODEL_STORE": str(model_store),
        "IMGSIM_DATA_DIR": str(tmp_path / "data"),
        "IMGSIM_API_KEYS": CLIENT_KEY,
        "IMGSIM_ADMIN_KEYS": ADMIN_KEY,
        "IMGSIM_LOG_LEVEL": "WARNING",
        "TMPDIR": str(tmp),  # where the supervisor makes its metrics directory
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}", log_path)
            yield proc, f"http://127.0.0.1:{port}", tmp
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def _wait_ready(proc: subprocess.Popen, base: str, log_path: Path, timeout_s: float = 180) -> None:
    """Until both workers have answered /readyz: the first one ready takes every connection
    while the other still loads its models."""
    ready: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{base}/readyz", timeout=1)
            if r.status_code == 200:
                ready.add(_worker(r))
                if len(ready) == 2:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not both ready: {log_path.read_text()[-3000:]}")


def _worker(response: httpx.Response) -> str:
    # A request id the server made is "<random per-process prefix>-<counter>": names the worker.
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def _total(text: str, sample: str, **labels: str) -> float:
    """Sum of ``sample`` over every series whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


@pytest.mark.slow
def test_two_workers_one_scrape_counts_both(two_workers, digits):
    proc, base, tmp = two_workers
    assert len(list(tmp.glob("imgsim-metrics-*"))) == 1
    images = [img for label in "0123" for img in digits[label][:3]]
    client = {"X-API-Key": CLIENT_KEY}

    def embed(image: bytes) -> httpx.Response:
        # A new connection per request: either worker may accept it.
        return httpx.post(f"{base}/embed", files={"image": ("d.png", image)}, headers=client)

    sent: list[httpx.Response] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # until both workers have answered (nearly always the first round)
            sent += pool.map(embed, images)
            if len({_worker(r) for r in sent}) == 2:
                break
    assert all(r.status_code == 200 for r in sent), [r.text for r in sent if r.status_code != 200]
    assert len({_worker(r) for r in sent}) == 2, "one worker took every request"
    n = len(sent)

    assert httpx.get(f"{base}/metrics").status_code == 401
    r = httpx.get(f"{base}/metrics", headers=client)
    assert r.status_code == 403 and "admin key" in r.json()["detail"]

    scrapers: set[str] = set()
    for _ in range(40):  # fresh connections, until each worker has answered a scrape or two
        r = httpx.get(f"{base}/metrics", headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 200
        scrapers.add(_worker(r))
        text = r.text
        assert _total(text, "http_requests_total", handler="/embed", status="200") == n
        misses = _total(text, "imgsim_cache_misses_total", model="mnist")
        assert misses + _total(text, "imgsim_cache_hits_total", model="mnist") == n
        assert _total(text, "imgsim_decode_seconds_count", model="mnist") == misses  # hits: none
        # Forward passes saw every miss plus each worker's two warm-up images.
        assert _total(text, "imgsim_batch_size_sum", model="mnist") == misses + 2 * 2
        assert _total(text, "http_request_duration_seconds_count", handler="/embed") == n
        # Drift is per worker: one series each, labelled with its pid.
        drift = [
            s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "imgsim_drift_images" and s.labels.get("model") == "mnist"
        ]  # fmt: skip
        assert len({s.labels["pid"] for s in drift}) == 2
        if len(scrapers) == 2 and _ > 4:
            break
    assert len(scrapers) == 2, "one worker answered every scrape"
    # Each worker has written its drift values since the last embed (answering a scrape): their
    # windows hold every embedding computed, the warm-up's excepted.
    assert sum(s.value for s in drift) == misses

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert list(tmp.glob("imgsim-metrics-*")) == []  # the metric files go with the service
