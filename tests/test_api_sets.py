"""POST /similarity/sets and its offline twin, python -m training.setdistance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES
from fastapi.testclient import TestClient
from image_bytes import png
from test_setdistance import reference_frechet

from app.config import Settings
from app.main import create_app
from training import setdistance

SHIPPED = Path(__file__).parents[1] / "model_store"
DIGITS = FIXTURES / "mnist_small"
PHOTOS = FIXTURES / "cifar10_small"


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in {".png", ".jpg"})


def parts(set_a: list[bytes], set_b: list[bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("set_a", (f"a{i}.png", b)) for i, b in enumerate(set_a)] + [
        ("set_b", (f"b{i}.png", b)) for i, b in enumerate(set_b)
    ]


def read(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


def post_sets(client: TestClient, a: list[bytes], b: list[bytes], **data: str):
    return client.post("/similarity/sets", files=parts(a, b), data=data)


def test_sets_agree_with_the_reference_on_embed_embeddings(client):
    threes, eights = read(files_of(DIGITS / "3")), read(files_of(DIGITS / "8"))
    r = post_sets(client, threes, eights)
    assert r.status_code == 200, r.text
    body = r.json()
    versions = {m["name"]: m["version"] for m in client.get("/models").json()["models"]}
    assert body["model"] == "mnist" and body["model_version"] == versions["mnist"]
    assert (body["n_a"], body["n_b"], body["dim"]) == (30, 30, 16)

    def embed(blobs: list[bytes]) -> np.ndarray:
        rows = [client.post("/embed", files={"image": b}).json()["embedding"] for b in blobs]
        return np.array(rows, dtype=np.float64)

    a, b = embed(threes), embed(eights)
    assert body["frechet_distance"] == pytest.approx(reference_frechet(a, b), rel=1e-6)
    brute = np.mean([np.linalg.norm(x - y) for x in a for y in b])
    assert body["mean_distance"] == pytest.approx(brute, rel=1e-6)


def test_identical_sets_are_zero(client):
    sevens = read(files_of(DIGITS / "7"))
    body = post_sets(client, sevens, sevens).json()
    assert 0 <= body["frechet_distance"] < 1e-9
    assert body["mean_distance"] > 0  # the mean over all pairs, not of matched ones


@pytest.mark.parametrize(
    ("store_model", "folder", "one", "other"),
    [("mnist", DIGITS, "3", "8"), ("mnist", DIGITS, "1", "7"), ("cifar10", PHOTOS, "ship", "frog")],
)
def test_two_classes_are_further_apart_than_two_halves_of_one(store_model, folder, one, other):
    # The shipped, trained models on committed fixtures (no data set needed).
    settings = Settings(model_store=SHIPPED, api_keys="", inference_precision="float32")
    with TestClient(create_app(settings)) as client:
        ones, others = read(files_of(folder / one)), read(files_of(folder / other))
        half = len(ones) // 2
        within = post_sets(client, ones[:half], ones[half:], model=store_model).json()
        across = post_sets(client, ones, others, model=store_model).json()
    assert within["model"] == across["model"] == store_model
    assert across["frechet_distance"] > 2 * within["frechet_distance"], (within, across)
    assert across["mean_distance"] > within["mean_distance"]


def test_cli_and_route_agree_on_the_same_images(client, model_store, capsys):
    fours, nines = DIGITS / "4", DIGITS / "9"
    route = post_sets(client, read(files_of(fours)), read(files_of(nines))).json()
    assert setdistance.main([str(model_store / "mnist"), str(fours), str(nines)]) == 0
    offline = json.loads(capsys.readouterr().out)
    for key in ("model", "model_version", "n_a", "n_b", "dim"):
        assert offline[key] == route[key]
    assert offline["frechet_distance"] == pytest.approx(route["frechet_distance"], rel=1e-6)
    assert offline["mean_distance"] == pytest.approx(route["mean_distance"], rel=1e-6)


def test_cli_refuses_bad_arguments(model_store, tmp_path, capsys):
    model_dir = str(model_store / "mnist")
    assert setdistance.main([model_dir, str(tmp_path / "nope"), str(DIGITS / "1")]) == 2
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.png").write_bytes(
        (DIGITS / "1" / files_of(DIGITS / "1")[0].name).read_bytes()
    )
    (tmp_path / "one" / "broken.png").write_bytes(b"not an image")
    assert setdistance.main([model_dir, str(tmp_path / "one"), str(DIGITS / "1")]) == 2
    # The session towers' cards have no validation statistics to compare with.
    assert setdistance.main([model_dir, str(DIGITS / "1"), "--reference"]) == 2
    with pytest.raises(SystemExit):
        setdistance.main([model_dir, str(DIGITS / "1")])


def test_big_sets_are_embedded_in_chunks_that_fit_the_queue(make_settings):
    # 60 images into a queue of 8: sent at once they would be refused (503 queue full).
    settings = make_settings(queue_max=8, max_matrix_images=2, max_candidates=1)
    with TestClient(create_app(settings)) as client:
        r = post_sets(client, read(files_of(DIGITS / "2")), read(files_of(DIGITS / "5")))
    assert r.status_code == 200, r.text
    assert (r.json()["n_a"], r.json()["n_b"]) == (30, 30)


def test_set_sizes_outside_the_limits_are_422(make_settings):
    ones = read(files_of(DIGITS / "1"))
    with TestClient(create_app(make_settings(max_set_images=4))) as client:
        r = post_sets(client, ones[:1], ones[:3])
        assert r.status_code == 422
        assert r.json()["detail"] == "set_a: send 2 to 4 images; got 1"
        r = post_sets(client, ones[:3], ones[:5])
        assert r.status_code == 422
        assert r.json()["detail"] == "set_b: send 2 to 4 images; got 5"
        r = client.post("/similarity/sets", files=parts(ones[:3], [])[:3])
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "set_b"]


def test_more_parts_than_max_parts_are_accepted_up_to_two_sets(make_settings):
    settings = make_settings(max_parts=4, max_set_images=3)
    ones = read(files_of(DIGITS / "1"))
    with TestClient(create_app(settings)) as client:
        assert post_sets(client, ones[:3], ones[3:6]).status_code == 200
        too_many = post_sets(client, ones[:4], ones[4:7])
        assert too_many.status_code == 400  # 7 parts: over the form parser's limit of 2 x 3
        assert "Too many files" in too_many.json()["detail"]
        assert post_sets(client, ones[:2], ones[2:6]).status_code == 422


def test_undecodable_images_are_400_naming_each(client):
    ones = read(files_of(DIGITS / "1"))
    r = post_sets(client, [ones[0], b"not an image", ones[1]], [b"", ones[2]])
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "set_a[1]" in detail and "set_b[0]" in detail
    assert "set_a[0]" not in detail and "set_b[1]" not in detail


def test_unknown_model_is_404(client):
    ones = read(files_of(DIGITS / "1"))
    r = post_sets(client, ones[:2], ones[2:4], model="nope")
    assert r.status_code == 404
    assert "unknown model 'nope'" in r.json()["detail"]


def test_too_many_pixels_and_too_many_bytes_are_413(make_settings):
    ones = read(files_of(DIGITS / "1"))
    big = png((300, 300))  # 90,000 pixels
    with TestClient(create_app(make_settings(max_image_pixels=50_000))) as client:
        r = post_sets(client, [ones[0], big], [ones[1], ones[2], big])
        assert r.status_code == 413
        assert "set_a[1]" in r.json()["detail"] and "set_b[2]" in r.json()["detail"]
    with TestClient(create_app(make_settings(max_upload_bytes=len(big) - 1))) as client:
        r = post_sets(client, [ones[0], big], ones[1:3])
        assert r.status_code == 413
        assert r.json()["detail"].startswith("set_a[1]: upload is over the limit")


def test_the_request_pixel_budget_covers_both_sets_across_chunks(make_settings):
    # Chunks of 2 images (queue_max 8 / 4), each well under the budget; together over it.
    big = [png((200, 200), seed=i) for i in range(6)]  # 40,000 pixels each, 240,000 in all
    settings = make_settings(
        queue_max=8, max_matrix_images=2, max_candidates=1, max_request_pixels=150_000
    )
    with TestClient(create_app(settings)) as client:
        r = post_sets(client, big[:3], big[3:])
    assert r.status_code == 413, r.text
    assert "max_request_pixels" in r.json()["detail"]
