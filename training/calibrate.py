"""Pairs, verification metrics and threshold calibration, all on distances (smaller = more alike).

Calibration only ever sees validation pairs; test pairs are for reporting (DEVELOPERS.md).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from app.artifact import Calibration, ThresholdRate


def balanced_pairs(
    labels: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image once with a random same-class partner and once with a different-class one.

    Returns (a, b, same) index/label tensors of length 2N (N where a class has a single image is
    dropped from the positives). A fixed seed makes the pairs identical run to run.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    a_pos, b_pos, a_neg, b_neg = [], [], [], []
    by_class = {int(c): (labels == c).nonzero().flatten() for c in labels.unique()}
    for c, idx in by_class.items():
        others = (labels != c).nonzero().flatten()
        if len(idx) > 1:
            # partner = another image of the class: shift a random permutation by a random offset
            perm = idx[torch.randperm(len(idx), generator=g)]
            shift = torch.randint(1, len(idx), (1,), generator=g).item()
            a_pos.append(perm)
            b_pos.append(perm.roll(int(shift)))
        if len(others):
            a_neg.append(idx)
            b_neg.append(others[torch.randint(0, len(others), (len(idx),), generator=g)])
    a = torch.cat(a_pos + a_neg)
    b = torch.cat(b_pos + b_neg)
    same = torch.cat(
        [torch.ones(sum(len(x) for x in a_pos)), torch.zeros(sum(len(x) for x in a_neg))]
    )
    assert len(a) <= 2 * n
    return a, b, same.bool()


def pair_distances(emb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (emb[a] - emb[b]).norm(dim=1).double().numpy()


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    """The distance threshold (same iff d <= t) that maximises balanced accuracy."""
    order = np.argsort(d, kind="stable")
    d_sorted, s_sorted = d[order], same[order].astype(bool)
    tpr = np.cumsum(s_sorted) / max(s_sorted.sum(), 1)  # same pairs at or below each candidate
    tnr = 1 - np.cumsum(~s_sorted) / max((~s_sorted).sum(), 1)
    bal = (tpr + tnr) / 2
    # Only cut between distinct distances; put the threshold midway to the next distance.
    distinct = np.append(d_sorted[1:] != d_sorted[:-1], True)
    i = int(np.argmax(np.where(distinct, bal, -1)))
    nxt = d_sorted[i + 1] if i + 1 < len(d_sorted) else d_sorted[i] * 1.01 + 1e-6
    return float(max((d_sorted[i] + nxt) / 2, 1e-6))


def fit_logistic(d: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of P(same | d) = sigmoid(intercept + slope * d); slope < 0."""
    # Balanced class weights: the card's probability is for a pair drawn half same, half different.
    lr = LogisticRegression(C=1e4, class_weight="balanced", max_iter=1000)
    lr.fit(d.reshape(-1, 1), same.astype(int))
    slope = float(lr.coef_[0, 0])
    return float(lr.intercept_[0]), min(slope, -1e-6)


def rates_at(d: np.ndarray, same: np.ndarray, t: float) -> tuple[float, float]:
    """(false accept rate, false reject rate) at threshold t."""
    s = same.astype(bool)
    far = float((d[~s] <= t).mean()) if (~s).any() else 0.0
    frr = float((d[s] > t).mean()) if s.any() else 0.0
    return far, frr


def calibrate(d: np.ndarray, same: np.ndarray, table_points: int = 21) -> tuple[float, Calibration]:
    threshold = best_threshold(d, same)
    intercept, slope = fit_logistic(d, same)
    grid = np.unique(np.quantile(d, np.linspace(0.02, 0.98, table_points)).round(6))
    table = [
        ThresholdRate(threshold=float(t), false_accept_rate=far, false_reject_rate=frr)
        for t in sorted({*grid.tolist(), round(threshold, 6)})
        for far, frr in [rates_at(d, same, t)]
    ]
    return threshold, Calibration(intercept=intercept, slope=slope, table=table)


def verification_metrics(d: np.ndarray, same: np.ndarray, threshold: float) -> dict[str, float]:
    """AUC, EER, accuracy at ``threshold``, TAR at FAR 1e-3, on distances."""
    s = same.astype(bool)
    score = -d  # higher = more alike
    fpr, tpr, _ = roc_curve(s, score)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    far, frr = rates_at(d, same, threshold)
    ok = fpr <= 1e-3
    return {
        "pairs": int(len(d)),
        "roc_auc": float(roc_auc_score(s, score)),
        "eer": float((fpr[i] + fnr[i]) / 2),
        "accuracy": float(((d <= threshold) == s).mean()),
        "balanced_accuracy": float(1 - (far + frr) / 2),
        "far": far,
        "frr": frr,
        "tar_at_far_1e-3": float(tpr[ok].max()) if ok.any() else 0.0,
    }
