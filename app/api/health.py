"""Probes: /healthz (the process answers) and /readyz (models loaded and warmed up)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import not_ready_reason
from app.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: always 200")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Readiness: 200 once at least one model is loaded and warmed up",
    responses={503: {"model": ReadyResponse, "description": "Starting, stopping or no model"}},
)
async def readyz(request: Request) -> JSONResponse:
    registry = getattr(request.app.state, "registry", None)
    models: dict[str, str] = {}
    if registry is not None:
        models = dict.fromkeys(registry.models, "up") | registry.failed
    reason = not_ready_reason(request)
    if reason is None and (registry is None or not registry.models):
        reason = "no model could be loaded"
    if reason is None:
        return JSONResponse(ReadyResponse(status="ready", models=models).model_dump())
    body = ReadyResponse(status="not ready", models=models, detail=reason)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
