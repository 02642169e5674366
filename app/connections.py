"""Connection limits for uvicorn: header size, header and keep-alive timeouts, open connections.

    uvicorn.run(app, **uvicorn_options(settings))       # what `python -m app` does

uvicorn's httptools server (llhttp, in C) with two guards uvicorn lacks, in
:class:`GuardedHttpToolsProtocol`: a request head (request line and headers) over
``max_header_bytes`` is answered 431 and the connection closed as soon as it passes the cap
(unguarded, httptools read a 128 MB header line for 20 s, issue 12), and a head not complete
``header_timeout_s`` after its first byte (or after the connection opened) closes the
connection (uvicorn has no timeout for a client that sends its headers slowly or never). It
replaced uvicorn's pure-Python h11 server, which cost about 0.3 ms of CPU more per request
(docs/serving.md). Slow bodies are cut off by app/api/uploads.py, which knows which routes read
one; what these limits answer is listed in docs/security.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on the request head's size, a deadline for the
    head to arrive, and a count of this process's requests in progress
    (:func:`requests_in_progress`)."""

    # Set by uvicorn_options; a worker process spawned by `--workers` reads its own Settings.
    header_timeout_s: ClassVar[float | None] = None
    max_header_bytes: ClassVar[int | None] = None
    # Requests whose head has arrived and whose response has not been sent, on every connection
    # of this process. Only the event loop touches it.
    in_progress: ClassVar[int] = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cls = GuardedHttpToolsProtocol
        if cls.header_timeout_s is None or cls.max_header_bytes is None:
            settings = Settings()
            cls.header_timeout_s, cls.max_header_bytes = (
                settings.header_timeout_s,
                settings.max_header_bytes,
            )
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # no request yet: the first bytes are a head
        self._head_bytes = 0
        self._counted: deque[object] = deque()  # this connection's cycles in in_progress
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after parsing: a chunk that completes its head is never refused, and one that
        # does not is all head bytes, so the URL and headers held stay within cap + one chunk.
        if self._in_head and self._head_bytes > (self.max_header_bytes or 0):
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request (not a websocket upgrade)
            self._counted.append(self.cycle)
            GuardedHttpToolsProtocol.in_progress += 1

    def on_response_complete(self) -> None:
        if self._counted:  # HTTP/1.1 answers in order: the oldest request is the one answered
            self._counted.popleft()
            GuardedHttpToolsProtocol.in_progress -= 1
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        GuardedHttpToolsProtocol.in_progress -= len(self._counted)
        self._counted.clear()
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _refuse_head(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        if not self.transport.is_closing():
            detail = f"request line and headers are over {self.max_header_bytes} bytes".encode()
            self.transport.write(_TOO_LARGE % (len(detail), detail))
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            timeout_s = GuardedHttpToolsProtocol.header_timeout_s or 10.0
            self._head_timer = self.loop.call_later(timeout_s, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self.transport.close()


def requests_in_progress() -> int:
    """HTTP requests this process has received and not yet answered (0 outside uvicorn, e.g.
    under a test client). Counted as each request's head is parsed, which for every connection
    with data waiting happens before any request handler runs: a handler that sees 1 is alone."""
    return GuardedHttpToolsProtocol.in_progress


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.run() keywords that enforce Settings' connection limits."""
    GuardedHttpToolsProtocol.header_timeout_s = settings.header_timeout_s
    GuardedHttpToolsProtocol.max_header_bytes = settings.max_header_bytes
    return {
        "http": GuardedHttpToolsProtocol,  # a module-level class: picklable for worker processes
        "timeout_keep_alive": settings.keep_alive_s,
        "limit_concurrency": settings.max_connections,
        # With --workers, uvicorn kills a worker that does not answer its health check within
        # this; one that is importing torch and loading models on a busy machine can take far
        # longer than uvicorn's 5 s, and was then killed and restarted over and over.
        "timeout_worker_healthcheck": 60,
    }
