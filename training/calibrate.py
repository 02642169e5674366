"""Pairs, verification metrics and threshold calibration, all on distances (smaller = more alike).

Calibration only ever sees validation pairs; test pairs are for reporting (DEVELOPERS.md).
Re-fit an exported model's distance -> P(same) map without retraining (model.pt is untouched,
so its version stays; only model.json's calibration changes):

    python -m training.calibrate model_store/mnist --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from app import artifact, calibration
from app.artifact import Calibration
from app.calibration import best_threshold as best_threshold  # re-exported: the math is in app
from app.calibration import rates_at as rates_at


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


def fit_logistic(d: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of P(same | d) = sigmoid(intercept + slope * d); slope < 0."""
    # Balanced class weights: the card's probability is for a pair drawn half same, half different.
    lr = LogisticRegression(C=1e4, class_weight="balanced", max_iter=1000)
    lr.fit(d.reshape(-1, 1), same.astype(int))
    slope = float(lr.coef_[0, 0])
    return float(lr.intercept_[0]), min(slope, -1e-6)


def calibrate(d: np.ndarray, same: np.ndarray, table_points: int = 21) -> tuple[float, Calibration]:
    """The balanced-accuracy threshold and a logistic map constrained to P(same) = 0.5 there."""
    return calibration.calibrate(d, same, table_points)


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


VAL_PAIR_SEED = 0  # training.train.export draws the validation pairs with this seed


def validation_distances(model_dir: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distances and labels of the model's validation pairs, rebuilt as training made them: the
    split from the card's training config (val_fraction, seed, exclude_classes), embedded by the
    exported model.pt, paired with VAL_PAIR_SEED."""
    from training.data import load_dataset
    from training.evaluate import embed_all

    art = artifact.load(model_dir)
    card, cfg = art.card, art.card.training
    bundle = load_dataset(
        card.dataset,
        data_dir,
        val_fraction=cfg.get("val_fraction", 0.1),
        seed=cfg.get("seed", 0),
        channels=card.input.channels,
        image_size=card.input.height,
        exclude_classes=cfg.get("exclude_classes") or [],
        download=False,
    )
    emb = embed_all(art.module, bundle.val.images)
    a, b, same = balanced_pairs(bundle.val.labels, seed=VAL_PAIR_SEED)
    return pair_distances(emb, a, b), same.numpy()


def recalibrate(model_dir: Path, d: np.ndarray, same: np.ndarray) -> artifact.ModelCard:
    """Re-fit the card's map through its own threshold and rewrite model.json atomically."""
    card = artifact.read_card(model_dir)
    weights = Path(model_dir) / artifact.MODEL_FILE
    if artifact.sha256_file(weights) != card.sha256:
        raise artifact.ArtifactError(f"{weights} does not match its card; re-export instead")
    fitted = calibration.calibration_through(d, same, card.threshold)
    new = card.model_copy(update={"calibration": fitted})
    path = Path(model_dir) / artifact.CARD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(new.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.calibrate", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    args = p.parse_args(argv)
    before = artifact.read_card(args.model_dir).calibration
    d, same = validation_distances(args.model_dir, args.data_dir)
    card = recalibrate(args.model_dir, d, same)
    cal = card.calibration
    summary = {
        "model": card.name,
        "model_version": card.version,
        "validation_pairs": int(len(d)),
        "threshold": card.threshold,
        "before": {"intercept": before.intercept, "slope": before.slope,
                   "p_at_threshold": before.probability(card.threshold)},
        "after": {"intercept": cal.intercept, "slope": cal.slope,
                  "p_at_threshold": cal.probability(card.threshold)},
        "table_rows": len(cal.table),
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
