"""Add the ONNX engine (model.onnx) to an exported model, checked against its model.pt.

    python -m training.export_onnx model_store/cifar10 --data-dir ../shared/data
    python -m training.evaluate model_store/cifar10 --engine onnx --record   # its test metrics

The ONNX file is exported from model.pt itself (uint8 input, preprocessing inside, dynamic batch
axis: the TorchScript contract) and kept only if its embeddings match model.pt's within
``--tolerance`` on real images: the first ``--images`` test images of the card's data set, or,
where the data set is absent, the photos/digits in tests/fixtures. Its sha256 goes into the card
(``card.onnx``); the service then serves it where IMGSIM_INFERENCE_ENGINE allows
(app/engines.py). The onnxruntime package must be installed (``pip install 'imgsim[onnx]'``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from app import artifact, images

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
    args = p.parse_args(argv)

    card = artifact.read_card(args.model_dir)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
