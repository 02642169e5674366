"""GET /metrics in the Prometheus text format (needs the API key when keys are configured)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    # Off the event loop: the drift gauges cost an eigendecomposition, and with several
    # workers the scrape reads and merges every worker's metric files.
    text = await asyncio.to_thread(metrics.exposition)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
