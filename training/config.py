"""TrainConfig: every knob of a training run, a comment each, written whole into model.json.

Presets fill the fields; flags given on the command line win over the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Arch = Literal["seed", "keras", "convnet", "airbench"]
Loss = Literal[
    "contrastive", "triplet-batch-hard", "triplet-semi-hard", "multi-similarity", "supcon",
    "cosface", "arcface", "softmax",
]  # fmt: skip
Optimizer = Literal["sgd", "adamw", "rmsprop"]
Readout = Literal["features", "logits", "probabilities"]
Pad = Literal["zeros", "reflect"]
ValSplit = Literal["auto", "images", "classes"]
KNOWN_DATASETS = ("mnist", "fashion-mnist", "cifar10")


@dataclass
class TrainConfig:
    dataset: str = "mnist"  # mnist | fashion-mnist | cifar10 | folder:PATH (class sub-folders)
    data_dir: Path = Path("../shared/data")  # where the data sets are (or get downloaded to)
    out: Path = Path("")  # exported model directory; default model_store/<name or data set name>
    name: str = ""  # model name in the service; default: the out folder's name
    preset: str = ""  # one of PRESETS; fills the fields below
    download: bool = True  # fetch torchvision data sets when absent and the network allows
    overwrite: bool = False  # replace a model already in --out (refused otherwise)
    force: bool = False  # export even when validation shows a collapsed model (see min_val_auc)
    # data
    val_fraction: float = 0.1  # of the training images, held out for calibration and selection
    val_split: ValSplit = "auto"  # images: a stratified share of every class; classes: whole
    # classes held out of training, used only for calibration (honest on unseen classes);
    # auto: classes for folder data with at least 20 classes, else images
    val_class_fraction: float = 0.2  # val_split classes: share of the classes held out
    channels: int = 3  # folder data sets only: 1 = greyscale, 3 = RGB
    image_size: int = 0  # folder data sets only: resize to this square size (0 = keep)
    exclude_classes: list[str] = field(default_factory=list)  # held out entirely (unseen classes)
    max_train_images: int = 0  # cap for quick runs (0 = all)
    # model
    arch: Arch = "convnet"  # seed (classic 2-stage conv) | keras (the Keras tutorial tower) |
    # convnet (BatchNorm+GELU groups, the shipped digits recipe) | airbench (CIFAR-10 speed net)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # convnet group widths
    embedding_dim: int = 64  # D of the exported embedding (airbench: widths[-1]; keras: 10)
    normalize: bool = True  # L2-normalise embeddings (distance^2 = 2 - 2 cos)
    flip_tta: bool = False  # exported module averages the image and its mirror
    shift_tta: int = 0  # ...and copies shifted diagonally by +-N px (0 = off)
    # objective
    loss: Loss = "cosface"  # metric-learning objective, see training/losses.py
    margin: float | None = (
        None  # loss margin; None: the loss's own default (losses.DEFAULT_MARGINS)
    )
    scale: float = 30.0  # cosface/arcface/softmax logit scale
    temperature: float = 0.1  # supcon: softmax temperature
    label_smoothing: float = 0.0  # softmax: label smoothing of the targets
    readout: Readout = "features"  # embed with the features, the class scores (logits; softmax
    # loss) or the square roots of the class probabilities at readout_temperature (softmax,
    # cosface, arcface)
    readout_temperature: float = 1.0  # probabilities readout: softmax(scores / this), scores
    # summed over the test-time views
    m_per_class: int = 0  # >0: batches hold m images of each sampled class (PML MPerClassSampler)
    # optimisation
    epochs: int = 4  # passes over the training images
    batch_size: int = 256  # images per step (shrunk for small data, see min_steps_per_epoch)
    min_steps_per_epoch: int = 8  # shrink the batch (not below 32) so an epoch has this many
    # steps; 0 = never adapt
    optimizer: Optimizer = "sgd"  # sgd (nesterov) | adamw | rmsprop (the Keras tutorial's)
    lr: float = 0.1  # peak learning rate (linear warm-up, then linear decay to 0)
    warmup: float = 0.15  # fraction of steps spent warming up
    momentum: float = 0.9  # sgd momentum
    weight_decay: float = 5e-4  # sgd: coupled L2; adamw: decoupled
    bias_lr_scale: float = 1.0  # BatchNorm/whitening biases: lr x this, weight decay / this
    lookahead: bool = False  # every 5 steps pull weights toward a slow average (airbench)
    whiten_bias_epochs: int = 3  # airbench: epochs before the whitening stem's bias freezes
    translate: int = 2  # random shift augmentation (crops of the padded image), pixels
    pad: Pad = "zeros"  # what shifted-in pixels are: zeros (dark backgrounds) | reflect (photos)
    flip: bool = False  # random horizontal flips
    erase: float = 0.0  # share of images with a random rectangle zeroed (random erasing)
    # export
    min_val_auc: float = 0.75  # refuse to export below this validation ROC AUC (--force)
    # run
    seed: int = 0  # seeds the splits, the initial weights and the augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch intra-op threads (0 = usable cores / ranks, CPU quota included)
    run_dir: Path = Path("")  # checkpoint and history; default runs/<name>
    resume: bool = False  # continue from run_dir/checkpoint.pt
    plots: bool = True  # draw plots beside the model after export
    eval_every: int = 1  # epochs between validation passes

    def __post_init__(self) -> None:
        """Check every choice before any data is loaded: a typo costs a second, not a run."""
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            choices = literal_choices(hints[f.name])
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"{f.name} = {getattr(self, f.name)!r} is not valid; "
                    f"choose one of {', '.join(choices)}"
                )
        if self.dataset not in KNOWN_DATASETS and not self.dataset.startswith("folder:"):
            raise ValueError(
                f"dataset = {self.dataset!r} is not valid; choose one of "
                f"{', '.join(KNOWN_DATASETS)} or folder:PATH"
            )
        if self.preset and self.preset not in PRESETS:
            raise ValueError(
                f"preset = {self.preset!r} is not valid; choose one of {', '.join(PRESETS)}"
            )
        if not 0 < self.val_fraction < 1 or not 0 < self.val_class_fraction < 1:
            raise ValueError("val_fraction and val_class_fraction must be between 0 and 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.readout == "logits" and self.loss != "softmax":
            raise ValueError(
                "readout = 'logits' needs loss = 'softmax' (its classifier is the readout)"
            )
        if self.readout == "probabilities" and self.loss not in ("softmax", "cosface", "arcface"):
            raise ValueError(
                "readout = 'probabilities' needs loss = 'softmax', 'cosface' or 'arcface' "
                "(their class weights give the scores)"
            )
        if self.readout_temperature <= 0:
            raise ValueError("readout_temperature must be above 0")
        if self.arch == "airbench" and self.embedding_dim != self.widths[-1]:
            raise ValueError(
                f"arch airbench embeds with its {self.widths[-1]} pooled features (no head): "
                f"set embedding_dim = {self.widths[-1]}"
            )
        if self.arch == "keras" and self.embedding_dim != 10:
            raise ValueError("arch keras is the tutorial's tower: its embedding is 10-d")

    @property
    def data_name(self) -> str:
        """mnist, cifar10, ... or the folder's own name for folder:PATH."""
        if self.dataset.startswith("folder:"):
            return Path(self.dataset.removeprefix("folder:")).resolve().name
        return self.dataset

    def resolved_val_split(self, num_classes: int) -> str:
        if self.val_split != "auto":
            return self.val_split
        return "classes" if self.dataset.startswith("folder:") and num_classes >= 20 else "images"

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

# The Keras tutorial this product grew from (keras.io/examples/vision/siamese_contrastive): its
# tower (BatchNorm, conv 4@5x5 tanh, avg-pool, conv 16@5x5 tanh, avg-pool, BatchNorm, dense 10
# tanh), contrastive loss with margin 1 on the Euclidean distance, RMSprop at 1e-3, 10 epochs.
_KERAS = dict(
    arch="keras", embedding_dim=10, normalize=False, loss="contrastive", margin=1.0,
    optimizer="rmsprop", lr=1e-3, warmup=0.0, weight_decay=0.0, batch_size=128, translate=0,
    m_per_class=0, epochs=10,
)  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "seed-mnist": {**_SEED, "dataset": "mnist", "epochs": 10},
    "seed-cifar": {**_SEED, "dataset": "cifar10", "epochs": 5},
    "seed-fashion": {**_KERAS, "dataset": "fashion-mnist"},
    "mnist": {
        **_COSFACE, "dataset": "mnist", "widths": [32, 64, 128], "embedding_dim": 64,
        "margin": 0.35, "epochs": 4,
    },
    "cifar10": {
        **_AIRBENCH, "dataset": "cifar10", "widths": [64, 256, 256], "embedding_dim": 256,
        "epochs": 16, "flip_tta": True, "eval_every": 2,
        # Class probabilities (square-rooted), not normalised scores: they keep how unsure the
        # tower was, which is what separates the closest impostors at a low false-accept rate
        # (train.readout_tower). Temperature chosen on the validation split (docs/training.md):
        # colder ones saturate float32 and tie many distances at 0.
        "readout": "probabilities", "readout_temperature": 4.0,
    },
    # Clothing is left-right symmetric and centred on black: the digits recipe plus random flips
    # (and the mirror averaged in at test time), random erasing (a garment is still itself with
    # a patch hidden), 12 epochs, and the class-probability readout over the CosFace class
    # weights (its temperature chosen on the validation split, docs/training.md).
    "fashion-mnist": {
        **_COSFACE, "dataset": "fashion-mnist", "widths": [32, 64, 128], "embedding_dim": 64,
        "margin": 0.35, "epochs": 12, "flip": True, "flip_tta": True, "erase": 0.5,
        "readout": "probabilities", "readout_temperature": 0.1,
    },
}  # fmt: skip
# Fields that say where and how a run executes, not what it learns: a shipped card may differ
# from its preset in these and still be the same recipe.
RUN_FIELDS = frozenset(
    {"data_dir", "out", "name", "run_dir", "device", "threads", "download", "overwrite", "plots"}
)


def _parse_bool(s: str) -> bool:
    if s.lower() in {"1", "true", "yes", "on"}:
        return True
    if s.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def literal_choices(t: Any) -> tuple[Any, ...]:
    return typing.get_args(t) if typing.get_origin(t) is Literal else ()


def field_help() -> dict[str, str]:
    """Each field's comment in TrainConfig's source (and its continuation lines): the --help."""
    src = inspect.getsource(TrainConfig).split("def __post_init__")[0]
    out: dict[str, str] = {}
    last = ""
    for line in src.splitlines():
        m = re.match(r"^    (\w+): [^#]*#\s?(.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif re.match(r"^    # \S+ \S", line) and last:  # not a one-word section heading
            out[last] += " " + line.strip().removeprefix("#").strip()
        else:
            last = ""
    return out


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """``--flag value`` for every field; presets first, then explicit flags."""
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=description,
        epilog="Presets: "
        + "; ".join(
            f"{k} ({v.get('dataset')}, {v.get('arch')}, {v.get('loss')})"
            for k, v in PRESETS.items()
        )
        + ". Flags given on the command line win over the preset's values.",
    )
    helps = field_help()
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        t = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kw: dict[str, Any] = dict(
            default=argparse.SUPPRESS,
            help=f"{helps.get(f.name, '')} (default: {default if default != Path('') else 'auto'})",
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
        if literal_choices(t):  # argparse checks the string against the choices
            kw.update(type=type(literal_choices(t)[0]), choices=literal_choices(t))
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
    try:
        cfg = TrainConfig(**values)
    except ValueError as e:
        p.error(str(e))
    return resolve_paths(cfg)


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """--out defaults to model_store/<name or data set>, --name to the out folder's name, the run
    directory to runs/<name>."""
    if cfg.out == Path(""):
        cfg.out = Path("model_store") / (cfg.name or cfg.data_name)
    if not cfg.name:
        cfg.name = cfg.out.name
    if cfg.run_dir == Path(""):
        cfg.run_dir = Path("runs") / cfg.name
    return cfg
