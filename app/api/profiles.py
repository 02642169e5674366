"""Threshold profiles of a model: list them, delete one (POST /calibrate makes them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response

from app.api.deps import RegistryDep, served_model
from app.profiles import NAME_PATTERN
from app.schemas import ProfileInfo, ProfilesResponse, errors

router = APIRouter(tags=["thresholds"])

ModelPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]


@router.get(
    "/models/{model}/profiles",
    response_model=ProfilesResponse,
    summary="The model's saved threshold profiles",
    responses=errors(401, 403, 404, 503),
)
async def list_profiles(
    request: Request, registry: RegistryDep, model: ModelPath
) -> ProfilesResponse:
    served = served_model(registry, model)
    return ProfilesResponse(
        model=served.name,
        model_version=served.card.version,
        profiles=[
            ProfileInfo(
                applicable=p.model_version == served.card.version,
                **p.model_dump(exclude={"model", "table"}),
            )
            for p in request.app.state.profiles.list(served.name)
        ],
    )


@router.delete(
    "/models/{model}/profiles/{name}",
    status_code=204,
    summary="Delete a threshold profile",
    responses=errors(401, 403, 404, 503),
)
async def delete_profile(
    request: Request, registry: RegistryDep, model: ModelPath, name: NamePath
) -> Response:
    served = served_model(registry, model)
    if not request.app.state.profiles.delete(served.name, name):
        raise HTTPException(404, detail=f"no profile '{name}' for model '{served.name}'")
    return Response(status_code=204)
