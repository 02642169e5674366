"""Nearest enrolled images of a query: exact in memory, or faiss HNSW above a size, re-ranked.

    index = build_index(snapshot.embeddings, ann_min_images=50_000)
    rows = index.candidates(q, n)      # row numbers of (about) the n nearest, any order

Both answer *candidates*; :func:`rank_subjects` then computes their exact distances in float64
and keeps each subject's nearest image, so an approximate index can only miss a subject, never
report a wrong distance. docs/galleries.md has the recall measured against exact search.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

HNSW_NEIGHBOURS = 32  # M: links per node; 32 is faiss's usual choice for recall near 1
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH_MIN = 128  # candidates explored per query, at least; more when more are asked


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
        d2 = self.norms - 2.0 * (self.embeddings @ query)  # (N,), up to the constant ||q||^2
        if n >= len(d2):
            return np.arange(len(d2))
        # float32 cancellation can reorder near-ties by ~1e-6: rank_subjects re-ranks in float64.
        return np.argpartition(d2, n - 1)[:n]


class FaissIndex:
    """faiss HNSW (flat storage): sub-linear search, for galleries above ann_min_images."""

    kind = "faiss-hnsw"

    def __init__(self, embeddings: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)  # requests run concurrently; one core each is fairer
        self.index = faiss.IndexHNSWFlat(embeddings.shape[1], HNSW_NEIGHBOURS)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def candidates(self, query: np.ndarray, n: int) -> np.ndarray:
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH_MIN, n))
        _, rows = self.index.search(query[None, :].astype(np.float32), n, params=params)
        return rows[0][rows[0] >= 0]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_index(embeddings: np.ndarray, ann_min_images: int) -> Index:
    if len(embeddings) >= ann_min_images:
        if faiss_available():
            return FaissIndex(embeddings)
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
