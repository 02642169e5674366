"""Request ids and logs: one JSON access line per request, never image bytes or API keys.

Every response carries ``X-Request-ID``: the client's own if it is short and plain
(``[A-Za-z0-9._:-]{1,128}``), else a fresh one. Log records made while serving a request carry
the id too, so a client's report can be matched to the server's lines.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import itertools
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured duplicate of msg
}

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
access_logger = logging.getLogger("app.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, any ``extra=`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted before the hand-off to the logging thread
            line["exc"] = record.exc_text
        return json.dumps(line, default=str)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    """Plain text, one line per record: control characters in the message (a request path
    with ``%0a``, say) are escaped, so a client cannot forge a log line (issue 12)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (stdlib's name)
        record = copy.copy(record)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``"a\nb"`` -> ``"a\\nb"``: every control character as its escape, visibly."""
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


class _HandOff(logging.handlers.QueueHandler):
    """Queues records for a :class:`_LogWriter`. The caller keeps only what must happen on its
    own thread: the request id (a context variable), the message and the traceback. When the
    queue is full (stderr is not being read) the record is dropped and counted, not waited for:
    a log must not grow the process or stall a request."""

    def __init__(self, writer: _LogWriter) -> None:
        super().__init__(writer.records)
        self.writer = writer
        self.addFilter(_RequestIdFilter())

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.writer.records.put_nowait(record)
        except queue.Full:
            self.writer.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)  # other handlers (pytest's caplog) see the original
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = _PLAIN.formatException(record.exc_info)
            record.exc_info = None
        return record


_PLAIN = logging.Formatter()


class _LogWriter:
    """Formats queued records and writes them to ``stream`` in one write every ``interval_s``.

    Not on the event loop, and not woken per record as a stdlib QueueListener is: each write or
    wake-up hands the GIL to a busy inference worker and waits to get it back, which cost mnist
    a fifth of its throughput (docs/serving.md, Logging). A line is at most ``interval_s`` late;
    what is queued is written at exit, for at most ``flush_timeout_s``.

    At most ``queue_max`` records wait; more are dropped and counted, and a line saying how
    many is written once the stream takes writes again: a stderr on a pipe nobody reads must
    neither grow memory without bound nor hang the exit (issue 12).
    """

    def __init__(
        self,
        stream: TextIO,
        interval_s: float = 0.05,
        queue_max: int = 10_000,
        flush_timeout_s: float = 2.0,
    ) -> None:
        self.records: queue.Queue[logging.LogRecord] = queue.Queue(queue_max)
        self.stream = stream
        self.formatter: logging.Formatter = JsonFormatter()
        self.interval_s = interval_s
        self.flush_timeout_s = flush_timeout_s
        self.dropped = 0  # records refused because the queue was full (see _HandOff)
        self._reported = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.flush()

    def flush(self) -> None:
        lines: list[str] = []
        dropped = self.dropped - self._reported
        if dropped:
            self._reported += dropped
            record = logging.LogRecord(
                "app.observability", logging.WARNING, __file__, 0,
                "dropped %d log records: the log stream was not keeping up", (dropped,), None,
            )  # fmt: skip
            lines.append(self.formatter.format(record))
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                break
            try:
                lines.append(self.formatter.format(record))
            except Exception:  # a bad record must not stop the log
                lines.append(json.dumps({"level": "ERROR", "msg": f"unloggable: {record.msg!r}"}))
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nothing to tell anyone
                pass

    def stop(self) -> None:
        """Write what is queued, but give up after flush_timeout_s: a stream nobody reads
        (a full pipe) must not keep the process from exiting."""
        self._stopped.set()
        self._thread.join(self.flush_timeout_s)
        if self._thread.is_alive():  # stuck writing: the stream is not being read
            return
        last = threading.Thread(target=self.flush, name="log-flush", daemon=True)
        last.start()
        last.join(self.flush_timeout_s)


def configure_logging(
    json_logs: bool = True,
    level: str = "INFO",
    queue_max: int = 10_000,
    flush_timeout_s: float = 2.0,
) -> None:
    """Log to stderr through one background writer (see _LogWriter); safe to call again: it
    replaces the format, level and exit flush timeout (the queue keeps its first bound)."""
    root = logging.getLogger()
    handoff = next((h for h in root.handlers if isinstance(h, _HandOff)), None)
    if handoff is None:
        writer = _LogWriter(sys.stderr, queue_max=queue_max, flush_timeout_s=flush_timeout_s)
        handoff = _HandOff(writer)
        root.addHandler(handoff)
    handoff.writer.formatter = JsonFormatter() if json_logs else TextFormatter()
    handoff.writer.flush_timeout_s = flush_timeout_s
    root.setLevel(level.upper())


def clean_request_id(value: str | None) -> str:
    """The client's id if it is safe to echo and log, else a new one."""
    if value and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


# Request ids: a random per-process prefix and a counter. Unique across workers and restarts,
# and far cheaper than uuid4() (a getrandom() call on every request showed in profiles).
_ID_PREFIX = uuid.uuid4().hex[:12]
_ID_COUNTER = itertools.count(1)


class RequestContextMiddleware:
    """Outermost middleware: request id in, X-Request-ID out, one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = clean_request_id(incoming)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500  # if the app raises before it answers
        started = time.perf_counter()

        responded = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        cancelled = False
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when its graceful shutdown times out: not a bug
            # (no 500, no traceback). The client gets a 503 if nothing was sent yet.
            cancelled = True
            if not responded:
                status = 503
                await _send_shutting_down(send, request_id)
        finally:
            # The route template (/similarity), not the raw path; a request refused before
            # routing (401, 404) logs its path, cut short.
            route = getattr(scope.get("route"), "path", None)
            path = route or scope["path"][:200]
            # 503 is backpressure (queue full, deadline, budget): the service doing its job, at
            # WARNING; a load test logged 2,420 of them at ERROR (issue 12).
            level = logging.INFO if status < 500 else logging.WARNING
            if status >= 500 and status != 503:
                level = logging.ERROR
            access_logger.log(
                level,
                "%s %s %d%s",
                scope["method"],
                path,
                status,
                " (cancelled at shutdown)" if cancelled else "",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "path": None if route else path,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "model": state.get("model"),
                    "cancelled": cancelled or None,
                },
            )
            request_id_var.reset(token)


async def _send_shutting_down(send: Send, request_id: str) -> None:
    body = json.dumps({"detail": "the server is shutting down; retry"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"5"),
        (b"connection", b"close"),
        (b"x-request-id", request_id.encode()),
    ]
    try:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:  # the connection is gone already
        pass


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
