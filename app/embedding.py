"""Uploaded bytes -> embeddings: hash, cache, decode in a thread pool, batch the forward pass.

    embedder = Embedder(settings, cache, metrics)
    embs = await embedder.embed(model, [data_a, data_b])  # [Tensor (D,) | ImageError, ...]

Bad images come back as ImageError values in their place, so /similarity/one-to-many can report
a broken candidate without failing the call; the routes decide what to tell the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from app import images
from app.batching import DeadlineExceeded
from app.cache import EmbeddingCache
from app.config import Settings
from app.images import ImageError
from app.metrics import Metrics
from app.registry import ServedModel


class Embedder:
    def __init__(self, settings: Settings, cache: EmbeddingCache, metrics: Metrics) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def embed(
        self, model: ServedModel, blobs: Sequence[bytes]
    ) -> list[torch.Tensor | ImageError]:
        """One embedding (D,) or ImageError per blob, in order.

        The whole call (decode + queue + forward) must finish within request_timeout_s, else
        DeadlineExceeded; QueueFull/ShuttingDown come from the batcher.
        """
        assert model.batcher is not None, "model is not being served"
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.request_timeout_s
        # Each pool job hashes, looks up, decodes and hands its images to the model itself (or
        # runs the forward pass when the model is idle, see Batcher.run_or_queue): a request
        # costs the event loop one or two hand-offs, each about as dear as a small model's
        # forward pass.
        chunk = max(2, -(-len(blobs) // self.settings.decode_threads))
        chunks = [blobs[i : i + chunk] for i in range(0, len(blobs), chunk)]
        futures = [[loop.create_future() for _ in c] for c in chunks]
        jobs = [
            loop.run_in_executor(self.pool, self._prepare, model, c, f, loop, deadline)
            for c, f in zip(chunks, futures, strict=True)
        ]
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                prepared = [p for job in await asyncio.gather(*jobs) for p in job]
                queued = [value for _, value in prepared if isinstance(value, asyncio.Future)]
                if queued:
                    await asyncio.gather(*queued)
        except TimeoutError:
            model.batcher.count_rejected(DeadlineExceeded.reason)
            raise DeadlineExceeded("the model did not answer in time; retry later") from None
        finally:
            for f in (f for fs in futures for f in fs):  # timed out or failed: drop the rest
                if not f.done():
                    f.cancel()

        results: list[torch.Tensor | ImageError] = []
        for digest, value in prepared:
            if isinstance(value, asyncio.Future):
                value = value.result()
                self.cache.put((model.card.version, digest), value)
            results.append(value)
        return results

    def _prepare(
        self,
        model: ServedModel,
        blobs: Sequence[bytes],
        futures: Sequence[asyncio.Future[torch.Tensor]],
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> list[tuple[str, torch.Tensor | ImageError | asyncio.Future[torch.Tensor]]]:
        """In a pool thread, per blob: (sha256, embedding | ImageError | future of a queued
        embedding). An image sent twice in one chunk is embedded once."""
        assert model.batcher is not None
        version = model.card.version
        out: list[tuple[str, torch.Tensor | ImageError | asyncio.Future[torch.Tensor]]] = []
        todo: dict[str, tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] = {}
        for data, future in zip(blobs, futures, strict=True):
            digest = hashlib.sha256(data).hexdigest()
            if digest in todo:
                out.append((digest, todo[digest][1]))
                continue
            cached = self.cache.get((version, digest), model.name)
            if cached is not None:
                out.append((digest, cached))
                continue
            decoded = self._decode(model, data)
            if isinstance(decoded, torch.Tensor):
                todo[digest] = (decoded, future)
                out.append((digest, future))
            else:
                out.append((digest, decoded))
        if not todo:
            return out
        xs, fs = zip(*todo.values(), strict=True)
        ran = model.batcher.run_or_queue(xs, fs, loop, deadline)
        if ran is None:  # queued: the futures resolve on the loop
            return out
        embs = dict(zip(todo, ran, strict=True))
        for digest, emb in embs.items():
            if isinstance(emb, Exception):
                raise emb
            self.cache.put((version, digest), emb)
        return [(d, embs[d] if isinstance(v, asyncio.Future) else v) for d, v in out]

    def _decode(self, model: ServedModel, data: bytes) -> torch.Tensor | ImageError:
        started = time.perf_counter()
        try:
            return images.decode(
                data, model.card.mode, model.card.size, self.settings.max_image_pixels
            )
        except ImageError as e:
            return e
        finally:
            self.metrics.decode_seconds.labels(model.name).observe(time.perf_counter() - started)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two embeddings (D,), the metric every ModelCard uses."""
    return float(torch.linalg.vector_norm(a - b))


def distance_matrix(embs: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) euclidean distances with an exact zero diagonal."""
    # The matmul shortcut loses ~1e-4 to cancellation; N <= max_matrix_images, so be exact.
    d = torch.cdist(embs, embs, compute_mode="donot_use_mm_for_euclid_dist")
    return d.fill_diagonal_(0.0)
