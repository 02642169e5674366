"""Data sets as uint8 tensors in memory: (N, C, H, W) images, (N,) int64 labels.

Small image sets fit in RAM as uint8 (CIFAR-10 train is 150 MB), so every epoch augments whole
batches on tensors instead of decoding files again (see airbench). JPEG folders are decoded once
and cached under ``cache_dir`` (never next to the data: ../shared is read-only in CI).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

DATASETS = ("mnist", "fashion-mnist", "cifar10", "folder:PATH")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(RuntimeError):
    """The data set is missing or malformed; the message says where it was looked for."""


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass
class DataBundle:
    name: str
    classes: list[str]
    train: Split
    val: Split  # carved out of the training images: thresholds are calibrated here, never on test
    test: Split
    val_classes: list[str] = field(default_factory=list)  # classes held out of training for val

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Indices (rest, held) with ``fraction`` of every class held out, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    held, rest = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:k])
        rest.append(idx[k:])
    return torch.cat(rest).sort().values, torch.cat(held).sort().values


_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}  # spec -> torchvision class


def _torchvision_classes(spec: str) -> list[str]:
    if spec == "mnist":
        return [str(i) for i in range(10)]
    import torchvision.datasets as tvd

    return list(getattr(tvd, _TORCHVISION[spec]).classes)


def _torchvision_split(cls_name: str, root: Path, train: bool, download: bool) -> Split:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    try:
        ds = cls(root=str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataError(
                f"{cls_name} not found under {root}/{cls_name}/raw and --no-download was given"
            ) from None
        try:
            ds = cls(root=str(root), train=train, download=True)
        except Exception as e:
            raise DataError(
                f"{cls_name} not found under {root}/{cls_name}/raw and the download failed ({e}); "
                f"put the IDX files there or pass --data-dir"
            ) from e
    images = torch.as_tensor(np.asarray(ds.data)).to(torch.uint8)
    return Split(images.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64))


def _decode(path: Path, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None and im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def list_class_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """ImageFolder layout: ``root/<class>/<image>``; classes sorted by name."""
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    items = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DataError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders")
    return classes, items


def load_folder(
    root: Path, mode: str, size: tuple[int, int] | None, cache_dir: Path | None
) -> tuple[list[str], Split]:
    """Decode a class-folder tree once into uint8 tensors, cached by file list and mtimes."""
    classes, items = list_class_folders(root)
    key = hashlib.sha256(
        repr(
            (str(root.resolve()), mode, size, [(str(p), p.stat().st_mtime_ns) for p, _ in items])
        ).encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"{root.name}-{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        blob = torch.load(cache, weights_only=True)
        return classes, Split(blob["images"], blob["labels"])
    if size is None:  # all images must then share one size: take the first one's
        with Image.open(items[0][0]) as im:
            size = im.size
    log.info("decoding %d images from %s", len(items), root)
    with ThreadPoolExecutor() as pool:
        arrays = list(pool.map(lambda it: _decode(it[0], mode, size), items, chunksize=256))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": images, "labels": labels}, cache)
    return classes, Split(images, labels)


def _cifar10(
    data_dir: Path, download: bool, cache_dir: Path | None
) -> tuple[list[str], Split, Split]:
    folders = data_dir / "cifar10"
    if (folders / "train").is_dir() and (folders / "test").is_dir():
        classes, train = load_folder(folders / "train", "RGB", (32, 32), cache_dir)
        _, test = load_folder(folders / "test", "RGB", (32, 32), cache_dir)
        return classes, train, test
    import torchvision.datasets as tvd

    try:
        splits = [tvd.CIFAR10(str(data_dir), train=t, download=download) for t in (True, False)]
    except Exception as e:
        raise DataError(
            f"CIFAR-10 not found under {folders}/{{train,test}}/<class>/ nor as the python "
            f"batches in {data_dir} ({e})"
        ) from e
    out = [
        Split(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(ds.targets, dtype=torch.int64),
        )
        for ds in splits
    ]
    return list(splits[0].classes), out[0], out[1]


def load_test_split(
    spec: str,
    data_dir: Path,
    *,
    channels: int = 3,
    image_size: int | None = None,
    cache_dir: Path | None = Path(".cache/imgsim"),
    download: bool = False,
) -> tuple[list[str], Split] | None:
    """(classes, test split) of a data set that has its own test set, without loading its
    training images (decoding CIFAR-10's 50,000 took half a minute per evaluation); None for a
    folder without train/ and test/, whose test split is carved out of the whole."""
    data_dir = Path(data_dir)
    if spec in _TORCHVISION:
        return _torchvision_classes(spec), _torchvision_split(
            _TORCHVISION[spec], data_dir, False, download
        )
    if spec == "cifar10" and (data_dir / "cifar10" / "test").is_dir():
        return load_folder(data_dir / "cifar10" / "test", "RGB", (32, 32), cache_dir)
    root = Path(spec.removeprefix("folder:"))
    if spec.startswith("folder:") and image_size and (root / "train").is_dir():
        if (root / "test").is_dir():  # sized as the model's input, as the trainer sized them
            mode = "L" if channels == 1 else "RGB"
            return load_folder(root / "test", mode, (image_size, image_size), cache_dir)
    return None


def load_dataset(
    spec: str,
    data_dir: Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.15,
    seed: int = 0,
    channels: int = 3,
    image_size: int | None = None,
    exclude_classes: list[str] | None = None,
    cache_dir: Path | None = Path(".cache/imgsim"),
    download: bool = True,
    val_class_fraction: float = 0.0,
) -> DataBundle:
    """Load ``spec`` (mnist, fashion-mnist, cifar10 or folder:PATH) with a stratified val split.

    ``exclude_classes`` are removed from train and val (never seen in training) but kept in test,
    so evaluation can report seen and unseen classes separately. ``val_class_fraction`` > 0 makes
    the validation split class-disjoint: that share of the (remaining) classes leaves training
    and all their training images become the validation split, so the threshold is calibrated on
    classes the tower never saw, as a user's new classes will be.
    """
    data_dir = Path(data_dir)
    if spec in _TORCHVISION:
        classes = _torchvision_classes(spec)
        train = _torchvision_split(_TORCHVISION[spec], data_dir, True, download)
        test = _torchvision_split(_TORCHVISION[spec], data_dir, False, download)
    elif spec == "cifar10":
        classes, train, test = _cifar10(data_dir, download, cache_dir)
    elif spec.startswith("folder:"):
        root = Path(spec.removeprefix("folder:"))
        mode = "L" if channels == 1 else "RGB"
        size = (image_size, image_size) if image_size else None
        if (root / "train").is_dir() and (root / "test").is_dir():
            classes, train = load_folder(root / "train", mode, size, cache_dir)
            test_classes, test = load_folder(
                root / "test", mode, size or train.images.shape[-1:-3:-1], cache_dir
            )
            if test_classes != classes:
                raise DataError(f"{root}: train and test have different class folders")
        else:
            classes, full = load_folder(root, mode, size, cache_dir)
            rest, held = stratified_split(full.labels, test_fraction, seed + 1)
            train, test = full.subset(rest), full.subset(held)
    else:
        raise DataError(f"unknown dataset {spec!r}; choose one of {', '.join(DATASETS)}")

    unknown = sorted(set(exclude_classes or []) - set(classes))
    if unknown:
        raise DataError(f"--exclude-classes {unknown} not in classes {classes}")
    if val_class_fraction > 0:
        kept = [c for c in classes if c not in (exclude_classes or [])]
        k = max(2, round(len(kept) * val_class_fraction))
        if len(kept) - k < 2:
            raise DataError(
                f"a class-disjoint validation split needs at least 4 classes, {len(kept)} left; "
                f"pass --val-split images"
            )
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed))
        val_classes = sorted(kept[i] for i in order[:k].tolist())
        held_mask = torch.isin(train.labels, torch.tensor([classes.index(c) for c in val_classes]))
        val, train = train.subset(held_mask), train.subset(~held_mask)
    else:
        val_classes = []
        rest, held = stratified_split(train.labels, val_fraction, seed)
        val, train = train.subset(held), train.subset(rest)
    if exclude_classes:
        drop = torch.tensor([classes.index(c) for c in exclude_classes])
        train = train.subset(~torch.isin(train.labels, drop))
        val = val.subset(~torch.isin(val.labels, drop))
    return DataBundle(spec, classes, train, val, test, val_classes)


def augment(
    x: torch.Tensor,
    *,
    translate: int,
    flip: bool,
    generator: torch.Generator,
    pad: str = "zeros",
    erase: float = 0.0,
) -> torch.Tensor:
    """Random translation by up to ``translate`` px and horizontal flips, per image. Shifted-in
    pixels are zeros (digits on black) or the mirrored border (``pad="reflect"``, photos). With
    probability ``erase``, a random rectangle of the image is then zeroed (random erasing, Zhong
    et al. 2017): the tower must match items by more than one telling patch (a collar, a logo).

    (B, C, H, W) uint8 in, same out. Whole-batch ops grouped by shift: at most (2t+1)^2 groups.
    """
    b, _, h, w = x.shape
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if translate > 0:
        t = translate
        if pad == "reflect":  # reflect-pad has no uint8 kernel; the values stay exact in float
            padded = torch.nn.functional.pad(x.float(), (t, t, t, t), mode="reflect").to(x.dtype)
        elif pad == "zeros":
            padded = torch.nn.functional.pad(x, (t, t, t, t))
        else:
            raise ValueError(f"pad must be zeros or reflect, not {pad!r}")
        shifts = torch.randint(0, 2 * t + 1, (b, 2), generator=generator)
        out = torch.empty_like(x)
        codes = shifts[:, 0] * (2 * t + 1) + shifts[:, 1]
        for code in codes.unique().tolist():
            idx = (codes == code).nonzero().flatten()
            dy, dx = divmod(code, 2 * t + 1)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        x = out
    if erase > 0:
        x = _erase(x, erase, generator)
    return x


def _erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Zero one rectangle in a share ``p`` of the images: area 2-40% of the image, aspect ratio
    1/3 to 3 (log-uniform), anywhere it fits; one mask built for the whole batch."""
    b, _, h, w = x.shape
    area = torch.empty(b).uniform_(0.02, 0.4, generator=generator) * h * w
    log_r = torch.empty(b).uniform_(-1.0986, 1.0986, generator=generator)  # ln(1/3) .. ln(3)
    eh = (area * log_r.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_r.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(b, generator=generator) * (h - eh + 1)).long()
    x0 = (torch.rand(b, generator=generator) * (w - ew + 1)).long()
    chosen = torch.rand(b, generator=generator) < p
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :] & chosen[:, None, None]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0)
