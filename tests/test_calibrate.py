"""Calibration math on synthetic distances whose answer is known."""

import numpy as np
import pytest
import torch

from training.calibrate import (
    balanced_pairs,
    best_threshold,
    calibrate,
    fit_logistic,
    rates_at,
    verification_metrics,
)


def test_best_threshold_separates_perfectly_separable_distances():
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    d = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = best_threshold(d, same)
    assert 0.3 <= t < 0.7
    assert rates_at(d, same, t) == (0.0, 0.0)


def test_best_threshold_maximises_balanced_accuracy_with_imbalance():
    # 1 same pair at 0.5 among 9 different pairs above 0.6: cutting at ~0.55 is perfect, even though
    # "everything different" would already be 90% plain accuracy.
    same = np.array([1] + [0] * 9, dtype=bool)
    d = np.array([0.5] + [0.6 + 0.01 * i for i in range(9)])
    t = best_threshold(d, same)
    assert 0.5 <= t < 0.6


def test_logistic_recovers_known_parameters():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 2, 200_000)
    intercept, slope = 6.0, -6.0  # P(same) = 0.5 at d = 1
    p = 1 / (1 + np.exp(-(intercept + slope * d)))
    same = rng.uniform(size=d.shape) < p
    # class_weight=balanced shifts the intercept by log(n_neg/n_pos), ~0 here by symmetry
    got_i, got_s = fit_logistic(d, same)
    assert got_s == pytest.approx(slope, rel=0.05)
    assert -got_i / got_s == pytest.approx(1.0, abs=0.02)


def test_calibrate_table_and_probability_are_monotone():
    rng = np.random.default_rng(1)
    d = np.concatenate([rng.normal(0.4, 0.1, 500), rng.normal(1.2, 0.1, 500)])
    same = np.concatenate([np.ones(500, bool), np.zeros(500, bool)])
    t, cal = calibrate(d, same)
    assert 0.6 < t < 1.0
    assert cal.probability(0.2) > 0.99 and cal.probability(1.5) < 0.01
    fars = [r.false_accept_rate for r in cal.table]
    frrs = [r.false_reject_rate for r in cal.table]
    assert fars == sorted(fars) and frrs == sorted(frrs, reverse=True)
    assert any(abs(r.threshold - t) < 1e-5 for r in cal.table)


def test_metrics_on_known_distances():
    same = np.array([1, 1, 0, 0], dtype=bool)
    d = np.array([0.1, 0.9, 0.5, 1.0])  # one same pair is farther than a different one
    m = verification_metrics(d, same, threshold=0.3)
    assert m["accuracy"] == 0.75
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["frr"] == 0.5 and m["far"] == 0.0


def test_balanced_pairs_are_balanced_and_reproducible():
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 5)
    a, b, same = balanced_pairs(labels, seed=3)
    assert same.sum() == len(labels) and (~same).sum() == len(labels)
    assert torch.equal(labels[a[same]], labels[b[same]])
    assert (labels[a[~same]] != labels[b[~same]]).all()
    assert (a[same] != b[same]).all()
    a2, b2, _ = balanced_pairs(labels, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
