"""Servers under test as real processes on free ports, and their memory.

    with Server.start("service", service_cmd(workers=1), env, log_dir) as server:
        sampler = RssSampler(server.pid); ...

RSS is the resident memory of the server process and all its children (uvicorn's worker
processes with ``--workers N``), from psutil when it is installed, else from /proc.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

try:
    import psutil
except ImportError:  # optional: /proc does the same on Linux
    psutil = None

HOST = "127.0.0.1"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MB = 1024 * 1024
# Variables that would silently change a server's thread count; each server sets its own.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def service_cmd(workers: int = 1) -> Callable[[int], list[str]]:
    """The service as shipped: ``python -m app`` (uvicorn, our logging, no uvicorn access log)."""
    return lambda port: [
        sys.executable,
        "-m",
        "app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def uvicorn_cmd(factory: str) -> Callable[[int], list[str]]:
    """A baseline server with the same uvicorn settings as the service (uvloop, httptools, one
    process, no access log)."""
    return lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        factory,
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env.update(overrides)
    return env


class Server:
    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(
        cls,
        name: str,
        cmd: Callable[[int], list[str]],
        env: dict[str, str],
        log_dir: Path,
        ready_path: str = "/readyz",
        timeout_s: float = 180.0,
        processes: int = 1,
    ) -> Server:
        """Start and wait until ``ready_path`` answers 200 (models loaded and warmed up), from
        ``processes`` different worker processes (``python -m app --workers N``: the first
        ready worker answers while the others still load)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd(port), env=env, stdout=out, stderr=subprocess.STDOUT)
        server = cls(name, proc, port, log)
        deadline = time.monotonic() + timeout_s
        ready: set[str] = set()
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
            worker = server.ready_worker(ready_path)
            if worker is not None:
                ready.add(worker)
                if len(ready) >= processes:
                    return server
            time.sleep(0.2)
        server.stop()
        raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{server.log_tail()}")

    def get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def ready_worker(self, path: str) -> str | None:
        """Which process answered ``path`` with 200, over a new connection: the service's
        request ids are "<per-process prefix>-<counter>" (app/observability.py); "" for a
        server without them; None when not ready."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=2) as r:
                if r.status != 200:
                    return None
                return (r.headers.get("x-request-id") or "").rsplit("-", 1)[0]
        except OSError:  # HTTPError (not ready) included
            return None

    def get_text(self, path: str) -> str:
        return self.get_from_worker(path)[0]

    def get_from_worker(self, path: str) -> tuple[str, str]:
        """The body of ``path`` and which process answered it (see ready_worker)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=5) as r:
            return r.read().decode(), (r.headers.get("x-request-id") or "").rsplit("-", 1)[0]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), SIGKILL if it lingers; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's worker processes)."""
    if psutil is not None:
        try:
            return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            return [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def rss_bytes(pids: list[int]) -> int:
    """Summed resident memory of ``pids``; a process that is gone counts 0."""
    if psutil is not None:
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total
    return sum(_proc_status_kb(pid, "VmRSS") for pid in pids) * 1024


def pss_bytes(pids: list[int]) -> int:
    """Summed proportional set size: shared pages (torch's libraries) counted once across
    processes, unlike RSS. 0 where /proc/<pid>/smaps_rollup is unavailable."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def tree_rss_bytes(pid: int) -> int:
    return rss_bytes(process_tree(pid))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids`` (from /proc; nan where unavailable)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            if psutil is None:
                return float("nan")
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
            continue
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return total


def peak_rss_bytes(pid: int) -> int:
    """The kernel's high-water mark (VmHWM) of ``pid`` alone, since it started."""
    return _proc_status_kb(pid, "VmHWM") * 1024


def _proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples a process tree's RSS in a background thread; ``peak`` is the largest sample."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.pids = process_tree(pid)  # looked up once: the tree is fixed while serving
        self.interval_s = interval_s
        self.peak = 0
        self.last = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        self.last = rss_bytes(self.pids)
        self.peak = max(self.peak, self.last)
        return self.last

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()
