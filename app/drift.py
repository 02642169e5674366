"""Drift: are the images a model embeds today still like the ones it was validated on?

    monitor = DriftMonitor(card, window_images=10_000)
    monitor.update(emb)        # (B, D), from an inference worker thread, after each forward pass
    monitor.report()           # DriftReport: Fréchet distance to card.embedding_stats, images

The service keeps, per model, a running mean and covariance of the embeddings it computes (cache
hits are not computed again and count once) and compares them with the card's validation
statistics by the Fréchet distance (app/setdistance.py, the same number as POST /similarity/sets
and ``python -m training.setdistance``). Memory is O(D^2) per model: the statistics cover a
sliding window of the last ``window_images`` to ``2 * window_images`` images, held as two
accumulators: when the current one is full it becomes the previous one and the oldest is dropped.
So an old regime ages out instead of diluting a new one for ever. See docs/setdistance.md.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from app.artifact import ModelCard
from app.setdistance import GaussianStats, RunningStats, frechet_distance, sqrt_psd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftReport:
    images: int  # embeddings the running statistics cover
    reference_images: int | None  # validation images behind the card's statistics; None: none
    frechet_distance: float | None  # None without a reference or with fewer than 2 images
    mean_shift: float | None  # ||mu - mu_ref||, the part of the distance due to the mean alone


class DriftMonitor:
    def __init__(self, card: ModelCard, window_images: int) -> None:
        self.dim = card.embedding_dim
        self.window_images = window_images
        self.reference: GaussianStats | None = None
        self._reference_sqrt: np.ndarray | None = None
        ref = card.embedding_stats
        if ref is not None and len(ref.mean) != self.dim:
            logger.warning(
                "model %s: card statistics are %d-d, the model %d-d; drift not compared",
                card.name, len(ref.mean), self.dim,
            )  # fmt: skip
            ref = None
        if ref is not None:
            self.reference = GaussianStats(
                ref.images, np.asarray(ref.mean, dtype=np.float64), np.asarray(ref.covariance)
            )
            self._reference_sqrt = sqrt_psd(self.reference.cov)  # once, not per report
        self._lock = threading.Lock()
        self._current = RunningStats(self.dim)
        self._previous = RunningStats(self.dim)
        # The last report, reused until new embeddings arrive: a scrape costs one eigvalsh only
        # when something changed.
        self._report: DriftReport | None = None

    def update(self, emb: np.ndarray | torch.Tensor) -> None:
        """Add a batch of embeddings (B, D); thread-safe, O(B D^2)."""
        with self._lock:
            self._current.update(emb)
            if self._current.count >= self.window_images:
                self._previous, self._current = self._current, RunningStats(self.dim)
            self._report = None

    def images(self) -> int:
        with self._lock:
            return self._current.count + self._previous.count

    def report(self) -> DriftReport:
        with self._lock:
            if self._report is not None:
                return self._report
            running = self._previous.copy()
            running.merge(self._current)
        report = self._compare(running)
        with self._lock:
            if running.count == self._current.count + self._previous.count:
                self._report = report  # nothing arrived meanwhile
        return report

    def frechet(self) -> float:
        """The Fréchet distance, NaN when there is none yet (for the Prometheus gauge)."""
        value = self.report().frechet_distance
        return float("nan") if value is None else value

    def _compare(self, running: RunningStats) -> DriftReport:
        ref = self.reference
        if ref is None or running.count < 2:
            return DriftReport(running.count, ref.count if ref else None, None, None)
        stats = running.stats()
        return DriftReport(
            images=running.count,
            reference_images=ref.count,
            frechet_distance=frechet_distance(ref, stats, self._reference_sqrt),
            mean_shift=float(np.linalg.norm(stats.mean - ref.mean)),
        )
