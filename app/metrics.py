"""Prometheus metrics: HTTP requests by route template and status, plus the serving pipeline.

Each app gets its own CollectorRegistry, so ``create_app`` can run many times in one process
(tests) without "Duplicated timeseries" errors from the global default registry.

With ``workers > 1`` every worker process keeps and reports its own counts; scrape each worker,
or run one worker per container.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as instrumentation

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        self.rejected = Counter(
            "imgsim_rejected",
            "Requests refused for capacity: queue_full, deadline, shutting_down",
            ["model", "reason"],
            registry=r,
        )
        # Bound per model to its app/drift.py monitor (app/main.py) and computed when scraped,
        # from statistics the inference workers keep up to date.
        self.drift_frechet = Gauge(
            "imgsim_drift_frechet",
            "Frechet distance between the embeddings served and the model card's validation "
            "embeddings (NaN until 2 images, or without card statistics)",
            ["model"],
            registry=r,
        )
        self.drift_images = Gauge(
            "imgsim_drift_images", "Embeddings imgsim_drift_frechet covers", ["model"], registry=r
        )


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
