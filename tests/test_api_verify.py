"""POST /verify and its threshold field: absent means calibrated, anything odd is a 422."""

from __future__ import annotations

import pytest
from image_bytes import multipart_files, png
from towers import CALIBRATION, THRESHOLD


def verify(client, a, b, **data):
    return client.post("/verify", files=multipart_files(image_a=a, image_b=b), data=data)


def test_verify_uses_the_calibrated_threshold_by_default(client, digits):
    r = verify(client, digits["4"][0], digits["4"][0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "model", "model_version", "same", "distance", "threshold", "threshold_source",
        "similarity", "warnings",
    }  # fmt: skip
    assert body["same"] is True and body["threshold"] == THRESHOLD
    assert body["threshold_source"] == "model"
    assert body["similarity"] == pytest.approx(CALIBRATION.probability(body["distance"]))


def test_verify_threshold_decides_same(client, digits):
    a, b = digits["4"][0], digits["9"][0]
    distance = verify(client, a, b).json()["distance"]
    assert distance > 0
    below = verify(client, a, b, threshold=str(distance / 2)).json()
    above = verify(client, a, b, threshold=str(distance * 2)).json()
    assert below["same"] is False and below["threshold"] == pytest.approx(distance / 2)
    assert below["threshold_source"] == above["threshold_source"] == "request"
    assert above["same"] is True and above["threshold"] == pytest.approx(distance * 2)
    assert below["distance"] == above["distance"] == distance


@pytest.mark.parametrize(
    "threshold,error_type",
    [
        ("", "string_too_short"),
        ("  ", "string_too_short"),
        ("abc", "float_parsing"),
        ("-1", "greater_than"),
        ("0", "greater_than"),
        ("nan", "finite_number"),
        ("inf", "finite_number"),
        ("-inf", "finite_number"),
        ("1e7", "less_than_equal"),
        ("1e400", "finite_number"),
    ],
)
def test_bad_thresholds_are_422_with_detail(client, threshold, error_type):
    r = verify(client, png(), png(seed=1), threshold=threshold)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "threshold"]
    assert error["type"] == error_type
    assert error["msg"]
    assert "input" not in error  # never echo what the client sent


def test_unknown_model_is_404(client):
    r = verify(client, png(), png(), model="nope")
    assert r.status_code == 404
    assert r.json()["detail"] == "unknown model 'nope'; available: cifar10, mnist"


def test_empty_model_is_422(client):
    r = verify(client, png(), png(), model="")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "model"]


def test_repeated_threshold_field_uses_a_valid_value_or_fails(client):
    files = multipart_files(image_a=png(), image_b=png())
    r = client.post("/verify", files=files, data={"threshold": ["0.5", ""]})
    assert r.status_code == 422


@pytest.mark.parametrize("field", ["image_a", "model", "threshold"])
def test_a_field_sent_twice_is_422_not_the_last_one_silently(client, field):
    files = multipart_files(image_a=png(), image_b=png(seed=1))
    values = {"image_a": None, "model": ["mnist", "cifar10"], "threshold": ["0.5", "0.9"]}
    if field == "image_a":
        files.append(("image_a", ("again.png", png(seed=2), "image/png")))
    r = client.post(
        "/verify", files=files, data={} if field == "image_a" else {field: values[field]}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]
    assert "sent more than once" in r.json()["detail"][0]["msg"]
