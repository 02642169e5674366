"""Multipart uploads with limits enforced while reading, not after buffering everything.

FastAPI parses a form before any dependency runs, and its own ``max_body_size``/``form_limits``
are fixed where a route is declared; ours come from Settings, known only in ``create_app``. So
routes that take images use :class:`UploadRoute`, which per request

* refuses a Content-Length over ``files * max_upload_bytes + slack`` before reading (413),
* stops reading a body without Content-Length once it passes that cap (413),
* parses the form with ``max_files``/``max_fields`` = ``max_parts`` (400 beyond it),
* refuses a text field sent empty (422): FastAPI reads "" in a form as absent, which would
  silently turn ``threshold=`` into the model's default; a client that sends a field means it,

and :func:`read_image` then holds every part to ``max_upload_bytes`` (413).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

import torch
from fastapi import File, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.types import Message, Receive

from app.api.deps import ImageJob
from app.config import Settings
from app.images import ACCEPTED, ImageError, TooLarge
from app.metrics import Metrics

SLACK_BYTES = 1024 * 1024  # multipart headers and the small text fields
_CHUNK = 1024 * 1024

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

ImageFile = Annotated[UploadFile, File(description=f"An image: {ACCEPTED}")]


def max_files(count: Callable[[Settings], int]) -> Callable[[Endpoint], Endpoint]:
    """Declare how many image parts an endpoint accepts, e.g. ``@max_files(lambda s: 2)``."""

    def mark(endpoint: Endpoint) -> Endpoint:
        endpoint.max_files = count  # type: ignore[attr-defined]
        return endpoint

    return mark


def body_cap(settings: Settings, files: int) -> int:
    return files * settings.max_upload_bytes + SLACK_BYTES


class UploadRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()
        count: Callable[[Settings], int] | None = getattr(self.endpoint, "max_files", None)
        if count is None:
            return handler

        async def capped_handler(request: Request) -> Response:
            settings: Settings = request.app.state.settings
            cap = body_cap(settings, count(settings))
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise HTTPException(413, detail=_too_big(cap))
            capped = Request(request.scope, _capped_receive(request.receive, cap))
            # Parsed here with our limits; FastAPI's own request.form() then gets this cached form.
            form = await capped.form(max_files=settings.max_parts, max_fields=settings.max_parts)
            _reject_empty_fields(form)
            return await handler(capped)

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


def _capped_receive(receive: Receive, cap: int) -> Receive:
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap:
                raise HTTPException(413, detail=_too_big(cap))
        return message

    return capped


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
) -> list[torch.Tensor]:
    """Read, decode and embed every upload, or raise the first upload's error."""
    blobs = [await read_image(upload, field, job.settings, job.metrics) for field, upload in named]
    results = await job.embedder.embed(job.model, blobs)
    embs: list[torch.Tensor] = []
    for (field, _), result in zip(named, results, strict=True):
        if isinstance(result, ImageError):
            raise image_error(field, result)
        embs.append(result)
    return embs
