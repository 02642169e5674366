"""The imgsim HTTP service.

    python -m app                                         # see app/__main__.py
    uvicorn app.main:create_app --factory --port 8000     # the same, by hand

``create_app(settings)`` builds the app; the lifespan loads every model from the store, starts
one batcher per model and warms each up with a forward pass before /readyz turns 200. On
shutdown readiness turns 503 first, then the batchers finish what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from torch.utils.flop_counter import FlopCounterMode

from app import __version__, engines, web
from app.api import (
    calibrate,
    docs,
    drift,
    embed,
    galleries,
    health,
    metrics,
    models,
    profiles,
    sets,
    similarity,
    verify,
)
from app.api.deps import RETRY_AFTER_S
from app.api.uploads import UploadBudget
from app.batching import Batcher, Overloaded
from app.cache import EmbeddingCache
from app.config import Settings
from app.drift import DriftMonitor
from app.embedding import Embedder
from app.galleries.search import GallerySearch
from app.galleries.store import open_store
from app.images import OverBudget
from app.metrics import Metrics, instrument
from app.observability import RequestContextMiddleware, configure_logging
from app.precision import for_card as precision_for_card
from app.precision import resolve as resolve_precision
from app.profiles import ProfileStore
from app.registry import Registry, ServedModel
from app.security import APIKeyMiddleware, add_cors, api_key_scheme

logger = logging.getLogger(__name__)

WARM_UP_TIMEOUT_S = 120.0
ENGINE_TRIAL_BATCH = 16  # images in the batch "auto" times each engine on (app/engines.py)
DRIFT_REFRESH_S = 15.0  # with several workers: how stale another worker's drift gauges may be

DESCRIPTION = """
Siamese-network image similarity. Send images as multipart uploads (PNG, JPEG, GIF, WebP, BMP,
TIFF); every answer names the model and its version, and carries `warnings` when an upload is
far from what the model was trained on (colour vs greyscale, shape, size).

* `POST /similarity`: distance and calibrated P(same) of two images
* `POST /verify`: same or not, at the model's calibrated threshold or yours
* `POST /similarity/one-to-many`: rank candidates against a query
* `POST /similarity/matrix`: all pairwise distances
* `POST /similarity/sets`: Fréchet distance between two sets of images
* `POST /embed`: the embedding itself
* `GET /models`: what each model expects, its threshold and calibration
* `POST /calibrate`: measure a model on your own labelled pairs, save a threshold profile
* `GET /`: a web page to try it all in a browser
* `GET /models/{model}/drift`: how far the served images are from the model's validation images
* `/galleries`: enroll reference images once, then verify against a subject or identify 1:N
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    configure_logging(
        json_logs=settings.log_json,
        level=settings.log_level,
        queue_max=settings.log_queue_max,
        flush_timeout_s=settings.log_flush_timeout_s,
    )
    app_metrics = Metrics()
    api_keys = settings.api_key_set()
    admin_keys = settings.admin_key_set()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        state.phase = "starting"
        torch.set_num_threads(settings.torch_threads)
        # Fail at boot, not on the first request; a broken model is refused, the rest serve.
        registry = await asyncio.to_thread(
            Registry.load,
            settings.model_store,
            settings.default_model,
            onnx=settings.inference_engine != "torchscript",
            onnx_threads=settings.torch_threads,
        )
        state.registry = registry
        state.profiles = ProfileStore(settings.data_dir / "profiles")
        state.embedder = Embedder(
            settings, EmbeddingCache(settings.cache_entries, app_metrics), app_metrics
        )
        for served in list(registry.models.values()):
            await _start_and_warm_up(served, registry, settings, app_metrics)
        await _open_galleries(state, settings)
        refresher = (
            asyncio.create_task(_refresh_drift(app_metrics)) if app_metrics.drift_bound else None
        )
        state.phase = "ready"
        logger.info(
            "ready: serving %s (default %s); refused %s",
            registry.available(), registry.default, sorted(registry.failed) or "none",
        )  # fmt: skip
        try:
            yield
        finally:
            state.phase = "stopping"  # /readyz answers 503 from here on
            if refresher is not None:
                refresher.cancel()
            for served in registry.models.values():
                if served.batcher is not None:
                    await served.batcher.stop()
            state.embedder.close()
            if getattr(state, "galleries", None) is not None:
                state.galleries.store.close()
            logger.info("stopped")

    app = FastAPI(
        title="imgsim",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # app/api/docs.py serves /docs without a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = app_metrics
    app.state.upload_budget = UploadBudget(settings.upload_budget_bytes)
    app.state.phase = "starting"

    protected = [Security(api_key_scheme)] if api_keys or admin_keys else []
    app.include_router(health.router)
    docs.add_docs(app)
    for router in (
        similarity.router,
        sets.router,
        verify.router,
        embed.router,
        models.router,
        drift.router,
        metrics.router,
        calibrate.router,
        profiles.router,
        galleries.router,
        web.api_router,
    ):
        app.include_router(router, dependencies=protected)
    web.mount(app)  # the page and its static files: open, they hold no data

    _add_error_handlers(app)

    # add_middleware wraps: the last added runs first. Request id and access log outermost, so
    # even a 401 or a CORS refusal is logged with its id.
    if api_keys or admin_keys:
        app.add_middleware(APIKeyMiddleware, keys=api_keys, admin_keys=admin_keys)
    instrument(app, app_metrics)
    add_cors(app, settings)
    app.add_middleware(RequestContextMiddleware)
    return app


async def _start_and_warm_up(
    served: ServedModel, registry: Registry, settings: Settings, metrics: Metrics
) -> None:
    card = served.card
    precision, fallback = precision_for_card(
        resolve_precision(settings.inference_precision), card.metrics
    )
    if fallback is not None:
        logger.warning("model %s: %s; falling back to float32", served.name, fallback)
        served.precision_note = fallback
    blank = torch.zeros(card.input.channels, card.input.height, card.input.width, dtype=torch.uint8)
    try:
        mflops = await asyncio.wait_for(
            asyncio.to_thread(_one_image_mflops, served.module, blank), WARM_UP_TIMEOUT_S
        )
        choice = await asyncio.wait_for(
            asyncio.to_thread(
                engines.choose,
                served,
                settings.inference_engine,
                precision,
                min(ENGINE_TRIAL_BATCH, settings.batch_max_size),
            ),
            WARM_UP_TIMEOUT_S,
        )
    except Exception as e:
        _refuse(served, registry, e)
        return
    served.engine, served.precision = choice.engine, choice.computes_in
    served.one_image_ms = choice.one_image_ms
    precision = choice.precision
    forward_ms = choice.one_image_ms
    batcher = Batcher(
        choice.forward,
        name=served.name,
        max_batch_size=settings.batch_max_size,
        max_wait_ms=settings.batch_max_wait_ms,
        queue_max=settings.queue_max,
        metrics=metrics,
        precision=precision,
        workers=settings.inference_workers_for(mflops),
    )
    batcher.start()
    served.batcher = batcher
    logger.info(
        "model %s: %s engine (timed 1/%d images, ms: %s); %.0f MFLOP and %.1f ms per image at "
        "%s; %d inference worker(s) x %d thread(s)",
        served.name, choice.engine, min(ENGINE_TRIAL_BATCH, settings.batch_max_size),
        {e: [round(t, 2) for t in ts] for e, ts in choice.timings_ms.items()}, mflops,
        forward_ms, served.precision, batcher.workers, settings.torch_threads,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        for _ in range(2):  # through the batcher too: its threads meet the model before a client
            emb = await batcher.embed(blank, deadline)
        if tuple(emb.shape) != (card.embedding_dim,):
            raise ValueError(f"returns shape {tuple(emb.shape)}, card says ({card.embedding_dim},)")
    except Exception as e:
        _refuse(served, registry, e)
        await batcher.stop()
        return
    if settings.drift_window_images:  # attached after warm-up: its blank images are not traffic
        _monitor_drift(served, batcher, settings.drift_window_images, metrics)


async def _open_galleries(state: object, settings: Settings) -> None:
    # A store that cannot open (PostgreSQL down, a bad URL) costs the gallery routes only
    # (503 with the reason); /similarity and the rest still serve.
    try:
        store = await asyncio.to_thread(open_store, settings)
    except Exception as e:
        logger.error("galleries unavailable: %s", e)
        state.galleries_error = f"the gallery store did not open ({type(e).__name__})"  # type: ignore[attr-defined]
        return
    state.galleries = GallerySearch(store, settings.gallery_ann_min_images)  # type: ignore[attr-defined]
    logger.info("galleries in %s", type(store).__name__)


def _monitor_drift(
    served: ServedModel, batcher: Batcher, window_images: int, metrics: Metrics
) -> None:
    monitor = DriftMonitor(served.card, window_images)
    served.drift = monitor
    batcher.observer = monitor.update
    metrics.bind_drift(served.name, monitor)


async def _refresh_drift(metrics: Metrics) -> None:
    """With several workers, keep this one's drift gauges current in the shared metric files:
    a scrape refreshes only the worker that answers it."""
    while True:
        await asyncio.sleep(DRIFT_REFRESH_S)
        try:
            await asyncio.to_thread(metrics.refresh_drift)
        except Exception:  # a gauge must not end the loop; the next round tries again
            logger.exception("drift gauges not refreshed")


def _one_image_mflops(module: torch.nn.Module, x: torch.Tensor) -> float:
    """MFLOP of a one-image float32 forward pass (convolutions and matmuls); 0 when they cannot
    be counted, which only costs a costly model its extra workers, never its service."""
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            module(x.unsqueeze(0))
    except Exception as e:
        logger.warning("could not count the FLOPs of a forward pass: %s", e)
        return 0.0
    return counter.get_total_flops() / 1e6


def _refuse(served: ServedModel, registry: Registry, error: Exception) -> None:
    logger.error("refusing model %s: warm-up forward pass failed: %s", served.name, error)
    registry.refuse(served.name, f"warm-up forward pass failed: {error}"[:300])


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape ({"detail": [{loc, msg, type}]}) minus "input", which could echo an
        # uploaded file or a secret back.
        detail = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(OverBudget)
    async def over_budget(request: Request, exc: OverBudget) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=503, headers={"Retry-After": RETRY_AFTER_S}
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        logger.error(
            "unhandled %s on %s %s",
            type(exc).__name__, request.method, request.url.path,
            exc_info=exc, extra={"request_id": request_id},
        )  # fmt: skip
        return JSONResponse(
            {"detail": "internal error", "request_id": request_id},
            status_code=500,
            headers={"X-Request-ID": request_id} if request_id else None,
        )
