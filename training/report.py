"""Markdown tables of exported models, from their model cards (no numbers by hand).

    python -m training.report model_store/mnist runs/seed-mnist/model ...   # one table
    python -m training.report --docs docs/models.md                         # the whole page

``--docs`` writes docs/models.md from model_store/*/model.json (shipped) and the cards kept in
docs/comparison/ (seed recipes, earlier recipes, runs with classes held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import artifact

ROOT = Path(__file__).parents[1]
HEAD = [
    "model",
    "data",
    "recipe",
    "D",
    "epochs",
    "pair acc",
    "ROC AUC",
    "EER",
    "TAR@FAR1e-3",
    "all pairs",
    "P@1",
    "MAP@R",
    "P(same)@t",
    "train time",
    "size",
]
UNSEEN_HEAD = ["seen acc / AUC", "unseen acc / AUC"]


def _card(path: Path) -> tuple[artifact.ModelCard, Path, str]:
    if path.suffix == ".json":
        card = artifact.ModelCard.model_validate_json(path.read_text())
        return card, path.with_suffix(".pt"), path.stem  # a kept card is named by its file
    return artifact.read_card(path), path / artifact.MODEL_FILE, artifact.read_card(path).name


def row(path: Path, unseen: bool = False) -> str:
    """One table row from a model directory or a bare model card (.json)."""
    card, weights, name = _card(path)
    m, t = card.metrics, card.metrics.get("test", {})
    cfg = card.training
    # the preset's name and what it was then (a preset's recipe may change between releases)
    recipe = f"{cfg.get('preset') or 'custom'}: {cfg.get('arch')}, {cfg.get('loss')}"
    if cfg.get("readout", "features") == "probabilities":
        recipe += f", probabilities T={cfg.get('readout_temperature')}"
    elif cfg.get("readout", "features") != "features":
        recipe += f", {cfg['readout']}"
    all_pairs = t.get("tar_at_far_1e-3_all_pairs")
    size = f"{weights.stat().st_size / 2**20:.1f} MB" if weights.is_file() else "-"
    cells = [
        name,
        card.dataset,
        recipe,
        f"{card.embedding_dim}",
        f"{cfg.get('epochs')}",
        f"{100 * t.get('accuracy', float('nan')):.2f}%",
        f"{t.get('roc_auc', float('nan')):.4f}",
        f"{100 * t.get('eer', float('nan')):.2f}%",
        f"{t.get('tar_at_far_1e-3', float('nan')):.3f}",
        "-" if all_pairs is None else f"{all_pairs:.3f}",
        f"{t.get('precision_at_1', float('nan')):.4f}",
        f"{t.get('map_at_r', float('nan')):.4f}",
        # similarity (P(same)) at the default threshold: 0.50 when the map is anchored there
        f"{card.calibration.probability(card.threshold):.2f}",
        f"{m.get('train_seconds', 0) / 60:.1f} min",
        size,
    ]
    if unseen:
        for key in ("test_seen", "test_unseen"):
            s = m.get(key)
            cells.append(f"{100 * s['accuracy']:.2f}% / {s['roc_auc']:.4f}" if s else "-")
    return "| " + " | ".join(cells) + " |"


def table(paths: list[Path], unseen: bool | None = None) -> str:
    if unseen is None:
        unseen = any("test_unseen" in _card(p)[0].metrics for p in paths)
    head = HEAD + (UNSEEN_HEAD if unseen else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + [row(p, unseen) for p in paths])


def provenance_table(paths: list[Path]) -> str:
    """How each shipped card can be re-made, and what the service will measure in bfloat16."""
    lines = [
        "| model | preset | git commit | clean tree | command | CPU time | bf16 pair acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in paths:
        card, _, name = _card(p)
        made = card.training.get("provenance") or {}
        cpu = card.metrics.get("train_cpu_seconds")
        bf16 = card.metrics.get("by_precision", {}).get("bfloat16", {}).get("pair_accuracy")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    card.training.get("preset") or "custom",
                    (made.get("git_commit") or "not recorded")[:12],
                    {True: "yes", False: "no"}.get(made.get("git_clean"), "not recorded"),
                    f"`{made['command']}`" if made.get("command") else "not recorded",
                    f"{cpu / 60:.1f} min" if cpu else "-",
                    f"{100 * bf16:.2f}%" if bf16 is not None else "-",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def docs_page() -> str:
    shipped = artifact.discover(ROOT / "model_store")
    kept = sorted((ROOT / "docs" / "comparison").glob("*.json"))
    shipped_sha = {_card(p)[0].sha256 for p in shipped}
    kept = [p for p in kept if _card(p)[0].sha256 not in shipped_sha]  # shipped rows come below
    held_out = [p for p in kept if "test_unseen" in _card(p)[0].metrics]
    seeds = sorted(
        [p for p in kept if p not in held_out] + shipped,
        key=lambda p: (_card(p)[0].dataset, _card(p)[2]),
    )
    rel = [p.relative_to(ROOT) for p in shipped]
    return f"""# Models

Generated by `python -m training.report --docs docs/models.md` from the model cards: the shipped
ones in `model_store/` and the cards kept (without weights) in `docs/comparison/`. Every number is
on the data set's test folder, as balanced pairs (each test image once with a same-class partner
and once with a different-class one, fixed seed), at the card's own threshold, which was
calibrated on validation images carved out of the training set. "TAR@FAR1e-3" is on those
balanced pairs, where one impostor pair per image leaves the 5 closest of 5,000 to set it (another
draw of partners moves it by a tenth); "all pairs" is the same rate over every pair of the test
images (millions of impostors), recorded by cards made since it was added. Training times are
wall-clock on the 2-core machine the card names; several cards were trained while other jobs
shared it, so the CPU time, where recorded, is the fairer measure of cost.

## Shipped

{table(shipped, unseen=False)}

How to re-make them (`make train-<name>` runs the preset into `runs/<name>`, never over
`model_store/`), and the pair accuracy the service gets when it runs the tower in bfloat16:

{provenance_table(shipped)}

Shipped folders: {", ".join(f"`{p}`" for p in rel)}.

## Seed recipes and earlier recipes

The classic Siamese recipes (`--preset seed-mnist` / `seed-cifar`: 2-D embedding, contrastive
loss with margin 5; `--preset seed-fashion`: the Keras tutorial's tower, contrastive loss with
margin 1) and earlier versions of the shipped recipes, on the same test pairs.

{table(seeds, unseen=False)}

## Unseen classes

The same recipes trained with classes 5-9 held out entirely (`--exclude-classes 5 6 7 8 9`; for
CIFAR-10 dog, frog, horse, ship, truck), then verified on pairs drawn only from the seen classes
and only from the unseen ones.

{table(held_out, unseen=True)}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.report", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dirs", nargs="*", type=Path, help="model folders or kept .json cards")
    p.add_argument("--docs", type=Path, help="write the whole models page (docs/models.md) here")
    args = p.parse_args(argv)
    if args.docs:
        args.docs.write_text(docs_page())
        print(f"wrote {args.docs}")
    if args.model_dirs:
        print(table(args.model_dirs))
    if not args.docs and not args.model_dirs:
        p.error("give model folders, or --docs PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main())
