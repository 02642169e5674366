"""Similarity between images: one pair, one query against many candidates, or all pairs."""

from __future__ import annotations

from typing import Annotated

import torch
from fastapi import APIRouter, File, HTTPException, Request, UploadFile

from app import ood
from app.api.deps import Far, ImageJobDep, ProfileName, Threshold
from app.api.uploads import (
    ImageFile,
    UploadRoute,
    embed_uploads,
    image_error,
    max_files,
    read_image,
)
from app.embedding import distance, distance_matrix
from app.images import ImageError
from app.schemas import (
    CandidateError,
    CandidateMatch,
    MatrixResponse,
    OneToManyResponse,
    SimilarityResponse,
    errors,
)
from app.thresholds import resolve_threshold

router = APIRouter(tags=["similarity"], route_class=UploadRoute)

_ERRORS = errors(400, 401, 403, 404, 413, 422, 503)


@router.post(
    "/similarity",
    response_model=SimilarityResponse,
    summary="Distance and calibrated similarity of two images",
    responses=_ERRORS,
)
@max_files(lambda s: 2)
async def similarity(
    image_a: ImageFile,
    image_b: ImageFile,
    job: ImageJobDep,
) -> SimilarityResponse:
    (a, b), warnings = await embed_uploads([("image_a", image_a), ("image_b", image_b)], job)
    model = job.model
    d = distance(a, b)
    return SimilarityResponse(
        model=model.name,
        model_version=model.card.version,
        distance=d,
        similarity=model.card.calibration.probability(d),
        threshold=model.card.threshold,
        warnings=warnings,
    )


@router.post(
    "/similarity/one-to-many",
    response_model=OneToManyResponse,
    summary="Rank candidate images by distance to a query image",
    description="A candidate that is not a usable image gets `{index, error}` in the results "
    "instead of failing the call; candidates are identified by position, never by file name.",
    responses={**_ERRORS, **errors(409)},
)
@max_files(lambda s: 1 + s.max_candidates)
async def one_to_many(
    request: Request,
    query: ImageFile,
    candidates: Annotated[
        list[UploadFile], File(description="1 to max_candidates (64) images to rank")
    ],
    job: ImageJobDep,
    threshold: Threshold = None,
    far: Far = None,
    profile: ProfileName = None,
) -> OneToManyResponse:
    model, settings, metrics = job.model, job.settings, job.metrics
    chosen = resolve_threshold(
        request.app.state, model, threshold=threshold, far=far, profile=profile
    )
    if len(candidates) > settings.max_candidates:
        raise HTTPException(
            422, detail=f"at most {settings.max_candidates} candidates; got {len(candidates)}"
        )
    blobs = [await read_image(query, "query", settings, metrics)]
    for i, upload in enumerate(candidates):
        blobs.append(await read_image(upload, f"candidates[{i}]", settings, metrics))
    query_emb, *candidate_embs = await job.embedder.embed(model, blobs, job.cache_partition)
    if isinstance(query_emb, ImageError):
        raise image_error("query", query_emb)

    applied = chosen.value
    matches: list[CandidateMatch] = []
    failures: list[CandidateError] = []
    for i, emb in enumerate(candidate_embs):
        if isinstance(emb, ImageError):
            failures.append(CandidateError(index=i, error=str(emb)))
            continue
        d = distance(query_emb, emb)
        p = model.card.calibration.probability(d)
        matches.append(CandidateMatch(index=i, distance=d, similarity=p, same=d <= applied))
    matches.sort(key=lambda m: (m.distance, m.index))
    usable = [("query", blobs[0])] + [
        (f"candidates[{i}]", blobs[1 + i])
        for i, emb in enumerate(candidate_embs)
        if not isinstance(emb, ImageError)
    ]
    return OneToManyResponse(
        model=model.name,
        model_version=model.card.version,
        threshold=applied,
        threshold_source=chosen.source,
        results=[*matches, *failures],
        warnings=ood.warnings_for(model, usable),
    )


@router.post(
    "/similarity/matrix",
    response_model=MatrixResponse,
    summary="All pairwise distances between 2 to max_matrix_images (64) images",
    responses=_ERRORS,
)
@max_files(lambda s: s.max_matrix_images)
async def matrix(
    images: Annotated[list[UploadFile], File(description="2 to max_matrix_images (64) images")],
    job: ImageJobDep,
) -> MatrixResponse:
    model, settings = job.model, job.settings
    if not 2 <= len(images) <= settings.max_matrix_images:
        raise HTTPException(
            422, detail=f"send 2 to {settings.max_matrix_images} images; got {len(images)}"
        )
    named = [(f"images[{i}]", upload) for i, upload in enumerate(images)]
    embs, warnings = await embed_uploads(named, job)
    distances = distance_matrix(torch.stack(embs))  # (N, N)
    return MatrixResponse(
        model=model.name,
        model_version=model.card.version,
        distances=distances.tolist(),
        warnings=warnings,
    )
