"""Prometheus metrics: HTTP requests by route template and status, plus the serving pipeline.

Each app gets its own CollectorRegistry, so ``create_app`` can run many times in one process
(tests) without "Duplicated timeseries" errors from the global default registry.

With ``workers > 1`` (app/__main__.py) prometheus_client runs in its multiprocess mode: every
worker writes its counts to files in PROMETHEUS_MULTIPROC_DIR and a scrape, whichever worker
answers it, adds them all up. Drift is the exception: each worker keeps its own window of
embeddings, so its gauges carry a ``pid`` label, one series per live worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as instrumentation

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

if TYPE_CHECKING:
    from app.drift import DriftMonitor


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in files shared by worker processes: decided once,
    when it was imported, by PROMETHEUS_MULTIPROC_DIR being set."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        self._drift: dict[str, DriftMonitor] = {}
        r = self.registry
        self.read_seconds = Histogram(
            "imgsim_upload_read_seconds", "Reading one uploaded image part", buckets=_SECONDS,
            registry=r,
        )  # fmt: skip
        self.decode_seconds = Histogram(
            "imgsim_decode_seconds", "Decoding and resizing one image", ["model"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.queue_wait_seconds = Histogram(
            "imgsim_queue_wait_seconds", "From enqueue to the start of its forward pass", ["model"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "imgsim_inference_seconds", "One batched forward pass", ["model"],
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "imgsim_batch_size", "Images per forward pass", ["model"], buckets=_BATCH, registry=r
        )
        self.cache_hits = Counter(
            "imgsim_cache_hits", "Embeddings served from the cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "imgsim_cache_misses", "Embeddings computed", ["model"], registry=r
        )
        self.inline = Counter(
            "imgsim_inline",
            "Requests answered on the event loop, errors included (the c=1 fast path)",
            ["model"],
            registry=r,
        )
        self.inline_fallback = Counter(
            "imgsim_inline_fallback",
            "Requests of at most 2 images, for a model fast enough to be embedded inline, that "
            "took the decode pool: bytes (an image over inline_max_bytes), busy (the model or "
            "the decode pool had work), pixels (an image or tile over the inline pixel cap)",
            ["model", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "imgsim_rejected",
            "Requests refused for capacity: queue_full, deadline, shutting_down",
            ["model", "reason"],
            registry=r,
        )
        # Bound per model to its app/drift.py monitor (bind_drift) and computed when scraped,
        # from statistics the inference workers keep up to date. Per worker process ("liveall":
        # a pid label; a stopped worker's series go with it): each sees only its share.
        self.drift_frechet = Gauge(
            "imgsim_drift_frechet",
            "Frechet distance between the embeddings served and the model card's validation "
            "embeddings (NaN until 2 images, or without card statistics)",
            ["model"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.drift_images = Gauge(
            "imgsim_drift_images", "Embeddings imgsim_drift_frechet covers", ["model"],
            registry=r, multiprocess_mode="liveall",
        )  # fmt: skip

    def bind_drift(self, model: str, monitor: DriftMonitor) -> None:
        """Report ``monitor`` as the drift gauges of ``model``."""
        if self.multiprocess:
            # A scrape reads files, not functions: refresh_drift() writes the values there,
            # first now, so every worker's series shows from the start.
            self._drift[model] = monitor
            self.refresh_drift()
            return
        self.drift_images.labels(model).set_function(monitor.images)
        if monitor.reference is not None:
            self.drift_frechet.labels(model).set_function(monitor.frechet)

    @property
    def drift_bound(self) -> bool:
        """Whether refresh_drift() has anything to do (multiprocess mode, drift monitored)."""
        return bool(self._drift)

    def refresh_drift(self) -> None:
        """Write this worker's drift values to its metric files (multiprocess mode); an
        eigendecomposition per model whose statistics changed: call it off the event loop."""
        for model, monitor in self._drift.items():
            self.drift_images.labels(model).set(monitor.images())
            if monitor.reference is not None:
                self.drift_frechet.labels(model).set(monitor.frechet())

    def exposition(self) -> bytes:
        """The Prometheus text of every worker's metrics (blocking: run it in a thread)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh_drift()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


def instrument(app: FastAPI, metrics: Metrics) -> None:
    """Count requests and latency by route template (not raw path) and exact status code."""
    # Only the request counter and one latency histogram: the default set also sizes every
    # request and response and keeps a second histogram, all on the event loop per request.
    Instrumentator(
        should_group_status_codes=False,
        excluded_handlers=["/metrics"],
        registry=metrics.registry,
    ).add(
        instrumentation.requests(registry=metrics.registry),
        instrumentation.latency(buckets=_SECONDS, registry=metrics.registry),
    ).instrument(app)
