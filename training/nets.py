"""Embedding towers. Each takes uint8 (N, C, H, W) and returns float32 (N, D), preprocessing inside.

Presets:
- ``seed-mnist`` / ``seed-cifar``: the classic Siamese recipe the product is compared against
  (plain conv stack, 2-D embedding, no normalisation), kept so anyone can rerun the comparison.
- ``convnet``: BatchNorm+GELU conv groups in the style of fast CIFAR trainers (airbench), global
  max pool, linear head to D, L2-normalised so distance^2 = 2 - 2 cos.
- ``airbench``: Keller Jordan's airbench94 CIFAR-10 net (arXiv:2404.00498): a frozen 2x2
  patch-whitening stem fitted to the training data, conv groups whose BatchNorm scales are frozen at
  1, identity (dirac) initialised convs; the embedding is the L2-normalised pooled features (D =
  widths[-1], no head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("seed", "keras", "convnet", "airbench")


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
        head: bool = True,
    ) -> None:
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean).view(1, c, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, c, 1, 1) * 255.0))
        self.backbone = backbone
        if not head and embedding_dim != features:
            raise ValueError(f"without a head the embedding is the {features} backbone features")
        self.head = nn.Linear(features, embedding_dim) if head else nn.Identity()
        self.normalize = normalize
        # Test-time augmentation, in eval only: the embedding is the mean over the image, its
        # mirror (flip_tta) and copies shifted diagonally by +-shift_tta px (reflect-padded).
        self.flip_tta = flip_tta
        self.shift_tta = shift_tta
        # Class-probability readout (training.train.readout_tower): ``scores`` maps the
        # (normalised) embedding to class scores, and with a temperature T > 0 the output is
        # sqrt(softmax(scores / T)), a unit vector whose distances are Hellinger distances between
        # the two images' class distributions. Identity and 0: the embedding as it is.
        self.scores: nn.Module = nn.Identity()
        self.probability_temperature = 0.0

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float (N, C, H, W), zero mean and unit variance per channel."""
        return (x.float() - self.mean) * self.inv_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The un-normalised embedding of one view (N, D): what classifier losses train on."""
        x = self.standardize(x).contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

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
        z = self.scores(z)
        if self.probability_temperature > 0:
            z = torch.softmax(z / self.probability_temperature, dim=1).sqrt()
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


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (only the shift learns), airbench's choice: with the next conv
    free to rescale, a learnt scale only adds a direction for the large learning rate to wander."""

    def __init__(self, c: int) -> None:
        super().__init__(c, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class WhitenedConvGroups(nn.Module):
    """airbench94's backbone: whitening stem -> [conv, pool, BN, GELU, conv, BN, GELU] per width ->
    global max pool. (N, C, H, W) standardised -> (N, widths[-1])

    Call :meth:`init_whitening` with standardised training images before training: the stem's
    filters are the eigenvectors of the 2x2 patch covariance, scaled to unit variance (and their
    negatives), so the first layer starts decorrelated and stays frozen; only its bias learns.
    """

    def __init__(self, channels: int, widths: list[int], patch: int = 2) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(channels, 2 * channels * patch * patch, patch, bias=True)
        self.whiten.weight.requires_grad_(False)
        c = self.whiten.out_channels
        layers: list[nn.Module] = [nn.GELU()]
        for w in widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                FrozenScaleBatchNorm(w),
                nn.GELU(),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                FrozenScaleBatchNorm(w),
                nn.GELU(),
            ]
            c = w
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        for m in self.body.modules():
            if isinstance(m, nn.Conv2d):  # identity on the first c_in channels: a short, clean
                nn.init.dirac_(m.weight.data[: m.in_channels])  # signal path at step 0

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        k = self.whiten.kernel_size[0]
        c = x.shape[1]
        patches = x.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k).double()
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0)
        filters = filters.reshape(c * k * k, c, k, k).float()
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.whiten(x))


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


class KerasTutorialNet(nn.Module):
    """The tower of the Keras Siamese tutorial (keras.io/examples/vision/siamese_contrastive):
    BatchNorm, conv 4@5x5 tanh, avg-pool, conv 16@5x5 tanh, avg-pool, BatchNorm, dense 10 tanh.

    (N, C, H, W) -> (N, 10); the dense layer is part of the backbone because of its tanh.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        flat = 16 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, 4, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.BatchNorm1d(flat),
            nn.Linear(flat, 10),
            nn.Tanh(),
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
    elif arch == "keras":
        backbone, features = KerasTutorialNet(channels, height, width), 10
    elif arch == "convnet":
        backbone, features = ConvGroups(channels, widths), widths[-1]
    elif arch == "airbench":
        backbone, features = WhitenedConvGroups(channels, widths), widths[-1]
    else:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return Tower(
        backbone,
        features,
        embedding_dim,
        mean,
        std,
        normalize,
        flip_tta,
        shift_tta,
        head=arch not in ("airbench", "keras"),
    )
