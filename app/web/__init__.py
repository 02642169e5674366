"""The web page at ``/``: plain HTML, CSS and JavaScript from ``static/``, no build step, nothing
fetched from elsewhere (works offline). It only calls the public API, plus the two read-only
routes below that the model page needs: a model's full card and its plots.

    app.include_router(web.api_router, dependencies=protected)  # card + plots, behind API keys
    web.mount(app)                                              # GET /, /static/*
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from app.api.deps import RegistryDep, SettingsDep, served_model
from app.artifact import ModelCard
from app.schemas import errors

STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"

page_router = APIRouter(include_in_schema=False)
api_router = APIRouter(tags=["models"])

ModelPath = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# Plot names only: a bare lowercase file name ending in .png, so no path can be smuggled in.
PlotPath = Annotated[str, PathParam(pattern=r"^[a-z][a-z0-9_-]{0,63}\.png$")]


class ModelCardResponse(BaseModel):
    card: ModelCard = Field(description="The whole model card, training config included")
    plots: list[str] = Field(description="Plot files beside the model (GET .../plots/{name})")


@page_router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@api_router.get(
    "/models/{model}/card",
    response_model=ModelCardResponse,
    summary="A model's full card (with its training config) and the names of its plots",
    responses=errors(401, 403, 404, 503),
)
async def model_card(
    registry: RegistryDep, settings: SettingsDep, model: ModelPath
) -> ModelCardResponse:
    served = served_model(registry, model)
    folder = settings.model_store / served.name
    plots = sorted(p.name for p in folder.glob("*.png") if p.is_file())
    return ModelCardResponse(card=served.card, plots=plots)


@api_router.get(
    "/models/{model}/plots/{plot}",
    response_class=FileResponse,
    summary="One of a model's plots (PNG) from the model store",
    responses={200: {"content": {"image/png": {}}}, **errors(401, 403, 404, 503)},
)
async def model_plot(
    registry: RegistryDep, settings: SettingsDep, model: ModelPath, plot: PlotPath
) -> Any:
    served = served_model(registry, model)
    folder = (settings.model_store / served.name).resolve()
    path = (folder / plot).resolve()
    if path.parent != folder or not path.is_file():
        raise HTTPException(404, detail=f"model '{served.name}' has no plot '{plot}'")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "max-age=300"})


def mount(app: FastAPI) -> None:
    app.include_router(page_router)
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="static")
