"""app.embedding: the decode pool takes requests in turn, drops abandoned work, is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files

from app.batching import QueueFull, Ticket
from app.embedding import LIGHT_PIXELS, DecodePool
from app.main import create_app


@dataclass(eq=False)
class Model:
    name: str = "m"


@dataclass(eq=False)
class RecordingJob:
    """Stands in for a request's _Job: records which of its images a decode thread ran."""

    name: str
    count: int
    log: list[str]
    gate: threading.Event
    pixels: int = 1000  # of each image
    ticket: Ticket = field(default_factory=lambda: Ticket(1e18))
    model: Model = field(default_factory=Model)
    loop: asyncio.AbstractEventLoop | None = None
    pending: deque = field(default_factory=deque)
    surveyed: bool = True
    surveying: bool = False
    running: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pending.extend(
            [f"{self.name}{i}".encode(), None, self.pixels] for i in range(self.count)
        )

    def run(self, data: bytes, future: object) -> None:
        self.log.append(data.decode())
        self.running.append(data.decode())
        assert self.gate.wait(10)
        self.running.remove(data.decode())


def test_requests_take_turns_at_the_decode_threads():
    log: list[str] = []
    gate = threading.Event()
    pool = DecodePool(threads=1, queue_max=100)
    try:
        pool.put(RecordingJob("heavy", 6, log, gate))
        pool.put(RecordingJob("light", 2, log, gate))
        gate.set()
        pool.close()
    finally:
        gate.set()
    # After the heavy request's first image, the light one goes next, not after all six.
    assert log[:4] == ["heavy0", "light0", "heavy1", "light1"]
    assert sorted(log) == sorted([f"heavy{i}" for i in range(6)] + ["light0", "light1"])


def wait_for(log: list[str]) -> None:
    for _ in range(2000):
        if log:
            return
        threading.Event().wait(0.005)
    raise AssertionError("the decode thread never started")


def test_an_abandoned_request_loses_its_waiting_images():
    log: list[str] = []
    gate = threading.Event()
    pool = DecodePool(threads=1, queue_max=100)
    job = RecordingJob("gone", 5, log, gate)
    pool.put(job)
    wait_for(log)  # the thread is inside the first image
    job.ticket.abandoned = True  # what Batcher.wait does when the request gives up
    gate.set()
    pool.close()
    assert log == ["gone0"] and pool.queued == 0


def test_the_decode_queue_is_bounded_per_request_whole():
    log: list[str] = []
    gate = threading.Event()
    pool = DecodePool(threads=1, queue_max=4)
    try:
        pool.put(RecordingJob("a", 3, log, gate))
        wait_for(log)  # one is being decoded, two wait
        with pytest.raises(QueueFull, match="limit 4"):
            pool.put(RecordingJob("b", 3, log, gate))  # 2 + 3 > 4: none of it is queued
        pool.put(RecordingJob("c", 2, log, gate))
    finally:
        gate.set()
        pool.close()
    assert not any(name.startswith("b") for name in log)


def rejected(client: TestClient, reason: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("imgsim_rejected_total{") and f'reason="{reason}"' in line:
            return float(line.split()[-1])
    return 0.0


def test_heavy_images_leave_a_thread_for_light_ones():
    log: list[str] = []
    gate = threading.Event()
    pool = DecodePool(threads=2, queue_max=100)
    heavy = RecordingJob("heavy", 4, log, gate, pixels=LIGHT_PIXELS + 1)
    other_heavy = RecordingJob("other", 4, log, gate, pixels=LIGHT_PIXELS + 1)
    try:
        pool.put(heavy)
        pool.put(other_heavy)
        wait_for(log)
        pool.put(RecordingJob("light", 1, log, gate))
        for _ in range(2000):  # the second thread, kept from the heavy images, takes it
            if "light0" in log:
                break
            threading.Event().wait(0.005)
        assert len(heavy.running) + len(other_heavy.running) == 1
        assert "light0" in log
    finally:
        gate.set()
        pool.close()


def test_a_missed_deadline_is_counted_once_per_request(make_settings, digits):
    with TestClient(create_app(make_settings(request_timeout_s=1e-6))) as client:
        for i in range(3):
            files = multipart_files(image_a=digits[str(i)][0], image_b=digits[str(i + 1)][0])
            assert client.post("/similarity", files=files).status_code == 503
        assert rejected(client, "deadline") == 3


def test_a_request_over_the_pixel_budget_leaves_the_pool_working(make_settings, digits):
    with TestClient(create_app(make_settings(max_request_pixels=28 * 28 * 3))) as client:
        four = multipart_files(images=[digits[str(i)][0] for i in range(4)])
        for _ in range(3):
            r = client.post("/similarity/matrix", files=four)
            assert r.status_code == 413 and "max_request_pixels" in r.json()["detail"]
        three = multipart_files(images=[digits[str(i)][0] for i in range(3)])
        assert client.post("/similarity/matrix", files=three).status_code == 200
