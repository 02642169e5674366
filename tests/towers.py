"""Tiny real embedding towers, exported the way training exports, for the service tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app import artifact

EMBEDDING_DIM = 16
THRESHOLD = 0.8
# P(same) = 0.5 at distance 0.8, ~1 at 0, ~0 at 2 (unit embeddings are at most 2 apart).
CALIBRATION = artifact.Calibration(intercept=6.0, slope=-7.5)


class TinyTower(nn.Module):
    """uint8 (N, C, H, W) -> unit float32 (N, 16), preprocessing inside like the real ones."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        x = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4)  # (N, 8, 4, 4)
        return F.normalize(self.fc(x.flatten(1)), dim=1)


def export_tower(
    model_dir: Path, channels: int, size: int, seed: int, metrics: dict[str, Any] | None = None
) -> artifact.ModelCard:
    torch.manual_seed(seed)
    return artifact.write(
        model_dir,
        TinyTower(channels),
        name=model_dir.name,
        dataset=model_dir.name,
        classes=[str(i) for i in range(10)],
        input_spec=artifact.InputSpec(channels=channels, height=size, width=size),
        embedding_dim=EMBEDDING_DIM,
        threshold=THRESHOLD,
        calibration=CALIBRATION,
        metrics={"note": "untrained test tower"} if metrics is None else metrics,
        training={"seed": seed},
    )
