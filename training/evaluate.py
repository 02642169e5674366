"""Evaluate an exported model on its data set's test images, exactly as the service would run it.

    python -m training.evaluate model_store/mnist --data-dir ../shared/data
    python -m training.evaluate model_store/cifar10 --data-dir ../shared/data --plots
    python -m training.evaluate model_store/cifar10 --engine onnx --record   # into card.onnx

Pairs are fixed-seed balanced pairs (each test image once with a same-class partner, once with a
different-class one), so numbers are comparable run to run and model to model. With classes held
out in training (``--exclude-classes``), verification is also reported on pairs drawn only from
the unseen classes, and only from the seen ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from app import artifact
from app.precision import Precision, autocast
from training.calibrate import balanced_pairs, pair_distances, verification_metrics
from training.data import load_dataset

PAIR_SEED = 1234  # fixed: every evaluation of every model sees the same test pairs


@torch.inference_mode()
def embed_all(
    module: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    batch_size: int = 500,
    precision: Precision = "float32",
) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, D) float32, in eval mode, in batches, at ``precision``.

    ``module`` may also be any engine called the same way (app.artifact.OnnxModel)."""
    was_training = getattr(module, "training", False)
    if isinstance(module, torch.nn.Module):
        module.eval()
    with autocast(precision):
        batches = [module(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    out = torch.cat(batches)
    if was_training:
        module.train()
    return out.float()


def retrieval_metrics(emb: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """precision@1 and MAP@R (Musgrave et al. 2020) with each test image as a query."""
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False), batch_size=512),
        device=torch.device("cpu"),
    )
    got = calc.get_accuracy(emb, labels, ref_includes_query=True)
    return {
        "precision_at_1": float(got["precision_at_1"]),
        "map_at_r": float(got["mean_average_precision_at_r"]),
    }


def subset_metrics(emb: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    a, b, same = balanced_pairs(labels, seed=PAIR_SEED)
    d = pair_distances(emb, a, b)
    return verification_metrics(d, same.numpy(), threshold)


def compute_metrics(
    emb: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    classes: list[str],
    excluded: list[str],
) -> dict:
    """Test metrics for a model card: all classes, plus seen/unseen when classes were held out."""
    metrics = {"test": {**subset_metrics(emb, labels, threshold), **retrieval_metrics(emb, labels)}}
    if excluded:
        unseen = torch.isin(labels, torch.tensor([classes.index(c) for c in excluded]))
        for key, mask in (("test_seen", ~unseen), ("test_unseen", unseen)):
            if mask.sum() > 1 and len(labels[mask].unique()) > 1:
                metrics[key] = subset_metrics(emb[mask], labels[mask], threshold)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--dataset", help="override the card's dataset (e.g. folder:PATH)")
    p.add_argument("--threshold", type=float, help="override the card's threshold")
    p.add_argument("--plots", action="store_true", help="(re)draw the plots beside the model")
    p.add_argument("--json", type=Path, help="also write the metrics here")
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="run the model as the service does with IMGSIM_INFERENCE_PRECISION (app/precision.py)",
    )
    p.add_argument(
        "--engine",
        choices=["torchscript", "onnx", "onnx-int8"],
        default="torchscript",
        help="run model.pt, or model.onnx / model.int8.onnx on ONNX Runtime "
        "(IMGSIM_INFERENCE_ENGINE)",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="--engine onnx[-int8]: write the test metrics into the card's onnx[_int8] section",
    )
    args = p.parse_args(argv)
    if args.engine != "torchscript" and args.precision != "float32":
        p.error("the ONNX engines ignore --precision; drop it")
    if args.record and args.engine == "torchscript":
        p.error("--record is for --engine onnx (model.pt's metrics are written at export)")
    if args.record and (args.dataset or args.threshold):
        p.error("--record keeps the card's own test set and threshold")

    art = artifact.load(args.model_dir, onnx=args.engine != "torchscript")
    card = art.card
    engine = art.module
    if args.engine != "torchscript":
        int8 = args.engine == "onnx-int8"
        onnx, error = (art.onnx_int8, art.onnx_int8_error) if int8 else (art.onnx, art.onnx_error)
        if onnx is None:
            p.error(error or f"{args.model_dir} has no {args.engine} engine (training.export_onnx)")
        engine = onnx
    cfg = card.training
    bundle = load_dataset(
        args.dataset or card.dataset,
        args.data_dir,
        val_fraction=cfg.get("val_fraction", 0.1),
        seed=cfg.get("seed", 0),
        channels=card.input.channels,
        image_size=card.input.height,
        download=False,
    )
    threshold = args.threshold or card.threshold
    emb = embed_all(engine, bundle.test.images, precision=args.precision)
    metrics = compute_metrics(
        emb, bundle.test.labels, threshold, bundle.classes, cfg.get("exclude_classes") or []
    )
    metrics["threshold"] = threshold
    metrics["model"] = card.name
    metrics["model_version"] = card.version
    metrics["precision"] = args.precision
    metrics["engine"] = args.engine
    if args.record:
        section = card.onnx_int8 if args.engine == "onnx-int8" else card.onnx
        assert section is not None
        section.metrics = {"test": metrics["test"], "threshold": threshold}
        artifact.write_card(args.model_dir, card)
    if args.plots:
        from training import plots

        plots.evaluation_plots(
            args.model_dir, emb, bundle.test, threshold, bundle.classes, PAIR_SEED
        )
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
