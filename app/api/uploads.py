"""Multipart uploads with limits enforced while reading, not after buffering everything.

FastAPI parses a form before any dependency runs, and its own ``max_body_size``/``form_limits``
are fixed where a route is declared; ours come from Settings, known only in ``create_app``. So
routes that take images use :class:`UploadRoute`, which per request

* refuses a Content-Length over ``files * max_upload_bytes + slack`` before reading (413),
* stops reading a body without Content-Length once it passes that cap (413),
* parses the form with ``max_files``/``max_fields`` = ``max_parts`` (400 beyond it),
* refuses a text field sent empty (422): FastAPI reads "" in a form as absent, which would
  silently turn ``threshold=`` into the model's default; a client that sends a field means it,
* refuses a field sent twice where one is expected (422): FastAPI would silently take the last,
* answers 408 (and closes) a body that pauses longer than ``body_idle_timeout_s`` or is not
  complete after ``body_timeout_s``: a client trickling a byte every few seconds would otherwise
  hold its connection and its buffers forever,
* charges every body byte to the :class:`UploadBudget` shared by all requests and answers 503
  with Retry-After once it is spent (unless the request is the only one in flight),

and :func:`read_image` then holds every part to ``max_upload_bytes`` (413).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import torch
from fastapi import File, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.types import Message, Receive

from app import ood
from app.api.deps import RETRY_AFTER_S, ImageJob
from app.config import Settings
from app.images import ACCEPTED, ImageError, TooLarge
from app.metrics import Metrics

SLACK_BYTES = 1024 * 1024  # multipart headers and the small text fields
_CHUNK = 1024 * 1024

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

ImageFile = Annotated[UploadFile, File(description=f"An image: {ACCEPTED}")]


def max_files(
    count: Callable[[Settings], int],
    body_bytes: Callable[[Settings], int] | None = None,
    *,
    over_max_parts: bool = False,
) -> Callable[[Endpoint], Endpoint]:
    """Declare how many image parts an endpoint accepts, e.g. ``@max_files(lambda s: 2)``, and
    optionally its own body cap (default: ``count * max_upload_bytes`` plus slack).

    The form parser allows ``max_parts`` files; with ``over_max_parts`` the endpoint's own count
    replaces that limit (/similarity/sets: two sets of up to max_set_images each).
    """

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.max_files = count  # type: ignore[attr-defined]
        endpoint.body_bytes = body_bytes  # type: ignore[attr-defined]
        endpoint.over_max_parts = over_max_parts  # type: ignore[attr-defined]
        return endpoint

    return mark


def body_cap(settings: Settings, files: int) -> int:
    return files * settings.max_upload_bytes + SLACK_BYTES


class UploadBudget:
    """Request body bytes in flight across all requests (Settings.upload_budget_bytes).

    Used on the event loop only. Without it, four concurrent matrix requests of 64 x 10 MB held
    4.3 GB at once (issue 12); each request is still capped on its own by ``body_cap``.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.in_flight = 0  # bytes read and not yet released
        self.requests = 0  # requests holding any

    def charge(self, held: int, more: int) -> None:
        """A request holding ``held`` bytes reads ``more``; 503 if that spends the budget."""
        alone = held == self.in_flight
        if self.in_flight + more > self.limit_bytes and not alone:
            raise HTTPException(
                503,
                detail=f"the server is reading {self.in_flight} bytes of uploads "
                f"(upload_budget_bytes {self.limit_bytes}); retry later",
                headers={"Retry-After": RETRY_AFTER_S, "Connection": "close"},
            )
        self.in_flight += more

    def release(self, held: int) -> None:
        self.in_flight -= held


class UploadRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        count: Callable[[Settings], int] | None = getattr(self.endpoint, "max_files", None)
        if count is None:
            return handler
        body_bytes: Callable[[Settings], int] | None = getattr(self.endpoint, "body_bytes", None)
        over_max_parts: bool = getattr(self.endpoint, "over_max_parts", False)

        async def capped_handler(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            cap = body_bytes(settings) if body_bytes else body_cap(settings, count(settings))
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise HTTPException(413, detail=_too_big(cap))
            reader = _BodyReader(request.receive, cap, settings, request.app.state.upload_budget)
            capped = Request(request.scope, reader.receive)
            try:
                # Parsed here with our limits; FastAPI's request.form() then gets this cached form.
                form = await capped.form(
                    max_files=count(settings) if over_max_parts else settings.max_parts,
                    max_fields=settings.max_parts,
                )
                _reject_empty_fields(form)
                _reject_repeated_fields(form, repeatable=count(settings) > 2)
                return await handler(capped)
            finally:
                reader.release()

        return capped_handler


TEXT_FIELDS = ("model", "threshold", "far", "profile", "subject", "top_k", "keep_images")


def _reject_empty_fields(form: FormData) -> None:
    empty = [
        k for k in TEXT_FIELDS for v in form.getlist(k) if isinstance(v, str) and not v.strip()
    ]
    if empty:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_short",
                    "loc": ("body", name),
                    "msg": "must not be empty; leave the field out to use its default",
                }
                for name in empty
            ]
        )


# The fields an endpoint takes as a list (one-to-many, matrix, sets, gallery enrollment); any
# other may appear once.
LIST_FIELDS = frozenset({"candidates", "images", "set_a", "set_b"})


def _reject_repeated_fields(form: FormData, repeatable: bool) -> None:
    counts = Counter(key for key, _ in form.multi_items())
    repeated = sorted(
        k for k, n in counts.items() if n > 1 and not (repeatable and k in LIST_FIELDS)
    )
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated_field",
                    "loc": ("body", name),
                    "msg": "sent more than once; send it once",
                }
                for name in repeated
            ]
        )


class _BodyReader:
    """``receive`` for one request: enforces its size cap, the body timeouts and the shared
    upload budget while reading."""

    def __init__(
        self, receive: Receive, cap: int, settings: Settings, budget: UploadBudget
    ) -> None:
        self._receive = receive
        self.cap = cap
        self.settings = settings
        self.budget = budget
        self.held = 0
        self.deadline = time.monotonic() + settings.body_timeout_s

    async def receive(self) -> Message:
        settings = self.settings
        timeout_s = min(settings.body_idle_timeout_s, self.deadline - time.monotonic())
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                message = await self._receive()
        except TimeoutError:
            raise HTTPException(
                408,
                detail=f"the request body came too slowly (body_idle_timeout_s "
                f"{settings.body_idle_timeout_s}, body_timeout_s {settings.body_timeout_s})",
                headers={"Connection": "close"},
            ) from None
        if message["type"] == "http.request":
            size = len(message.get("body", b""))
            if self.held + size > self.cap:
                raise HTTPException(413, detail=_too_big(self.cap))
            self.budget.charge(self.held, size)
            self.held += size
        return message

    def release(self) -> None:
        self.budget.release(self.held)
        self.held = 0


def _too_big(cap: int) -> str:
    return f"request body is over {cap} bytes for this endpoint"


async def read_image(upload: UploadFile, field: str, settings: Settings, metrics: Metrics) -> bytes:
    """The part's bytes, refusing more than max_upload_bytes (413)."""
    started = time.perf_counter()
    limit = settings.max_upload_bytes
    too_big = HTTPException(413, detail=f"{field}: upload is over the limit of {limit} bytes")
    if upload.size is not None and upload.size > limit:
        raise too_big
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(_CHUNK):
        total += len(chunk)
        if total > limit:
            raise too_big
        chunks.append(chunk)
    metrics.read_seconds.observe(time.perf_counter() - started)
    return b"".join(chunks)


def image_error(field: str, error: ImageError) -> HTTPException:
    """400 for an undecodable upload, 413 for too many pixels; the detail names the field."""
    if isinstance(error, TooLarge):
        return HTTPException(413, detail=f"{field}: {error}")
    return HTTPException(400, detail=f"{field}: {error}; send one of {ACCEPTED}")


async def embed_uploads(
    named: Sequence[tuple[str, UploadFile]], job: ImageJob
) -> tuple[list[torch.Tensor], list[str]]:
    """Read, decode and embed every upload, or raise the first upload's error; with the
    out-of-distribution warnings for the uploads (app/ood.py)."""
    blobs = [await read_image(upload, field, job.settings, job.metrics) for field, upload in named]
    results = await job.embedder.embed(job.model, blobs, job.cache_partition)
    embs: list[torch.Tensor] = []
    for (field, _), result in zip(named, results, strict=True):
        if isinstance(result, ImageError):
            raise image_error(field, result)
        embs.append(result)
    fields = [field for field, _ in named]
    return embs, ood.warnings_for(job.model, list(zip(fields, blobs, strict=True)))
