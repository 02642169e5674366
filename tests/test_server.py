"""The service in a real uvicorn process: a smoke test, and a graceful SIGTERM mid-request."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    args: list[str], model_store: Path, port: int, data_dir: Path | None = None
) -> subprocess.Popen:
    env = {
        **os.environ,
        "IMGSIM_MODEL_STORE": str(model_store),
        "IMGSIM_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    if data_dir is not None:
        env["IMGSIM_DATA_DIR"] = str(data_dir)
    env.pop("IMGSIM_API_KEYS", None)
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_ready(proc: subprocess.Popen, base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became ready")


@pytest.fixture
def server_process() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_uvicorn_factory_smoke(model_store, digits, server_process):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port)]
    proc = start(args, model_store, port)
    server_process.append(proc)
    wait_ready(proc, base)

    files = {"image_a": ("a.png", digits["3"][0]), "image_b": ("b.png", digits["5"][0])}
    r = httpx.post(f"{base}/similarity", files=files, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "mnist" and r.json()["distance"] > 0
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", r.headers["x-request-id"])
    bad = httpx.post(f"{base}/verify", files=files, data={"threshold": "nan"}, timeout=10)
    assert bad.status_code == 422
    assert "imgsim_inference_seconds" in httpx.get(f"{base}/metrics", timeout=10).text
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def multipart(image: bytes, boundary: str) -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_sigterm_lets_the_in_flight_request_finish_and_exits_zero(
    model_store, digits, server_process
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["-m", "app", "--port", str(port)], model_store, port)
    server_process.append(proc)
    wait_ready(proc, base)

    boundary = uuid.uuid4().hex
    body = multipart(digits["7"][0], boundary)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/embed")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[: len(body) // 2])  # the request is in flight: half its body is sent
    time.sleep(0.5)

    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # no new connections once shutting down
        httpx.get(f"{base}/healthz", timeout=2)

    conn.send(body[len(body) // 2 :])
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert response.status == 200, payload
    assert payload["model"] == "mnist" and payload["dim"] == 16

    assert proc.wait(30) == 0
    log = [json.loads(line) for line in proc.stderr.read().decode().splitlines() if line]
    messages = [line["msg"] for line in log]
    assert "POST /embed 200" in messages
    assert messages.index("POST /embed 200") < messages.index("stopped")
