"""Request ids and logs: one JSON access line per request, never image bytes or API keys.

Every response carries ``X-Request-ID``: the client's own if it is short and plain
(``[A-Za-z0-9._:-]{1,128}``), else a fresh one. Log records made while serving a request carry
the id too, so a client's report can be matched to the server's lines.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_HANDLER_MARK = "_imgsim_handler"
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
        return json.dumps(line, default=str)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def configure_logging(json_logs: bool = True, level: str = "INFO") -> None:
    """Install one stderr handler on the root logger; safe to call again (replaces its format)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, _HANDLER_MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        setattr(handler, _HANDLER_MARK, True)
        handler.addFilter(_RequestIdFilter())
        root.addHandler(handler)
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            # The route template (/similarity), not the raw path; a request refused before
            # routing (401, 404) logs its path, cut short.
            route = getattr(scope.get("route"), "path", None)
            path = route or scope["path"][:200]
            access_logger.log(
                logging.ERROR if status >= 500 else logging.INFO,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": route,
                    "path": None if route else path,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                    "model": state.get("model"),
                },
            )
            request_id_var.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None
