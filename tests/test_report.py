"""docs/models.md is generated from the model cards, so it cannot drift from them."""

from __future__ import annotations

import json
from pathlib import Path

from training.report import docs_page, main

ROOT = Path(__file__).parents[1]


def test_models_page_is_the_one_generated_from_the_cards():
    assert (ROOT / "docs" / "models.md").read_text() == docs_page(), (
        "docs/models.md is stale: run python -m training.report --docs docs/models.md"
    )


def test_models_page_has_every_shipped_model_and_the_keras_seed(tmp_path):
    assert main(["--docs", str(tmp_path / "models.md")]) == 0
    text = (tmp_path / "models.md").read_text()
    for d in sorted((ROOT / "model_store").iterdir()):
        if (d / "model.json").is_file():
            assert f"| {d.name} |" in text
    assert "| seed-fashion | fashion-mnist | seed-fashion: keras, contrastive |" in text
    assert "## Unseen classes" in text and "unseen acc / AUC" in text
    # a card's readout and its all-pairs rate are shown (the fashion-mnist card records both)
    card = json.loads((ROOT / "model_store" / "fashion-mnist" / "model.json").read_text())
    rate = card["metrics"]["test"]["tar_at_far_1e-3_all_pairs"]
    row = next(line for line in text.splitlines() if line.startswith("| fashion-mnist |"))
    assert "probabilities T=0.1" in row and f"| {rate:.3f} |" in row
