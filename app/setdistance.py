"""How far apart two sets of embeddings are: the Fréchet distance between their Gaussians.

    a, b = GaussianStats.of(emb_a), GaussianStats.of(emb_b)   # emb: (N, D)
    frechet_distance(a, b)  # ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))

The Fréchet Inception Distance (Heusel et al. 2017, arXiv:1706.08500) in a tower's embedding
space. The one module behind POST /similarity/sets, ``python -m training.setdistance`` and the
drift monitor (app/drift.py), so the online and offline numbers are the same computation. All
arithmetic in float64 numpy: it runs in worker threads and scripts, never holds the GIL long.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Array = np.ndarray


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of ``count`` embeddings (sample covariance, ddof=1)."""

    count: int
    mean: Array  # (D,) float64
    cov: Array  # (D, D) float64, symmetric

    @classmethod
    def of(cls, emb: Array | torch.Tensor) -> GaussianStats:
        """Statistics of embeddings (N, D), N >= 2."""
        return RunningStats.of(emb).stats()

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])


class RunningStats:
    """Streaming mean and covariance: O(D^2) memory whatever the number of embeddings.

    Batches are merged with Chan et al.'s pairwise update (the batch form of Welford's), which
    stays accurate where sum-of-squares minus square-of-sums cancels: unit-length embeddings
    have a mean far from zero next to small variances.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.mean = np.zeros(dim)  # (D,)
        self.m2 = np.zeros((dim, dim))  # (D, D) sum of outer products of deviations

    @classmethod
    def of(cls, emb: Array | torch.Tensor) -> RunningStats:
        x = _as_float64(emb)
        running = cls(x.shape[1])
        running.update(x)
        return running

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def update(self, emb: Array | torch.Tensor) -> None:
        """Add a batch of embeddings (B, D)."""
        x = _as_float64(emb)
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings of dim {x.shape[1]}; these statistics are of {self.dim}")
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(axis=0)
        dev = x - mean
        self._merge(n, mean, dev.T @ dev)

    def merge(self, other: RunningStats) -> None:
        """Add everything ``other`` has seen."""
        if other.count:
            self._merge(other.count, other.mean, other.m2)

    def _merge(self, n: int, mean: Array, m2: Array) -> None:
        total = self.count + n
        delta = mean - self.mean  # (D,)
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def copy(self) -> RunningStats:
        out = RunningStats(self.dim)
        out.count, out.mean, out.m2 = self.count, self.mean.copy(), self.m2.copy()
        return out

    def stats(self) -> GaussianStats:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 embeddings; have {self.count}")
        cov = self.m2 / (self.count - 1)
        return GaussianStats(self.count, self.mean.copy(), (cov + cov.T) / 2)


def sqrt_psd(cov: Array) -> Array:
    """The symmetric square root of a positive semi-definite matrix, via eigh.

    Eigenvalues that rounding pushed below zero are clipped to 0: the matrix is PSD by
    construction, so a negative one is noise, and its square root would be complex.
    """
    w, v = np.linalg.eigh(cov)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov_a: Array, cov_b: Array, sqrt_a: Array | None = None) -> float:
    """Tr((S_a S_b)^(1/2)) for PSD S_a, S_b.

    S_a S_b is not symmetric, so scipy.linalg.sqrtm on it (what the FID reference code does)
    goes through a complex Schur form and can return imaginary leftovers or fail on singular
    matrices. S_a S_b is similar to S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD, so the trace
    is the sum of the square roots of that matrix's eigenvalues: real, and exact for singular
    covariances too (fewer images than dimensions), so no ridge is added.
    """
    root = sqrt_psd(cov_a) if sqrt_a is None else sqrt_a
    m = root @ cov_b @ root
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats, sqrt_a: Array | None = None) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)); ``sqrt_a`` = sqrt_psd(a.cov) if
    the caller has it (the drift monitor compares many sets with one reference)."""
    if a.dim != b.dim:
        raise ValueError(f"statistics of dim {a.dim} and {b.dim}")
    diff = a.mean - b.mean
    tr = np.trace(a.cov) + np.trace(b.cov) - 2 * trace_sqrt_product(a.cov, b.cov, sqrt_a)
    # The distance is >= 0; rounding on identical sets leaves about -1e-16 * Tr(S).
    return max(0.0, float(diff @ diff + tr))


def mean_distance(a: Array | torch.Tensor, b: Array | torch.Tensor, block: int = 2048) -> float:
    """Mean euclidean distance over all pairs (a_i, b_j); (N, D) and (M, D), in blocks of rows
    so memory stays O(block * M)."""
    xa, xb = _as_float64(a), _as_float64(b)
    sq_b = (xb * xb).sum(axis=1)  # (M,)
    total = 0.0
    for start in range(0, len(xa), block):
        rows = xa[start : start + block]
        # |a|^2 + |b|^2 - 2 a.b in float64: the cancellation error (~1e-16) is far below the
        # distances of interest; clipped so a near-duplicate never gives sqrt(-1e-17).
        d2 = (rows * rows).sum(axis=1)[:, None] + sq_b[None, :] - 2 * rows @ xb.T
        total += float(np.sqrt(np.clip(d2, 0.0, None)).sum())
    return total / (len(xa) * len(xb))


def _as_float64(emb: Array | torch.Tensor) -> Array:
    x = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D); got shape {x.shape}")
    return x
