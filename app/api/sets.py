"""POST /similarity/sets: how far apart two sets of images are, as a whole (docs/setdistance.md)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, File, HTTPException, UploadFile

from app.api.deps import ImageJobDep
from app.api.uploads import UploadRoute, max_files, read_image
from app.embedding import check_request_pixels, request_pixels
from app.images import ACCEPTED, ImageError, TooLarge
from app.schemas import SetDistanceResponse, errors
from app.setdistance import GaussianStats, frechet_distance, mean_distance

router = APIRouter(tags=["similarity"], route_class=UploadRoute)

SetFiles = Annotated[
    list[UploadFile], File(description="2 to max_set_images (256) images, each once per part")
]


@router.post(
    "/similarity/sets",
    response_model=SetDistanceResponse,
    summary="Fréchet distance between two sets of images",
    description="Fits a Gaussian to each set's embeddings and returns the Fréchet distance "
    "between them (the FID formula in the model's embedding space), plus the mean pairwise "
    "distance between the sets. Same number as `python -m training.setdistance` on the same "
    "images.",
    responses=errors(400, 401, 403, 404, 413, 422, 503),
)
@max_files(lambda s: 2 * s.max_set_images, over_max_parts=True)
async def set_distance(set_a: SetFiles, set_b: SetFiles, job: ImageJobDep) -> SetDistanceResponse:
    model, settings, metrics = job.model, job.settings, job.metrics
    for field, files in (("set_a", set_a), ("set_b", set_b)):
        if not 2 <= len(files) <= settings.max_set_images:
            raise HTTPException(
                422, detail=f"{field}: send 2 to {settings.max_set_images} images; got {len(files)}"
            )
    fields = [f"set_a[{i}]" for i in range(len(set_a))] + [f"set_b[{i}]" for i in range(len(set_b))]
    blobs = [
        await read_image(upload, field, settings, metrics)
        for field, upload in zip(fields, [*set_a, *set_b], strict=True)
    ]
    # The request's pixel budget covers both sets, though they are embedded in several calls.
    total = await asyncio.to_thread(request_pixels, blobs, model, settings)
    check_request_pixels(total, settings)
    # In chunks of a quarter of the queue: a set is up to 2 x 256 images, more than the queue
    # holds, and a request should leave room for the others sharing the model.
    chunk = max(1, settings.queue_max // 4)
    results: list[torch.Tensor | ImageError] = []
    for start in range(0, len(blobs), chunk):
        results += await job.embedder.embed(
            model, blobs[start : start + chunk], job.cache_partition
        )
    _raise_for_bad_images(fields, results)
    emb = np.stack([r.numpy() for r in results if isinstance(r, torch.Tensor)])  # (n_a + n_b, D)
    n_a = len(set_a)
    frechet, mean = await asyncio.to_thread(_compare, emb[:n_a], emb[n_a:])
    return SetDistanceResponse(
        model=model.name,
        model_version=model.card.version,
        frechet_distance=frechet,
        n_a=n_a,
        n_b=len(set_b),
        mean_distance=mean,
        dim=emb.shape[1],
    )


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    return frechet_distance(GaussianStats.of(a), GaussianStats.of(b)), mean_distance(a, b)


def _raise_for_bad_images(fields: list[str], results: list[torch.Tensor | ImageError]) -> None:
    """413 naming every image with too many pixels, else 400 naming every undecodable one."""
    bad = [(f, r) for f, r in zip(fields, results, strict=True) if isinstance(r, ImageError)]
    too_large = [f"{f} ({e})" for f, e in bad if isinstance(e, TooLarge)]
    if too_large:
        raise HTTPException(413, detail=f"images over the pixel limit: {', '.join(too_large)}")
    if bad:
        named = ", ".join(f"{f} ({e})" for f, e in bad)
        raise HTTPException(400, detail=f"not usable images: {named}; send one of {ACCEPTED}")
