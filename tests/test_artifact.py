"""The model artifact contract (app/artifact.py): export, verify, load, refuse."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from app import artifact
from training.nets import build_tower


def _tower(channels: int = 1, size: int = 12):
    torch.manual_seed(0)
    return build_tower(
        "convnet",
        channels=channels,
        height=size,
        width=size,
        embedding_dim=8,
        widths=[4],
        mean=[0.5] * channels,
        std=[0.25] * channels,
        normalize=True,
        flip_tta=channels == 3,
    )


def _write(tmp_path, tower, channels=1, size=12):
    cal = artifact.Calibration(intercept=4.0, slope=-4.0)
    return artifact.write(
        tmp_path / "m",
        tower,
        name="m",
        dataset="unit",
        classes=["a", "b"],
        input_spec=artifact.InputSpec(channels=channels, height=size, width=size),
        embedding_dim=8,
        threshold=1.0,
        calibration=cal,
        metrics={"test": {"accuracy": 0.5}},
        training={"epochs": 1},
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_round_trip_reproduces_the_tower_on_uint8(tmp_path, channels):
    tower = _tower(channels).eval()
    card = _write(tmp_path, tower, channels)
    art = artifact.load(tmp_path / "m")
    x = torch.randint(0, 256, (5, channels, 12, 12), dtype=torch.uint8)
    with torch.inference_mode():
        got, want = art.module(x), tower(x)
    assert got.dtype == torch.float32 and got.shape == (5, 8)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(5))  # normalised inside the module
    assert card.sha256 == artifact.sha256_file(tmp_path / "m" / "model.pt")
    assert card.version == card.sha256[:12]
    assert card.mode == ("L" if channels == 1 else "RGB") and card.size == (12, 12)
    assert (
        json.loads((tmp_path / "m" / "model.json").read_text())["torch_version"]
        == torch.__version__
    )


def test_torchscript_deprecation_is_silenced_only_inside_the_contract(tmp_path):
    _write(tmp_path, _tower())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        artifact.load(tmp_path / "m")  # would raise if the FutureWarning escaped
    with pytest.warns(FutureWarning, match="torch.jit.load"):
        torch.jit.load(str(tmp_path / "m" / "model.pt"))


def test_tampered_weights_are_refused(tmp_path):
    _write(tmp_path, _tower())
    pt = tmp_path / "m" / "model.pt"
    pt.write_bytes(pt.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(artifact.ArtifactError, match="does not match"):
        artifact.load(tmp_path / "m")


def test_corrupt_weights_with_matching_hash_are_refused(tmp_path):
    card = _write(tmp_path, _tower())
    pt = tmp_path / "m" / "model.pt"
    pt.write_bytes(b"not a zip file at all")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["sha256"] = artifact.sha256_file(pt)
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    assert card.sha256 != doc["sha256"]
    with pytest.raises(artifact.ArtifactError, match="not a loadable TorchScript"):
        artifact.load(tmp_path / "m")


def test_missing_or_invalid_card(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(artifact.ArtifactError, match="no model.json"):
        artifact.load(tmp_path / "empty")
    (tmp_path / "empty" / "model.json").write_text('{"name": "x"}')
    with pytest.raises(artifact.ArtifactError, match="invalid model card"):
        artifact.load(tmp_path / "empty")
    assert artifact.discover(tmp_path) == [tmp_path / "empty"]


def test_calibration_probability_is_a_stable_logistic():
    cal = artifact.Calibration(intercept=5.0, slope=-10.0)
    assert cal.probability(0.5) == pytest.approx(0.5)
    assert cal.probability(0.0) == pytest.approx(1 / (1 + pytest.importorskip("math").exp(-5)))
    assert cal.probability(1e6) == 0.0 and cal.probability(-1e6) == 1.0  # no overflow
    with pytest.raises(ValueError):
        artifact.Calibration(intercept=0.0, slope=1.0)  # P(same) must fall with distance


def test_shipped_models_honour_the_contract():
    from pathlib import Path

    store = Path(__file__).parents[1] / "model_store"
    names = [p.name for p in artifact.discover(store)]
    assert {"mnist", "cifar10"} <= set(names), names
    for name in ("mnist", "cifar10"):
        art = artifact.load(store / name)
        assert art.card.name == name
        assert (store / name / "model.pt").stat().st_size < 20 * 1024 * 1024
        for png in ("roc.png", "distances.png", "pairs.png", "embeddings.png", "training.png"):
            assert (store / name / png).is_file(), f"{name}/{png}"
        c, h, w = art.card.input.channels, art.card.input.height, art.card.input.width
        out = art.module(torch.zeros(1, c, h, w, dtype=torch.uint8))
        assert out.shape == (1, art.card.embedding_dim)
