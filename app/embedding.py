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
        version = model.card.version
        digests = await loop.run_in_executor(self.pool, _sha256_all, list(blobs))

        results: list[torch.Tensor | ImageError | None] = [None] * len(blobs)
        missing: dict[str, list[int]] = {}  # digest -> positions; a repeated image runs once
        for i, digest in enumerate(digests):
            if digest in missing:
                missing[digest].append(i)
                continue
            cached = self.cache.get((version, digest), model.name)
            if cached is None:
                missing[digest] = [i]
            else:
                results[i] = cached

        if missing:
            decodes = [
                loop.run_in_executor(self.pool, self._decode, model, blobs[positions[0]])
                for positions in missing.values()
            ]
            try:
                async with asyncio.timeout_at(loop.time() + (deadline - time.monotonic())):
                    decoded = dict(zip(missing, await asyncio.gather(*decodes), strict=True))
            except TimeoutError:
                raise DeadlineExceeded("decoding did not finish in time; retry later") from None
            good = [d for d, x in decoded.items() if isinstance(x, torch.Tensor)]
            embs = await model.batcher.embed_many([decoded[d] for d in good], deadline)
            for digest, emb in zip(good, embs, strict=True):
                self.cache.put((version, digest), emb)
                decoded[digest] = emb
            for digest, positions in missing.items():
                for i in positions:
                    results[i] = decoded[digest]
        return results  # type: ignore[return-value]  # every slot is filled

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


def _sha256_all(blobs: list[bytes]) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in blobs]


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Euclidean distance between two embeddings (D,), the metric every ModelCard uses."""
    return float(torch.linalg.vector_norm(a - b))


def distance_matrix(embs: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, N) euclidean distances with an exact zero diagonal."""
    # The matmul shortcut loses ~1e-4 to cancellation; N <= max_matrix_images, so be exact.
    d = torch.cdist(embs, embs, compute_mode="donot_use_mm_for_euclid_dist")
    return d.fill_diagonal_(0.0)
