"""THE CONTRACT between training/ and app/: what lives in ``model_store/<name>/``.

    model_store/<name>/model.pt    TorchScript; forward(x: uint8 (N, C, H, W)) -> float32 (N, D)
    model_store/<name>/model.json  ModelCard below; written last, so its presence means complete

Preprocessing (scaling, normalisation, test-time flips) lives inside model.pt, so a consumer only
decodes, converts to ``card.mode`` and resizes to (height, width). All TorchScript loading and
saving goes through :func:`save_module` / :func:`load_module`: torch 2.14 deprecates
``torch.jit`` with a FutureWarning, and this is the one place that knows the serialisation format.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_validator

MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
FORMAT = "torchscript"


class ArtifactError(RuntimeError):
    """A model directory that is incomplete, corrupt or does not match its card."""


class InputSpec(BaseModel):
    channels: Literal[1, 3] = Field(description="1 = greyscale (PIL mode L), 3 = RGB")
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)


class ThresholdRate(BaseModel):
    """One row of the operating-point table: what a given threshold costs on validation pairs."""

    threshold: float
    false_accept_rate: float  # different-class pairs judged same
    false_reject_rate: float  # same-class pairs judged different


class Calibration(BaseModel):
    """Logistic map from distance to P(same): p = 1 / (1 + exp(-(intercept + slope * distance)))."""

    method: Literal["logistic"] = "logistic"
    intercept: float
    slope: float = Field(lt=0, description="negative: larger distance, less likely the same")
    # How P(same) and the threshold agree (issue 14): "threshold" = the balanced-accuracy threshold
    # is chosen first and the map is fitted with intercept = -slope * threshold, so P = 0.5 there.
    # None: an older card whose free two-parameter fit need not cross 0.5 at the threshold.
    anchor: Literal["threshold"] | None = Field(
        None, description="threshold: fitted so that P(same) = 0.5 exactly at the card's threshold"
    )
    table: list[ThresholdRate] = Field(
        default_factory=list, description="validation FAR/FRR by threshold, ascending"
    )

    def probability(self, distance: float) -> float:
        z = self.intercept + self.slope * distance
        # Two branches keep exp() from overflowing on either tail.
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


class EmbeddingStats(BaseModel):
    """Mean and covariance of the embeddings of a reference image set (the validation split):
    what the drift monitor compares live traffic with (app/drift.py)."""

    source: str = Field(description="which images, e.g. 'validation split'")
    images: int = Field(ge=2)
    mean: list[float]  # (D,)
    covariance: list[list[float]]  # (D, D), sample covariance (ddof=1)

    @model_validator(mode="after")
    def _square(self) -> EmbeddingStats:
        d = len(self.mean)
        if len(self.covariance) != d or any(len(row) != d for row in self.covariance):
            raise ValueError(f"covariance must be {d} x {d}, like the mean")
        return self


class ModelCard(BaseModel):
    """Everything a consumer needs to use model.pt correctly, and how it was made."""

    name: str
    version: str = Field(description="first 12 hex digits of sha256(model.pt)")
    format: Literal["torchscript"] = FORMAT
    dataset: str
    classes: list[str]
    input: InputSpec
    embedding_dim: int = Field(gt=0)
    distance: Literal["euclidean"] = "euclidean"
    threshold: float = Field(gt=0, description="a distance: at or below means same")
    calibration: Calibration
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict, description="full training config")
    created_at: str
    torch_version: str
    sha256: str
    # Optional: cards exported before drift monitoring have none, and keep loading.
    embedding_stats: EmbeddingStats | None = None

    @property
    def mode(self) -> Literal["L", "RGB"]:
        return "L" if self.input.channels == 1 else "RGB"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order PIL's resize expects."""
        return self.input.width, self.input.height


@dataclass(frozen=True)
class Artifact:
    card: ModelCard
    module: torch.jit.ScriptModule
    path: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _quiet_torchscript_deprecation() -> Iterator[None]:
    # torch>=2.14 warns that torch.jit is deprecated. The product ships TorchScript on purpose
    # (docs/serving.md, Why TorchScript); silence exactly that warning, here only.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
        )
        yield


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    with _quiet_torchscript_deprecation():
        return torch.jit.script(module)


def save_module(module: torch.nn.Module, path: Path) -> None:
    """Script (if needed) and save ``module`` as TorchScript at ``path``."""
    scripted = module if isinstance(module, torch.jit.ScriptModule) else script(module)
    with _quiet_torchscript_deprecation():
        scripted.save(str(path))


def load_module(path: Path) -> torch.jit.ScriptModule:
    with _quiet_torchscript_deprecation():
        return torch.jit.load(str(path), map_location="cpu")


def read_card(model_dir: Path) -> ModelCard:
    card_path = model_dir / CARD_FILE
    if not card_path.is_file():
        raise ArtifactError(f"{model_dir}: no {CARD_FILE} (incomplete export?)")
    try:
        return ModelCard.model_validate_json(card_path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{card_path}: invalid model card: {e}") from e


def load(model_dir: Path) -> Artifact:
    """Load one model directory, refusing it unless model.pt matches the card's sha256."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    weights = model_dir / MODEL_FILE
    if not weights.is_file():
        raise ArtifactError(f"{model_dir}: no {MODEL_FILE}")
    actual = sha256_file(weights)
    if actual != card.sha256:
        raise ArtifactError(
            f"{weights}: sha256 {actual[:12]}… does not match model.json ({card.sha256[:12]}…)"
        )
    try:
        module = load_module(weights)
    except Exception as e:  # torch raises RuntimeError/ValueError/zip errors for corrupt files
        raise ArtifactError(f"{weights}: not a loadable TorchScript module: {e}") from e
    module.eval()
    return Artifact(card=card, module=module, path=model_dir)


def discover(store: Path) -> list[Path]:
    """Model directories in a store: sub-folders that hold a model card."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if (p / CARD_FILE).is_file())


def write(
    model_dir: Path,
    module: torch.nn.Module,
    *,
    name: str,
    dataset: str,
    classes: list[str],
    input_spec: InputSpec,
    embedding_dim: int,
    threshold: float,
    calibration: Calibration,
    metrics: dict[str, Any],
    training: dict[str, Any],
    embedding_stats: EmbeddingStats | None = None,
) -> ModelCard:
    """Export ``module`` and its card; check the saved module reproduces the original."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CARD_FILE).unlink(missing_ok=True)  # an old card must not vouch for new weights
    weights = model_dir / MODEL_FILE
    module = module.eval()
    save_module(module, weights)

    probe = torch.randint(0, 256, (2, input_spec.channels, input_spec.height, input_spec.width))
    probe = probe.to(torch.uint8)
    with torch.inference_mode():
        expected = module(probe)
        got = load_module(weights)(probe)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if tuple(got.shape) != (2, embedding_dim) or got.dtype != torch.float32:
        raise ArtifactError(f"exported module returns {tuple(got.shape)} {got.dtype}")

    digest = sha256_file(weights)
    card = ModelCard(
        name=name,
        version=digest[:12],
        dataset=dataset,
        classes=classes,
        input=input_spec,
        embedding_dim=embedding_dim,
        threshold=threshold,
        calibration=calibration,
        metrics=metrics,
        training=training,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        torch_version=torch.__version__,
        sha256=digest,
        embedding_stats=embedding_stats,
    )
    write_card(model_dir, card)
    return card


def write_card(model_dir: Path, card: ModelCard) -> None:
    """Write model.json atomically: a reader never sees half a card."""
    path = Path(model_dir) / CARD_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(card.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
