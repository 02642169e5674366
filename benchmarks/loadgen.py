"""A light HTTP/1.1 load generator: pre-built requests over persistent connections.

    reqs = [build_request("/similarity", files=[...], fields=[("model", "mnist")])]
    result = run_load("127.0.0.1", port, reqs, concurrency=32, seconds=8, warmup_s=2)

The client shares the 2 cores with the server under test, so it does as little per request as it
can: every request (request line, headers, multipart body) is built once as bytes and written as
is, and a response is parsed only far enough to read its status and length. Each of the
``concurrency`` workers keeps one connection open for the whole run (a pool sized to the
concurrency). Its cost is visible: ``LoadResult.client_cpu_us`` is this process's CPU time per
response; against the HTTP floor server it is the whole client overhead.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

try:  # uvicorn[standard] brings uvloop; the client is lighter on it, and fine without
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

HOST_HEADER = "127.0.0.1"
_HEAD_LIMIT = 64 * 1024  # bytes of response headers we accept


@dataclass(frozen=True)
class Request:
    raw: bytes  # the whole HTTP/1.1 request, sent as is
    label: str = ""  # what it is, for per-kind counts (soak)
    expect: frozenset[int] = frozenset({200})  # statuses that count as the right answer


class ProtocolError(RuntimeError):
    """The server's bytes are not an HTTP/1.1 response we understand."""


def raw_request(
    method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST_HEADER}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def multipart_body(
    fields: Sequence[tuple[str, str]], files: Sequence[tuple[str, str, str, bytes]]
) -> tuple[str, bytes]:
    """(content type, body) for text ``fields`` (name, value) and ``files``
    (field name, file name, content type, bytes)."""
    boundary = "bench" + secrets.token_hex(12)
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, content_type, data in files:
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def build_request(
    path: str,
    *,
    files: Sequence[tuple[str, str, str, bytes]] = (),
    fields: Sequence[tuple[str, str]] = (),
    label: str = "",
    expect: frozenset[int] = frozenset({200}),
) -> Request:
    content_type, body = multipart_body(fields, files)
    raw = raw_request("POST", path, [("Content-Type", content_type)], body)
    return Request(raw, label, expect)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def roundtrip(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, server closes the connection)."""
        self.writer.write(raw)
        try:
            await self.writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            # The server may answer (413) and close before reading a large body: its answer
            # can still be waiting in our receive buffer.
            status, body, _ = await self._read_response()
            return status, body, True
        return await self._read_response()

    async def _read_response(self) -> tuple[int, bytes, bool]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.") or len(head) < 12:
            raise ProtocolError(f"not an HTTP/1.x response: {head[:40]!r}")
        status = int(head[9:12])
        length = -1
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            body = await self._read_chunked()
        elif length >= 0:
            body = await self.reader.readexactly(length)
        else:  # no length: the body runs to the end of the connection
            body = await self.reader.read()
            close = True
        return status, body, close

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers from our servers
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


@dataclass
class LoadResult:
    concurrency: int
    seconds: float  # length of the measured window
    latencies_s: list[float] = field(default_factory=list)  # responses completed in the window
    statuses: Counter[int] = field(default_factory=Counter)  # in the window
    errors: Counter[str] = field(default_factory=Counter)  # connection-level, whole run
    unmeasured_statuses: Counter[int] = field(default_factory=Counter)  # warm-up and tail
    by_label: dict[str, Counter[int]] = field(default_factory=dict)  # soak: label -> statuses
    label_latencies_s: dict[str, list[float]] = field(default_factory=dict)
    unexpected: Counter[str] = field(default_factory=Counter)  # label -> count of wrong statuses
    client_cpu_s: float = 0.0  # this process's CPU time during the window

    @property
    def responses(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        """Responses per second in the measured window (one pair per /similarity request)."""
        return self.responses / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        """Non-2xx answers (outside the window too) plus connection errors."""
        bad = sum(n for s, n in (self.statuses + self.unmeasured_statuses).items() if s >= 300)
        return bad + sum(self.errors.values())

    @property
    def client_cpu_us(self) -> float:
        return 1e6 * self.client_cpu_s / max(1, self.responses)

    def percentile_ms(self, q: float) -> float:
        return 1000 * percentile(self.latencies_s, q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_load(
    host: str,
    port: int,
    requests: Sequence[Request],
    concurrency: int,
    *,
    seconds: float | None = None,
    count: int | None = None,
    warmup_s: float = 0.0,
    timeout_s: float = 30.0,
    on_window: Callable[[str], None] | None = None,
) -> LoadResult:
    """Send ``requests`` (cycled in order) from ``concurrency`` workers.

    Either for ``seconds`` after ``warmup_s`` (throughput = responses completed in the window /
    window) or for exactly ``count`` requests after the warm-up. ``on_window("start"|"end")`` is
    called as the measured window opens and closes (to sample the server's memory).
    """
    if (seconds is None) == (count is None):
        raise ValueError("give either seconds or count")
    coro = _run(host, port, requests, concurrency, seconds, count, warmup_s, timeout_s, on_window)
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


async def _run(
    host: str,
    port: int,
    requests: Sequence[Request],
    concurrency: int,
    seconds: float | None,
    count: int | None,
    warmup_s: float,
    timeout_s: float,
    on_window: Callable[[str], None] | None,
) -> LoadResult:
    result = LoadResult(concurrency=concurrency, seconds=0.0)
    order = itertools.count()
    window_start = float("inf")
    window_end = float("inf")
    issued = 0  # requests started in count mode, warm-up excluded

    def keep_going(now: float) -> bool:
        if now < window_start:  # warming up
            return True
        if count is not None:
            return issued < count
        return now < window_end

    async def worker() -> None:
        nonlocal issued
        conn: Connection | None = None
        try:
            while keep_going(time.perf_counter()):
                req = requests[next(order) % len(requests)]
                started = time.perf_counter()
                if started >= window_start:
                    issued += 1
                try:
                    if conn is None:
                        conn = await Connection.open(host, port)
                    async with asyncio.timeout(timeout_s):
                        status, _, close = await conn.roundtrip(req.raw)
                except (OSError, EOFError, TimeoutError, ProtocolError, ValueError) as e:
                    # EOFError: asyncio.IncompleteReadError, the server closed mid-answer
                    result.errors[f"{req.label or 'request'}: {type(e).__name__}"] += 1
                    if conn is not None:
                        conn.close()
                        conn = None
                    await asyncio.sleep(0.01)  # a dead server must not turn this into a spin
                    continue
                done = time.perf_counter()
                if close:
                    conn.close()
                    conn = None
                if done < window_start or (count is None and done > window_end):
                    result.unmeasured_statuses[status] += 1
                else:
                    result.latencies_s.append(done - started)
                    result.statuses[status] += 1
                    if req.label:
                        result.by_label.setdefault(req.label, Counter())[status] += 1
                        result.label_latencies_s.setdefault(req.label, []).append(done - started)
                        if status not in req.expect:
                            result.unexpected[req.label] += 1
        finally:
            if conn is not None:
                conn.close()

    if warmup_s <= 0:
        if on_window is not None:
            on_window("start")
        window_start = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    if warmup_s > 0:
        await asyncio.sleep(warmup_s)
        if on_window is not None:
            on_window("start")
        window_start = time.perf_counter()
    cpu_start = time.process_time()
    if seconds is not None:
        window_end = window_start + seconds
        await asyncio.sleep(seconds)
        result.seconds = seconds
        result.client_cpu_s = time.process_time() - cpu_start
        if on_window is not None:
            on_window("end")
        await asyncio.gather(*tasks)  # in-flight requests finish, outside the window
    else:
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - window_start
        result.client_cpu_s = time.process_time() - cpu_start
        if on_window is not None:
            on_window("end")
    return result
