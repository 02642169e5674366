"""Galleries across real processes: kill -9, two workers, two services on one store.

Each service is a real ``python -m app`` (uvicorn) on a free port; the store is a SQLite file
in a temporary data dir, or a real PostgreSQL started by pgserver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from image_bytes import png
from pg import fresh_database, start_postgres
from test_server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

Service = Callable[..., tuple[subprocess.Popen, str]]


@pytest.fixture
def service(model_store: Path, tmp_path: Path) -> Iterator[Service]:
    """service(data_dir, gallery_url="", workers=1) -> (process, base url); killed at teardown."""
    procs: list[subprocess.Popen] = []
    logs: list[BinaryIO] = []

    def start(
        data_dir: Path, gallery_url: str = "", workers: int = 1
    ) -> tuple[subprocess.Popen, str]:
        port = free_port()
        env = {
            **os.environ,
            "IMGSIM_MODEL_STORE": str(model_store),
            "IMGSIM_DATA_DIR": str(data_dir),
            "IMGSIM_GALLERY_URL": gallery_url,
            "IMGSIM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("IMGSIM_API_KEYS", None)
        log = open(tmp_path / f"service-{port}.log", "wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, base, timeout_s=180)
        except AssertionError:
            raise AssertionError((tmp_path / f"service-{port}.log").read_text()[-3000:]) from None
        return proc, base

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    for log in logs:
        log.close()


def enroll(base: str, gallery: str, subject: str, images: list[bytes]) -> httpx.Response:
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return httpx.post(
        f"{base}/galleries/{gallery}/subjects/{subject}/images", files=files, timeout=60
    )


def identify(base: str, gallery: str, image: bytes) -> httpx.Response:
    # A new connection each time: with --workers 2 either worker may take it.
    return httpx.post(
        f"{base}/galleries/{gallery}/identify", files={"image": ("q.png", image)}, timeout=60
    )


def test_an_acknowledged_enrollment_survives_kill_9(service, tmp_path, digits):
    proc, base = service(tmp_path / "data")
    r = enroll(base, "g", "ada", digits["3"][:3])
    assert r.status_code == 201, r.text
    proc.send_signal(signal.SIGKILL)  # the instant the answer is in: no shutdown, no flush
    proc.wait(30)

    _, base = service(tmp_path / "data")
    assert httpx.get(f"{base}/galleries/g/subjects").json() == {
        "subjects": [{"subject": "ada", "images": 3}]
    }
    match = identify(base, "g", digits["3"][1]).json()["match"]
    assert match["subject"] == "ada" and match["image_id"] == r.json()["image_ids"][1]


def test_a_process_killed_mid_enrollment_leaves_no_partial_subject(service, tmp_path):
    proc, base = service(tmp_path / "data")
    per_subject = 32
    acknowledged: list[str] = []
    first_answer = threading.Event()

    def send(subject: str, seed: int) -> None:
        images = [png(seed=seed * 100 + i) for i in range(per_subject)]
        try:
            if enroll(base, "g", subject, images).status_code == 201:
                acknowledged.append(subject)
        except httpx.TransportError:
            pass  # killed under it
        first_answer.set()

    subjects = [f"s{i}" for i in range(8)]
    threads = [threading.Thread(target=send, args=(s, i)) for i, s in enumerate(subjects)]
    for t in threads:
        t.start()
    # The others are being read, decoded, embedded or committed when the first is answered.
    first_answer.wait(120)
    proc.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(60)
    proc.wait(30)

    _, base = service(tmp_path / "data")
    r = httpx.get(f"{base}/galleries/g/subjects")
    stored = (
        {s["subject"]: s["images"] for s in r.json()["subjects"]} if r.status_code == 200 else {}
    )
    assert set(stored.values()) <= {per_subject}, stored  # whole subjects or nothing
    assert set(acknowledged) <= set(stored)
    assert len(acknowledged) >= 1


def test_two_workers_see_each_others_enrollments(service, tmp_path, digits):
    _, base = service(tmp_path / "data", workers=2)
    assert enroll(base, "g", "ada", digits["1"][:1]).status_code == 201
    for _ in range(8):
        assert identify(base, "g", digits["1"][0]).json()["match"]["subject"] == "ada"
    assert enroll(base, "g", "bob", digits["7"][:1]).status_code == 201
    for _ in range(8):
        assert identify(base, "g", digits["7"][0]).json()["match"]["subject"] == "bob"


def test_two_services_share_one_sqlite_file(service, tmp_path, digits):
    _, a = service(tmp_path / "data")
    _, b = service(tmp_path / "data")
    assert identify(b, "g", digits["2"][0]).status_code == 404
    assert enroll(a, "g", "ada", digits["2"][:2]).status_code == 201
    assert identify(b, "g", digits["2"][0]).json()["match"]["subject"] == "ada"
    assert httpx.delete(f"{b}/galleries/g/subjects/ada").status_code == 204
    assert identify(a, "g", digits["2"][0]).json()["candidates"] == []


@pytest.fixture(scope="module")
def postgres() -> Iterator[object]:
    yield from start_postgres()


def test_two_services_share_one_postgresql(service, tmp_path, postgres, digits):
    url = fresh_database(postgres)
    _, a = service(tmp_path / "a", gallery_url=url)
    _, b = service(tmp_path / "b", gallery_url=url)  # no state of their own in common
    r = enroll(a, "g", "ada", digits["6"][:2])
    assert r.status_code == 201, r.text
    enroll(a, "g", "bob", digits["0"][:2])
    match = identify(b, "g", digits["6"][1]).json()["match"]
    assert match["subject"] == "ada" and match["image_id"] == r.json()["image_ids"][1]
    assert not (tmp_path / "a" / "galleries.db").exists()
