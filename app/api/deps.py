"""Annotated dependencies: settings, metrics, registry, an image route's job, shared form fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request

from app.config import Settings
from app.embedding import Embedder
from app.metrics import Metrics
from app.registry import ModelUnavailable, Registry, ServedModel, UnknownModel

RETRY_AFTER_S = "1"


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
    return _ready_registry(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RegistryDep = Annotated[Registry, Depends(get_registry)]

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
Far = Annotated[
    float | None,
    Form(
        description="Target false-accept rate in (0, 1) instead of a threshold: the threshold "
        "is read off the model's validation FAR/FRR table (interpolated, never extrapolated)",
        gt=0,
        lt=1,
        allow_inf_nan=False,
        examples=[0.001],
    ),
]
ProfileName = Annotated[
    str | None,
    Form(
        description="A threshold profile saved with POST /calibrate for this model version",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        examples=["night-shift"],
    ),
]


def _ready_registry(request: Request) -> Registry:
    reason = not_ready_reason(request)
    if reason is not None:
        raise HTTPException(503, detail=f"not ready: {reason}", headers={"Retry-After": "5"})
    return request.app.state.registry


@dataclass(frozen=True, slots=True)
class ImageJob:
    """What an image route needs: the requested model and the service parts that embed for it."""

    model: ServedModel
    embedder: Embedder
    settings: Settings
    metrics: Metrics
    cache_partition: str = ""  # the API key's own part of the cache (app/security.py)


def served_model(registry: Registry, name: str | None) -> ServedModel:
    """The named (or default) model: 404 when unknown, 503 when it was refused or is not up."""
    try:
        return registry.get(name)
    except UnknownModel as e:
        raise HTTPException(404, detail=str(e)) from e
    except ModelUnavailable as e:
        raise HTTPException(503, detail=str(e), headers={"Retry-After": "30"}) from e


async def image_job(request: Request, model: ModelName = None) -> ImageJob:
    # One dependency for the image routes, not one per part: FastAPI solves each dependency
    # anew on every request, re-reading the form for each.
    served = served_model(_ready_registry(request), model)
    request.state.model = served.name  # for the access log
    state = request.app.state
    partition = getattr(request.state, "cache_partition", "")
    return ImageJob(served, state.embedder, state.settings, state.metrics, partition)


ImageJobDep = Annotated[ImageJob, Depends(image_job)]
