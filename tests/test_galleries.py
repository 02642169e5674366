"""The /galleries routes, run against both stores (SQLite and PostgreSQL + pgvector).

Expected distances come from /embed of the same images, so a wrong nearest image, a subject
mixed up or a lost enrollment shows as a mismatch, not as a changed constant.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from image_bytes import png
from pg import fresh_database, start_postgres
from towers import THRESHOLD, export_tower

from app.config import Settings
from app.main import create_app

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    yield from start_postgres()


@pytest.fixture(params=STORES)
def gallery_settings(
    request: pytest.FixtureRequest, make_settings: Callable[..., Settings], tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for one store; every app made from one test's settings shares that store."""
    url = ""
    if request.param == "postgres":
        url = fresh_database(request.getfixturevalue("postgres"))

    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"data_dir": tmp_path / "data", "gallery_url": url}
        values.update(overrides)
        return make_settings(**values)

    return make


@pytest.fixture
def gc(gallery_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(gallery_settings())) as c:
        yield c


def enroll(client, gallery, subject, images, **data):
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return client.post(f"/galleries/{gallery}/subjects/{subject}/images", files=files, data=data)


def identify(client, gallery, image, **data):
    return client.post(
        f"/galleries/{gallery}/identify", files={"image": ("q.png", image)}, data=data
    )


def verify(client, gallery, subject, image, **data):
    return client.post(
        f"/galleries/{gallery}/verify",
        files={"image": ("q.png", image)},
        data={"subject": subject, **data},
    )


def embedding(client, image, model="mnist"):
    r = client.post("/embed", files={"image": ("x.png", image)}, data={"model": model})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["embedding"])


def nearest_distance(client, query, images, model="mnist"):
    q = embedding(client, query, model)
    return min(float(np.linalg.norm(embedding(client, b, model) - q)) for b in images)


def enroll_digits(client, digits, classes="01234", per_class=2, **data):
    for c in classes:
        r = enroll(client, "digits", f"d{c}", digits[c][:per_class], **data)
        assert r.status_code == 201, r.text


def test_enroll_answers_ids_and_the_subjects_count(gc, digits):
    first = enroll(gc, "staff", "ada", digits["1"][:2])
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"gallery", "subject", "model", "model_version", "image_ids", "images"}
    assert body["gallery"] == "staff" and body["subject"] == "ada" and body["model"] == "mnist"
    assert len(body["image_ids"]) == 2 and body["images"] == 2
    second = enroll(gc, "staff", "ada", digits["1"][2:3]).json()
    assert second["images"] == 3
    assert set(second["image_ids"]).isdisjoint(body["image_ids"])
    enroll(gc, "staff", "bob", digits["2"][:1])

    galleries = gc.get("/galleries").json()["galleries"]
    assert galleries == [
        {
            "gallery": "staff",
            "model": "mnist",
            "model_version": body["model_version"],
            "subjects": 2,
            "images": 4,
        }
    ]
    subjects = gc.get("/galleries/staff/subjects").json()["subjects"]
    assert subjects == [{"subject": "ada", "images": 3}, {"subject": "bob", "images": 1}]


def test_identify_ranks_one_candidate_per_subject_by_nearest_image(gc, digits):
    enroll_digits(gc, digits)
    query = digits["3"][2]  # not enrolled
    r = identify(gc, "digits", query, top_k="3")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] == THRESHOLD and body["threshold_source"] == "model"
    candidates = body["candidates"]
    assert len(candidates) == 3
    expected = sorted((nearest_distance(gc, query, digits[c][:2]), f"d{c}") for c in "01234")[:3]
    assert [c["subject"] for c in candidates] == [s for _, s in expected]
    for c, (d, _) in zip(candidates, expected, strict=True):
        assert c["distance"] == pytest.approx(d, abs=1e-5)
    assert candidates == sorted(candidates, key=lambda c: c["distance"])
    best = candidates[0]
    assert body["match"] == (best if best["distance"] <= THRESHOLD else None)


def test_identify_an_enrolled_image_matches_it_exactly(gc, digits):
    enroll_digits(gc, digits)
    ids = enroll(gc, "digits", "d7", digits["7"][:1]).json()["image_ids"]
    body = identify(gc, "digits", digits["7"][0], top_k="100").json()
    assert body["match"]["subject"] == "d7" and body["match"]["image_id"] == ids[0]
    assert body["match"]["distance"] == pytest.approx(0, abs=1e-5)
    assert len(body["candidates"]) == 6  # every subject, once


def test_identify_is_open_set_below_the_threshold(gc, digits):
    enroll_digits(gc, digits)
    body = identify(gc, "digits", digits["8"][0], threshold="1e-6").json()
    assert body["match"] is None and body["threshold_source"] == "request"
    assert body["candidates"][0]["distance"] > 1e-6


def test_verify_is_the_distance_to_the_subjects_nearest_image(gc, digits):
    enrolled = enroll(gc, "staff", "ada", digits["4"][:3]).json()["image_ids"]
    enroll(gc, "staff", "bob", digits["9"][:3])
    query = digits["4"][1]
    r = verify(gc, "staff", "ada", query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["same"] is True and body["distance"] == pytest.approx(0, abs=1e-5)
    assert body["image_id"] == enrolled[1] and body["threshold_source"] == "model"

    other = verify(gc, "staff", "bob", query, threshold="0.5").json()
    assert other["distance"] == pytest.approx(
        nearest_distance(gc, query, digits["9"][:3]), abs=1e-5
    )
    assert other["same"] is (other["distance"] <= 0.5)
    assert other["threshold"] == 0.5 and other["threshold_source"] == "request"
    assert set(other) == {
        "gallery", "subject", "model", "model_version", "same", "distance", "threshold",
        "threshold_source", "similarity", "image_id",
    }  # fmt: skip


def test_another_model_is_409_naming_the_gallerys_model(gc, photos, digits):
    enroll(gc, "staff", "ada", digits["1"][:1])
    r = enroll(gc, "staff", "bob", photos["cat"][:1], model="cifar10")
    assert r.status_code == 409
    assert "uses model 'mnist'" in r.json()["detail"]
    assert gc.get("/galleries/staff/subjects").json()["subjects"] == [
        {"subject": "ada", "images": 1}
    ]


def test_an_undecodable_image_fails_the_whole_enrollment(gc, digits):
    r = enroll(gc, "staff", "ada", [digits["1"][0], b"not an image", digits["1"][1]])
    assert r.status_code == 400
    assert "images[1] (1.png)" in r.json()["detail"]
    assert gc.get("/galleries").json() == {"galleries": []}
    assert gc.get("/galleries/staff/subjects").status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/galleries/bad%20name/subjects/ada/images", f"/galleries/g/subjects/{'x' * 129}/images"],
)
def test_bad_names_are_422(gc, digits, path):
    r = gc.post(path, files=[("images", ("a.png", digits["1"][0]))])
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "path"


def test_too_many_images_and_bad_top_k_are_422(gc, digits):
    r = enroll(gc, "g", "ada", [png(seed=i) for i in range(65)])
    assert r.status_code == 422 and "1 to 64" in r.json()["detail"]
    enroll(gc, "g", "ada", digits["1"][:1])
    for top_k in ("0", "101", "x", ""):
        r = identify(gc, "g", digits["1"][0], top_k=top_k)
        assert r.status_code == 422, (top_k, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "top_k"]
    r = identify(gc, "g", digits["1"][0], threshold="0.5", far="0.01")
    assert r.status_code == 422


def test_unknown_gallery_subject_and_image_are_404(gc, digits):
    assert identify(gc, "nope", digits["1"][0]).status_code == 404
    assert gc.get("/galleries/nope/subjects").status_code == 404
    assert gc.delete("/galleries/nope").status_code == 404
    enroll(gc, "g", "ada", digits["1"][:1])
    r = verify(gc, "g", "bob", digits["1"][0])
    assert r.status_code == 404 and "bob" in r.json()["detail"]
    assert gc.delete("/galleries/g/subjects/bob").status_code == 404
    assert gc.delete("/galleries/g/subjects/ada/images/999999").status_code == 404


def test_deletes_are_204_and_searches_forget_at_once(gc, digits):
    ada = enroll(gc, "g", "ada", digits["1"][:2]).json()["image_ids"]
    enroll(gc, "g", "bob", digits["2"][:1])
    enroll(gc, "g", "cy", digits["3"][:1])
    assert identify(gc, "g", digits["1"][0]).json()["match"]["image_id"] == ada[0]

    r = gc.delete(f"/galleries/g/subjects/ada/images/{ada[0]}")
    assert r.status_code == 204 and r.content == b""
    assert identify(gc, "g", digits["1"][0]).json()["candidates"][0]["image_id"] != ada[0]
    assert gc.delete("/galleries/g/subjects/bob").status_code == 204
    subjects = [c["subject"] for c in identify(gc, "g", digits["1"][0]).json()["candidates"]]
    assert sorted(subjects) == ["ada", "cy"]
    assert gc.get("/galleries").json()["galleries"][0]["images"] == 2

    assert gc.delete("/galleries/g").status_code == 204
    assert identify(gc, "g", digits["1"][0]).status_code == 404
    assert enroll(gc, "g", "ada", digits["1"][:1]).json()["images"] == 1  # a new gallery


def test_reembed_without_kept_images_is_409_saying_why(gc, digits):
    enroll(gc, "g", "ada", digits["1"][:2])
    r = gc.post("/galleries/g/reembed", data={"model": "cifar10"})
    assert r.status_code == 409
    assert "keep_images" in r.json()["detail"] and "2 of its 2" in r.json()["detail"]


def test_reembed_moves_kept_images_to_another_model(gc, digits):
    enroll_digits(gc, digits, classes="12", keep_images="true")
    r = gc.post("/galleries/digits/reembed", data={"model": "cifar10"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "cifar10" and r.json()["images"] == 4
    body = identify(gc, "digits", digits["2"][1]).json()
    assert body["model"] == "cifar10"
    assert body["match"]["subject"] == "d2"
    assert body["match"]["distance"] == pytest.approx(0, abs=1e-5)  # embedded by cifar10 now
    assert enroll(gc, "digits", "d3", digits["3"][:1], model="mnist").status_code == 409
    # No model named: the gallery's own.
    assert enroll(gc, "digits", "d3", digits["3"][:1]).json()["model"] == "cifar10"


def test_a_new_model_version_is_409_until_reembedded(
    gallery_settings, model_store, tmp_path, digits
):
    with TestClient(create_app(gallery_settings())) as old:
        enroll(old, "g", "ada", digits["1"][:2], keep_images="true")
    upgraded = tmp_path / "upgraded"
    shutil.copytree(model_store, upgraded)
    export_tower(upgraded / "mnist", channels=1, size=28, seed=42)  # new weights, new version
    with TestClient(create_app(gallery_settings(model_store=upgraded))) as new:
        r = identify(new, "g", digits["1"][0])
        assert r.status_code == 409 and "reembed" in r.json()["detail"]
        assert new.post("/galleries/g/reembed", data={"model": "mnist"}).status_code == 200
        assert identify(new, "g", digits["1"][0]).json()["match"]["subject"] == "ada"


def test_another_instance_sees_enrollments_and_deletes(gallery_settings, digits):
    with (
        TestClient(create_app(gallery_settings())) as a,
        TestClient(create_app(gallery_settings())) as b,
    ):
        enroll(a, "g", "ada", digits["1"][:1])
        assert identify(b, "g", digits["5"][0]).json()["candidates"][0]["subject"] == "ada"
        enroll(a, "g", "bob", digits["5"][:1])  # b has an index of the old gallery: refreshed
        assert identify(b, "g", digits["5"][0]).json()["match"]["subject"] == "bob"
        assert a.delete("/galleries/g").status_code == 204
        assert identify(b, "g", digits["5"][0]).status_code == 404


def test_the_approximate_index_finds_what_exact_search_finds(gallery_settings, digits):
    # ann_min_images=1: every gallery goes through faiss (SQLite) or pgvector's HNSW.
    with (
        TestClient(create_app(gallery_settings())) as exact,
        TestClient(create_app(gallery_settings(gallery_ann_min_images=1))) as ann,
    ):
        for c in "0123456789":
            enroll(exact, "digits", f"d{c}", digits[c][:2])
        for c in "0123456789":
            query = digits[c][2]
            want = identify(exact, "digits", query, top_k="4").json()["candidates"]
            got = identify(ann, "digits", query, top_k="4").json()["candidates"]
            assert [g["subject"] for g in got] == [w["subject"] for w in want]
            for g, w in zip(got, want, strict=True):
                assert g["distance"] == pytest.approx(w["distance"], abs=1e-6)
        # An enrollment after the index exists: added to it (faiss) or found in the database.
        new = enroll(ann, "digits", "late", digits["9"][2:3]).json()["image_ids"]
        match = identify(ann, "digits", digits["9"][2]).json()["match"]
        assert match["subject"] == "late" and match["image_id"] == new[0]
        assert ann.delete(f"/galleries/digits/subjects/late/images/{new[0]}").status_code == 204
        assert identify(ann, "digits", digits["9"][2]).json()["candidates"][0]["subject"] != "late"


def test_galleries_need_the_api_key(gallery_settings, digits):
    with TestClient(create_app(gallery_settings(api_keys="k1"))) as c:
        assert c.get("/galleries").status_code == 401
        r = c.post(
            "/galleries/g/subjects/ada/images",
            files=[("images", ("a.png", digits["1"][0]))],
            headers={"X-API-Key": "k1"},
        )
        assert r.status_code == 201, r.text


def test_an_unreachable_store_is_503_for_galleries_only(make_settings, tmp_path, digits):
    url = f"postgresql://nobody@/imgsim?host={tmp_path}/no-server-here&connect_timeout=2"
    with TestClient(create_app(make_settings(gallery_url=url))) as c:
        r = identify(c, "g", digits["1"][0])
        assert r.status_code == 503 and "galleries unavailable" in r.json()["detail"]
        assert c.get("/galleries").status_code == 503
        assert c.get("/readyz").status_code == 200  # the rest of the service serves


def test_an_unknown_store_scheme_is_refused_with_its_name(make_settings):
    from app.galleries.store import open_store

    with pytest.raises(ValueError, match="'mysql'"):
        open_store(make_settings(gallery_url="mysql://x"))


def test_a_snapshot_is_extended_with_enrollments_and_reread_after_deletes(gallery_settings):
    from app.galleries.store import Binding, open_store

    store = open_store(gallery_settings())
    binding = Binding("m", "v1", 4)
    eye = np.eye(4, dtype=np.float32)

    def same(a, b):
        # The same rows, in id order, with the same subjects.
        assert a.token == b.token and list(a.image_ids) == list(b.image_ids)
        assert [a.subjects[c] for c in a.subject_of] == [b.subjects[c] for c in b.subject_of]
        np.testing.assert_array_equal(a.embeddings, b.embeddings)

    try:
        store.enroll("g", "ada", binding, eye[:2], None)
        first = store.snapshot("g")
        store.enroll("g", "bob", binding, eye[2:3], None)
        store.enroll("g", "ada", binding, eye[3:], None)
        extended = store.snapshot("g", since=first)
        same(extended, store.snapshot("g"))
        assert len(extended.image_ids) == 4 and extended.subjects == ["ada", "bob"]

        ada_first = int(first.image_ids[0])
        store.delete_image("g", "ada", ada_first)
        after_delete = store.snapshot("g", since=extended)  # must not keep the deleted row
        same(after_delete, store.snapshot("g"))
        assert ada_first not in after_delete.image_ids
    finally:
        store.close()
