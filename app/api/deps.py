"""Annotated dependencies: settings, registry, embedder, the requested model, shared form fields."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from app.config import Settings
from app.embedding import Embedder
from app.metrics import Metrics
from app.registry import ModelUnavailable, Registry, ServedModel, UnknownModel

RETRY_AFTER_S = "1"
TEXT_FIELDS = ("model", "threshold")  # the optional text fields of the image endpoints


def not_ready_reason(request: Request) -> str | None:
    """None when serving; else why not (for /readyz and a 503 detail)."""
    phase = getattr(request.app.state, "phase", "starting")
    if phase == "starting":
        return "starting: models are loading"
    if phase == "stopping":
        return "shutting down"
    return None


# Dependencies are async on purpose: FastAPI runs a plain `def` dependency in a worker thread,
# a hand-off per dependency per request for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_registry(request: Request) -> Registry:
    reason = not_ready_reason(request)
    if reason is not None:
        raise HTTPException(503, detail=f"not ready: {reason}", headers={"Retry-After": "5"})
    return request.app.state.registry


async def get_embedder(request: Request) -> Embedder:
    return request.app.state.embedder


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
EmbedderDep = Annotated[Embedder, Depends(get_embedder)]

ModelName = Annotated[
    str | None,
    Form(
        description="Model to use (see GET /models); absent: the default model",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        examples=["mnist"],
    ),
]
Threshold = Annotated[
    float | None,
    Form(
        description="Distance at or below which a pair is the same; absent: the model's "
        "calibrated threshold (GET /models)",
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        examples=[0.8],
    ),
]


async def resolve_model(
    request: Request, registry: RegistryDep, model: ModelName = None
) -> ServedModel:
    try:
        served = registry.get(model)
    except UnknownModel as e:
        raise HTTPException(404, detail=str(e)) from e
    except ModelUnavailable as e:
        raise HTTPException(503, detail=str(e), headers={"Retry-After": "30"}) from e
    request.state.model = served.name  # for the access log
    return served


ModelDep = Annotated[ServedModel, Depends(resolve_model)]


async def reject_empty_fields(request: Request) -> None:
    """422 for a text field sent empty. FastAPI reads "" in a form as absent, which would
    silently turn `threshold=` into the model's default; a client that sends a field means it."""
    form = await request.form()  # already parsed by the route: cached
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
