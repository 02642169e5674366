"""Galleries in one SQLite file (the embedded default): ``data_dir/galleries.db``.

WAL journal with ``synchronous=FULL``: a committed enrollment is on disk before the route
answers, so it survives ``kill -9`` (and a power cut), and readers in other processes never
block the writer. A connection per call: they are cheap to open, and each thread of each worker
gets its own without a pool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np

from app.galleries.store import (
    Binding,
    GalleryState,
    GalleryStore,
    KeptImage,
    ModelMismatch,
    NotFound,
    Snapshot,
    StoreUnavailable,
    check_binding,
    embedding_blob,
    make_snapshot,
)

BUSY_TIMEOUT_S = 10.0  # a writer waits this long for another process's write lock, then 503

SCHEMA = """
CREATE TABLE IF NOT EXISTS galleries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a re-created gallery gets a new token
    name TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    rewritten INTEGER NOT NULL DEFAULT 0,  -- generation of the last delete or re-embed
    subjects INTEGER NOT NULL DEFAULT 0,  -- kept up to date by each write, so that reading a
    images INTEGER NOT NULL DEFAULT 0,  -- gallery's state per request costs no count(*)
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    embedding BLOB NOT NULL,  -- float32 little-endian, dim values
    image BLOB,  -- the uploaded bytes when enrolled with keep_images
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS images_by_subject ON images (gallery_id, subject, id);
-- A process catching up with others' enrollments reads only the rows after the last it saw.
CREATE INDEX IF NOT EXISTS images_by_id ON images (gallery_id, id);
"""


class SqliteStore(GalleryStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the file
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we say BEGIN ourselves; IMMEDIATE takes the write lock up front,
        # so two writers queue (busy timeout) instead of failing on a lock upgrade.
        try:
            with closing(
                sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            ) as db:
                db.execute("PRAGMA foreign_keys=ON")
                db.execute("PRAGMA synchronous=FULL")
                yield db
        except sqlite3.OperationalError as e:  # locked past the timeout, disk full, unreadable
            raise StoreUnavailable(f"gallery database: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def enroll(
        self,
        gallery: str,
        subject: str,
        binding: Binding,
        embeddings: np.ndarray,
        images: Sequence[bytes] | None,
    ) -> tuple[list[int], int]:
        blobs = embedding_blob(embeddings)
        kept: Sequence[bytes | None] = images if images is not None else [None] * len(blobs)
        with self._write() as db:
            row = db.execute(
                "SELECT id, model, model_version FROM galleries WHERE name = ?", (gallery,)
            ).fetchone()
            if row is None:
                gallery_id = db.execute(
                    "INSERT INTO galleries (name, model, model_version, dim) VALUES (?, ?, ?, ?)",
                    (gallery, binding.model, binding.model_version, binding.dim),
                ).lastrowid
            else:
                gallery_id = row[0]
                check_binding(gallery, Binding(row[1], row[2], binding.dim), binding)
            ids = [
                db.execute(
                    "INSERT INTO images (gallery_id, subject, embedding, image)"
                    " VALUES (?, ?, ?, ?)",
                    (gallery_id, subject, blob, data),
                ).lastrowid
                for blob, data in zip(blobs, kept, strict=True)
            ]
            (count,) = db.execute(
                "SELECT count(*) FROM images WHERE gallery_id = ? AND subject = ?",
                (gallery_id, subject),
            ).fetchone()
            new_subject = int(count == len(ids))
            db.execute(
                "UPDATE galleries SET generation = generation + 1, subjects = subjects + ?,"
                " images = images + ? WHERE id = ?",
                (new_subject, len(ids), gallery_id),
            )
        return [int(i) for i in ids], int(count)

    def _states(self, db: sqlite3.Connection, where: str, args: tuple) -> list[GalleryState]:
        rows = db.execute(
            "SELECT name, model, model_version, dim, id, generation, subjects, images"
            f" FROM galleries {where} ORDER BY name",
            args,
        ).fetchall()
        return [
            GalleryState(name, Binding(model, version, dim), subjects, images, (gid, gen))
            for name, model, version, dim, gid, gen, subjects, images in rows
        ]

    def state(self, gallery: str) -> GalleryState | None:
        with self._connect() as db:
            found = self._states(db, "WHERE name = ?", (gallery,))
        return found[0] if found else None

    def galleries(self) -> list[GalleryState]:
        with self._connect() as db:
            return self._states(db, "", ())

    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        with self._connect() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT subject, count(*) FROM images WHERE gallery_id = ?"
                " GROUP BY subject ORDER BY subject",
                (gallery_id,),
            ).fetchall()
        return [(s, int(n)) for s, n in rows]

    def snapshot(self, gallery: str, since: Snapshot | None = None) -> Snapshot | None:
        # One read transaction, so the token matches the rows.
        with self._connect() as db:
            db.execute("BEGIN")
            row = db.execute(
                "SELECT id, generation, rewritten, model, model_version, dim FROM galleries"
                " WHERE name = ?",
                (gallery,),
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            gallery_id, generation, rewritten, model, version, dim = row
            binding = Binding(model, version, dim)
            if since is not None and not since.can_extend(gallery_id, rewritten, binding):
                since = None
            rows = db.execute(
                "SELECT id, subject, embedding FROM images WHERE gallery_id = ? AND id > ?"
                " ORDER BY id",
                (gallery_id, since.max_id if since is not None else 0),
            ).fetchall()
            db.execute("COMMIT")
        return make_snapshot((gallery_id, generation), binding, _decoded(rows), since)

    def subject_embeddings(self, gallery: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
        with self._connect() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT id, subject, embedding FROM images WHERE gallery_id = ? AND subject = ?"
                " ORDER BY id",
                (gallery_id, subject),
            ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.array([e for _, _, e in _decoded(rows)], dtype=np.float32)

    def delete_gallery(self, gallery: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM galleries WHERE name = ?", (gallery,)).rowcount == 0:
                raise NotFound(f"no gallery '{gallery}'")

    def delete_subject(self, gallery: str, subject: str) -> None:
        with self._write() as db:
            gallery_id = _gallery_id(db, gallery)
            deleted = db.execute(
                "DELETE FROM images WHERE gallery_id = ? AND subject = ?", (gallery_id, subject)
            ).rowcount
            if deleted == 0:
                raise NotFound(f"no subject '{subject}' in gallery '{gallery}'")
            _recount(db, gallery_id)

    def delete_image(self, gallery: str, subject: str, image_id: int) -> None:
        with self._write() as db:
            gallery_id = _gallery_id(db, gallery)
            deleted = db.execute(
                "DELETE FROM images WHERE gallery_id = ? AND subject = ? AND id = ?",
                (gallery_id, subject, image_id),
            ).rowcount
            if deleted == 0:
                raise NotFound(f"no image {image_id} of subject '{subject}' in gallery '{gallery}'")
            _recount(db, gallery_id)

    def kept_images(self, gallery: str) -> list[KeptImage]:
        with self._connect() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT id, subject, image FROM images WHERE gallery_id = ? ORDER BY id",
                (gallery_id,),
            ).fetchall()
        return [KeptImage(int(i), s, data) for i, s, data in rows]

    def rebind(
        self,
        gallery: str,
        token: tuple[int, int],
        binding: Binding,
        embeddings: dict[int, np.ndarray],
    ) -> None:
        with self._write() as db:
            row = db.execute(
                "SELECT id, generation FROM galleries WHERE name = ?", (gallery,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no gallery '{gallery}'")
            if tuple(row) != token:
                raise ModelMismatch(f"gallery '{gallery}' changed while re-embedding; retry")
            ids = list(embeddings)
            db.executemany(
                "UPDATE images SET embedding = ? WHERE id = ?",
                zip(embedding_blob(np.stack([embeddings[i] for i in ids])), ids, strict=True),
            )
            db.execute(
                "UPDATE galleries SET model = ?, model_version = ?, dim = ?,"
                " generation = generation + 1, rewritten = generation + 1 WHERE id = ?",
                (binding.model, binding.model_version, binding.dim, token[0]),
            )


def _gallery_id(db: sqlite3.Connection, gallery: str) -> int:
    row = db.execute("SELECT id FROM galleries WHERE name = ?", (gallery,)).fetchone()
    if row is None:
        raise NotFound(f"no gallery '{gallery}'")
    return int(row[0])


def _recount(db: sqlite3.Connection, gallery_id: int) -> None:
    """After a write: the new generation and sizes (the index makes the counts cheap)."""
    db.execute(
        "UPDATE galleries SET generation = generation + 1, rewritten = generation + 1,"
        " subjects = (SELECT count(DISTINCT subject) FROM images WHERE gallery_id = ?1),"
        " images = (SELECT count(*) FROM images WHERE gallery_id = ?1) WHERE id = ?1",
        (gallery_id,),
    )


def _decoded(rows: list[tuple]) -> list[tuple[int, str, np.ndarray]]:
    return [(i, subject, np.frombuffer(blob, dtype="<f4")) for i, subject, blob in rows]
