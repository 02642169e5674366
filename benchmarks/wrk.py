"""Load from Debian's ``wrk``: a C client that costs the shared cores next to nothing.

    wrk = ensure_wrk()                                  # installs it with apt-get when missing
    bodies = write_requests(reqs, run_dir / "wrk")      # pre-built raw requests, once per model
    result = run_wrk(wrk, bodies, port, concurrency=32, seconds=8, warmup_s=2)

The requests are benchmarks/loadgen.py's ``Request.raw`` bytes, the same multipart bodies of
distinct real pairs, written to one file; ``rotate.lua`` reads it at start and hands wrk the next
raw request on every call, each connection starting at a different offset, so the client does no
formatting per request. wrk reports through the script's ``done()``: one JSON line with the
count, duration, latency percentiles and error counts, which :func:`parse_wrk` reads. The
client's CPU time is the wrk child's rusage. wrk counts any status >= 400 as an error
(``errors.status``); it does not say which status, so ``statuses`` holds "2xx/3xx" and "error".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.loadgen import Request

LUA_SCRIPT = Path(__file__).with_name("rotate.lua")
JSON_PREFIX = "WRK_JSON "
PERCENTILES = (50, 90, 95, 99)
HOST = "127.0.0.1"


class WrkError(RuntimeError):
    """wrk failed to run or printed no result."""


@dataclass
class WrkResult:
    """A wrk run, in the shape benchmarks/run.py's ``Point.of`` reads from a LoadResult."""

    concurrency: int
    seconds: float  # measured duration
    responses: int
    latency_ms: dict[float, float]  # percentile -> ms
    errors: Counter[str] = field(default_factory=Counter)  # connect/read/write/status/timeout
    client_cpu_s: float = 0.0
    unmeasured_statuses: Counter[int] = field(default_factory=Counter)  # wrk has no warm-up tail

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def statuses(self) -> Counter[int]:
        # wrk does not keep statuses; 200 stands for "answered without error" so the rows read
        # like the Python client's, and the errors are in ``errors``.
        return Counter({200: self.responses - self.errors.get("status", 0)})

    @property
    def client_cpu_us(self) -> float:
        return 1e6 * self.client_cpu_s / max(1, self.responses)

    def percentile_ms(self, q: float) -> float:
        return self.latency_ms.get(float(q), float("nan"))


def ensure_wrk(install: bool = True) -> str | None:
    """The wrk binary; installs Debian's package when missing and we may (root, apt-get)."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return None
    print("wrk missing: apt-get install -y wrk", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run([apt, "install", "-y", "-q", "wrk"], env=env, capture_output=True)
    if done.returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True)
        subprocess.run([apt, "install", "-y", "-q", "wrk"], env=env, capture_output=True)
    return shutil.which("wrk")


def write_requests(reqs: Sequence[Request], directory: Path) -> Path:
    """All raw requests in one file, preceded by a line of their lengths; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "requests.bin"
    lengths = " ".join(str(len(r.raw)) for r in reqs)
    with path.open("wb") as f:
        f.write(lengths.encode() + b"\n")
        for r in reqs:
            f.write(r.raw)
    return path


def parse_wrk(stdout: str, concurrency: int) -> WrkResult:
    """The JSON line ``rotate.lua`` prints in ``done()``."""
    line = next((x for x in stdout.splitlines() if x.startswith(JSON_PREFIX)), None)
    if line is None:
        raise WrkError(f"no result line in wrk's output:\n{stdout[-2000:]}")
    data = json.loads(line[len(JSON_PREFIX) :])
    errors = Counter({k: int(v) for k, v in data["errors"].items() if int(v)})
    return WrkResult(
        concurrency=concurrency,
        seconds=data["duration_us"] / 1e6,
        responses=int(data["requests"]),
        latency_ms={float(q): us / 1000 for q, us in data["latency_us"].items()},
        errors=errors,
    )


def wrk_cmd(wrk: str, port: int, path: str, requests: Path, concurrency: int, seconds: float):
    # One wrk thread: an epoll loop keeps 64 connections busy on a fraction of a core, and a
    # second thread would only take CPU from the server under test.
    return [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA_SCRIPT),
        f"http://{HOST}:{port}{path}",
        "--",
        str(requests),
    ]


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(
    wrk: str,
    requests: Path,
    port: int,
    concurrency: int,
    *,
    seconds: float,
    warmup_s: float = 0.0,
    path: str = "/",
    on_window: Callable[[str], None] | None = None,
) -> WrkResult:
    """A warm-up run (unmeasured) then the measured one; ``on_window("start"/"end")`` brackets
    the measured run (benchmarks/run.py reads the server's CPU time there). wrk takes whole
    seconds. ``path`` only names the URL: the request line comes from the pre-built requests."""
    if warmup_s > 0:
        cmd = wrk_cmd(wrk, port, path, requests, concurrency, warmup_s)
        subprocess.run(cmd, capture_output=True, text=True, check=False)
    cmd = wrk_cmd(wrk, port, path, requests, concurrency, seconds)
    if on_window is not None:
        on_window("start")
    cpu_before = _children_cpu_s()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = _children_cpu_s() - cpu_before
    if on_window is not None:
        on_window("end")
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stderr[-2000:]}")
    result = parse_wrk(done.stdout, concurrency)
    result.client_cpu_s = cpu
    return result
