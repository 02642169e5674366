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
    """A gallery's embeddings, grouped by subject (rows of one subject are contiguous)."""

    token: tuple[int, int]
    binding: Binding
    image_ids: np.ndarray  # (N,) int64
    subject_of: np.ndarray  # (N,) int64, index into subjects
    subjects: list[str]
    embeddings: np.ndarray  # (N, D) float32


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


def group_rows(
    image_ids: Sequence[int], subjects: Sequence[str], rows: Sequence[np.ndarray], dim: int
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Rows sorted by (subject, id) -> the Snapshot arrays."""
    names: list[str] = []
    codes = np.empty(len(subjects), dtype=np.int64)
    for i, s in enumerate(subjects):
        if not names or names[-1] != s:
            names.append(s)
        codes[i] = len(names) - 1
    embs = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    return np.asarray(image_ids, dtype=np.int64), codes, names, embs


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
    def snapshot(self, gallery: str) -> Snapshot | None: ...

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

        return PostgresStore(url)
    raise ValueError(
        f"IMGSIM_GALLERY_URL: unsupported scheme in {url.split(':', 1)[0]!r}; "
        "use sqlite:///path or postgresql://..."
    )
