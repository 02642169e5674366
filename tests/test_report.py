"""docs/models.md is generated from the model cards, so it cannot drift from them."""

from __future__ import annotations

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
