"""Uploaded bytes -> embeddings: hash, cache, decode in a thread pool, batch the forward pass.

    embedder = Embedder(settings, cache, metrics)
    embs = await embedder.embed(model, [data_a, data_b])  # [Tensor (D,) | ImageError, ...]

Bad images come back as ImageError values in their place, so /similarity/one-to-many can report
a broken candidate without failing the call; the routes decide what to tell the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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
        # Each pool job hashes, looks up, decodes and queues its images to the batcher itself:
        # the event loop hands off once and is woken once, each hop about as dear as a small
        # model's forward pass.
        unique, where = _distinct(blobs)
        chunk = max(2, -(-len(unique) // self.settings.decode_threads))
        chunks = [unique[i : i + chunk] for i in range(0, len(unique), chunk)]
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
            raise DeadlineExceeded(
                f"model '{model.name}' did not answer in time; retry later"
            ) from None
        finally:
            for f in (f for fs in futures for f in fs):  # timed out or failed: drop the rest
                if not f.done():
                    f.cancel()

        done: list[torch.Tensor | ImageError] = []
        for digest, value in prepared:
            if isinstance(value, asyncio.Future):
                value = value.result()
                self.cache.put((model.card.version, digest), value)
            done.append(value)
        return [done[i] for i in where]

    def _prepare(
        self,
        model: ServedModel,
        blobs: Sequence[bytes],
        futures: Sequence[asyncio.Future[torch.Tensor]],
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> list[tuple[str, torch.Tensor | ImageError | asyncio.Future[torch.Tensor]]]:
        """In a pool thread, per blob: (sha256, embedding | ImageError | future of its queued
        embedding)."""
        assert model.batcher is not None
        out: list[tuple[str, torch.Tensor | ImageError | asyncio.Future[torch.Tensor]]] = []
        xs: list[torch.Tensor] = []
        fs: list[asyncio.Future[torch.Tensor]] = []
        for data, future in zip(blobs, futures, strict=True):
            digest = hashlib.sha256(data).hexdigest()
            cached = self.cache.get((model.card.version, digest), model.name)
            if cached is not None:
                out.append((digest, cached))
                continue
            decoded = self._decode(model, data)
            if isinstance(decoded, torch.Tensor):
                xs.append(decoded)
                fs.append(future)
                out.append((digest, future))
            else:
                out.append((digest, decoded))
        if xs:
            model.batcher.submit(xs, fs, loop, deadline)  # the futures resolve on the loop
        return out

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


def _distinct(blobs: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
    """The distinct blobs, and per blob its index among them: an image sent several times in
    one request (a matrix of near-duplicates) is embedded once. Only blobs of equal length are
    compared, so distinct uploads, the usual case, cost the event loop no hashing."""
    same_length = Counter(len(b) for b in blobs)
    first: dict[bytes, int] = {}
    unique: list[bytes] = []
    where: list[int] = []
    for b in blobs:
        i = first.setdefault(b, len(unique)) if same_length[len(b)] > 1 else len(unique)
        if i == len(unique):
            unique.append(b)
        where.append(i)
    return unique, where


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two embeddings (D,), the metric every ModelCard uses."""
    # numpy on views of the tensors: this runs on the event loop, where a torch call would
    # release the GIL to the inference workers and wait to get it back.
    d = a.numpy() - b.numpy()
    return math.sqrt(float(np.dot(d, d)))


def distance_matrix(embs: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) euclidean distances with an exact zero diagonal."""
    # The matmul shortcut loses ~1e-4 to cancellation; N <= max_matrix_images, so be exact.
    d = torch.cdist(embs, embs, compute_mode="donot_use_mm_for_euclid_dist")
    return d.fill_diagonal_(0.0)
