"""TrainConfig: every knob of a training run, a comment each, written whole into model.json.

Presets fill the fields; flags given on the command line win over the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.losses import LOSSES
from training.nets import ARCHS


@dataclass
class TrainConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | cifar10 | folder:PATH
    data_dir: Path = Path("../shared/data")  # where the data sets are (or get downloaded to)
    out: Path = Path("model_store/mnist")  # exported model directory (model.pt, model.json, plots)
    name: str = ""  # model name in the service; default: the out folder's name
    preset: str = ""  # one of PRESETS; fills the fields below
    download: bool = True  # fetch torchvision data sets when absent and the network allows
    # data
    val_fraction: float = 0.1  # of the training images, held out for calibration and selection
    channels: int = 3  # folder data sets only: 1 = greyscale, 3 = RGB
    image_size: int = 0  # folder data sets only: resize to this square size (0 = keep)
    exclude_classes: list[str] = field(default_factory=list)  # held out entirely (unseen classes)
    max_train_images: int = 0  # cap for quick runs (0 = all)
    # model
    arch: str = "convnet"  # seed | convnet | airbench
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # convnet group widths
    embedding_dim: int = 64  # D of the exported embedding (airbench: must be widths[-1])
    normalize: bool = True  # L2-normalise embeddings (distance^2 = 2 - 2 cos)
    flip_tta: bool = False  # exported module averages the image and its mirror
    shift_tta: int = 0  # ...and copies shifted diagonally by +-N px (0 = off)
    # objective
    loss: str = "cosface"  # one of training.losses.LOSSES
    margin: float | None = None  # None: the loss's own default (losses.DEFAULT_MARGINS)
    scale: float = 30.0  # cosface/arcface/softmax logit scale
    temperature: float = 0.1  # supcon
    label_smoothing: float = 0.0  # softmax
    readout: str = "features"  # softmax: embed with the pooled features or the class scores
    m_per_class: int = 0  # >0: batches hold m images of each sampled class (PML MPerClassSampler)
    # optimisation
    epochs: int = 4
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd (nesterov) | adamw
    lr: float = 0.1  # peak learning rate (linear warm-up, then linear decay to 0)
    warmup: float = 0.15  # fraction of steps spent warming up
    momentum: float = 0.9  # sgd
    weight_decay: float = 5e-4
    bias_lr_scale: float = 1.0  # BatchNorm/whitening biases: lr x this, weight decay / this
    lookahead: bool = False  # every 5 steps pull weights toward a slow average (airbench)
    whiten_bias_epochs: int = 3  # airbench: epochs before the whitening stem's bias freezes
    translate: int = 2  # random shift augmentation, pixels
    pad: str = "zeros"  # what shifted-in pixels are: zeros | reflect
    flip: bool = False  # random horizontal flips
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch intra-op threads (0 = usable cores / ranks, CPU quota included)
    run_dir: Path = Path("")  # checkpoint and history; default runs/<name>
    resume: bool = False  # continue from run_dir/checkpoint.pt
    plots: bool = True  # draw plots beside the model after export
    eval_every: int = 1  # epochs between validation passes

    def to_json(self) -> dict[str, Any]:
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


# The classic Siamese recipe (2-D embedding, contrastive margin 5, plain conv stack), as the
# seed tutorials train it: the reference the shipped models are measured against.
_SEED = dict(
    arch="seed", embedding_dim=2, normalize=False, loss="contrastive", margin=5.0,
    optimizer="adamw", lr=5e-4, warmup=0.0, weight_decay=0.0, batch_size=128, translate=0,
    m_per_class=0,
)  # fmt: skip
# Shipped recipes: additive-margin softmax (CosFace) on L2-normalised embeddings, SGD.
_COSFACE = dict(arch="convnet", loss="cosface", scale=30.0, batch_size=256, lr=0.05, translate=2)

# airbench94 (Jordan 2024), written for a mean-reduced loss: its lr 11.5 and weight decay 0.0153
# "per 1024 examples" on a summed loss with momentum 0.85 come to lr 1.5 and a coupled decay of
# 0.0153 / 11.5 here; biases learn 64x faster with the same decoupled decay.
_AIRBENCH = dict(
    arch="airbench", loss="softmax", scale=1 / 9, label_smoothing=0.2, batch_size=1024,
    optimizer="sgd", lr=1.5, momentum=0.85, weight_decay=0.0153 / 11.5, warmup=0.2,
    bias_lr_scale=64.0, lookahead=True, whiten_bias_epochs=3, translate=2, pad="reflect",
    flip=True,
)  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "seed-mnist": {**_SEED, "dataset": "mnist", "epochs": 10},
    "seed-cifar": {**_SEED, "dataset": "cifar10", "epochs": 5},
    "mnist": {
        **_COSFACE, "dataset": "mnist", "widths": [32, 64, 128], "embedding_dim": 64,
        "margin": 0.35, "epochs": 4,
    },
    "cifar10": {
        **_AIRBENCH, "dataset": "cifar10", "widths": [64, 256, 256], "embedding_dim": 256,
        "epochs": 16, "flip_tta": True, "readout": "logits",
    },
}  # fmt: skip


def _parse_bool(s: str) -> bool:
    if s.lower() in {"1", "true", "yes", "on"}:
        return True
    if s.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """``--flag value`` for every field; presets first, then explicit flags."""
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        t = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = dict(
            default=argparse.SUPPRESS, help=f"(default: {getattr(defaults, f.name)})"
        )
        if t is bool:
            kw.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(t) is list:
            (inner,) = typing.get_args(t)
            kw.update(type=inner, nargs="*")
        elif isinstance(t, types.UnionType):  # X | None: parse as X
            (inner,) = [a for a in typing.get_args(t) if a is not type(None)]
            kw.update(type=inner)
        else:
            kw.update(type=t)
        if f.name == "preset":
            kw.update(choices=sorted(PRESETS))
        if f.name == "loss":
            kw.update(choices=LOSSES)
        if f.name == "arch":
            kw.update(choices=ARCHS)
        p.add_argument(flag, **kw)
    given = vars(p.parse_args(argv))
    preset = given.get("preset", "")
    if (
        not preset
        and given.get("dataset", "mnist") in PRESETS
        and "loss" not in given
        and "arch" not in given
    ):
        preset = given.get("dataset", "mnist")  # the shipped recipe for a known data set
    values = {**PRESETS.get(preset, {}), **given, "preset": preset}
    cfg = TrainConfig(**values)
    if not cfg.name:
        cfg.name = cfg.out.name
    if cfg.run_dir == Path(""):
        cfg.run_dir = Path("runs") / cfg.name
    return cfg
