"""Store a model's validation-embedding mean and covariance in its card, without retraining.

    python -m training.reference_stats model_store/mnist --data-dir ../shared/data
    nice -n 10 python -m training.reference_stats model_store/cifar10 --data-dir ../shared/data

The drift monitor (app/drift.py) compares the service's traffic with these statistics. New
exports get them from training.train; this command adds them to models exported before, from the
same validation split training used (the card's dataset, val_fraction and seed). model.pt is not
touched, so the model's version (its sha256) stays the same; only model.json is rewritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from app import artifact
from app.artifact import EmbeddingStats
from app.setdistance import GaussianStats
from training.data import DataError, load_dataset
from training.evaluate import embed_all

log = logging.getLogger("training")

SOURCE = "validation split"


def embedding_stats(emb: torch.Tensor, source: str = SOURCE) -> EmbeddingStats:
    """The card field for embeddings (N, D) of ``source``."""
    stats = GaussianStats.of(emb)
    return EmbeddingStats(
        source=source, images=stats.count, mean=stats.mean.tolist(), covariance=stats.cov.tolist()
    )


def add_reference_stats(
    model_dir: Path, data_dir: Path, dataset: str | None = None
) -> EmbeddingStats:
    """Embed the model's validation split and write the statistics into its card."""
    art = artifact.load(model_dir)  # refuses a model.pt that does not match its card
    card, cfg = art.card, art.card.training
    bundle = load_dataset(
        dataset or card.dataset,
        data_dir,
        val_fraction=cfg.get("val_fraction", 0.1),
        seed=cfg.get("seed", 0),
        channels=card.input.channels,
        image_size=card.input.height,
        exclude_classes=cfg.get("exclude_classes") or None,
        download=False,
    )
    log.info("%s: embedding %d validation images", model_dir, len(bundle.val))
    stats = embedding_stats(embed_all(art.module, bundle.val.images))
    artifact.write_card(model_dir, card.model_copy(update={"embedding_stats": stats}))
    return stats


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    p = argparse.ArgumentParser(
        prog="python -m training.reference_stats", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dirs", type=Path, nargs="+", metavar="MODEL_DIR")
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--dataset", help="override the card's dataset (e.g. folder:PATH)")
    args = p.parse_args(argv)
    for model_dir in args.model_dirs:
        try:
            stats = add_reference_stats(model_dir, args.data_dir, args.dataset)
        except (DataError, artifact.ArtifactError) as e:
            log.error("%s", e)
            return 2
        trace = sum(stats.covariance[i][i] for i in range(len(stats.mean)))
        summary = {"model_dir": str(model_dir), "images": stats.images, "trace_cov": trace}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
