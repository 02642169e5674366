"""Embedding cache: a re-sent image costs neither a decode nor a forward pass.

Keyed by (model version, partition, sha256 of the uploaded bytes): the version is the sha256
prefix of model.pt, so new weights never see old embeddings; the partition is the API key's
(app/security.py), so one key cannot learn from a hit, or its latency, that another key sent a
file. Bounded LRU, counted in entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from app.metrics import Metrics

Key = tuple[str, str, str]  # (model version, partition, sha256 hex of the image bytes)


class EmbeddingCache:
    def __init__(self, max_entries: int, metrics: Metrics | None = None) -> None:
        self.max_entries = max_entries
        self.metrics = metrics
        self._entries: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # callers may sit on different event loops (tests)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, model: str) -> torch.Tensor | None:
        """The cached embedding (D,) or None; counts a hit or a miss for ``model``."""
        with self._lock:
            emb = self._entries.get(key)
            if emb is not None:
                self._entries.move_to_end(key)
        if self.metrics is not None:
            counter = self.metrics.cache_hits if emb is not None else self.metrics.cache_misses
            counter.labels(model).inc()
        return emb

    def put(self, key: Key, emb: torch.Tensor) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = emb
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
