"""Evaluate an exported model on its data set's test images, exactly as the service would run it.

    python -m training.evaluate model_store/mnist --data-dir ../shared/data
    python -m training.evaluate model_store/cifar10 --data-dir ../shared/data --plots runs/eval
    python -m training.evaluate model_store/signatures --dataset folder:/data/new-signatures \
        --pairs 2000                          # a whole folder of your own labelled images
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
from training.data import DataError, Split, load_dataset, load_folder, load_test_split

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


def all_pairs_tar(
    emb: torch.Tensor, labels: torch.Tensor, far: float = 1e-3, max_images: int = 5000
) -> float:
    """TAR at ``far`` over every pair of (up to ``max_images``, a fixed sample) images.

    Why beside the balanced pairs' figure: they hold one impostor pair per image, so at FAR 1e-3
    on 5,000 images their TAR is set by the 5 closest impostors, and another draw of partners
    moves it by a tenth; every pair of the same images holds millions of impostors."""
    if len(labels) > max_images:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(PAIR_SEED))
        emb, labels = emb[keep[:max_images]], labels[keep[:max_images]]
    d = torch.cdist(emb.double(), emb.double())
    upper = torch.ones_like(d, dtype=torch.bool).triu(1)
    same = labels[:, None] == labels[None, :]
    impostors, genuine = d[upper & ~same], d[upper & same]
    if not len(impostors) or not len(genuine):
        return float("nan")
    k = int(far * len(impostors))  # accepting d < the (k+1)-th closest lets at most k through
    cut = torch.kthvalue(impostors, k + 1).values
    return float((genuine < cut).double().mean())


def subset_metrics(
    emb: torch.Tensor, labels: torch.Tensor, threshold: float, pairs: int = 0
) -> dict[str, float]:
    """Verification on fixed-seed balanced pairs; ``pairs`` > 0 keeps that many of them, half
    same-class and half different-class."""
    a, b, same = balanced_pairs(labels, seed=PAIR_SEED)
    if pairs:
        g = torch.Generator().manual_seed(PAIR_SEED)
        pos, neg = same.nonzero().flatten(), (~same).nonzero().flatten()
        pos = pos[torch.randperm(len(pos), generator=g)[: pairs // 2]]
        neg = neg[torch.randperm(len(neg), generator=g)[: pairs - len(pos)]]
        keep = torch.cat([pos, neg])
        a, b, same = a[keep], b[keep], same[keep]
    d = pair_distances(emb, a, b)
    return verification_metrics(d, same.numpy(), threshold)


def compute_metrics(
    emb: torch.Tensor,
    labels: torch.Tensor,
    threshold: float,
    classes: list[str],
    excluded: list[str],
    pairs: int = 0,
) -> dict:
    """Test metrics for a model card: all classes, plus seen/unseen when classes were held out."""
    metrics = {
        "test": {
            **subset_metrics(emb, labels, threshold, pairs),
            "tar_at_far_1e-3_all_pairs": all_pairs_tar(emb, labels),
            **retrieval_metrics(emb, labels),
        }
    }
    if excluded:
        unseen = torch.isin(labels, torch.tensor([classes.index(c) for c in excluded]))
        for key, mask in (("test_seen", ~unseen), ("test_unseen", unseen)):
            if mask.sum() > 1 and len(labels[mask].unique()) > 1:
                metrics[key] = subset_metrics(emb[mask], labels[mask], threshold)
    return metrics


def few_shot(
    emb: torch.Tensor,
    labels: torch.Tensor,
    enrolled: list[int],
    k: int,
    threshold: float,
    seed: int = PAIR_SEED,
) -> dict[str, float]:
    """A gallery as users build one: k images of each ``enrolled`` class; every other image of
    those classes is identified by its nearest gallery image (top-1), and accepted when that
    distance is within ``threshold``; images of the other classes (nobody enrolled them) should
    be rejected by the same rule (open set)."""
    g = torch.Generator().manual_seed(seed)
    gallery, probes = [], []
    for c in enrolled:
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        gallery.append(idx[:k])
        probes.append(idx[k:])
    gal, known = torch.cat(gallery), torch.cat(probes)
    unknown = (~torch.isin(labels, torch.tensor(enrolled))).nonzero().flatten()
    d_known, nearest = torch.cdist(emb[known], emb[gal]).min(dim=1)
    out = {
        "k": k,
        "probes": len(known),
        "top1": float((labels[gal][nearest] == labels[known]).float().mean()),
        "accepted_enrolled": float((d_known <= threshold).float().mean()),
    }
    if len(unknown):
        d_unknown = torch.cdist(emb[unknown], emb[gal]).min(dim=1).values
        out["rejected_never_enrolled"] = float((d_unknown > threshold).float().mean())
        out["never_enrolled_probes"] = len(unknown)
        # What the embedding allows whatever the threshold: the one that accepts 90% of the
        # enrolled probes, and the share of strangers it rejects (the issue-17 open-set goal).
        at90 = float(torch.quantile(d_known.double(), 0.9))
        out["threshold_accepting_90"] = at90
        out["rejected_at_90_accepted"] = float((d_unknown > at90).float().mean())
    return out


def test_images(
    spec: str, data_dir: Path, card: artifact.ModelCard, test_fraction: float
) -> tuple[list[str], Split]:
    """The images to score: a folder without train/ and test/ inside is scored whole when
    ``test_fraction`` is 1 (no re-split), else its stratified test share, as the trainer split it;
    mnist, fashion-mnist and cifar10 use their test sets."""
    cfg = card.training
    size = (card.input.width, card.input.height)
    if spec.startswith("folder:") and test_fraction >= 1:
        root = Path(spec.removeprefix("folder:"))
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            classes, split = load_folder(root, card.mode, size, cache_dir=None)
            return classes, split
    # A data set with its own test set: its training images are not needed.
    found = load_test_split(
        spec, data_dir, channels=card.input.channels, image_size=card.input.height
    )
    if found is not None:
        return found
    bundle = load_dataset(
        spec,
        data_dir,
        val_fraction=cfg.get("val_fraction", 0.1),
        test_fraction=min(test_fraction, 0.99),
        seed=cfg.get("seed", 0),
        channels=card.input.channels,
        image_size=card.input.height,
        download=False,
    )
    return bundle.classes, bundle.test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__.split("\n")[0],
        epilog="Prints the metrics as JSON: pairs, roc_auc, eer, accuracy (at the threshold), "
        "far, frr, tar_at_far_1e-3, precision_at_1, map_at_r; seen/unseen splits when the card "
        "held classes out.",
    )
    p.add_argument("model_dir", type=Path, help="a model folder (model.pt + model.json)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("../shared/data"),
        help="where mnist, fashion-mnist and cifar10 are (default: %(default)s)",
    )
    p.add_argument(
        "--dataset",
        help="score other images than the card's data set: mnist | fashion-mnist | cifar10 | "
        "folder:PATH (class sub-folders, resized to the model's input; default: the card's)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        help="folder:PATH only: the share of every class to score; 1 scores the whole folder with "
        "no re-split (default: 1 for --dataset, else 0.15, the trainer's test split)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="score this many balanced pairs, half same-class, half different (default: every "
        "image once with a same-class and once with a different-class partner)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="a distance to judge same/different at (default: the card's)",
    )
    p.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="draw ROC, distance histograms, example pairs and the embedding map into DIR (never "
        "into the model folder: its plots are the ones the card was shipped with)",
    )
    p.add_argument(
        "--few-shot",
        type=int,
        nargs="*",
        metavar="K",
        help="also enroll K test images of each class held out in training (every class when "
        "none was) and report top-1 identification of the rest, the share accepted at the "
        "threshold, and the share of never-enrolled classes rejected (e.g. --few-shot 1 5)",
    )
    p.add_argument("--json", type=Path, help="also write the metrics to this file")
    p.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="run the model as the service does with IMGSIM_INFERENCE_PRECISION "
        "(app/precision.py); choices: float32, bfloat16 (default: %(default)s)",
    )
    p.add_argument(
        "--engine",
        choices=["torchscript", "onnx", "onnx-int8"],
        default="torchscript",
        help="run model.pt, or model.onnx / model.int8.onnx on ONNX Runtime "
        "(IMGSIM_INFERENCE_ENGINE; default: %(default)s)",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="--engine onnx[-int8]: write the test metrics into the card's onnx[_int8] section",
    )
    args = p.parse_args(argv)
    if args.plots is not None and args.plots.resolve() == args.model_dir.resolve():
        p.error(f"--plots {args.plots} would rewrite the model's own plots; choose another folder")
    if args.engine != "torchscript" and args.precision != "float32":
        p.error("the ONNX engines ignore --precision; drop it")
    if args.record and args.engine == "torchscript":
        p.error("--record is for --engine onnx (model.pt's metrics are written at export)")
    if args.record and (args.dataset or args.threshold or args.pairs):
        p.error("--record keeps the card's own test set, pairs and threshold")

    # Offline: ONNX Runtime may use every core torch does (the service gives it one per worker).
    onnx_threads = torch.get_num_threads()
    art = artifact.load(
        args.model_dir, onnx=args.engine != "torchscript", onnx_threads=onnx_threads
    )
    card = art.card
    engine = art.module
    if args.engine != "torchscript":
        int8 = args.engine == "onnx-int8"
        onnx, error = (art.onnx_int8, art.onnx_int8_error) if int8 else (art.onnx, art.onnx_error)
        if onnx is None:
            p.error(error or f"{args.model_dir} has no {args.engine} engine (training.export_onnx)")
        engine = onnx
    cfg = card.training
    own = args.dataset is None or args.dataset == card.dataset
    fraction = args.test_fraction
    if fraction is None:
        fraction = 0.15 if args.dataset is None else 1.0
    try:
        classes, test = test_images(args.dataset or card.dataset, args.data_dir, card, fraction)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = args.threshold or card.threshold
    emb = embed_all(engine, test.images, precision=args.precision)
    excluded = (cfg.get("exclude_classes") or []) if own else []
    metrics = compute_metrics(emb, test.labels, threshold, classes, excluded, args.pairs)
    if args.few_shot:
        enrolled = [classes.index(c) for c in excluded] or list(range(len(classes)))
        metrics["few_shot"] = {
            f"k={k}": few_shot(emb, test.labels, enrolled, k, threshold) for k in args.few_shot
        }
    metrics["threshold"] = threshold
    metrics["model"] = card.name
    metrics["model_version"] = card.version
    metrics["precision"] = args.precision
    metrics["dataset"] = args.dataset or card.dataset
    metrics["images"] = len(test)
    metrics["engine"] = args.engine
    if args.record:
        section = card.onnx_int8 if args.engine == "onnx-int8" else card.onnx
        assert section is not None
        section.metrics = {"test": metrics["test"], "threshold": threshold}
        artifact.write_card(args.model_dir, card)
    if args.plots is not None:
        from training import plots

        args.plots.mkdir(parents=True, exist_ok=True)
        plots.evaluation_plots(args.plots, emb, test, threshold, classes, PAIR_SEED)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
