"""GET /models: what each loaded model expects and how it was calibrated, and which failed."""

from __future__ import annotations

from fastapi import APIRouter

from app import engines
from app.api.deps import RegistryDep
from app.schemas import FailedModel, ModelInfo, ModelsResponse, errors

router = APIRouter(tags=["models"])

# The card minus its training config (long, and of no use to a client) and the raw sha256.
SERVER_FIELDS = {
    "name",
    "default",
    "precision",
    "precision_note",
    "inference_workers",
    "engine",
    "engines",
}
CARD_FIELDS = set(ModelInfo.model_fields) - SERVER_FIELDS


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Loaded models with their cards, and the ones refused",
    responses=errors(401, 403, 503),
)
async def list_models(registry: RegistryDep) -> ModelsResponse:
    infos = [
        ModelInfo(
            name=name,
            default=name == registry.default,
            precision=served.precision,
            precision_note=served.precision_note,
            inference_workers=served.batcher.workers if served.batcher else 0,
            engine=served.engine,
            engines=list(engines.loaded(served)),
            **served.card.model_dump(include=CARD_FIELDS),
        )
        for name, served in registry.models.items()
    ]
    failed = [FailedModel(name=name, error=error) for name, error in registry.failed.items()]
    return ModelsResponse(default=registry.default, models=infos, failed=failed)
