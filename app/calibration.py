"""Verification math on labelled pair distances (smaller = more alike), numpy only.

The service needs it for ``POST /calibrate`` and training for the model card, so it lives here
(training imports app, never the reverse). ``d`` is a float array of distances, ``same`` a bool
array of the pairs' labels, both of shape (P,).

    t = best_threshold(d, same)                   # balanced-accuracy threshold
    slope = fit_slope_through(d, same, t)          # P(same | d) = sigmoid(slope * (d - t))
    table = operating_table(d, same, t)            # [{threshold, FAR, FRR}] for `far` requests
"""

from __future__ import annotations

import numpy as np

from app.artifact import Calibration, ThresholdRate

# Target false-accept rates the table always has a row for (when validation can measure them),
# so a `far` request interpolates between close rows rather than across a wide gap.
TABLE_FARS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.3, 0.5)


def rates_at(d: np.ndarray, same: np.ndarray, t: float) -> tuple[float, float]:
    """(false accept rate, false reject rate) at threshold t (same iff d <= t)."""
    s = same.astype(bool)
    far = float((d[~s] <= t).mean()) if (~s).any() else 0.0
    frr = float((d[s] > t).mean()) if s.any() else 0.0
    return far, frr


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


def roc(d: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with one point per distinct distance, starting at (0, 0)."""
    s = same.astype(bool)
    order = np.argsort(d, kind="stable")
    d_sorted, s_sorted = d[order], s[order]
    last = np.append(d_sorted[1:] != d_sorted[:-1], True)  # the last pair at each distance
    tp = np.cumsum(s_sorted)[last]
    fp = np.cumsum(~s_sorted)[last]
    tpr = np.concatenate([[0.0], tp / max(s.sum(), 1)])
    fpr = np.concatenate([[0.0], fp / max((~s).sum(), 1)])
    thresholds = np.concatenate([[-np.inf], d_sorted[last]])
    return fpr, tpr, thresholds


def auc(d: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve: P(a same pair is closer than a different one), ties half."""
    fpr, tpr, _ = roc(d, same)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def eer(d: np.ndarray, same: np.ndarray) -> float:
    """Equal error rate: where FAR and FRR cross on the ROC (mean of the two at the closest)."""
    fpr, tpr, _ = roc(d, same)
    fnr = 1 - tpr
    i = int(np.argmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def fit_slope_through(d: np.ndarray, same: np.ndarray, threshold: float, c: float = 1e4) -> float:
    """Slope of P(same | d) = sigmoid(slope * (d - threshold)), which is 0.5 at ``threshold``.

    Maximum likelihood with balanced class weights (so P is for a pair drawn half same, half
    different) and an L2 penalty 1/(2c) slope^2 (sklearn's C), which keeps the slope finite when
    the pairs are perfectly separable. A 1-D damped Newton iteration; returns a negative slope.
    """
    s = same.astype(bool)
    x = d - threshold
    n_pos, n_neg = max(int(s.sum()), 1), max(int((~s).sum()), 1)
    w = np.where(s, len(s) / (2 * n_pos), len(s) / (2 * n_neg))
    y = s.astype(float)

    def loss(k: float) -> float:
        z = k * x  # log(1 + e^-z) for same pairs, log(1 + e^z) for different ones
        return float(c * np.sum(w * np.logaddexp(0, np.where(s, -z, z))) + 0.5 * k * k)

    k = -1.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(k * x, -500, 500)))
        grad = c * np.sum(w * (p - y) * x) + k
        hess = c * np.sum(w * p * (1 - p) * x * x) + 1
        step = grad / hess
        current = loss(k)
        while loss(k - step) > current and abs(step) > 1e-12:
            step /= 2
        k -= step
        if abs(step) < 1e-9 * max(1.0, abs(k)):
            break
    return min(float(k), -1e-6)


def operating_table(
    d: np.ndarray, same: np.ndarray, threshold: float, points: int = 21
) -> list[ThresholdRate]:
    """FAR and FRR at: ``points`` quantiles of all distances, the distance where FAR first reaches
    each of TABLE_FARS (when there are enough different pairs to measure it), and ``threshold``."""
    s = same.astype(bool)
    grid = set(np.quantile(d, np.linspace(0.02, 0.98, points)).round(6).tolist())
    neg = np.sort(d[~s])
    for target in TABLE_FARS:
        k = int(np.ceil(target * len(neg)))  # the k-th smallest different distance: FAR = k/n
        if 1 <= k <= len(neg):
            grid.add(float(neg[k - 1]))  # unrounded: rounding down would miss the pair
    grid.add(round(threshold, 6))
    return [
        ThresholdRate(threshold=float(t), false_accept_rate=far, false_reject_rate=frr)
        for t in sorted(grid)
        for far, frr in [rates_at(d, s, t)]
    ]


def calibrate(d: np.ndarray, same: np.ndarray, points: int = 21) -> tuple[float, Calibration]:
    """The balanced-accuracy threshold and a map P(same | d) that is exactly 0.5 there."""
    threshold = best_threshold(d, same)
    return threshold, calibration_through(d, same, threshold, points)


def calibration_through(
    d: np.ndarray, same: np.ndarray, threshold: float, points: int = 21
) -> Calibration:
    """The logistic map fitted with the constraint P(same | threshold) = 0.5, and its table."""
    slope = fit_slope_through(d, same, threshold)
    return Calibration(
        intercept=-slope * threshold,
        slope=slope,
        anchor="threshold",
        table=operating_table(d, same, threshold, points),
    )
