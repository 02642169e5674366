"""POST /embed: one image -> its embedding."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ImageJobDep
from app.api.uploads import ImageFile, UploadRoute, embed_uploads, max_files
from app.schemas import EmbedResponse, errors

router = APIRouter(tags=["embed"], route_class=UploadRoute)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed one image",
    responses=errors(400, 401, 403, 404, 413, 422, 503),
)
@max_files(lambda s: 1)
async def embed(
    image: ImageFile,
    job: ImageJobDep,
) -> EmbedResponse:
    (emb,), warnings = await embed_uploads([("image", image)], job)
    model = job.model
    return EmbedResponse(
        model=model.name,
        model_version=model.card.version,
        dim=emb.numel(),
        embedding=emb.tolist(),
        warnings=warnings,
    )
