"""Galleries: enroll reference images per subject once, then verify or identify against them.

    POST   /galleries/{gallery}/subjects/{subject}/images   enroll 1-64 images (201)
    POST   /galleries/{gallery}/verify                      is this image that subject?
    POST   /galleries/{gallery}/identify                    which subject is this image?
    POST   /galleries/{gallery}/reembed                     move the kept images to another model
    GET    /galleries, /galleries/{gallery}/subjects
    DELETE /galleries/{gallery}[/subjects/{subject}[/images/{image_id}]]   (204)

A gallery is bound to the model (and version) of its first enrollment: embeddings of different
models are not comparable. docs/galleries.md has the design and the measurements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, TypeVar

import numpy as np
import torch
from fastapi import APIRouter, Depends, Form, HTTPException, Path, Request, Response, UploadFile
from fastapi import File as FileParam

from app.api.deps import ImageJob, ModelName, Threshold, image_job
from app.api.uploads import (
    ImageFile,
    UploadRoute,
    embed_uploads,
    image_error,
    max_files,
    read_image,
)
from app.galleries.index import Candidate
from app.galleries.search import GallerySearch
from app.galleries.store import (
    NAME_PATTERN,
    Binding,
    GalleryError,
    GalleryState,
    NotFound,
    StoreUnavailable,
)
from app.images import ACCEPTED
from app.registry import ServedModel
from app.schemas import (
    EnrollResponse,
    GalleriesResponse,
    GalleryInfo,
    GalleryVerifyResponse,
    IdentifyCandidate,
    IdentifyResponse,
    ReembedResponse,
    SubjectInfo,
    SubjectsResponse,
    errors,
)
from app.thresholds import resolve_threshold

logger = logging.getLogger(__name__)

T = TypeVar("T")

router = APIRouter(tags=["galleries"], route_class=UploadRoute)

MAX_ENROLL_IMAGES = 64
MAX_TOP_K = 100

GalleryName = Annotated[str, Path(pattern=NAME_PATTERN, examples=["staff"])]
SubjectName = Annotated[str, Path(pattern=NAME_PATTERN, examples=["ada"])]
SubjectField = Annotated[
    str, Form(pattern=NAME_PATTERN, description="The enrolled subject to compare with")
]
Far = Annotated[
    float | None,
    Form(description="Judge at the threshold with this false-accept rate", gt=0, lt=1),
]
Profile = Annotated[
    str | None,
    Form(
        description="Judge at a saved threshold profile",
        min_length=1,
        max_length=128,
        pattern=NAME_PATTERN,
    ),
]
TopK = Annotated[int, Form(ge=1, le=MAX_TOP_K, description=f"Subjects to return, 1 to {MAX_TOP_K}")]


async def get_search(request: Request) -> GallerySearch:
    state = request.app.state
    search: GallerySearch | None = getattr(state, "galleries", None)
    if search is None:
        reason = getattr(state, "galleries_error", "starting")
        raise HTTPException(
            503, detail=f"galleries unavailable: {reason}", headers={"Retry-After": "30"}
        )
    return search


SearchDep = Annotated[GallerySearch, Depends(get_search)]


def _http(error: GalleryError) -> HTTPException:
    if isinstance(error, NotFound):
        return HTTPException(404, detail=str(error))
    if isinstance(error, StoreUnavailable):
        logger.error("%s", error)
        return HTTPException(503, detail="gallery store unavailable; retry later",
                             headers={"Retry-After": "5"})  # fmt: skip
    return HTTPException(409, detail=str(error))


async def _call(fn: Callable[..., T], *args: object) -> T:
    """A blocking store call in a worker thread; its errors as 404 / 409 / 503."""
    try:
        return await asyncio.to_thread(fn, *args)
    except GalleryError as e:
        raise _http(e) from e


def _info(state: GalleryState) -> GalleryInfo:
    return GalleryInfo(
        gallery=state.gallery,
        model=state.binding.model,
        model_version=state.binding.model_version,
        subjects=state.subjects,
        images=state.images,
    )


def _binding(served: ServedModel) -> Binding:
    return Binding(served.name, served.card.version, served.card.embedding_dim)


async def _gallery_job(request: Request, state: GalleryState) -> ImageJob:
    """The job for a gallery's own model, or 409 when this server cannot serve it any more."""
    bound = state.binding
    try:
        job = await image_job(request, bound.model)
    except HTTPException as e:
        if e.status_code != 404:
            raise
        raise HTTPException(
            409,
            detail=f"gallery '{state.gallery}' uses model '{bound.model}', which this server "
            f"does not serve; re-embed it with another (POST /galleries/{state.gallery}/reembed)",
        ) from e
    if job.model.card.version != bound.model_version:
        raise HTTPException(
            409,
            detail=f"gallery '{state.gallery}' uses model '{bound.model}' version "
            f"{bound.model_version}, but this server serves version {job.model.card.version}; "
            f"re-embed the gallery (POST /galleries/{state.gallery}/reembed)",
        )
    return job


def _candidate(c: Candidate, served: ServedModel) -> IdentifyCandidate:
    return IdentifyCandidate(
        subject=c.subject,
        distance=c.distance,
        similarity=served.card.calibration.probability(c.distance),
        image_id=c.image_id,
    )


def _query(emb: torch.Tensor) -> np.ndarray:
    return emb.numpy().astype(np.float32, copy=False)


@router.post(
    "/galleries/{gallery}/subjects/{subject}/images",
    status_code=201,
    response_model=EnrollResponse,
    summary="Enroll reference images of a subject",
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
@max_files(lambda s: MAX_ENROLL_IMAGES)
async def enroll(
    request: Request,
    gallery: GalleryName,
    subject: SubjectName,
    images: Annotated[
        list[UploadFile], FileParam(description=f"1 to {MAX_ENROLL_IMAGES} images: {ACCEPTED}")
    ],
    search: SearchDep,
    model: ModelName = None,
    keep_images: Annotated[
        bool, Form(description="Keep the uploaded bytes, so the gallery can be re-embedded")
    ] = False,
) -> EnrollResponse:
    if not 1 <= len(images) <= MAX_ENROLL_IMAGES:
        raise HTTPException(422, detail=f"send 1 to {MAX_ENROLL_IMAGES} images, not {len(images)}")
    state = await _call(search.store.state, gallery)
    # No model named: the gallery's own, so a client need not repeat it.
    job = await image_job(
        request, model if model is not None or state is None else state.binding.model
    )
    binding = _binding(job.model)
    if state is not None and (state.binding.model, state.binding.model_version) != (
        binding.model,
        binding.model_version,
    ):
        raise HTTPException(
            409,
            detail=f"gallery '{gallery}' uses model '{state.binding.model}' version "
            f"{state.binding.model_version}, not '{binding.model}' version "
            f"{binding.model_version}; enroll with that model, or re-embed the gallery "
            f"(POST /galleries/{gallery}/reembed)",
        )
    fields = [f"images[{i}] ({up.filename or 'no name'})" for i, up in enumerate(images)]
    blobs = [
        await read_image(up, f, job.settings, job.metrics)
        for f, up in zip(fields, images, strict=True)
    ]
    results = await job.embedder.embed(job.model, blobs, job.cache_partition)
    for field, result in zip(fields, results, strict=True):
        if not isinstance(result, torch.Tensor):
            raise image_error(field, result)  # nothing of this call is stored
    embs = torch.stack(results).numpy()  # (N, D)
    ids, count = await _call(
        search.store.enroll, gallery, subject, binding, embs, blobs if keep_images else None
    )
    return EnrollResponse(
        gallery=gallery,
        subject=subject,
        model=binding.model,
        model_version=binding.model_version,
        image_ids=ids,
        images=count,
    )


@router.get(
    "/galleries",
    response_model=GalleriesResponse,
    summary="List the galleries",
    responses=errors(401, 403, 503),
)
async def list_galleries(search: SearchDep) -> GalleriesResponse:
    states = await _call(search.store.galleries)
    return GalleriesResponse(galleries=[_info(s) for s in states])


@router.get(
    "/galleries/{gallery}/subjects",
    response_model=SubjectsResponse,
    summary="List a gallery's subjects",
    responses=errors(401, 403, 404, 422, 503),
)
async def list_subjects(gallery: GalleryName, search: SearchDep) -> SubjectsResponse:
    rows = await _call(search.store.subjects, gallery)
    return SubjectsResponse(subjects=[SubjectInfo(subject=s, images=n) for s, n in rows])


@router.delete(
    "/galleries/{gallery}",
    status_code=204,
    response_class=Response,
    summary="Delete a gallery",
    responses=errors(401, 403, 404, 422, 503),
)
async def delete_gallery(gallery: GalleryName, search: SearchDep) -> Response:
    await _call(search.store.delete_gallery, gallery)
    search.forget(gallery)
    return Response(status_code=204)


@router.delete(
    "/galleries/{gallery}/subjects/{subject}",
    status_code=204,
    response_class=Response,
    summary="Delete a subject and its images",
    responses=errors(401, 403, 404, 422, 503),
)
async def delete_subject(gallery: GalleryName, subject: SubjectName, search: SearchDep) -> Response:
    await _call(search.store.delete_subject, gallery, subject)
    return Response(status_code=204)


@router.delete(
    "/galleries/{gallery}/subjects/{subject}/images/{image_id}",
    status_code=204,
    response_class=Response,
    summary="Delete one enrolled image",
    responses=errors(401, 403, 404, 422, 503),
)
async def delete_image(
    gallery: GalleryName, subject: SubjectName, image_id: int, search: SearchDep
) -> Response:
    await _call(search.store.delete_image, gallery, subject, image_id)
    return Response(status_code=204)


@router.post(
    "/galleries/{gallery}/verify",
    response_model=GalleryVerifyResponse,
    summary="Is this image the enrolled subject? (1:1 against the subject's nearest image)",
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
@max_files(lambda s: 1)
async def verify(
    request: Request,
    gallery: GalleryName,
    subject: SubjectField,
    image: ImageFile,
    search: SearchDep,
    threshold: Threshold = None,
    far: Far = None,
    profile: Profile = None,
) -> GalleryVerifyResponse:
    state = await _call(search.state, gallery)
    job = await _gallery_job(request, state)
    served = job.model
    chosen = resolve_threshold(
        request.app.state, served, threshold=threshold, far=far, profile=profile
    )
    (emb,), _ = await embed_uploads([("image", image)], job)
    nearest = await _call(search.nearest_of_subject, state, subject, _query(emb))
    if nearest is None:
        raise HTTPException(404, detail=f"no subject '{subject}' in gallery '{gallery}'")
    return GalleryVerifyResponse(
        gallery=gallery,
        subject=subject,
        model=served.name,
        model_version=served.card.version,
        same=nearest.distance <= chosen.value,
        distance=nearest.distance,
        threshold=chosen.value,
        threshold_source=chosen.source,
        similarity=served.card.calibration.probability(nearest.distance),
        image_id=nearest.image_id,
    )


@router.post(
    "/galleries/{gallery}/identify",
    response_model=IdentifyResponse,
    summary="Which enrolled subject is this image? (1:N, open set)",
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
@max_files(lambda s: 1)
async def identify(
    request: Request,
    gallery: GalleryName,
    image: ImageFile,
    search: SearchDep,
    top_k: TopK = 5,
    threshold: Threshold = None,
    far: Far = None,
    profile: Profile = None,
) -> IdentifyResponse:
    state = await _call(search.state, gallery)
    job = await _gallery_job(request, state)
    served = job.model
    chosen = resolve_threshold(
        request.app.state, served, threshold=threshold, far=far, profile=profile
    )
    (emb,), _ = await embed_uploads([("image", image)], job)
    found, _ = await _call(search.identify, state, _query(emb), top_k)
    candidates = [_candidate(c, served) for c in found]
    match = candidates[0] if candidates and candidates[0].distance <= chosen.value else None
    return IdentifyResponse(
        gallery=gallery,
        model=served.name,
        model_version=served.card.version,
        threshold=chosen.value,
        threshold_source=chosen.source,
        match=match,
        candidates=candidates,
    )


@router.post(
    "/galleries/{gallery}/reembed",
    response_model=ReembedResponse,
    summary="Re-embed a gallery's kept images with another model (version) and rebind it",
    responses=errors(401, 403, 404, 409, 422, 503),
)
async def reembed(
    request: Request,
    gallery: GalleryName,
    model: Annotated[
        str, Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    ],
    search: SearchDep,
) -> ReembedResponse:
    job = await image_job(request, model)
    state = await _call(search.state, gallery)
    kept = await _call(search.store.kept_images, gallery)
    lost = sum(k.data is None for k in kept)
    if lost:
        raise HTTPException(
            409,
            detail=f"gallery '{gallery}' cannot be re-embedded: {lost} of its {len(kept)} images "
            "were enrolled without keep_images, so only their old embeddings exist; delete and "
            "re-enroll them with keep_images=true",
        )
    embeddings: dict[int, np.ndarray] = {}
    chunk = job.settings.batch_max_size
    for start in range(0, len(kept), chunk):
        part = kept[start : start + chunk]
        results = await job.embedder.embed(job.model, [k.data for k in part if k.data is not None])
        for k, result in zip(part, results, strict=True):
            if not isinstance(result, torch.Tensor):
                raise HTTPException(
                    409, detail=f"kept image {k.image_id} of '{k.subject}': {result}"
                )
            embeddings[k.image_id] = _query(result)
    await _call(search.store.rebind, gallery, state.token, _binding(job.model), embeddings)
    return ReembedResponse(**_info(await _call(search.state, gallery)).model_dump())
