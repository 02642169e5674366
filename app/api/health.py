"""Probes: /healthz (the process answers) and /readyz (every model loaded or refused).

/readyz answers 503 until start-up has dealt with every model in the store: each one loaded and
warmed up, or refused. Then 200 while at least one model serves (a refused one is listed with
why, so one bad file does not take the others out of a load balancer), and 503 again from the
start of a shutdown.
"""

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
    summary="Readiness: 200 once every model is warmed up or refused, and at least one serves",
    responses={503: {"model": ReadyResponse, "description": "Starting, stopping or no model"}},
)
async def readyz(request: Request) -> JSONResponse:
    registry = getattr(request.app.state, "registry", None)
    models: dict[str, str] = {}
    if registry is not None:
        models = {
            name: "up" if served.batcher is not None else "warming up"
            for name, served in registry.models.items()
        } | registry.failed
    reason = not_ready_reason(request)
    if reason is None and (registry is None or not registry.models):
        reason = "no model could be loaded"
    if reason is None:
        return JSONResponse(ReadyResponse(status="ready", models=models).model_dump())
    body = ReadyResponse(status="not ready", models=models, detail=reason)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
