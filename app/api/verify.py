"""POST /verify: are two images the same (distance at or below a threshold)?"""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ImageJobDep, Threshold
from app.api.uploads import ImageFile, UploadRoute, embed_uploads, max_files
from app.embedding import distance as euclidean
from app.schemas import VerifyResponse, errors

router = APIRouter(tags=["similarity"], route_class=UploadRoute)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    summary="Decide whether two images are the same",
    responses=errors(400, 401, 403, 404, 413, 422, 503),
)
@max_files(lambda s: 2)
async def verify(
    image_a: ImageFile,
    image_b: ImageFile,
    job: ImageJobDep,
    threshold: Threshold = None,
) -> VerifyResponse:
    (a, b), warnings = await embed_uploads([("image_a", image_a), ("image_b", image_b)], job)
    model = job.model
    distance = euclidean(a, b)
    applied = model.card.threshold if threshold is None else threshold
    return VerifyResponse(
        model=model.name,
        model_version=model.card.version,
        same=distance <= applied,
        distance=distance,
        threshold=applied,
        similarity=model.card.calibration.probability(distance),
        warnings=warnings,
    )
