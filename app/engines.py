"""Which engine runs a model's forward pass: TorchScript (model.pt) or ONNX Runtime (model.onnx,
or its int8 quantization model.int8.onnx).

    choice = choose(served, settings.inference_engine, precision, batch=16)  # at warm-up
    Batcher(choice.forward, precision=choice.precision, ...)

Both are a ``Forward`` for the Batcher: uint8 (N, C, H, W) -> float32 (N, D). TorchScript is the
contract and the reference; ONNX is used only where the model ships a checked model.onnx
(app/artifact.py) and onnxruntime is installed. Under "auto" the two are timed on this machine,
at one image and at one batch, and the one with the smaller sum wins: the one-image time is what
a lone request waits, the batch time what the server's throughput is made of. The ONNX graph is
float32 (or int8) whatever IMGSIM_INFERENCE_PRECISION says (bfloat16 autocast is a torch
feature), so the TorchScript candidate is timed at the resolved precision, the ONNX ones in their
own. A CPU without native bfloat16 or VNNI runs them slower, and the timing then picks another
engine: that is the clean fallback (an int8 file that would overflow there is not even loaded:
app/artifact.py).
See docs/serving-engine.md for the measurements behind this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from app.artifact import Engine, EngineSetting, OnnxModel
from app.precision import Precision, autocast
from app.registry import ServedModel

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, C, H, W) -> float32 (N, D)

TIMED_RUNS = 4  # per candidate and batch size; the best counts (the first also warms up)


@dataclass(frozen=True)
class EngineChoice:
    engine: Engine
    forward: Forward
    precision: Precision  # for the Batcher's autocast: bfloat16 only for TorchScript
    computes_in: str  # what /models shows: float32, bfloat16 or int8
    one_image_ms: float  # best one-image forward pass of the chosen engine
    timings_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # engine -> (1, B)


def loaded(served: ServedModel) -> dict[Engine, Forward]:
    """The engines ``served`` has loaded, TorchScript first."""
    onnx: dict[Engine, OnnxModel | None] = {"onnx": served.onnx, "onnx-int8": served.onnx_int8}
    return {"torchscript": served.module, **{e: f for e, f in onnx.items() if f is not None}}


def candidates(setting: EngineSetting, served: ServedModel) -> list[Engine]:
    """The engines to consider for ``served``: the setting wins over the card unless "auto"."""
    wanted = setting if setting != "auto" else served.card.engine
    available = list(loaded(served))
    if wanted == "auto":
        return available
    if wanted not in available:
        error = served.onnx_int8_error if wanted == "onnx-int8" else served.onnx_error
        logger.warning(
            "model %s: engine %s asked for but not available (%s); serving TorchScript",
            served.name, wanted, error or "the model has no such file",
        )  # fmt: skip
        return ["torchscript"]
    return [wanted]


def forward_of(served: ServedModel, engine: Engine) -> Forward:
    return loaded(served)[engine]


def precision_of(engine: Engine, precision: Precision) -> Precision:
    return precision if engine == "torchscript" else "float32"


def computes_in(engine: Engine, precision: Precision) -> str:
    return {"torchscript": precision, "onnx": "float32", "onnx-int8": "int8"}[engine]


def _once_ms(forward: Forward, x: torch.Tensor, precision: Precision) -> float:
    with torch.inference_mode(), autocast(precision):
        started = time.perf_counter()
        forward(x)
        return (time.perf_counter() - started) * 1000


def best_ms(runs: dict[str, tuple[Forward, torch.Tensor, Precision]]) -> dict[str, float]:
    """The best of TIMED_RUNS forward passes of each entry, in ms, taken in alternating rounds
    (A, B, A, B, ...): on a shared machine, or beside other workers warming up, a slow moment
    then costs every engine alike instead of deciding the choice. The first round also warms
    the engines up (TorchScript profiles and optimises on its first calls)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(TIMED_RUNS):
        for key, (forward, x, precision) in runs.items():
            best[key] = min(best[key], _once_ms(forward, x, precision))
    return best


def choose(
    served: ServedModel, setting: EngineSetting, precision: Precision, batch: int
) -> EngineChoice:
    """Pick (and warm up) the engine for ``served``; blocking, so call it in a thread."""
    card = served.card
    shape = (card.input.channels, card.input.height, card.input.width)
    one = torch.zeros(1, *shape, dtype=torch.uint8)
    engines = candidates(setting, served)
    setups = {e: (forward_of(served, e), precision_of(e, precision)) for e in engines}
    one_ms = best_ms({e: (f, one, p) for e, (f, p) in setups.items()})
    many_ms = dict.fromkeys(engines, 0.0)
    if engines[1:]:
        # A batch is only timed when there is a choice to make: it costs the cifar10 tower
        # ~1 s of warm-up on a busy box.
        many = one.expand(batch, *shape).contiguous()
        many_ms = best_ms({e: (f, many, p) for e, (f, p) in setups.items()})
    timings = {e: (one_ms[e], many_ms[e]) for e in engines}
    chosen = min(engines, key=lambda e: sum(timings[e]))
    return EngineChoice(
        engine=chosen,
        forward=forward_of(served, chosen),
        precision=precision_of(chosen, precision),
        computes_in=computes_in(chosen, precision),
        one_image_ms=timings[chosen][0],
        timings_ms=timings,
    )
