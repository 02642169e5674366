"""What every gallery store does: one small interface, the same tests for SQLite and PostgreSQL.

    store = open_store(settings)            # SQLite at data_dir/galleries.db, or gallery_url
    ids, count = store.enroll("staff", "ada", binding, embs, images=None)
    state = store.state("staff")            # cheap: has the gallery changed since I looked?
    snapshot = store.snapshot("staff")      # every embedding, for the in-memory search

Every write is one transaction: an enrollment is stored whole or not at all. Each write bumps
the gallery's ``generation``; a process compares ``GalleryState.token`` with the one its
in-memory index was built from, so an enrollment answered by another worker, process or
replica is seen by the next search.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.config import Settings

NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_NAME = re.compile(NAME_PATTERN)


class GalleryError(Exception):
    """Base of the errors a route turns into a 4xx."""


class NotFound(GalleryError, LookupError):
    """No gallery, subject or image by that name (HTTP 404)."""


class ModelMismatch(GalleryError):
    """The gallery is bound to another model or version (HTTP 409)."""


class StoreUnavailable(GalleryError):
    """The database is unreachable or busy past its timeout (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class Binding:
    """The model a gallery's embeddings come from; they are only comparable within it."""

    model: str
    model_version: str
    dim: int


@dataclass(frozen=True, slots=True)
class GalleryState:
    gallery: str
    binding: Binding
    subjects: int
    images: int
    token: tuple[int, int]  # (row id, generation): changes whenever the gallery does


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A gallery's embeddings, in the order of their image ids."""

    token: tuple[int, int]
    binding: Binding
    image_ids: np.ndarray  # (N,) int64, ascending
    subject_of: np.ndarray  # (N,) int64, index into subjects
    subjects: list[str]
    embeddings: np.ndarray  # (N, D) float32
    code_of: dict[str, int]  # subject -> its index in subjects

    @property
    def max_id(self) -> int:
        return int(self.image_ids[-1]) if len(self.image_ids) else 0

    def can_extend(self, gallery_id: int, rewritten: int, binding: Binding) -> bool:
        """Whether this snapshot plus the rows with larger ids is the gallery now: true when
        nothing but enrollments happened since it was read (ids only grow, and writes to one
        gallery commit in id order: SQLite has one writer, PostgreSQL locks the gallery row)."""
        return (
            self.token[0] == gallery_id and self.token[1] >= rewritten and self.binding == binding
        )


@dataclass(frozen=True, slots=True)
class KeptImage:
    image_id: int
    subject: str
    data: bytes | None  # None: enrolled without keep_images


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} must match {NAME_PATTERN}")
    return name


def check_binding(gallery: str, bound: Binding, asked: Binding) -> None:
    if (bound.model, bound.model_version) != (asked.model, asked.model_version):
        raise ModelMismatch(
            f"gallery '{gallery}' uses model '{bound.model}' version {bound.model_version}, "
            f"not '{asked.model}' version {asked.model_version}; enroll with that model, or "
            f"re-embed the gallery (POST /galleries/{gallery}/reembed)"
        )


def embedding_blob(embeddings: np.ndarray) -> list[bytes]:
    return [np.ascontiguousarray(row, dtype="<f4").tobytes() for row in embeddings]


def make_snapshot(
    token: tuple[int, int],
    binding: Binding,
    rows: Sequence[tuple[int, str, np.ndarray]],
    since: Snapshot | None = None,
) -> Snapshot:
    """(id, subject, embedding) rows in id order -> a Snapshot; appended to ``since`` if given.
    Appending costs the new rows plus one copy of the arrays, where a full re-read of a
    million rows from SQLite took 50 s (docs/galleries.md)."""
    names = list(since.subjects) if since is not None else []
    code = dict(since.code_of) if since is not None else {}
    codes = np.empty(len(rows), dtype=np.int64)
    for i, (_, subject, _) in enumerate(rows):
        c = code.get(subject)
        if c is None:
            c = code[subject] = len(names)
            names.append(subject)
        codes[i] = c
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    embs = np.stack([r[2] for r in rows]).astype(np.float32) if rows else None
    if since is not None:
        ids = np.concatenate([since.image_ids, ids])
        codes = np.concatenate([since.subject_of, codes])
        embs = since.embeddings if embs is None else np.concatenate([since.embeddings, embs])
    if embs is None:
        embs = np.zeros((0, binding.dim), np.float32)
    return Snapshot(token, binding, ids, codes, names, embs, code)


def rows_of_subjects(snapshot: Snapshot) -> dict[str, np.ndarray]:
    """subject -> its row numbers in the snapshot."""
    order = np.argsort(snapshot.subject_of, kind="stable")
    bounds = np.flatnonzero(np.diff(snapshot.subject_of[order], prepend=-1, append=-1))
    return {
        snapshot.subjects[int(snapshot.subject_of[order[a]])]: order[a:b]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    }


class GalleryStore(ABC):
    """Persistent galleries. Methods are blocking: routes call them in a worker thread."""

    # A store that can find near neighbours itself (pgvector) sets this; else the service
    # searches a faiss index it builds from the snapshot.
    native_ann: bool = False

    @abstractmethod
    def enroll(
        self,
        gallery: str,
        subject: str,
        binding: Binding,
        embeddings: np.ndarray,
        images: Sequence[bytes] | None,
    ) -> tuple[list[int], int]:
        """Store (N, D) embeddings (and the images, if kept) for a subject, creating the
        gallery bound to ``binding`` if new. Returns the new image ids and the subject's image
        count. ModelMismatch if the gallery is bound to another model or version."""

    @abstractmethod
    def state(self, gallery: str) -> GalleryState | None:
        """The gallery's binding, sizes and change token; None if there is no such gallery."""

    @abstractmethod
    def galleries(self) -> list[GalleryState]: ...

    @abstractmethod
    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        """(subject, images) by name; NotFound if there is no such gallery."""

    @abstractmethod
    def snapshot(self, gallery: str, since: Snapshot | None = None) -> Snapshot | None:
        """Every embedding of the gallery (None if there is no such gallery). With ``since``,
        a snapshot of the same gallery read earlier, only newer rows are read when no delete or
        re-embed happened in between."""

    @abstractmethod
    def subject_embeddings(self, gallery: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
        """(image ids (n,), embeddings (n, D)) of one subject; empty if it has none."""

    @abstractmethod
    def delete_gallery(self, gallery: str) -> None: ...

    @abstractmethod
    def delete_subject(self, gallery: str, subject: str) -> None: ...

    @abstractmethod
    def delete_image(self, gallery: str, subject: str, image_id: int) -> None: ...

    @abstractmethod
    def kept_images(self, gallery: str) -> list[KeptImage]:
        """Every image of the gallery, with its bytes when they were kept."""

    @abstractmethod
    def rebind(
        self,
        gallery: str,
        token: tuple[int, int],
        binding: Binding,
        embeddings: dict[int, np.ndarray],
    ) -> None:
        """Replace every embedding and the binding in one transaction, if the gallery is still
        at ``token`` (else ModelMismatch: it changed while re-embedding; retry)."""

    def nearest(
        self, gallery: str, binding: Binding, query: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Approximate n nearest images: (ids, subject codes, subjects, embeddings); only for
        stores with ``native_ann``."""
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional
        pass


def open_store(settings: Settings) -> GalleryStore:
    url = settings.gallery_url.strip()
    if not url or url.startswith("sqlite:"):
        from app.galleries.sqlite import SqliteStore

        path = url.removeprefix("sqlite:///").removeprefix("sqlite:") if url else ""
        return SqliteStore(path or settings.data_dir / "galleries.db")
    if url.startswith(("postgresql://", "postgres://")):
        from app.galleries.postgres import PostgresStore

        return PostgresStore(url, ef_search=settings.gallery_ef_search)
    raise ValueError(
        f"IMGSIM_GALLERY_URL: unsupported scheme in {url.split(':', 1)[0]!r}; "
        "use sqlite:///path or postgresql://..."
    )
