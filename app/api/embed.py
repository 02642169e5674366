"""POST /embed: one image -> its embedding."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import EmbedderDep, MetricsDep, ModelDep, SettingsDep, reject_empty_fields
from app.api.uploads import ImageFile, UploadRoute, embed_uploads, max_files
from app.schemas import EmbedResponse, errors

router = APIRouter(
    tags=["embed"], route_class=UploadRoute, dependencies=[Depends(reject_empty_fields)]
)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    summary="Embed one image",
    responses=errors(400, 401, 403, 404, 413, 422, 503),
)
@max_files(lambda s: 1)
async def embed(
    image: ImageFile,
    model: ModelDep,
    embedder: EmbedderDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> EmbedResponse:
    (emb,) = await embed_uploads([("image", image)], model, embedder, settings, metrics)
    return EmbedResponse(
        model=model.name, model_version=model.card.version, dim=emb.numel(), embedding=emb.tolist()
    )
