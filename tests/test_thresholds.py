"""app/thresholds.py: `far` resolution against a hand-made table, and threshold/far/profile
through the judging routes (threshold_source on every verdict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from towers import THRESHOLD

from app import artifact
from app.artifact import ThresholdRate
from app.main import create_app
from app.profiles import Profile, ProfileStore
from app.thresholds import FarOutOfRange, rates_for_threshold, threshold_for_far

# threshold -> (FAR, FRR); FAR is flat at 0.01 between 0.5 and 0.7
TABLE = [
    ThresholdRate(threshold=t, false_accept_rate=far, false_reject_rate=frr)
    for t, far, frr in [
        (0.2, 0.0, 0.6),
        (0.5, 0.01, 0.3),
        (0.7, 0.01, 0.2),
        (0.9, 0.05, 0.1),
        (1.2, 0.3, 0.0),
    ]
]


@pytest.mark.parametrize(
    ("far", "expected"),
    [
        (0.01, 0.7),  # a flat stretch: the largest threshold with that FAR
        (0.03, 0.8),  # halfway from FAR 0.01 (0.7) to 0.05 (0.9)
        (0.05, 0.9),
        (0.175, 1.05),
        (0.3, 1.2),
    ],
)
def test_far_is_interpolated_in_the_table(far, expected):
    assert threshold_for_far(TABLE, far) == pytest.approx(expected)


def test_far_below_the_table_says_the_smallest_supported_value():
    with pytest.raises(FarOutOfRange, match=r"smallest supported far is 0\.01"):
        threshold_for_far(TABLE, 0.005)


def test_far_above_the_table_is_not_extrapolated():
    with pytest.raises(FarOutOfRange, match=r"largest supported far, 0\.3"):
        threshold_for_far(TABLE, 0.5)


def test_unordered_table_gives_the_same_answer():
    assert threshold_for_far(TABLE[::-1], 0.03) == pytest.approx(0.8)


def test_rates_for_threshold_interpolates_and_clamps():
    assert rates_for_threshold(TABLE, 0.8) == pytest.approx((0.03, 0.15))
    assert rates_for_threshold(TABLE, 0.1) == (0.0, 0.6)
    assert rates_for_threshold(TABLE, 5.0) == (0.3, 0.0)


@pytest.fixture
def table_store(model_store: Path, tmp_path: Path) -> Path:
    """The tiny towers with TABLE as mnist's validation table (the card's sha covers model.pt)."""
    store = tmp_path / "store"
    shutil.copytree(model_store, store)
    card_path = store / "mnist" / artifact.CARD_FILE
    card = json.loads(card_path.read_text())
    card["calibration"]["table"] = [row.model_dump() for row in TABLE]
    card_path.write_text(json.dumps(card))
    return store


@pytest.fixture
def table_client(make_settings, table_store, tmp_path):
    settings = make_settings(model_store=table_store, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        yield c


def pair(digits):
    return {"image_a": ("a.png", digits["4"][0]), "image_b": ("b.png", digits["9"][0])}


def test_verify_with_far_uses_the_table(table_client, digits):
    r = table_client.post("/verify", files=pair(digits), data={"far": "0.03"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold_source"] == "far"
    assert body["threshold"] == pytest.approx(0.8)
    assert body["same"] is (body["distance"] <= 0.8)


def test_verify_far_below_the_table_is_422_naming_the_smallest(table_client, digits):
    r = table_client.post("/verify", files=pair(digits), data={"far": "0.001"})
    assert r.status_code == 422
    assert "smallest supported far is 0.01" in r.json()["detail"]
    ok = table_client.post("/verify", files=pair(digits), data={"far": "0.01"})
    assert ok.status_code == 200 and ok.json()["threshold"] == pytest.approx(0.7)


@pytest.mark.parametrize("far", ["0", "1", "-0.1", "nan", "1.5"])
def test_far_outside_zero_one_is_422(table_client, digits, far):
    r = table_client.post("/verify", files=pair(digits), data={"far": far})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "far"]


@pytest.mark.parametrize(
    "fields",
    [
        {"threshold": "0.5", "far": "0.03"},
        {"threshold": "0.5", "profile": "p"},
        {"far": "0.03", "profile": "p"},
    ],
)
def test_more_than_one_threshold_choice_is_422(table_client, digits, fields):
    r = table_client.post("/verify", files=pair(digits), data=fields)
    assert r.status_code == 422
    assert "at most one of threshold, far, profile" in r.json()["detail"]


def test_model_without_a_table_refuses_far(client, digits):
    r = client.post("/verify", files=pair(digits), data={"far": "0.01"})
    assert r.status_code == 422
    assert "no false-accept rates" in r.json()["detail"]


def test_one_to_many_reports_the_threshold_source(table_client, digits):
    files = [("query", ("q.png", digits["4"][0])), ("candidates", ("c.png", digits["4"][1]))]
    default = table_client.post("/similarity/one-to-many", files=files).json()
    assert default["threshold_source"] == "model" and default["threshold"] == THRESHOLD
    by_far = table_client.post("/similarity/one-to-many", files=files, data={"far": "0.05"})
    assert by_far.status_code == 200, by_far.text
    assert by_far.json()["threshold_source"] == "far"
    assert by_far.json()["threshold"] == pytest.approx(0.9)


def _save(client: TestClient, name: str, version: str, threshold: float) -> None:
    store: ProfileStore = client.app.state.profiles
    store.save(
        Profile(
            name=name, model="mnist", model_version=version, threshold=threshold,
            far=0.01, frr=0.02, auc=0.99, eer=0.015, pairs=100,
        )
    )  # fmt: skip


def test_verify_with_profile_applies_its_threshold(table_client, digits):
    mnist = {m["name"]: m for m in table_client.get("/models").json()["models"]}["mnist"]
    version = mnist["version"]
    _save(table_client, "tight", version, 0.01)
    _save(table_client, "loose", version, 1.99)
    tight = table_client.post("/verify", files=pair(digits), data={"profile": "tight"}).json()
    loose = table_client.post("/verify", files=pair(digits), data={"profile": "loose"}).json()
    assert tight["threshold_source"] == loose["threshold_source"] == "profile"
    assert (tight["threshold"], tight["same"]) == (0.01, False)
    assert (loose["threshold"], loose["same"]) == (1.99, True)


def test_unknown_profile_is_404_listing_the_known_ones(table_client, digits):
    mnist = {m["name"]: m for m in table_client.get("/models").json()["models"]}["mnist"]
    _save(table_client, "day", mnist["version"], 0.5)
    r = table_client.post("/verify", files=pair(digits), data={"profile": "night"})
    assert r.status_code == 404
    assert r.json()["detail"] == "no profile 'night' for model 'mnist'; available: day"


def test_profile_of_another_model_version_is_409(table_client, digits):
    _save(table_client, "old", "000000000000", 0.5)
    r = table_client.post("/verify", files=pair(digits), data={"profile": "old"})
    assert r.status_code == 409
    assert "version 000000000000" in r.json()["detail"]


@pytest.mark.parametrize("name", ["", "../x", "a/b", "x" * 65])
def test_bad_profile_names_are_422(table_client, digits, name):
    r = table_client.post("/verify", files=pair(digits), data={"profile": name})
    assert r.status_code == 422
