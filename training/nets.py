"""Embedding towers. Each takes uint8 (N, C, H, W) and returns float32 (N, D), preprocessing inside.

Presets:
- ``seed-mnist`` / ``seed-cifar``: the classic Siamese recipe the product is compared against
  (plain conv stack, 2-D embedding, no normalisation), kept so anyone can rerun the comparison.
- ``convnet``: BatchNorm+GELU conv groups in the style of fast CIFAR trainers (airbench), global
  max pool, linear head to D, L2-normalised so distance^2 = 2 - 2 cos.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("seed", "convnet")


class Tower(nn.Module):
    """uint8 images in, embeddings out: the whole exported contract in one module."""

    def __init__(
        self,
        backbone: nn.Module,
        features: int,
        embedding_dim: int,
        mean: list[float],
        std: list[float],
        normalize: bool,
        flip_tta: bool = False,
        shift_tta: int = 0,
    ) -> None:
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, c, 1, 1) * 255.0))
        self.backbone = backbone
        self.head = nn.Linear(features, embedding_dim)
        self.normalize = normalize
        # Test-time augmentation, in eval only: the embedding is the mean over the image, its
        # mirror (flip_tta) and copies shifted diagonally by +-shift_tta px (reflect-padded).
        self.flip_tta = flip_tta
        self.shift_tta = shift_tta

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) * self.inv_std  # (N, C, H, W), standardised
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))  # (N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or (not self.flip_tta and self.shift_tta == 0):
            z = self.embed(x)
        else:
            n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
            views = [x.float()]
            if self.flip_tta:
                views.append(views[0].flip(-1))
            if self.shift_tta > 0:
                s = self.shift_tta
                padded = F.pad(torch.cat(views), (s, s, s, s), mode="reflect")
                views.append(padded[..., :h, :w])
                views.append(padded[..., 2 * s : 2 * s + h, 2 * s : 2 * s + w])
            z = self.embed(torch.cat(views))  # (views * N, D), one forward pass for all views
            z = z.view(-1, n, z.shape[1]).sum(0)  # (N, D)
        if self.normalize:
            z = F.normalize(z, dim=1)
        return z


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class ConvGroups(nn.Module):
    """stem -> [conv, pool, conv] x len(widths) -> global max pool.

    (N, C, H, W) -> (N, widths[-1])
    """

    def __init__(self, channels: int, widths: list[int], stem: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = conv_bn(channels, stem)
        c = stem
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(w),
                nn.GELU(),
                *conv_bn(w, w),
            ]
            c = w
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SeedConvNet(nn.Module):
    """The classic tutorial Siamese tower: two conv+pool stages and a ReLU MLP.

    (N, C, H, W) -> (N, 256)
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 256),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_tower(
    arch: str,
    *,
    channels: int,
    height: int,
    width: int,
    embedding_dim: int,
    widths: list[int],
    mean: list[float],
    std: list[float],
    normalize: bool,
    flip_tta: bool,
    shift_tta: int = 0,
) -> Tower:
    if arch == "seed":
        backbone: nn.Module = SeedConvNet(channels, height, width)
        features = 256
    elif arch == "convnet":
        backbone, features = ConvGroups(channels, widths), widths[-1]
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return Tower(backbone, features, embedding_dim, mean, std, normalize, flip_tta, shift_tta)
