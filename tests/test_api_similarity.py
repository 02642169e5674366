"""POST /similarity, /similarity/one-to-many and /similarity/matrix through the ASGI app."""

from __future__ import annotations

import math

import pytest
from image_bytes import multipart_files, png
from towers import CALIBRATION, THRESHOLD

from app.images import ACCEPTED


def post(client, path, data=None, **files):
    return client.post(path, files=multipart_files(**files), data=data or {})


def test_similarity_of_two_digits(client, digits):
    r = post(client, "/similarity", image_a=digits["3"][0], image_b=digits["7"][0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "model",
        "model_version",
        "distance",
        "similarity",
        "threshold",
        "warnings",
    }
    assert body["warnings"] == []  # real digits for the digit model
    assert body["model"] == "mnist"  # the default
    assert len(body["model_version"]) == 12
    assert body["distance"] > 0
    assert body["similarity"] == pytest.approx(CALIBRATION.probability(body["distance"]))
    assert 0 <= body["similarity"] <= 1
    assert body["threshold"] == THRESHOLD


def test_the_distance_is_the_euclidean_distance_of_the_two_embeddings(client, digits, photos):
    for model, a, b in [("mnist", digits["3"][0], digits["7"][0]), ("cifar10", *photos["cat"][:2])]:
        embs = [
            post(client, "/embed", data={"model": model}, image=image).json()["embedding"]
            for image in (a, b)
        ]
        r = post(client, "/similarity", data={"model": model}, image_a=a, image_b=b)
        assert r.json()["distance"] == pytest.approx(math.dist(*embs), rel=1e-5)


def test_identical_images_are_at_distance_zero(client, digits):
    r = post(client, "/similarity", image_a=digits["3"][0], image_b=digits["3"][0])
    assert r.json()["distance"] == pytest.approx(0, abs=1e-6)
    assert r.json()["similarity"] == pytest.approx(CALIBRATION.probability(0.0))


def test_similarity_with_the_colour_model(client, photos):
    r = post(
        client,
        "/similarity",
        data={"model": "cifar10"},
        image_a=photos["cat"][0],
        image_b=photos["ship"][0],
    )
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "cifar10"
    versions = {m["name"]: m["version"] for m in client.get("/models").json()["models"]}
    assert r.json()["model_version"] == versions["cifar10"]


def test_any_format_works_for_any_model(client, digits, photos):
    r = post(
        client, "/similarity", data={"model": "cifar10"}, image_a=digits["1"][0], image_b=png()
    )
    assert r.status_code == 200, r.text
    r = post(
        client, "/similarity", data={"model": "mnist"}, image_a=photos["cat"][0], image_b=png()
    )
    assert r.status_code == 200, r.text


def test_unknown_model_is_404_naming_the_available_ones(client, digits):
    r = post(client, "/similarity", data={"model": "imagenet"}, image_a=png(), image_b=png())
    assert r.status_code == 404
    assert r.json() == {"detail": "unknown model 'imagenet'; available: cifar10, mnist"}


@pytest.mark.parametrize("model", ["", "  ", "../mnist", "a" * 65, "mnist\n"])
def test_invalid_model_names_are_422(client, model):
    r = post(client, "/similarity", data={"model": model}, image_a=png(), image_b=png())
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "model"]


def test_missing_image_is_422_naming_it(client):
    r = post(client, "/similarity", image_a=png())
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "image_b"]]


def test_text_instead_of_a_file_is_422(client):
    r = client.post("/similarity", data={"image_a": "x", "image_b": "y"})
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {
        ("body", "image_a"),
        ("body", "image_b"),
    }


def test_undecodable_image_is_400_naming_the_field_and_formats(client, digits):
    r = post(client, "/similarity", image_a=digits["3"][0], image_b=b"GIF89a not really")
    assert r.status_code == 400
    assert r.json()["detail"].startswith("image_b: not a decodable image")
    assert ACCEPTED in r.json()["detail"]


def test_json_body_is_422_not_500(client):
    r = client.post("/similarity", json={"image_a": "aGVsbG8=", "image_b": "aGVsbG8="})
    assert r.status_code == 422
    assert "detail" in r.json()


def test_urls_and_paths_are_not_images(client):
    r = client.post(
        "/similarity",
        files={
            "image_a": ("a", b"https://example.com/cat.png", "text/uri-list"),
            "image_b": ("b", b"/etc/passwd", "text/plain"),
        },
    )
    assert r.status_code == 400
    assert r.json()["detail"].startswith("image_a: not a decodable image")


# --- one-to-many -----------------------------------------------------------------------------


def test_one_to_many_ranks_by_distance_and_reports_bad_candidates(client, digits):
    query = digits["3"][0]
    candidates = [digits["7"][0], b"not an image", query, digits["3"][1], b""]
    r = post(client, "/similarity/one-to-many", query=query, candidates=candidates)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mnist" and body["threshold"] == THRESHOLD
    results = body["results"]
    matches = [m for m in results if "distance" in m]
    errors = [m for m in results if "error" in m]
    assert [m["index"] for m in errors] == [1, 4]  # after the matches, by index
    assert results[-2:] == errors
    assert "not a decodable image" in errors[0]["error"] and errors[1]["error"] == "empty file"
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert matches[0]["index"] == 2 and matches[0]["distance"] == pytest.approx(0, abs=1e-6)
    for m in matches:
        assert set(m) == {"index", "distance", "similarity", "same"}
        assert m["same"] == (m["distance"] <= THRESHOLD)
        assert m["similarity"] == pytest.approx(CALIBRATION.probability(m["distance"]))


def test_one_to_many_threshold_override(client, digits):
    query, other = digits["3"][0], digits["8"][0]
    r = post(
        client,
        "/similarity/one-to-many",
        data={"threshold": "1e-9"},
        query=query,
        candidates=[query, other],
    )
    assert r.status_code == 200, r.text
    assert r.json()["threshold"] == 1e-9
    assert [(m["index"], m["same"]) for m in r.json()["results"]] == [(0, True), (1, False)]


def test_one_to_many_bad_query_fails_the_call(client, digits):
    r = post(client, "/similarity/one-to-many", query=b"nope", candidates=[digits["3"][0]])
    assert r.status_code == 400
    assert r.json()["detail"].startswith("query: not a decodable image")


def test_one_to_many_needs_candidates(client, digits):
    r = post(client, "/similarity/one-to-many", query=digits["3"][0])
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "candidates"]


def test_one_to_many_candidate_limit(make_settings, digits):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(make_settings(max_candidates=3))) as client:
        ok = post(client, "/similarity/one-to-many", query=png(), candidates=[png()] * 3)
        assert ok.status_code == 200
        r = post(client, "/similarity/one-to-many", query=png(), candidates=[png()] * 4)
        assert r.status_code == 422
        assert r.json() == {"detail": "at most 3 candidates; got 4"}


# --- matrix ----------------------------------------------------------------------------------


def test_matrix_is_symmetric_with_zero_diagonal(client, digits):
    images = [digits["1"][0], digits["2"][0], digits["1"][0], digits["9"][0]]
    r = post(client, "/similarity/matrix", images=images)
    assert r.status_code == 200, r.text
    body = r.json()
    d = body["distances"]
    assert body["model"] == "mnist" and len(d) == 4 and all(len(row) == 4 for row in d)
    for i in range(4):
        assert d[i][i] == 0
        for j in range(4):
            assert d[i][j] == pytest.approx(d[j][i])
            assert d[i][j] >= 0 and math.isfinite(d[i][j])
    assert d[0][2] == pytest.approx(0, abs=1e-6)  # the same digit twice
    pair = post(client, "/similarity", image_a=images[1], image_b=images[3]).json()
    assert d[1][3] == pytest.approx(pair["distance"], abs=1e-5)


@pytest.mark.parametrize("n", [1, 65])
def test_matrix_size_limits(client, n):
    r = post(client, "/similarity/matrix", images=[png(size=(4, 4), seed=i) for i in range(n)])
    assert r.status_code == 422
    assert r.json() == {"detail": f"send 2 to 64 images; got {n}"}


def test_matrix_bad_image_names_its_index(client, digits):
    r = post(client, "/similarity/matrix", images=[digits["1"][0], b"junk", digits["2"][0]])
    assert r.status_code == 400
    assert r.json()["detail"].startswith("images[1]: not a decodable image")
