"""THE CONTRACT between training/ and app/: what lives in ``model_store/<name>/``.

    model_store/<name>/model.pt    TorchScript; forward(x: uint8 (N, C, H, W)) -> float32 (N, D)
    model_store/<name>/model.json  ModelCard below; written last, so its presence means complete
    model_store/<name>/model.onnx  optional: the same function for ONNX Runtime (card.onnx)
    model_store/<name>/model.int8.onnx  optional: its int8 quantization (card.onnx_int8)

Preprocessing (scaling, normalisation, test-time flips) lives inside model.pt, so a consumer only
decodes, converts to ``card.mode`` and resizes to (height, width). All TorchScript loading and
saving goes through :func:`save_module` / :func:`load_module`: torch 2.14 deprecates
``torch.jit`` with a FutureWarning, and this is the one place that knows the serialisation format.

model.onnx is a second engine for the same function, never a second contract: it is exported
from model.pt itself (:func:`write_onnx`), refused at export unless it matches model.pt within
``ONNX_ATOL`` on real images, and pinned by its sha256 in ``card.onnx``. A card without the
field (every card before issue 18) loads as before; a model.onnx that is missing, altered or
unloadable costs only the ONNX engine, reported in ``Artifact.onnx_error``, and model.pt serves.
model.int8.onnx, a statically quantized model.onnx, is held to accuracy instead of a tolerance:
training/export_onnx.py records it (:func:`record_onnx_int8`) only when its test-pair accuracy
and AUC stay within ``INT8_MAX_ACCURACY_DROP`` / ``INT8_MAX_AUC_DROP`` of float32.
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

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator

from app.precision import int8_saturates

MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
FORMAT = "torchscript"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
INT8_MAX_ACCURACY_DROP = 0.003  # test-pair accuracy, as a fraction (0.3 points); issue 18
INT8_MAX_AUC_DROP = 0.003
ONNX_INPUT = "images"  # uint8 (N, C, H, W), N dynamic
ONNX_OUTPUT = "embeddings"  # float32 (N, D)
ONNX_OPSET = 17
# Largest |difference| allowed between an ONNX and a TorchScript embedding component, on real
# images. Embeddings are unit length, so 1e-4 moves a distance by at most ~3e-4 (cards'
# thresholds are ~0.1-1.5 wide apart); the shipped towers measure ~1e-6 (docs/serving-engine.md).
ONNX_ATOL = 1e-4

Engine = Literal["torchscript", "onnx", "onnx-int8"]
EngineSetting = Literal["auto", "torchscript", "onnx", "onnx-int8"]


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


class OnnxCard(BaseModel):
    """An optional ONNX engine of a model: ``model.onnx`` exported from ``model.pt``, or its
    int8 quantization ``model.int8.onnx``."""

    file: str = ONNX_FILE
    sha256: str
    precision: Literal["float32", "int8"] = "float32"
    quantization: dict[str, Any] = Field(
        default_factory=dict, description="int8: how it was quantized and calibrated"
    )
    opset: int
    tolerance: float | None = Field(
        description="max |ONNX - TorchScript| allowed per component; None for int8, which is "
        "held to test accuracy instead"
    )
    max_abs_diff: float = Field(description="max |ONNX - TorchScript| measured at export")
    checked_images: int = Field(gt=0, description="real images the check ran on")
    checked_on: str = Field(description="where those images came from")
    onnxruntime_version: str
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="test metrics served by this engine (training.evaluate --engine onnx)",
    )


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
    # Issue 18, both optional so older cards keep loading. ``engine`` is this model's preferred
    # engine; IMGSIM_INFERENCE_ENGINE, when not "auto", overrides it for the whole server.
    engine: EngineSetting = "auto"
    onnx: OnnxCard | None = None
    onnx_int8: OnnxCard | None = None

    @property
    def mode(self) -> Literal["L", "RGB"]:
        return "L" if self.input.channels == 1 else "RGB"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order PIL's resize expects."""
        return self.input.width, self.input.height


class OnnxModel:
    """An ONNX Runtime session on the CPU provider, called like the TorchScript module:
    uint8 (N, C, H, W) tensor -> float32 (N, D) tensor.

    ``InferenceSession.run`` releases the GIL for the whole forward pass (the TorchScript
    interpreter takes it back between ops), and may be called from several threads at once.
    """

    def __init__(self, session: Any, path: Path) -> None:
        self.session = session
        self.path = path

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.numpy())
        (out,) = self.session.run([ONNX_OUTPUT], {ONNX_INPUT: batch})
        return torch.from_numpy(out)


@dataclass(frozen=True)
class Artifact:
    card: ModelCard
    module: torch.jit.ScriptModule
    path: Path
    onnx: OnnxModel | None = None  # the card's ONNX engine, loaded (when asked and possible)
    onnx_error: str | None = None  # why the card's ONNX engine is not loaded, if it is not
    onnx_int8: OnnxModel | None = None  # the same for the int8 ONNX engine
    onnx_int8_error: str | None = None


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


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_onnx(path: Path, threads: int = 1) -> OnnxModel:
    """An ONNX Runtime CPU session on ``path`` running each forward pass on ``threads`` cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin between ops by default; on a shared 2-core box that burns the
    # core the event loop needs. (With threads=1 the caller's thread runs the graph alone.)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... for a bad file
        raise ArtifactError(f"{path}: not a loadable ONNX model: {e}") from e
    return OnnxModel(session, Path(path))


def _load_onnx_engine(model_dir: Path, section: OnnxCard, threads: int) -> OnnxModel:
    path = model_dir / section.file
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (named by model.json)")
    actual = sha256_file(path)
    if actual != section.sha256:
        raise ArtifactError(
            f"{path}: sha256 {actual[:12]}… does not match model.json ({section.sha256[:12]}…)"
        )
    if not onnxruntime_available():
        raise ArtifactError("onnxruntime is not installed (pip install 'imgsim[onnx]')")
    return load_onnx(path, threads)


def int8_safe_here(section: OnnxCard) -> bool:
    """An int8 file runs exactly here if its weights use 7 bits or the CPU sums in 32 bits."""
    return bool(section.quantization.get("reduce_range")) or not int8_saturates()


def load(model_dir: Path, *, onnx: bool = True, onnx_threads: int = 1) -> Artifact:
    """Load one model directory, refusing it unless model.pt matches the card's sha256.

    With ``onnx``, also load the card's ONNX engine when it has one; a broken one is reported
    in ``onnx_error`` and does not refuse the model (model.pt is the contract).
    """
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
    engines: list[OnnxModel | None] = [None, None]
    errors: list[str | None] = [None, None]
    for i, section in enumerate((card.onnx, card.onnx_int8)):
        if onnx and section is not None:
            try:
                if section.precision == "int8" and not int8_safe_here(section):
                    raise ArtifactError(
                        f"{section.file}: quantized with full-range int8 weights, which overflow "
                        "ONNX Runtime's int8 kernels on a CPU without VNNI (this one); re-export "
                        "it with `python -m training.export_onnx MODEL_DIR --int8`"
                    )
                engines[i] = _load_onnx_engine(model_dir, section, onnx_threads)
            except ArtifactError as e:
                errors[i] = str(e)
    return Artifact(card, module, model_dir, engines[0], errors[0], engines[1], errors[1])


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
    (model_dir / ONNX_FILE).unlink(missing_ok=True)  # nor an old engine stand in for them
    (model_dir / ONNX_INT8_FILE).unlink(missing_ok=True)
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


def export_onnx(module: torch.nn.Module, card: ModelCard, path: Path) -> None:
    """Write ``module`` (normally model.pt, loaded) as ONNX with a dynamic batch axis.

    The TorchScript-based exporter (``dynamo=False``): the dynamo exporter traces Python code
    with torch.export, and model.pt is TorchScript, which it cannot trace. Exporting from the
    shipped file, not from the training code, is what makes the check in :func:`write_onnx`
    a check of the artifact.
    """
    probe = torch.zeros(2, card.input.channels, card.input.height, card.input.width)
    with _quiet_torchscript_deprecation(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"no signature found for", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            module,
            (probe.to(torch.uint8),),
            str(path),
            dynamo=False,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def write_onnx(
    model_dir: Path,
    images: torch.Tensor,
    *,
    checked_on: str,
    tolerance: float = ONNX_ATOL,
    batch_size: int = 64,
) -> ModelCard:
    """Add model.onnx to an exported model: export it from model.pt, check it reproduces
    model.pt on ``images`` (uint8 (N, C, H, W), real ones) within ``tolerance`` at batch 1 and
    at ``batch_size``, then record its sha256 in the card.

    Raises ArtifactError (and leaves no model.onnx) when the check fails.
    """
    import onnxruntime as ort

    model_dir = Path(model_dir)
    art = load(model_dir, onnx=False)
    card = art.card
    shape = (card.input.channels, card.input.height, card.input.width)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ArtifactError(f"check images must be uint8 (N, {shape}), got {images.shape}")
    path = model_dir / ONNX_FILE
    tmp = model_dir / (ONNX_FILE + ".tmp")
    export_onnx(art.module, card, tmp)
    try:
        engine = load_onnx(tmp)
        worst = 0.0
        with torch.inference_mode():
            chunks = [images[:1]] + list(images[1:].split(batch_size))  # batch 1 and full ones
            for x in chunks:
                want = art.module(x).float()
                got = engine(x)
                if got.shape != want.shape or got.dtype != torch.float32:
                    raise ArtifactError(
                        f"ONNX returns {tuple(got.shape)} {got.dtype} for {tuple(want.shape)}"
                    )
                worst = max(worst, float((got - want).abs().max()))
        if not worst <= tolerance:  # also catches NaN
            raise ArtifactError(
                f"ONNX differs from {MODEL_FILE} by {worst:.3g} (tolerance {tolerance:.3g})"
            )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    card.onnx = OnnxCard(
        sha256=sha256_file(path),
        opset=ONNX_OPSET,
        tolerance=tolerance,
        max_abs_diff=worst,
        checked_images=len(images),
        checked_on=checked_on,
        onnxruntime_version=ort.__version__,
    )
    write_card(model_dir, card)
    return card


def record_onnx_int8(
    model_dir: Path,
    quantized: Path,
    *,
    metrics: dict[str, Any],
    reference: dict[str, Any],
    quantization: dict[str, Any],
) -> ModelCard:
    """Ship ``quantized`` (an int8 model.onnx) as model.int8.onnx, with its test ``metrics``
    (``{"test": {...}}``, measured in ONNX Runtime) in ``card.onnx_int8``, if they are within
    the int8 limits of ``reference`` (the float32 metrics); else ArtifactError, nothing kept."""
    import onnxruntime as ort

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    got, want = metrics["test"], reference["test"]
    accuracy_drop = want["accuracy"] - got["accuracy"]
    auc_drop = want["roc_auc"] - got["roc_auc"]
    if accuracy_drop > INT8_MAX_ACCURACY_DROP or auc_drop > INT8_MAX_AUC_DROP:
        Path(quantized).unlink(missing_ok=True)
        raise ArtifactError(
            f"int8 loses {100 * accuracy_drop:.2f} accuracy points and {auc_drop:.4f} AUC "
            f"(limits {100 * INT8_MAX_ACCURACY_DROP:.1f} and {INT8_MAX_AUC_DROP})"
        )
    path = model_dir / ONNX_INT8_FILE
    Path(quantized).replace(path)
    card.onnx_int8 = OnnxCard(
        file=ONNX_INT8_FILE,
        sha256=sha256_file(path),
        precision="int8",
        quantization=quantization,
        opset=ONNX_OPSET,
        tolerance=None,  # held to accuracy, not to a per-component tolerance
        max_abs_diff=float(quantization["max_abs_diff"]),
        checked_images=int(got["pairs"]),
        checked_on="test pairs, accuracy and AUC against float32",
        onnxruntime_version=ort.__version__,
        metrics=metrics,
    )
    write_card(model_dir, card)
    return card
