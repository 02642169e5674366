"""Ceilings measured in this process, no HTTP: raw inference and training throughput.

* ``inference_grid``: the exported TorchScript module on random uint8 batches, for each thread
  count and batch size; the best cell is the most pairs/s any server of this model can reach.
* ``training_throughput``: a few optimiser steps of the model's own recipe (its card's training
  config: tower, loss, optimiser, augmentation) on a batch of random uint8 images, laid out
  channels_last as training/train.py does.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from app.artifact import Artifact, ModelCard


@dataclass(frozen=True)
class InferencePoint:
    threads: int
    batch: int
    images_per_s: float

    @property
    def pairs_per_s(self) -> float:
        return self.images_per_s / 2


def inference_grid(
    model: Artifact, batch_sizes: list[int], thread_counts: list[int], seconds: float
) -> list[InferencePoint]:
    card = model.card
    before = torch.get_num_threads()
    points = []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch in batch_sizes:
                x = torch.randint(0, 256, (batch, *_chw(card)), dtype=torch.uint8)  # (B, C, H, W)
                rate = _images_per_s(model.module, x, seconds)
                points.append(InferencePoint(threads, batch, rate))
    finally:
        torch.set_num_threads(before)
    return points


def _images_per_s(module: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        for _ in range(2):  # TorchScript profiles and optimises on the first calls
            module(x)
        calls, started = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - started < seconds:
            module(x)
            calls += 1
        return calls * x.shape[0] / (time.perf_counter() - started)


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
