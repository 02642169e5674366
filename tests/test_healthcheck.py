"""app.healthcheck, the container's HEALTHCHECK: against a real `python -m app` on a free port."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_server import ROOT, free_port, start, wait_ready

from app.config import Settings
from app.healthcheck import healthz_url


@pytest.mark.parametrize(
    "host,url",
    [
        ("0.0.0.0", "http://127.0.0.1:9000/healthz"),  # the image's IMGSIM_HOST
        ("127.0.0.1", "http://127.0.0.1:9000/healthz"),
        ("::", "http://[::1]:9000/healthz"),
        ("10.1.2.3", "http://10.1.2.3:9000/healthz"),  # bound to one address: ask that one
    ],
)
def test_url_follows_host_and_port(host, url):
    assert healthz_url({"IMGSIM_HOST": host, "IMGSIM_PORT": "9000"}) == url


def test_defaults_are_the_server_s(monkeypatch):
    """The check reads the environment itself (importing app.config would import torch)."""
    for name in ("IMGSIM_HOST", "IMGSIM_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert healthz_url({}) == f"http://{settings.host}:{settings.port}/healthz"


def test_imports_neither_torch_nor_pydantic():
    code = "import sys, app.healthcheck; print(sorted({'torch', 'pydantic'} & set(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _check(port: int) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "IMGSIM_HOST": "0.0.0.0",
        "IMGSIM_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "app.healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.slow
def test_healthy_on_the_port_the_server_took_and_not_once_it_stopped(model_store):
    port = free_port()
    proc = start(["-m", "app"], model_store, port)  # IMGSIM_PORT, as in the image
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        assert _check(port).returncode == 0
        assert _check(free_port()).returncode == 1  # another port: nothing answers there
    finally:
        proc.terminate()
        proc.wait(30)
    stopped = _check(port)
    assert stopped.returncode == 1 and f"127.0.0.1:{port}/healthz" in stopped.stderr
