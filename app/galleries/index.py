"""Nearest enrolled images of a query: exact in memory, or faiss IVF above a size, re-ranked.

    index = build_index(snapshot.embeddings, snapshot.image_ids, ann_min_images=50_000)
    rows = index.candidates(q, n)      # row numbers of (about) the n nearest, any order

Both answer *candidates*; :func:`rank_subjects` then computes their exact distances in float64
and keeps each subject's nearest image, so an approximate index can only miss a subject, never
report a wrong distance. docs/galleries.md has the recall measured against exact search.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

# IVF-Flat, not HNSW: it takes ids, adds and removes in place (an enrollment costs the index
# only its own rows) and builds in seconds where HNSW took 88 s for 100k rows on this
# project's 2-core box; recall against exact search is in docs/galleries.md.
IVF_LISTS_PER_SQRT_N = 4  # nlist = 4 sqrt(N): faiss's guideline for up to ~1M vectors
IVF_TRAIN_PER_LIST = 40  # k-means sample: 40 points per list (faiss warns below 39)
IVF_NPROBE = 128  # lists scanned per query (4000 at 1M): recall vs time in docs/galleries.md
REBUILD_GROWTH = 4.0  # re-train when the gallery grew or shrank this much since training


@dataclass(frozen=True, slots=True)
class Candidate:
    subject: str
    distance: float
    image_id: int


class Index(Protocol):
    kind: str

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        """Row numbers of (about) the n rows nearest to query (D,)."""
        ...


class ExactIndex:
    """One matrix product over every embedding: ||x - q||^2 = ||x||^2 - 2 x.q + ||q||^2."""

    kind = "exact"

    def __init__(self, embeddings: np.ndarray) -> None:
        self.embeddings = embeddings  # (N, D) float32
        self.norms = np.einsum("ij,ij->i", embeddings, embeddings)  # (N,)

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        # einsum, not @: numpy's @ goes to OpenBLAS, whose thread team on a busy 2-core box
        # took 24 ms for what one thread does in 0.1 ms (10k x 64; docs/galleries.md).
        dots = np.einsum("ij,j->i", self.embeddings, query)  # (N,)
        d2 = self.norms - 2.0 * dots  # up to the constant ||q||^2
        if n >= len(d2):
            return np.arange(len(d2))
        # float32 cancellation can reorder near-ties by ~1e-6: rank_subjects re-ranks in float64.
        return np.argpartition(d2, n - 1)[:n]


class FaissIndex:
    """faiss IVF-Flat keyed by image id: sub-linear search for galleries above ann_min_images."""

    kind = "faiss-ivf"

    def __init__(self, embeddings: np.ndarray, image_ids: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # requests run concurrently; one core each is fairer
        n, dim = embeddings.shape
        nlist = max(1, min(int(IVF_LISTS_PER_SQRT_N * np.sqrt(n)), n // IVF_TRAIN_PER_LIST))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        rng = np.random.default_rng(0)
        sample = rng.choice(n, min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)
        self.index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
        self.index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), image_ids)
        self.trained_for = n
        self.nprobe = IVF_NPROBE
        self._map(image_ids)

    def _map(self, image_ids: np.ndarray) -> None:
        self._order = np.argsort(image_ids, kind="stable")  # rows by id
        self._ids = image_ids[self._order]  # sorted

    def updated(self, embeddings: np.ndarray, image_ids: np.ndarray) -> FaissIndex | None:
        """A copy brought up to this snapshot by adding and removing rows, or None when the
        gallery changed size so much that a re-trained index would search better. A copy: other
        threads may be searching this one."""
        import faiss

        n = len(image_ids)
        if not self.trained_for / REBUILD_GROWTH <= n <= self.trained_for * REBUILD_GROWTH:
            return None
        new = copy.copy(self)
        new.index = faiss.clone_index(self.index)
        gone = np.setdiff1d(self._ids, image_ids, assume_unique=True)
        if len(gone):
            new.index.remove_ids(gone.astype(np.int64))
        added = ~np.isin(image_ids, self._ids, assume_unique=True)
        if added.any():
            new.index.add_with_ids(
                np.ascontiguousarray(embeddings[added], dtype=np.float32), image_ids[added]
            )
        new._map(image_ids)
        return new

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        import faiss

        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        _, ids = self.index.search(query[None, :].astype(np.float32), n, params=params)
        found = ids[0][ids[0] >= 0]
        return self._order[np.searchsorted(self._ids, found)]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_index(
    embeddings: np.ndarray,
    image_ids: np.ndarray,
    ann_min_images: int,
    previous: Index | None = None,
) -> Index:
    """The index for a snapshot; ``previous`` (the index of the gallery's last snapshot, same
    model) is updated in place of a rebuild where it can be."""
    if len(embeddings) >= ann_min_images:
        if isinstance(previous, FaissIndex):
            updated = previous.updated(embeddings, image_ids)
            if updated is not None:
                return updated
        if faiss_available():
            return FaissIndex(embeddings, image_ids)
        logger.warning(
            "%d embeddings but faiss is not installed (pip install 'imgsim[faiss]'): "
            "searching exactly",
            len(embeddings),
        )
    return ExactIndex(embeddings)


def rank_subjects(
    rows: np.ndarray,
    query: np.ndarray,
    embeddings: np.ndarray,
    image_ids: np.ndarray,
    subject_of: np.ndarray,
    subjects: list[str],
) -> list[Candidate]:
    """Each subject among ``rows`` once, at its nearest image, by exact distance."""
    diff = embeddings[rows].astype(np.float64) - query.astype(np.float64)  # (n, D)
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    order = np.lexsort((image_ids[rows], dist))  # ties: the older image
    seen: set[int] = set()
    out: list[Candidate] = []
    for i in order:
        code = int(subject_of[rows[i]])
        if code not in seen:
            seen.add(code)
            out.append(Candidate(subjects[code], float(dist[i]), int(image_ids[rows[i]])))
    return out


def top_subjects(
    ranked_among: Callable[[int], list[Candidate]], top_k: int, total: int
) -> list[Candidate]:
    """The top_k subjects, from ``ranked_among(n)``: the subjects of the n nearest images.
    Asks for more images until they hold top_k subjects (one subject's many near-duplicate
    images can fill the first n)."""
    n = min(total, max(8 * top_k, 64))
    while True:
        ranked = ranked_among(n)
        if len(ranked) >= top_k or n >= total:
            return ranked[:top_k]
        n = min(total, n * 4)
