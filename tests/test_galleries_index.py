"""app/galleries/index.py: exact candidates, per-subject ranking, faiss kept up to date."""

from __future__ import annotations

import numpy as np
import pytest

from app.galleries.index import Candidate, ExactIndex, FaissIndex, rank_subjects, top_subjects


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n_subjects: int, per: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_subjects, dim)))
    codes = np.repeat(np.arange(n_subjects), per)
    embs = unit(centres[codes] + 0.05 * rng.standard_normal((len(codes), dim)))
    return embs, codes, centres


def test_rank_subjects_keeps_each_subjects_nearest_image_by_exact_distance():
    embs = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)  # (4, 2)
    ids = np.array([10, 11, 20, 30])
    codes = np.array([0, 0, 1, 2])
    q = np.array([0.8, 0.6], dtype=np.float32)
    got = rank_subjects(np.arange(4), q, embs, ids, codes, ["a", "b", "c"])
    assert [c.subject for c in got] == ["a", "b", "c"]
    assert got[0].image_id == 11  # a's nearer image: (0.6, 0.8) is 0.28 away, (1, 0) 0.63
    assert got[0].distance == pytest.approx(np.hypot(0.2, 0.2))
    assert got[1].distance == pytest.approx(np.hypot(0.8, 0.4))
    assert got[2].distance == pytest.approx(np.hypot(1.8, 0.6))


def test_exact_candidates_are_the_n_nearest():
    embs, _, _ = clustered(50, 3)
    q = unit(np.random.default_rng(1).standard_normal(16))
    want = np.argsort(np.linalg.norm(embs - q, axis=1))[:7]
    assert set(ExactIndex(embs).candidates(q, 7)) == set(want)


def test_top_subjects_asks_again_when_one_subject_fills_the_candidates():
    calls: list[int] = []
    # 500 near-duplicates of subject "dup" come first; three other subjects after them.
    ranked = [Candidate("dup", 0.1, i) for i in range(500)] + [
        Candidate(s, 1.0 + i, 1000 + i) for i, s in enumerate("xyz")
    ]

    def ranked_among(n: int) -> list[Candidate]:
        calls.append(n)
        seen: dict[str, Candidate] = {}
        for c in ranked[:n]:
            seen.setdefault(c.subject, c)
        return list(seen.values())

    got = top_subjects(ranked_among, top_k=3, total=len(ranked))
    assert [c.subject for c in got] == ["dup", "x", "y"]
    assert calls[0] < 500 < calls[-1]


def test_faiss_index_updated_in_place_drops_deleted_and_finds_new_rows():
    pytest.importorskip("faiss")
    embs, codes, centres = clustered(400, 5)
    ids = np.arange(1, len(embs) + 1)
    index = FaissIndex(embs, ids)

    keep = np.ones(len(ids), bool)
    keep[:50] = False  # subjects 0-9 deleted
    extra, _, extra_centres = clustered(40, 5, seed=7)
    new_embs = np.concatenate([embs[keep], extra])
    new_ids = np.concatenate([ids[keep], np.arange(10_000, 10_000 + len(extra))])
    updated = index.updated(new_embs, new_ids)
    assert updated is not None and updated.index.ntotal == len(new_ids)
    assert index.index.ntotal == len(ids)  # the original, which other threads may be using

    for q in np.concatenate([centres[10:40], extra_centres[:30]]):
        want = np.argmin(np.linalg.norm(new_embs - q, axis=1))
        got = updated.candidates(q, 5)
        assert want in got
    for q in centres[:10]:  # the deleted subjects' own centres: their rows are gone
        assert set(new_ids[updated.candidates(q, 5)]).isdisjoint(ids[:50])


def test_faiss_index_is_rebuilt_when_the_gallery_grew_a_lot():
    pytest.importorskip("faiss")
    embs, _, _ = clustered(100, 5)
    index = FaissIndex(embs[:100], np.arange(100))
    assert index.updated(embs, np.arange(len(embs))) is None
