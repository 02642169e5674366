"""POST /verify: are two images the same (distance at or below a threshold)?"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import Far, ImageJobDep, ProfileName, Threshold
from app.api.uploads import ImageFile, UploadRoute, embed_uploads, max_files
from app.embedding import distance as euclidean
from app.schemas import VerifyResponse, errors
from app.thresholds import resolve_threshold

router = APIRouter(tags=["similarity"], route_class=UploadRoute)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    summary="Decide whether two images are the same",
    responses=errors(400, 401, 403, 404, 409, 413, 422, 503),
)
@max_files(lambda s: 2)
async def verify(
    request: Request,
    image_a: ImageFile,
    image_b: ImageFile,
    job: ImageJobDep,
    threshold: Threshold = None,
    far: Far = None,
    profile: ProfileName = None,
) -> VerifyResponse:
    model = job.model
    # Resolved before embedding: a bad far/profile costs no forward pass.
    chosen = resolve_threshold(
        request.app.state, model, threshold=threshold, far=far, profile=profile
    )
    (a, b), warnings = await embed_uploads([("image_a", image_a), ("image_b", image_b)], job)
    distance = euclidean(a, b)
    return VerifyResponse(
        model=model.name,
        model_version=model.card.version,
        same=distance <= chosen.value,
        distance=distance,
        threshold=chosen.value,
        threshold_source=chosen.source,
        similarity=model.card.calibration.probability(distance),
        warnings=warnings,
    )
