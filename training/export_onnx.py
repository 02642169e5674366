"""Add the ONNX engine (model.onnx) to an exported model, checked against its model.pt.

    python -m training.export_onnx model_store/cifar10 --data-dir ../shared/data
    python -m training.evaluate model_store/cifar10 --engine onnx --record   # its test metrics
    python -m training.export_onnx model_store/mnist --int8    # + model.int8.onnx, if it holds

The ONNX file is exported from model.pt itself (uint8 input, preprocessing inside, dynamic batch
axis: the TorchScript contract) and kept only if its embeddings match model.pt's within
``--tolerance`` on real images: the first ``--images`` test images of the card's data set, or,
where the data set is absent, the photos/digits in tests/fixtures. Its sha256 goes into the card
(``card.onnx``); the service then serves it where IMGSIM_INFERENCE_ENGINE allows
(app/engines.py). The onnxruntime package must be installed (``pip install 'imgsim[onnx]'``).

``--int8`` also quantizes model.onnx statically (QDQ, per-channel int8 weights, uint8
activations, calibrated on ``--calibration-images`` training images) and keeps the result as
model.int8.onnx only when its test-pair accuracy and AUC, measured in ONNX Runtime, stay within
0.3 points and 0.003 of float32 (app.artifact.INT8_MAX_*); it needs the data set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from app import artifact, images
from app.artifact import ModelCard

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def dataset_images(card: artifact.ModelCard, data_dir: Path, n: int) -> torch.Tensor | None:
    """The first ``n`` test images of the card's data set, or None where it is not on disk."""
    from training.data import DataError, load_dataset

    cfg = card.training
    try:
        bundle = load_dataset(
            card.dataset,
            data_dir,
            val_fraction=cfg.get("val_fraction", 0.1),
            seed=cfg.get("seed", 0),
            channels=card.input.channels,
            image_size=card.input.height,
            download=False,
        )
    except (DataError, OSError) as e:
        print(f"data set {card.dataset!r} not available in {data_dir} ({e})", file=sys.stderr)
        return None
    return bundle.test.images[:n]


def quantize_int8(source: Path, target: Path, calibration: torch.Tensor) -> dict:
    """Static QDQ int8 quantization of ``source`` (an ONNX file), calibrated on ``calibration``
    (uint8 (N, C, H, W)); returns how it was made, for the card."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(32))

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {artifact.ONNX_INPUT: x.numpy()}

    prepared = target.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared))
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: on x86 CPUs without VNNI, ONNX Runtime adds pairs of uint8 x int8
            # products in 16 bits, which full-range weights overflow (app/precision.py).
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return {
        "format": "QDQ",
        "weights": "int8 in a 7-bit range, per channel",
        "reduce_range": True,
        "activations": "uint8, per tensor (MinMax calibration)",
        "calibration_images": len(calibration),
    }


def add_int8(model_dir: Path, card: ModelCard, data_dir: Path, calibration_images: int) -> int:
    """Quantize, measure, and ship model.int8.onnx only within the limits; prints the verdict."""
    from training.data import load_dataset
    from training.evaluate import compute_metrics, embed_all

    cfg = card.training
    bundle = load_dataset(
        card.dataset,
        data_dir,
        val_fraction=cfg.get("val_fraction", 0.1),
        seed=cfg.get("seed", 0),
        channels=card.input.channels,
        image_size=card.input.height,
        download=False,
    )
    pick = torch.randperm(len(bundle.train.images), generator=torch.Generator().manual_seed(0))
    calibration = bundle.train.images[pick[:calibration_images]]
    tmp = model_dir / (artifact.ONNX_INT8_FILE + ".tmp")
    how = quantize_int8(model_dir / artifact.ONNX_FILE, tmp, calibration)
    how["calibrated_on"] = f"{len(calibration)} {card.dataset} training images (seed 0)"
    metrics = {}
    art = artifact.load(model_dir, onnx=False)
    for tag, path in (("float32", model_dir / artifact.ONNX_FILE), ("int8", tmp)):
        emb = embed_all(artifact.load_onnx(path), bundle.test.images)
        found = compute_metrics(emb, bundle.test.labels, card.threshold, bundle.classes, [])
        metrics[tag] = {"test": found["test"], "threshold": card.threshold}
        if tag == "int8":
            with torch.inference_mode():
                want = art.module(bundle.test.images[:500])
            how["max_abs_diff"] = float((emb[:500] - want).abs().max())
    got, ref = metrics["int8"]["test"], metrics["float32"]["test"]
    line = (
        f"int8: accuracy {100 * got['accuracy']:.2f}% vs {100 * ref['accuracy']:.2f}%, AUC "
        f"{got['roc_auc']:.5f} vs {ref['roc_auc']:.5f} (float32 ONNX), max |int8 - model.pt| "
        f"{how['max_abs_diff']:.3g}"
    )
    try:
        artifact.record_onnx_int8(
            model_dir, tmp, metrics=metrics["int8"], reference=metrics["float32"], quantization=how
        )
    except artifact.ArtifactError as e:
        print(f"{line}: NOT shipped, {e}")
        return 0
    size_mb = (model_dir / artifact.ONNX_INT8_FILE).stat().st_size / 1e6
    print(f"{line}: shipped as {model_dir / artifact.ONNX_INT8_FILE} ({size_mb:.1f} MB)")
    return 0


def fixture_images(card: artifact.ModelCard, root: Path = FIXTURES) -> torch.Tensor:
    """Every committed fixture photo/digit, decoded the way the service decodes uploads."""
    paths = sorted(
        p for p in root.rglob("*") if p.suffix in IMAGE_SUFFIXES and "hostile" not in p.parts
    )
    decoded = [images.decode(p.read_bytes(), card.mode, card.size, 40_000_000) for p in paths]
    return torch.stack(decoded)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.export_onnx", description=__doc__.split("\n")[0]
    )
    p.add_argument("model_dir", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--images", type=int, default=2000, help="test images to check on")
    p.add_argument("--tolerance", type=float, default=artifact.ONNX_ATOL)
    p.add_argument("--int8", action="store_true", help="also try the int8 engine (see above)")
    p.add_argument("--calibration-images", type=int, default=2048)
    args = p.parse_args(argv)

    card = artifact.read_card(args.model_dir)
    if args.int8 and card.onnx is not None:  # model.onnx is there already: quantize it
        return add_int8(args.model_dir, card, args.data_dir, args.calibration_images)
    x = dataset_images(card, args.data_dir, args.images)
    where = f"{card.dataset} test images"
    if x is None:
        x = fixture_images(card)
        where = "tests/fixtures images"
    card = artifact.write_onnx(args.model_dir, x, checked_on=where, tolerance=args.tolerance)
    assert card.onnx is not None
    size_mb = (args.model_dir / card.onnx.file).stat().st_size / 1e6
    print(
        f"{args.model_dir / card.onnx.file}: {size_mb:.1f} MB, sha256 {card.onnx.sha256[:12]}…, "
        f"max |ONNX - TorchScript| {card.onnx.max_abs_diff:.2g} on {len(x)} {where} "
        f"(tolerance {card.onnx.tolerance:.2g})"
    )
    if args.int8:
        return add_int8(args.model_dir, card, args.data_dir, args.calibration_images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
