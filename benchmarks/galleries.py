"""Gallery search at scale: identify latency and recall of exact, faiss and pgvector search.

    python -m benchmarks.galleries                          # make bench-galleries; RESULTS.md
    python -m benchmarks.galleries --sizes 10000 --queries 50 --out /tmp/g.md   # smoke run

Synthetic galleries of unit vectors (D=64, the shipped mnist tower's width): N/4 subjects with
4 images each, every image its subject's centre plus noise (within-subject distance ~0.55,
between subjects ~1.4, about what trained towers give). Queries are fresh noisy images of
random subjects. For each size:

* exact: app.galleries.index.ExactIndex, the in-memory path of every gallery below
  gallery_ann_min_images; its answers are the reference for recall.
* faiss: app.galleries.index.FaissIndex (IVF-Flat), the in-memory path above that size.
* pgvector: PostgresStore.nearest through GallerySearch, i.e. the SQL a replica runs, against a
  real PostgreSQL started by pgserver (up to --pg-max-size), at several hnsw.ef_search values
  (the default, IMGSIM_GALLERY_EF_SEARCH, is marked). The rows are loaded with COPY and the
  index built once, in parallel, as an operator would bulk-load; enrollment through the API
  keeps the index up to date row by row, measured separately below.

All three return subjects re-ranked by exact distance (app.galleries.index.rank_subjects), so
recall@k = the share of exact search's top-k subjects that the index also returns in its top k.
Also measured: the time to build each index, SQLite's snapshot read (full, and extended after
another process enrolled), and enrollment throughput of each store through its enroll().
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.config import Settings
from app.galleries.index import (
    IVF_NPROBE,
    Candidate,
    ExactIndex,
    FaissIndex,
    rank_subjects,
    top_subjects,
)
from app.galleries.search import GallerySearch
from app.galleries.sqlite import SqliteStore
from app.galleries.store import Binding, GalleryStore, Snapshot, embedding_blob
from benchmarks.report import busy_warning, machine_info, machine_lines, table, write_section

DIM = 64
PER_SUBJECT = 4
NOISE = 0.4  # norm of the per-image offset from its subject's centre, before re-normalising
TOP_K = 10
BINDING = Binding("bench", "000000000000", DIM)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic(n: int, queries: int, seed: int = 0) -> tuple[Snapshot, np.ndarray]:
    rng = np.random.default_rng(seed)
    subjects = n // PER_SUBJECT
    centres = unit(rng.standard_normal((subjects, DIM), dtype=np.float32))
    codes = np.repeat(np.arange(subjects), PER_SUBJECT)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) * (NOISE / np.sqrt(DIM))
    embs = unit(centres[codes] + noise)  # (N, D), rows of one subject contiguous
    asked = rng.integers(0, subjects, queries)
    q_noise = rng.standard_normal((queries, DIM), dtype=np.float32) * (NOISE / np.sqrt(DIM))
    names = [f"s{i:07d}" for i in range(subjects)]
    snap = Snapshot(
        (1, 1),
        BINDING,
        np.arange(1, n + 1, dtype=np.int64),
        codes.astype(np.int64),
        names,
        embs,
        {s: i for i, s in enumerate(names)},
    )
    return snap, unit(centres[asked] + q_noise)


def timed(search: Callable[[np.ndarray], list[Candidate]], queries: np.ndarray):
    answers, ms = [], []
    for q in queries:
        started = time.perf_counter()
        answers.append(search(q))
        ms.append((time.perf_counter() - started) * 1000)
    return answers, ms


def in_memory(index, snap: Snapshot) -> Callable[[np.ndarray], list[Candidate]]:
    def search(q: np.ndarray) -> list[Candidate]:
        def ranked_among(n: int) -> list[Candidate]:
            rows = index.candidates(q, n)
            return rank_subjects(
                rows, q, snap.embeddings, snap.image_ids, snap.subject_of, snap.subjects
            )

        return top_subjects(ranked_among, TOP_K, len(snap.image_ids))

    return search


def recall(got: list[list[Candidate]], want: list[list[Candidate]], k: int) -> float:
    hits = [
        len({c.subject for c in g[:k]} & {c.subject for c in w[:k]}) / min(k, len(w))
        for g, w in zip(got, want, strict=True)
    ]
    return statistics.fmean(hits)


def pct(ms: list[float], p: float) -> float:
    return float(np.percentile(ms, p))


def sqlite_bulk(path: Path, snap: Snapshot) -> SqliteStore:
    """A SQLite store holding the gallery, loaded in one transaction (not via enroll)."""
    store = SqliteStore(path)
    with store._write() as db:
        gid = db.execute(
            "INSERT INTO galleries (name, model, model_version, dim, generation, subjects, images)"
            " VALUES ('bench', ?, ?, ?, 1, ?, ?)",
            (BINDING.model, BINDING.model_version, DIM, len(snap.subjects), len(snap.image_ids)),
        ).lastrowid
        db.executemany(
            "INSERT INTO images (id, gallery_id, subject, embedding) VALUES (?, ?, ?, ?)",
            (
                (int(i), gid, snap.subjects[c], b)
                for i, c, b in zip(
                    snap.image_ids, snap.subject_of, embedding_blob(snap.embeddings), strict=True
                )
            ),
        )
    return store


def pg_bulk(url: str, snap: Snapshot) -> tuple[GalleryStore, float]:
    """A PostgreSQL store holding the gallery (COPY, then the HNSW index built once: timed)."""
    from app.galleries.postgres import PostgresStore, _vector

    store = PostgresStore(url, ef_search=Settings().gallery_ef_search)
    with store._tx() as db:
        gid = db.execute(
            "INSERT INTO galleries (name, model, model_version, dim, generation, subjects, images)"
            " VALUES ('bench', %s, %s, %s, 1, %s, %s) RETURNING id",
            (BINDING.model, BINDING.model_version, DIM, len(snap.subjects), len(snap.image_ids)),
        ).fetchone()[0]
        with db.cursor().copy(
            "COPY images (id, gallery_id, subject, dim, embedding) FROM STDIN"
        ) as copy:
            for i, c, e in zip(snap.image_ids, snap.subject_of, snap.embeddings, strict=True):
                copy.write_row((int(i), gid, snap.subjects[c], DIM, _vector(e)))
    started = time.perf_counter()
    with store._tx() as db:
        # The graph must fit in maintenance_work_mem or the build slows down many times over
        # (about 0.7 GB at 1M x 64-d); pgvector >= 0.6 builds with parallel workers.
        db.execute("SET LOCAL maintenance_work_mem = '4GB'")
        helpers = max(0, (os.cpu_count() or 1) - 1)
        db.execute(f"SET LOCAL max_parallel_maintenance_workers = {helpers}")
        db.execute(
            f"CREATE INDEX images_hnsw_{DIM} ON images"
            f" USING hnsw ((embedding::vector({DIM})) vector_l2_ops) WHERE dim = {DIM}"
        )
        db.execute("ANALYZE images")
    store._dims.add(DIM)
    return store, time.perf_counter() - started


def pg_plan_uses_hnsw(store: GalleryStore, q: np.ndarray) -> bool:
    from app.galleries.postgres import _vector

    with store._tx() as db:  # type: ignore[attr-defined]
        plan = db.execute(
            f"EXPLAIN SELECT id FROM images WHERE gallery_id = 1 AND dim = {DIM}"
            f" ORDER BY embedding::vector({DIM}) <-> %s::vector({DIM}) LIMIT 80",
            (_vector(q),),
        ).fetchall()
    return any(f"images_hnsw_{DIM}" in row[0] for row in plan)


def enroll_throughput(store: GalleryStore, images: int, batch: int = 64) -> float:
    rng = np.random.default_rng(1)
    embs = unit(rng.standard_normal((images, DIM), dtype=np.float32))
    started = time.perf_counter()
    for i, start in enumerate(range(0, images, batch)):
        store.enroll("enroll", f"s{i}", BINDING, embs[start : start + batch], None)
    return images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pg-max-size", type=int, default=1_000_000)
    parser.add_argument("--enroll-images", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="write here, not RESULTS.md")
    args = parser.parse_args(argv)
    info = machine_info()
    warn = busy_warning()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-galleries-"))
    pg_server = None
    try:
        import pgserver

        pg_server = pgserver.get_server(work / "pg", cleanup_mode="stop")
    except Exception as e:  # noqa: BLE001 - reported in the table
        print(f"pgvector skipped: pgserver could not start ({e})")

    def pg_url(name: str) -> str:
        assert pg_server is not None
        pg_server.psql(f"CREATE DATABASE {name};")
        base, _, query = pg_server.get_uri().partition("?")
        return f"{base.rsplit('/', 1)[0]}/{name}?{query}"

    rows: list[list[object]] = []
    notes: list[str] = []
    try:
        for n in sizes:
            snap, queries = synthetic(n, args.queries)
            print(f"N={n:,}: exact")
            exact = ExactIndex(snap.embeddings)
            want, ms = timed(in_memory(exact, snap), queries)
            rows.append([f"{n:,}", "exact (numpy)", pct(ms, 50), pct(ms, 99), 1.0, 1.0, 0.0])

            print(f"N={n:,}: faiss build")
            started = time.perf_counter()
            faiss_index = FaissIndex(snap.embeddings, snap.image_ids)
            build_s = time.perf_counter() - started
            for nprobe in sorted({32, IVF_NPROBE, 512}):
                faiss_index.nprobe = nprobe
                got, ms = timed(in_memory(faiss_index, snap), queries)
                default = " (default)" if nprobe == IVF_NPROBE else ""
                name = f"faiss IVF-Flat, nlist {faiss_index.index.nlist}, nprobe {nprobe}{default}"
                rows.append(
                    [f"{n:,}", name,
                     pct(ms, 50), pct(ms, 99), recall(got, want, 1), recall(got, want, TOP_K),
                     build_s]
                )  # fmt: skip
            del faiss_index

            print(f"N={n:,}: sqlite snapshot")
            store = sqlite_bulk(work / f"g{n}.db", snap)
            started = time.perf_counter()
            full = store.snapshot("bench")
            full_s = time.perf_counter() - started
            store.enroll("bench", "late", BINDING, snap.embeddings[:64], None)
            started = time.perf_counter()
            store.snapshot("bench", since=full)
            notes.append(
                f"N={n:,}: SQLite snapshot: full read {full_s:.2f} s; after one 64-image "
                f"enrollment, extended in {time.perf_counter() - started:.3f} s"
            )

            if pg_server is not None and n <= args.pg_max_size:
                print(f"N={n:,}: pgvector load + index")
                pg_store, build_s = pg_bulk(pg_url(f"bench{n}"), snap)
                search = GallerySearch(pg_store, ann_min_images=1)
                state = search.state("bench")
                uses = pg_plan_uses_hnsw(pg_store, queries[0])
                default_ef = Settings().gallery_ef_search
                for ef in sorted({100, default_ef, 400}):
                    pg_store.ef_search = ef  # type: ignore[attr-defined]
                    got, ms = timed(
                        lambda q, s=search, st=state: s.identify(st, q, TOP_K)[0], queries
                    )
                    name = f"pgvector HNSW, ef_search {ef}" + (
                        " (default)" if ef == default_ef else ""
                    )
                    rows.append(
                        [f"{n:,}", name + ("" if uses else " (plan: no index!)"),
                         pct(ms, 50), pct(ms, 99), recall(got, want, 1), recall(got, want, TOP_K),
                         build_s]
                    )  # fmt: skip
                pg_store.close()
            elif n > args.pg_max_size:
                notes.append(
                    f"N={n:,}: pgvector not run (above --pg-max-size {args.pg_max_size:,})"
                )

        enroll_rows = []
        print("enrollment throughput")
        sqlite_rate = enroll_throughput(SqliteStore(work / "enroll.db"), args.enroll_images)
        enroll_rows.append(["SQLite (WAL, synchronous=FULL)", sqlite_rate])
        if pg_server is not None:
            from app.galleries.postgres import PostgresStore

            pg_store = PostgresStore(pg_url("enroll"), ef_search=Settings().gallery_ef_search)
            enroll_rows.append(["PostgreSQL + pgvector (HNSW index kept up to date)",
                                enroll_throughput(pg_store, args.enroll_images)])  # fmt: skip
            pg_store.close()
    finally:
        if pg_server is not None:
            pg_server.cleanup()

    md = [
        "## Galleries (`make bench-galleries`)",
        "",
        machine_lines(info),
        "",
        *([f"Note: {warn}", ""] if warn else []),
        f"Synthetic galleries: D={DIM}, {PER_SUBJECT} images per subject, {args.queries} queries "
        f"of enrolled subjects, top_k={TOP_K} subjects, one query at a time in one thread. "
        "Recall against exact search (benchmarks/galleries.py says how it is computed). Build: "
        "seconds to build the index from scratch (faiss: in memory, 1 thread; pgvector: CREATE "
        "INDEX after COPY, parallel workers allowed).",
        "",
        table(
            [
                "images",
                "search",
                "identify p50 ms",
                "p99 ms",
                "recall@1",
                f"recall@{TOP_K}",
                "build s",
            ],
            rows,
        ),
        "",
        *[f"- {note}" for note in notes],
        "",
        f"Enrollment throughput, {args.enroll_images:,} embeddings in calls of 64 through the "
        "store's enroll() (one transaction each, no model in the loop):",
        "",
        table(["store", "images/s"], enroll_rows),
    ]
    text = "\n".join(md)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    else:
        write_section("galleries", text)
    os.environ.pop("PGDATA", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
