"""Loads every model in the store and holds the ones that serve.

A model that is corrupt, incomplete or does not match its card's sha256 is refused with one
ERROR log line; the others still serve, and /readyz and /models say which failed and why.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from app import artifact
from app.artifact import Engine, ModelCard, OnnxModel
from app.batching import Batcher
from app.drift import DriftMonitor

logger = logging.getLogger(__name__)

PREFERRED_DEFAULT = "mnist"


class UnknownModel(LookupError):
    """No model by that name (HTTP 404)."""


class ModelUnavailable(RuntimeError):
    """The model exists but cannot serve: it failed to load, or none did (HTTP 503)."""


@dataclass
class ServedModel:
    name: str  # the folder name in the store; what clients ask for
    card: ModelCard
    module: torch.jit.ScriptModule
    batcher: Batcher | None = None  # set by the app's lifespan
    precision_note: str | None = None  # why it does not run in the configured precision
    drift: DriftMonitor | None = None  # set by the app's lifespan unless drift_window_images=0
    onnx: OnnxModel | None = None  # the ONNX engine, when the model has one and it loaded
    onnx_error: str | None = None  # why a model.onnx named by the card is not loaded
    onnx_int8: OnnxModel | None = None  # the int8 ONNX engine, likewise
    onnx_int8_error: str | None = None
    engine: Engine = "torchscript"  # what the batcher runs; chosen at warm-up (app/engines.py)
    precision: str = "float32"  # the number format that engine computes in, for /models
    # Best one-image forward pass of that engine at warm-up (app/engines.py), in ms; until it is
    # measured, infinite: the model never takes the inline path (app/embedding.py).
    one_image_ms: float = math.inf


class Registry:
    def __init__(
        self,
        models: dict[str, ServedModel],
        failed: dict[str, str] | None = None,
        default: str | None = None,
    ) -> None:
        self.models = models
        self.failed = failed if failed is not None else {}  # name -> reason, safe for clients
        if default is None:
            default = PREFERRED_DEFAULT if PREFERRED_DEFAULT in models else next(iter(models), None)
        self.default = default

    @classmethod
    def load(
        cls,
        store: Path,
        default: str | None = None,
        *,
        onnx: bool = True,
        onnx_threads: int = 1,
    ) -> Registry:
        """Every model in ``store``; with ``onnx``, also their ONNX engines (app/artifact.py)."""
        store = Path(store)
        models: dict[str, ServedModel] = {}
        failed: dict[str, str] = {}
        model_dirs = artifact.discover(store)
        if not model_dirs:
            logger.error("no models in %s (expected <name>/model.json + model.pt)", store)
        for model_dir in model_dirs:
            name = model_dir.name
            try:
                loaded = artifact.load(model_dir, onnx=onnx, onnx_threads=onnx_threads)
            except artifact.ArtifactError as e:
                logger.error("refusing model %s: %s", name, e)
                failed[name] = _public(str(e), store)
                continue
            except Exception as e:  # a bug or an I/O error: still serve the others
                logger.error("refusing model %s: unexpected error", name, exc_info=True)
                failed[name] = f"could not load ({type(e).__name__})"
                continue
            if loaded.card.name != name:
                logger.warning("model folder %s holds a card named %r", name, loaded.card.name)
            for error in (loaded.onnx_error, loaded.onnx_int8_error):
                if error is not None:  # model.pt still serves: it is the contract
                    logger.error("model %s: ONNX engine not loaded: %s", name, error)
            models[name] = ServedModel(
                name=name,
                card=loaded.card,
                module=loaded.module,
                onnx=loaded.onnx,
                onnx_error=_public(loaded.onnx_error, store) if loaded.onnx_error else None,
                onnx_int8=loaded.onnx_int8,
                onnx_int8_error=(
                    _public(loaded.onnx_int8_error, store) if loaded.onnx_int8_error else None
                ),
            )
            logger.info(
                "loaded model %s version %s (%s, input %dx%dx%d, dim %d, threshold %.4g)",
                name, loaded.card.version, loaded.card.dataset, loaded.card.input.channels,
                loaded.card.input.height, loaded.card.input.width, loaded.card.embedding_dim,
                loaded.card.threshold,
            )  # fmt: skip
        if default is not None and default not in models:
            logger.error("default model %r is not loaded; requests must name a model", default)
        return cls(models, failed, default)

    def refuse(self, name: str, reason: str) -> None:
        """Take a loaded model out of service (e.g. its warm-up forward pass failed)."""
        self.models.pop(name, None)
        self.failed[name] = reason
        if self.default == name:
            self.default = None

    def available(self) -> str:
        return ", ".join(self.models) or "none"

    def get(self, name: str | None) -> ServedModel:
        """The model called ``name``, or the default one when ``name`` is None."""
        if name is None:
            if not self.models:
                raise ModelUnavailable("no model is loaded")
            if self.default not in self.models:
                raise ModelUnavailable(
                    f"default model {self.default!r} is not loaded; name one of: {self.available()}"
                )
            name = self.default
        if name in self.models:
            return self.models[name]
        if name in self.failed:
            raise ModelUnavailable(f"model '{name}' failed to load: {self.failed[name]}")
        raise UnknownModel(f"unknown model '{name}'; available: {self.available()}")


def _public(reason: str, store: Path) -> str:
    """The reason without the server's folder layout, for /readyz and /models."""
    for prefix in {str(store), str(store.resolve())}:
        reason = reason.replace(prefix + os.sep, "")
    return reason[:300]
