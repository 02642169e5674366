"""A process's view of the galleries: the store plus each gallery's in-memory index.

    search = GallerySearch(store, ann_min_images=50_000)
    state = search.state("staff")                       # NotFound if there is no such gallery
    candidates, kind = search.identify(state, q, top_k=5)

Each call reads the gallery's change token from the store (one indexed row) and rebuilds the
index only when it moved: every worker and replica answers from what is committed, without
being told about other processes' writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from app.galleries.index import Candidate, Index, build_index, rank_subjects, top_subjects
from app.galleries.store import (
    GalleryState,
    GalleryStore,
    ModelMismatch,
    NotFound,
    Snapshot,
    rows_of_subjects,
)


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    index: Index
    rows_of: dict[str, np.ndarray]  # subject -> its row numbers


class GallerySearch:
    def __init__(self, store: GalleryStore, ann_min_images: int) -> None:
        self.store = store
        self.ann_min_images = ann_min_images
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()  # one rebuild at a time; searches do not take it

    def state(self, gallery: str) -> GalleryState:
        state = self.store.state(gallery)
        if state is None:
            self._loaded.pop(gallery, None)  # deleted, perhaps by another process
            raise NotFound(f"no gallery '{gallery}'")
        return state

    def identify(
        self, state: GalleryState, query: np.ndarray, top_k: int
    ) -> tuple[list[Candidate], str]:
        """The top_k subjects nearest to query (D,), and the kind of index that found them."""
        if state.images == 0:
            return [], "exact"
        if self.store.native_ann and state.images >= self.ann_min_images:
            return self._identify_in_store(state, query, top_k), "pgvector-hnsw"
        loaded = self._load(state)
        snap = loaded.snapshot

        def ranked_among(n: int) -> list[Candidate]:
            rows = loaded.index.candidates(query, n)
            return rank_subjects(
                rows, query, snap.embeddings, snap.image_ids, snap.subject_of, snap.subjects
            )

        return top_subjects(ranked_among, top_k, len(snap.image_ids)), loaded.index.kind

    def _identify_in_store(
        self, state: GalleryState, query: np.ndarray, top_k: int
    ) -> list[Candidate]:
        def ranked_among(n: int) -> list[Candidate]:
            ids, codes, names, embs = self.store.nearest(state.gallery, state.binding, query, n)
            return rank_subjects(np.arange(len(ids)), query, embs, ids, codes, names)

        return top_subjects(ranked_among, top_k, state.images)

    def nearest_of_subject(
        self, state: GalleryState, subject: str, query: np.ndarray
    ) -> Candidate | None:
        """The subject's enrolled image nearest to query, exactly; None if it has none."""
        if self.store.native_ann and state.images >= self.ann_min_images:
            ids, embs = self.store.subject_embeddings(state.gallery, subject)
            codes = np.zeros(len(ids), dtype=np.int64)
        else:
            loaded = self._load(state)
            rows = loaded.rows_of.get(subject)
            if rows is None:
                return None
            snap = loaded.snapshot
            ids, embs = snap.image_ids[rows], snap.embeddings[rows]
            codes = np.zeros(len(rows), dtype=np.int64)
        if len(ids) == 0:
            return None
        return rank_subjects(np.arange(len(ids)), query, embs, ids, codes, [subject])[0]

    def _load(self, state: GalleryState) -> Loaded:
        loaded = self._loaded.get(state.gallery)
        if loaded is None or loaded.snapshot.token != state.token:
            with self._lock:
                loaded = self._loaded.get(state.gallery)
                if loaded is None or loaded.snapshot.token != state.token:
                    loaded = self._build(state.gallery)
        if loaded.snapshot.binding != state.binding:
            # Re-embedded between reading the state and loading: the query is from the old model.
            raise ModelMismatch(f"gallery '{state.gallery}' was just re-embedded; retry")
        return loaded

    def _build(self, gallery: str) -> Loaded:
        previous = self._loaded.get(gallery)
        snap = self.store.snapshot(gallery, previous.snapshot if previous is not None else None)
        if snap is None:
            self._loaded.pop(gallery, None)
            raise NotFound(f"no gallery '{gallery}'")
        reusable = previous is not None and previous.snapshot.binding == snap.binding
        index = build_index(
            snap.embeddings,
            snap.image_ids,
            self.ann_min_images,
            previous.index if reusable and previous is not None else None,
        )
        loaded = Loaded(snap, index, rows_of_subjects(snap))
        self._loaded[gallery] = loaded
        return loaded

    def forget(self, gallery: str) -> None:
        self._loaded.pop(gallery, None)
