"""Connection limits for uvicorn: header size, header and keep-alive timeouts, open connections.

    uvicorn.run(app, **uvicorn_options(settings))       # what `python -m app` does

uvicorn's h11 server with ``h11_max_incomplete_event_size``: a request line plus headers over
``max_header_bytes`` is answered 400 and the connection closed, and parsing stays linear (the
httptools server read a 128 MB header line for 20 s, issue 12). uvicorn has no timeout for a
client that opens a connection and sends its headers slowly or never: :class:`GuardedH11Protocol`
adds one (``header_timeout_s``). Slow bodies are cut off by app/api/uploads.py, which knows which
routes read one; what these limits answer is listed in docs/security.md.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import Settings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head (request line and
    headers) is not complete ``header_timeout_s`` after its first byte, or after the connection
    opened; it also counts this process's requests in progress (:func:`requests_in_progress`)."""

    # Set by uvicorn_options; a worker process spawned by `--workers` reads its own Settings.
    header_timeout_s: float | None = None
    # Requests whose head has arrived and whose response has not been sent, on every connection
    # of this process. Only the event loop touches it.
    in_progress: ClassVar[int] = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if GuardedH11Protocol.header_timeout_s is None:
            GuardedH11Protocol.header_timeout_s = Settings().header_timeout_s
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted: object | None = None  # the request cycle counted in in_progress
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if cycle is not None and cycle is not self._counted and not cycle.response_complete:
            self._counted = cycle
            GuardedH11Protocol.in_progress += 1
        if self.conn.their_state is h11.IDLE:  # a head is (still) incomplete
            self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        self._uncount()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _uncount(self) -> None:
        if self._counted is not None:
            self._counted = None
            GuardedH11Protocol.in_progress -= 1

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            timeout_s = GuardedH11Protocol.header_timeout_s or 10.0
            self._head_timer = self.loop.call_later(timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        waiting_for_head = self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )
        if waiting_for_head and not self.transport.is_closing():
            self.transport.close()


def requests_in_progress() -> int:
    """HTTP requests this process has received and not yet answered (0 outside uvicorn, e.g.
    under a test client). Counted as each request's head is parsed, which for every connection
    with data waiting happens before any request handler runs: a handler that sees 1 is alone."""
    return GuardedH11Protocol.in_progress


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run() keywords that enforce Settings' connection limits."""
    GuardedH11Protocol.header_timeout_s = settings.header_timeout_s
    return {
        "http": GuardedH11Protocol,  # a module-level class: picklable for worker processes
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        # With --workers, uvicorn kills a worker that does not answer its health check within
        # this; one that is importing torch and loading models on a busy machine can take far
        # longer than uvicorn's 5 s, and was then killed and restarted over and over.
        "timeout_worker_healthcheck": 60,
    }
