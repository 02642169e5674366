"""Markdown comparison table of exported models, from their model cards (no numbers by hand).

python -m training.report model_store/mnist runs/seed-mnist/model ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import artifact


def row(path: Path) -> str:
    """One table row from a model directory or a bare model card (.json)."""
    if path.suffix == ".json":
        card = artifact.ModelCard.model_validate_json(path.read_text())
        weights = path.with_suffix(".pt")
    else:
        card = artifact.read_card(path)
        weights = path / artifact.MODEL_FILE
    m, t = card.metrics, card.metrics.get("test", {})
    cfg = card.training
    # the preset's name and what it was then (a preset's recipe may change between releases)
    recipe = f"{cfg.get('preset') or 'custom'}: {cfg.get('arch')}, {cfg.get('loss')}"
    size = f"{weights.stat().st_size / 2**20:.1f} MB" if weights.is_file() else "-"
    cells = [
        path.stem if path.suffix == ".json" else card.name,  # a kept card is named by its file
        card.dataset,
        recipe,
        f"{card.embedding_dim}",
        f"{cfg.get('epochs')}",
        f"{100 * t.get('accuracy', float('nan')):.2f}%",
        f"{t.get('roc_auc', float('nan')):.4f}",
        f"{100 * t.get('eer', float('nan')):.2f}%",
        f"{t.get('tar_at_far_1e-3', float('nan')):.3f}",
        f"{t.get('precision_at_1', float('nan')):.4f}",
        f"{t.get('map_at_r', float('nan')):.4f}",
        # similarity (P(same)) at the default threshold: 0.50 when the map is anchored there
        f"{card.calibration.probability(card.threshold):.2f}",
        f"{m.get('train_seconds', 0) / 60:.1f} min",
        size,
    ]
    for key in ("test_seen", "test_unseen"):
        if key in m:
            cells.append(f"{100 * m[key]['accuracy']:.2f}% / {m[key]['roc_auc']:.4f}")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.report", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dirs", nargs="+", type=Path)
    args = p.parse_args(argv)
    head = [
        "model",
        "data",
        "recipe",
        "D",
        "epochs",
        "pair acc",
        "ROC AUC",
        "EER",
        "TAR@FAR1e-3",
        "P@1",
        "MAP@R",
        "P(same)@t",
        "train time",
        "size",
    ]
    rows = [row(d) for d in args.model_dirs]
    if any(r.count("|") > len(head) + 1 for r in rows):
        head += ["seen acc / AUC", "unseen acc / AUC"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
