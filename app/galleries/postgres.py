"""Galleries in PostgreSQL with pgvector, shared by any number of stateless API replicas.

    IMGSIM_GALLERY_URL=postgresql://imgsim:secret@db:5432/imgsim python -m app

The same tables as the SQLite store, with embeddings in a pgvector column. A gallery of at
least ``gallery_ann_min_images`` is searched in the database with an HNSW index (one partial
index per embedding width, created with the first gallery of that width), and the service
re-ranks the candidates exactly; smaller galleries are loaded and searched in memory like
SQLite's. Needs ``pip install 'imgsim[postgres]'`` and the ``vector`` extension (pgvector >= 0.5).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import psycopg

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
    make_snapshot,
)

# Any constant: every process takes it while creating the schema or an HNSW index, so two
# replicas starting together do not race on CREATE ... IF NOT EXISTS.
SCHEMA_LOCK = 0x696D6773696D

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS galleries (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    dim INTEGER NOT NULL,
    generation BIGINT NOT NULL DEFAULT 0,
    rewritten BIGINT NOT NULL DEFAULT 0,  -- generation of the last delete or re-embed
    subjects INTEGER NOT NULL DEFAULT 0,
    images INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS images (
    id BIGSERIAL PRIMARY KEY,
    gallery_id BIGINT NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding vector NOT NULL,
    image BYTEA,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS images_by_subject ON images (gallery_id, subject, id);
-- A process catching up with others' enrollments reads only the rows after the last it saw.
CREATE INDEX IF NOT EXISTS images_by_id ON images (gallery_id, id);
"""

POOL_SIZE = 8  # idle connections kept; more are opened under load and closed after


class PostgresStore(GalleryStore):
    native_ann = True

    def __init__(self, url: str, ef_search: int) -> None:
        self.url = url
        self.ef_search = ef_search
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue(POOL_SIZE)
        self._dims: set[int] = set()
        self._dims_lock = threading.Lock()
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        """A connection in a transaction: committed on exit, rolled back on an exception."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"gallery database: {e}") from e
        try:
            with conn.transaction():
                yield conn
        except psycopg.OperationalError as e:  # the server went away mid-call
            conn.close()
            raise StoreUnavailable(f"gallery database: {e}") from e
        except BaseException:
            if conn.broken:
                conn.close()
            else:
                self._release(conn)
            raise
        self._release(conn)

    def _release(self, conn: psycopg.Connection) -> None:
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def _ensure_hnsw(self, dim: int) -> None:
        if dim in self._dims:
            return
        with self._dims_lock, self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            db.execute(
                f"CREATE INDEX IF NOT EXISTS images_hnsw_{dim} ON images"
                f" USING hnsw ((embedding::vector({dim})) vector_l2_ops) WHERE dim = {dim}"
            )
            self._dims.add(dim)

    def enroll(
        self,
        gallery: str,
        subject: str,
        binding: Binding,
        embeddings: np.ndarray,
        images: Sequence[bytes] | None,
    ) -> tuple[list[int], int]:
        self._ensure_hnsw(binding.dim)
        kept: Sequence[bytes | None] = images if images is not None else [None] * len(embeddings)
        with self._tx() as db:
            # Creating the gallery row (or locking it) first serialises enrollments into one
            # gallery, so the counts below are exact.
            row = db.execute(
                "INSERT INTO galleries (name, model, model_version, dim) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
                " RETURNING id, model, model_version",
                (gallery, binding.model, binding.model_version, binding.dim),
            ).fetchone()
            assert row is not None
            gallery_id = row[0]
            check_binding(gallery, Binding(row[1], row[2], binding.dim), binding)
            # One statement for all rows: a round trip per image made enrollment 5x slower.
            rows = db.execute(
                "INSERT INTO images (gallery_id, subject, dim, embedding, image)"
                " SELECT %s, %s, %s, e::vector, i FROM unnest(%s::text[], %s::bytea[]) AS t(e, i)"
                " RETURNING id",
                (gallery_id, subject, binding.dim, [_vector(e) for e in embeddings], list(kept)),
            ).fetchall()
            ids = sorted(int(r[0]) for r in rows)  # a sequence: in upload order
            (count,) = db.execute(
                "SELECT count(*) FROM images WHERE gallery_id = %s AND subject = %s",
                (gallery_id, subject),
            ).fetchone()  # type: ignore[misc]
            db.execute(
                "UPDATE galleries SET generation = generation + 1, subjects = subjects + %s,"
                " images = images + %s WHERE id = %s",
                (int(count == len(ids)), len(ids), gallery_id),
            )
        return ids, int(count)

    def _states(self, where: str, args: tuple) -> list[GalleryState]:
        with self._tx() as db:
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
        found = self._states("WHERE name = %s", (gallery,))
        return found[0] if found else None

    def galleries(self) -> list[GalleryState]:
        return self._states("", ())

    def subjects(self, gallery: str) -> list[tuple[str, int]]:
        with self._tx() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT subject, count(*) FROM images WHERE gallery_id = %s"
                ' GROUP BY subject ORDER BY subject COLLATE "C"',
                (gallery_id,),
            ).fetchall()
        return [(s, int(n)) for s, n in rows]

    def snapshot(self, gallery: str, since: Snapshot | None = None) -> Snapshot | None:
        with self._tx() as db:
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # token matches rows
            row = db.execute(
                "SELECT id, generation, rewritten, model, model_version, dim FROM galleries"
                " WHERE name = %s",
                (gallery,),
            ).fetchone()
            if row is None:
                return None
            gallery_id, generation, rewritten, model, version, dim = row
            binding = Binding(model, version, dim)
            if since is not None and not since.can_extend(gallery_id, rewritten, binding):
                since = None
            rows = db.execute(
                "SELECT id, subject, embedding::real[] FROM images"
                " WHERE gallery_id = %s AND id > %s ORDER BY id",
                (gallery_id, since.max_id if since is not None else 0),
            ).fetchall()
        return make_snapshot((gallery_id, generation), binding, _decoded(rows), since)

    def nearest(
        self, gallery: str, binding: Binding, query: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        dim = binding.dim
        with self._tx() as db:
            # ef_search bounds what HNSW returns (at most 1000 in pgvector); the gallery filter
            # applies after the index scan, see docs/galleries.md.
            db.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(self.ef_search, n))}")
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                f"SELECT id, subject, embedding::real[] FROM images"
                f" WHERE gallery_id = %s AND dim = {dim}"
                f" ORDER BY embedding::vector({dim}) <-> %s::vector({dim}) LIMIT %s",
                (gallery_id, _vector(query), n),
            ).fetchall()
        snap = make_snapshot((0, 0), binding, _decoded(rows))
        return snap.image_ids, snap.subject_of, snap.subjects, snap.embeddings

    def subject_embeddings(self, gallery: str, subject: str) -> tuple[np.ndarray, np.ndarray]:
        with self._tx() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT id, embedding::real[] FROM images"
                " WHERE gallery_id = %s AND subject = %s ORDER BY id",
                (gallery_id, subject),
            ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, np.array([r[1] for r in rows], dtype=np.float32)

    def delete_gallery(self, gallery: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM galleries WHERE name = %s", (gallery,)).rowcount == 0:
                raise NotFound(f"no gallery '{gallery}'")

    def delete_subject(self, gallery: str, subject: str) -> None:
        with self._tx() as db:
            gallery_id = _gallery_id(db, gallery, lock=True)
            deleted = db.execute(
                "DELETE FROM images WHERE gallery_id = %s AND subject = %s", (gallery_id, subject)
            ).rowcount
            if deleted == 0:
                raise NotFound(f"no subject '{subject}' in gallery '{gallery}'")
            _recount(db, gallery_id)

    def delete_image(self, gallery: str, subject: str, image_id: int) -> None:
        with self._tx() as db:
            gallery_id = _gallery_id(db, gallery, lock=True)
            deleted = db.execute(
                "DELETE FROM images WHERE gallery_id = %s AND subject = %s AND id = %s",
                (gallery_id, subject, image_id),
            ).rowcount
            if deleted == 0:
                raise NotFound(f"no image {image_id} of subject '{subject}' in gallery '{gallery}'")
            _recount(db, gallery_id)

    def kept_images(self, gallery: str) -> list[KeptImage]:
        with self._tx() as db:
            gallery_id = _gallery_id(db, gallery)
            rows = db.execute(
                "SELECT id, subject, image FROM images WHERE gallery_id = %s ORDER BY id",
                (gallery_id,),
            ).fetchall()
        return [KeptImage(int(i), s, bytes(d) if d is not None else None) for i, s, d in rows]

    def rebind(
        self,
        gallery: str,
        token: tuple[int, int],
        binding: Binding,
        embeddings: dict[int, np.ndarray],
    ) -> None:
        self._ensure_hnsw(binding.dim)
        with self._tx() as db:
            row = db.execute(
                "SELECT id, generation FROM galleries WHERE name = %s FOR UPDATE", (gallery,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no gallery '{gallery}'")
            if tuple(row) != token:
                raise ModelMismatch(f"gallery '{gallery}' changed while re-embedding; retry")
            with db.cursor() as cur:
                cur.executemany(
                    "UPDATE images SET embedding = %s::vector, dim = %s WHERE id = %s",
                    [(_vector(e), binding.dim, i) for i, e in embeddings.items()],
                )
            db.execute(
                "UPDATE galleries SET model = %s, model_version = %s, dim = %s,"
                " generation = generation + 1, rewritten = generation + 1 WHERE id = %s",
                (binding.model, binding.model_version, binding.dim, token[0]),
            )


def _vector(emb: np.ndarray) -> str:
    return "[" + ",".join(repr(float(x)) for x in np.asarray(emb, dtype=np.float32)) + "]"


def _gallery_id(db: psycopg.Connection, gallery: str, lock: bool = False) -> int:
    sql = "SELECT id FROM galleries WHERE name = %s" + (" FOR UPDATE" if lock else "")
    row = db.execute(sql, (gallery,)).fetchone()
    if row is None:
        raise NotFound(f"no gallery '{gallery}'")
    return int(row[0])


def _recount(db: psycopg.Connection, gallery_id: int) -> None:
    db.execute(
        "UPDATE galleries SET generation = generation + 1, rewritten = generation + 1,"
        " subjects = (SELECT count(DISTINCT subject) FROM images WHERE gallery_id = %(g)s),"
        " images = (SELECT count(*) FROM images WHERE gallery_id = %(g)s) WHERE id = %(g)s",
        {"g": gallery_id},
    )


def _decoded(rows: list[tuple]) -> list[tuple[int, str, np.ndarray]]:
    return [(i, subject, np.asarray(e, dtype=np.float32)) for i, subject, e in rows]
