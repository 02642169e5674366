"""GET /models/{model}/drift: the served images' embeddings against the card's validation ones."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from app.api.deps import RegistryDep, served_model
from app.schemas import DriftResponse, errors

router = APIRouter(tags=["models"])


@router.get(
    "/models/{model}/drift",
    response_model=DriftResponse,
    summary="Fréchet distance between the images served and the model's validation images",
    description="Running statistics of the embeddings this process computed (a sliding window; "
    "cache hits count once) against the mean and covariance stored in the model card. The same "
    "number is the Prometheus gauge `imgsim_drift_frechet{model}`. See docs/setdistance.md for "
    "the values to expect.",
    responses=errors(401, 403, 404, 503),
)
async def drift(
    model: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")],
    registry: RegistryDep,
) -> DriftResponse:
    served = served_model(registry, model)
    monitor = served.drift
    if monitor is None:
        raise HTTPException(404, detail="drift monitoring is off (IMGSIM_DRIFT_WINDOW_IMAGES=0)")
    report = await asyncio.to_thread(monitor.report)  # an eigendecomposition: off the loop
    return DriftResponse(
        model=served.name,
        model_version=served.card.version,
        images=report.images,
        window_images=monitor.window_images,
        reference_images=report.reference_images,
        frechet_distance=report.frechet_distance,
        mean_shift=report.mean_shift,
    )
