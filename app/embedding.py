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
        # Hashing, cache look-ups and decoding go to the pool in as few hand-offs as possible:
        # each hop costs the event loop about as much as a small model's forward pass.
        chunk = max(2, -(-len(blobs) // self.settings.decode_threads))
        jobs = [
            loop.run_in_executor(self.pool, self._prepare, model, blobs[i : i + chunk])
            for i in range(0, len(blobs), chunk)
        ]
        try:
            async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                prepared = [p for job in await asyncio.gather(*jobs) for p in job]
        except TimeoutError:
            raise DeadlineExceeded("decoding did not finish in time; retry later") from None

        results: list[torch.Tensor | ImageError] = []
        todo: dict[str, torch.Tensor] = {}  # digest -> decoded image; a repeated image runs once
        for digest, value, is_image in prepared:
            if is_image:
                todo.setdefault(digest, value)
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            embs = await model.batcher.embed_many(list(todo.values()), deadline)
            fresh = dict(zip(todo, embs, strict=True))
            for digest, emb in fresh.items():
                self.cache.put((model.card.version, digest), emb)
        for digest, value, is_image in prepared:
            results.append(fresh[digest] if is_image else value)
        return results

    def _prepare(
        self, model: ServedModel, blobs: Sequence[bytes]
    ) -> list[tuple[str, torch.Tensor | ImageError, bool]]:
        """Per blob: (sha256, cached embedding | decoded uint8 image | ImageError, is_image)."""
        out: list[tuple[str, torch.Tensor | ImageError, bool]] = []
        for data in blobs:
            digest = hashlib.sha256(data).hexdigest()
            cached = self.cache.get((model.card.version, digest), model.name)
            if cached is not None:
                out.append((digest, cached, False))
                continue
            decoded = self._decode(model, data)
            out.append((digest, decoded, isinstance(decoded, torch.Tensor)))
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


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two embeddings (D,), the metric every ModelCard uses."""
    return float(torch.linalg.vector_norm(a - b))


def distance_matrix(embs: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) euclidean distances with an exact zero diagonal."""
    # The matmul shortcut loses ~1e-4 to cancellation; N <= max_matrix_images, so be exact.
    d = torch.cdist(embs, embs, compute_mode="donot_use_mm_for_euclid_dist")
    return d.fill_diagonal_(0.0)
