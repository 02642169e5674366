"""Real images to send, as encoded files: MNIST digits as PNG, CIFAR-10 photos as their JPEGs.

From ``--data-dir`` (../shared/data) when it is there, else from the small committed sets under
tests/fixtures/. Greyscale models get digits, colour models get photos: the service decodes,
converts and resizes whatever it gets, so any real image is fair load.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.artifact import ModelCard

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MNIST_TEST = Path("MNIST/raw/t10k-images-idx3-ubyte")
CIFAR_TEST = Path("cifar10/test")


@dataclass(frozen=True)
class Corpus:
    files: list[tuple[str, str, bytes]]  # (file name, content type, encoded image)
    source: str  # where they came from, for the report

    def pairs(self, count: int | None = None) -> list[tuple[int, int]]:
        """Index pairs (a, b), every image used once as a and once as b per cycle, a != b."""
        n = len(self.files)
        shift = max(1, n // 2)
        return [(i, (i + shift) % n) for i in range(n if count is None else min(count, n))]


def load_corpus(card: ModelCard, data_dir: Path, limit: int = 5000) -> Corpus:
    if card.input.channels == 1:
        idx = data_dir / MNIST_TEST
        if idx.is_file():
            files = _mnist_pngs(idx, limit)
            return Corpus(files, f"{len(files)} digits from {idx}")
        return _fixture_corpus(FIXTURES / "mnist_small", "*.png", "image/png", limit)
    folder = data_dir / CIFAR_TEST
    if folder.is_dir():
        paths = _interleave(folder, "*.jpg", limit)
        return Corpus(_read(paths, "image/jpeg"), f"{len(paths)} photos from {folder}")
    return _fixture_corpus(FIXTURES / "cifar10_small", "*.jpg", "image/jpeg", limit)


def _fixture_corpus(folder: Path, pattern: str, content_type: str, limit: int) -> Corpus:
    paths = _interleave(folder, pattern, limit)
    if len(paths) < 2:
        raise SystemExit(f"no images: neither --data-dir nor {folder} holds any {pattern}")
    return Corpus(_read(paths, content_type), f"{len(paths)} images from {folder} (fallback)")


def _mnist_pngs(idx: Path, limit: int) -> list[tuple[str, str, bytes]]:
    """IDX (magic, count, rows, cols, then uint8 pixels) -> PNG files."""
    raw = idx.read_bytes()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    pixels = np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)  # (N, H, W)
    files = []
    for i in range(min(count, limit)):
        buf = io.BytesIO()
        Image.fromarray(pixels[i], "L").save(buf, "PNG")
        files.append((f"t10k-{i:05d}.png", "image/png", buf.getvalue()))
    return files


def _interleave(folder: Path, pattern: str, limit: int) -> list[Path]:
    """Files from every class folder in turn, so any prefix mixes the classes."""
    per_class = [sorted(d.glob(pattern)) for d in sorted(folder.iterdir()) if d.is_dir()]
    out: list[Path] = []
    for i in range(max((len(c) for c in per_class), default=0)):
        out += [c[i] for c in per_class if i < len(c)]
    return out[:limit]


def _read(paths: list[Path], content_type: str) -> list[tuple[str, str, bytes]]:
    return [(p.name, content_type, p.read_bytes()) for p in paths]
