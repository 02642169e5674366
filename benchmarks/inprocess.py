"""Ceilings measured in this process, no HTTP: raw inference and training throughput.

* ``inference_grid``: the exported TorchScript module (and the model's ONNX engines, issue 18)
  on random uint8 batches, for each way of running it (engine, threads, parallel streams,
  precision) and batch size; the best cell is the most pairs/s any server of this model can
  reach on this machine.
* ``training_throughput``: a few optimiser steps of the model's own recipe (its card's training
  config: tower, loss, optimiser, augmentation) on a batch of random uint8 images, laid out
  channels_last as training/train.py does.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from app.artifact import Artifact, ModelCard
from app.precision import Precision, autocast
from app.precision import resolve as resolve_precision


@dataclass(frozen=True)
class InferenceSetup:
    """How the model is run: ``streams`` threads side by side, each with ``threads`` intra-op
    threads, at ``precision`` (the service's inference workers are streams of one thread)."""

    threads: int
    streams: int = 1
    precision: Precision = "float32"
    engine: str = "torchscript"  # or onnx / onnx-int8: app.artifact's ONNX sessions, 1 thread

    @property
    def label(self) -> str:
        run = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.streams > 1:
            run = f"{self.streams} streams x {run}"
        if self.engine != "torchscript":
            return f"{run}, {self.engine}"
        return f"{run}, {self.precision}"


@dataclass(frozen=True)
class InferencePoint:
    setup: InferenceSetup
    batch: int
    images_per_s: float
    cpu_ms_per_image: float  # this process's CPU time (all threads) per image

    @property
    def pairs_per_s(self) -> float:
        return self.images_per_s / 2


def ceiling_setups(
    thread_counts: list[int], cores: int, engines: tuple[str, ...] = ("torchscript",)
) -> list[InferenceSetup]:
    """Each thread count at float32, and at bfloat16 where this CPU has it natively; plus one
    single-threaded stream per core, as the service's inference workers run. Each ONNX engine
    in ``engines`` as the service runs it: one thread per stream, 1 stream and one per core."""
    precisions: list[Precision] = ["float32"]
    if resolve_precision("auto") == "bfloat16":
        precisions.append("bfloat16")
    setups = [InferenceSetup(t, 1, p) for p in precisions for t in thread_counts]
    if cores > 1:
        setups += [InferenceSetup(1, cores, p) for p in precisions]
    for engine in engines:
        if engine != "torchscript":
            setups += [InferenceSetup(1, s, "float32", engine) for s in sorted({1, cores})]
    return setups


def inference_grid(
    model: Artifact, batch_sizes: list[int], setups: list[InferenceSetup], seconds: float
) -> list[InferencePoint]:
    card = model.card
    before = torch.get_num_threads()
    points = []
    try:
        for setup in setups:
            torch.set_num_threads(setup.threads)
            for batch in batch_sizes:
                x = torch.randint(0, 256, (batch, *_chw(card)), dtype=torch.uint8)  # (B, C, H, W)
                forward = _forward(model, setup.engine)
                points.append(InferencePoint(setup, batch, *_run(forward, x, seconds, setup)))
    finally:
        torch.set_num_threads(before)
    return points


def _forward(model: Artifact, engine: str) -> Callable[[torch.Tensor], torch.Tensor]:
    onnx = {"onnx": model.onnx, "onnx-int8": model.onnx_int8}
    if engine == "torchscript":
        return model.module
    forward = onnx[engine]
    if forward is None:
        raise ValueError(f"{model.card.name} has no {engine} engine loaded")
    return forward


def _run(
    module: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    seconds: float,
    setup: InferenceSetup,
) -> tuple[float, float]:
    """(images/s, CPU ms per image)."""
    counts = [0] * setup.streams

    def stream(i: int, until: float | None) -> None:
        with torch.inference_mode(), autocast(setup.precision):
            if until is None:  # TorchScript profiles and optimises on the first calls
                for _ in range(2):
                    module(x)
                return
            while counts[i] < 3 or time.perf_counter() < until:
                module(x)
                counts[i] += 1

    stream(0, None)
    started, cpu_started = time.perf_counter(), time.process_time()
    threads = [
        threading.Thread(target=stream, args=(i, started + seconds)) for i in range(setup.streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    images = sum(counts) * x.shape[0]
    cpu_ms = 1000 * (time.process_time() - cpu_started)
    return images / (time.perf_counter() - started), cpu_ms / images


def _chw(card: ModelCard) -> tuple[int, int, int]:
    return card.input.channels, card.input.height, card.input.width


@dataclass(frozen=True)
class TrainingPoint:
    threads: int
    batch: int
    steps: int
    images_per_s: float
    recipe: str  # e.g. "convnet [32, 64, 128] D=64, cosface, sgd"


def training_throughput(
    card: ModelCard, batch: int = 256, steps: int = 4, threads: int = 0
) -> TrainingPoint:
    """Images/s of full training steps (augment, forward, loss, backward, optimiser step).

    ``threads`` = 0 uses the recipe's own setting (``threads`` in the card, 0 = torch's default).
    Imports training/ lazily: the service and the HTTP benchmarks do not need it.
    """
    from training.config import TrainConfig
    from training.data import augment
    from training.train import DATA_STATS, build_model

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in card.training.items() if k in known})
    c, h, w = _chw(card)
    mean, std = DATA_STATS.get(cfg.dataset, ([0.5] * c, [0.25] * c))
    model, opt = build_model(cfg, (c, h, w), len(card.classes), mean, std)
    model.train()

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, generator=g)  # (B, C, H, W)
    y = torch.randint(0, len(card.classes), (batch,), generator=g)  # (B,)

    def step() -> None:
        xb = augment(x, translate=cfg.translate, flip=cfg.flip, generator=g)
        loss = model(xb, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    before = torch.get_num_threads()
    wanted = threads or cfg.threads
    try:
        if wanted:
            torch.set_num_threads(wanted)
        used = torch.get_num_threads()
        step()  # first step allocates and picks kernels
        started = time.perf_counter()
        for _ in range(steps):
            step()
        rate = steps * batch / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(before)
    recipe = f"{cfg.arch} {cfg.widths} D={card.embedding_dim}, {cfg.loss}, {cfg.optimizer}"
    return TrainingPoint(used, batch, steps, rate, recipe)
