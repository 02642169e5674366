"""app/calibration.py on distances with a known answer, and the shipped cards' consistency:
P(same) crosses 0.5 at each shipped model's default threshold."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from towers import export_tower

from app import artifact, calibration
from training.calibrate import main as calibrate_cli
from training.calibrate import recalibrate

ROOT = Path(__file__).parents[1]
STORE = ROOT / "model_store"
DATA_DIR = Path(os.environ.get("IMGSIM_DATASETS", ROOT.parent / "shared" / "data"))
SHIPPED = sorted(p.name for p in artifact.discover(STORE))


def test_roc_auc_and_eer_on_hand_computed_pairs():
    # same at 0.1, 0.4; different at 0.3, 0.8: of the 4 (same, different) orderings 3 are right
    d = np.array([0.1, 0.4, 0.3, 0.8])
    same = np.array([True, True, False, False])
    assert calibration.auc(d, same) == pytest.approx(0.75)
    fpr, tpr, thresholds = calibration.roc(d, same)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert thresholds[1:].tolist() == [0.1, 0.3, 0.4, 0.8]
    assert calibration.eer(d, same) == pytest.approx(0.5)  # FAR = FRR = 0.5 at d <= 0.3


def test_ties_count_half_in_auc():
    d = np.array([0.5, 0.5])
    assert calibration.auc(d, np.array([True, False])) == pytest.approx(0.5)


def test_separable_pairs_give_auc_one_and_zero_errors():
    d = np.array([0.0, 0.0, 0.1, 0.9, 1.0])
    same = np.array([True, True, True, False, False])
    t = calibration.best_threshold(d, same)
    assert 0.1 < t < 0.9
    assert calibration.auc(d, same) == 1.0 and calibration.eer(d, same) == 0.0
    assert calibration.rates_at(d, same, t) == (0.0, 0.0)


def test_slope_through_the_threshold_recovers_a_known_logistic():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 2, 200_000)
    slope, t = -6.0, 1.0  # P(same) = sigmoid(-6 (d - 1)): 0.5 at d = 1, symmetric: balanced
    same = rng.uniform(size=d.shape) < 1 / (1 + np.exp(-slope * (d - t)))
    assert calibration.fit_slope_through(d, same, t) == pytest.approx(slope, rel=0.03)


def test_calibrated_map_is_one_half_at_its_threshold_even_with_skewed_classes():
    rng = np.random.default_rng(1)
    d = np.concatenate([rng.normal(0.5, 0.15, 300), rng.normal(1.3, 0.1, 3000)])
    same = np.concatenate([np.ones(300, bool), np.zeros(3000, bool)])
    t, cal = calibration.calibrate(d, same)
    assert cal.anchor == "threshold"
    assert cal.probability(t) == pytest.approx(0.5, abs=1e-9)
    assert cal.probability(0.3) > 0.95 and cal.probability(1.5) < 0.05


def test_table_has_a_row_at_each_measurable_far_target():
    rng = np.random.default_rng(2)
    d = np.concatenate([rng.normal(0.5, 0.2, 2000), rng.normal(1.3, 0.2, 2000)])
    same = np.concatenate([np.ones(2000, bool), np.zeros(2000, bool)])
    table = calibration.operating_table(d, same, threshold=0.9)
    fars = {row.false_accept_rate for row in table}
    for target in (5e-4, 1e-3, 1e-2, 0.1):  # 2000 different pairs: 1 pair is FAR 5e-4
        assert target in fars
    assert 1e-4 not in fars  # cannot be measured with 2000 different pairs
    rows = sorted(table, key=lambda r: r.threshold)
    assert [r.false_accept_rate for r in rows] == sorted(r.false_accept_rate for r in rows)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_similarity_is_one_half_at_the_default_threshold(name):
    card = artifact.read_card(STORE / name)
    assert abs(card.calibration.probability(card.threshold) - 0.5) <= 0.01
    assert card.calibration.anchor == "threshold"
    assert card.calibration.table, "the card needs a validation FAR/FRR table for `far`"


def test_shipped_models_are_both_checked():
    assert {"mnist", "cifar10"} <= set(SHIPPED)


def test_recalibrate_rewrites_only_the_calibration(tmp_path):
    model_dir = tmp_path / "m"
    before = export_tower(model_dir, channels=1, size=28, seed=0)
    weights = (model_dir / artifact.MODEL_FILE).read_bytes()
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.normal(0.4, 0.1, 500), rng.normal(1.2, 0.1, 500)])
    same = np.concatenate([np.ones(500, bool), np.zeros(500, bool)])

    after = recalibrate(model_dir, d, same)

    assert (model_dir / artifact.MODEL_FILE).read_bytes() == weights
    reloaded = artifact.load(model_dir).card  # still verifies against model.pt's sha256
    assert reloaded == after and after.version == before.version
    assert after.threshold == before.threshold
    assert after.calibration.probability(after.threshold) == pytest.approx(0.5)
    unchanged = {"calibration"}
    assert after.model_dump(exclude=unchanged) == before.model_dump(exclude=unchanged)
    assert not list(model_dir.glob("*.tmp"))
    assert json.loads((model_dir / artifact.CARD_FILE).read_text())["calibration"]["table"]


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.skipif(
    not (DATA_DIR / "MNIST" / "raw").is_dir(), reason=f"MNIST not found at {DATA_DIR}"
)
def test_calibrate_command_reproduces_the_shipped_mnist_card(tmp_path, capsys):
    model_dir = tmp_path / "mnist"
    shutil.copytree(STORE / "mnist", model_dir)
    shipped = artifact.read_card(STORE / "mnist")
    card_path = model_dir / artifact.CARD_FILE
    stale = json.loads(card_path.read_text())
    stale["calibration"].update(intercept=1.0, slope=-1.0, table=[], anchor=None)
    card_path.write_text(json.dumps(stale))

    assert calibrate_cli([str(model_dir), "--data-dir", str(DATA_DIR)]) == 0

    summary = json.loads(capsys.readouterr().out)
    assert summary["before"]["slope"] == -1.0 and summary["after"]["p_at_threshold"] == 0.5
    got = artifact.load(model_dir).card  # model.pt untouched: its sha256 still matches
    assert got.version == shipped.version and got.threshold == shipped.threshold
    assert got.calibration.slope == pytest.approx(shipped.calibration.slope, rel=1e-6)
    assert len(got.calibration.table) == len(shipped.calibration.table)
