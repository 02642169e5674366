"""Loss + miner pairs from pytorch-metric-learning. Every loss takes embeddings (B, D), labels (B,).

- contrastive: the classic Siamese loss over every pair in the batch (pos_margin 0, neg_margin m)
- triplet-batch-hard / triplet-semi-hard: triplet margin loss on mined triplets
- multi-similarity: MS loss with its miner (Wang et al. 2019)
- supcon: supervised contrastive (Khosla et al. 2020)
- cosface / arcface: additive-margin softmax on L2-normalised embeddings; they hold a class-centre
  matrix of their own, so their parameters must be optimised with the tower's.
- softmax: airbench's classifier, label-smoothed cross-entropy over a bias-free linear layer
  scaled by ``scale``, on the *un-normalised* embedding (the tower normalises only for
  verification). PML has no label smoothing, so this one is plain torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from pytorch_metric_learning import distances, losses, miners
from torch import nn

LOSSES = (
    "contrastive",
    "triplet-batch-hard",
    "triplet-semi-hard",
    "multi-similarity",
    "supcon",
    "cosface",
    "arcface",
    "softmax",
)
# Margins from each loss's paper: contrastive (Hadsell, Chopra & LeCun 2006, m = 1 on unit
# vectors), triplet (FaceNet, 0.2), CosFace (0.35), ArcFace (0.5 rad = 28.6 degrees, PML's unit).
DEFAULT_MARGINS = {
    "contrastive": 1.0,
    "triplet-batch-hard": 0.2,
    "triplet-semi-hard": 0.2,
    "cosface": 0.35,
    "arcface": 28.6,
}
# Losses that learn per-class weights: the batch sampler need not put m images of a class together.
CLASSIFIER_LOSSES = {"cosface", "arcface", "softmax"}
# Losses that read the embedding before L2 normalisation.
RAW_EMBEDDING_LOSSES = {"softmax"}


@dataclass
class LossSpec:
    name: str
    margin: float | None  # distance margin (contrastive, triplet), cosine (cosface), degrees
    # (arcface); None: DEFAULT_MARGINS
    scale: float  # softmax scale for cosface/arcface
    temperature: float  # supcon
    normalized: bool  # whether the tower L2-normalises (distances then live in [0, 2])
    label_smoothing: float = 0.0  # softmax


class SmoothedSoftmaxLoss(nn.Module):
    """Cross-entropy with label smoothing over ``scale * W z`` (W bias-free, learnt)."""

    def __init__(self, num_classes: int, embedding_dim: int, scale: float, smoothing: float):
        super().__init__()
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)
        self.scale = scale
        self.smoothing = smoothing

    def forward(
        self, emb: torch.Tensor, labels: torch.Tensor, tuples: object = None
    ) -> torch.Tensor:
        logits = self.classifier(emb) * self.scale
        return nn.functional.cross_entropy(logits, labels, label_smoothing=self.smoothing)


class MetricLoss(nn.Module):
    """loss(embeddings (B, D), labels (B,)) -> scalar, mining included."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tuples = self.miner(emb, labels) if self.miner is not None else None
        return self.loss(emb, labels, tuples)


def build_loss(spec: LossSpec, num_classes: int, embedding_dim: int) -> MetricLoss:
    dist = distances.LpDistance(normalize_embeddings=spec.normalized)
    name = spec.name
    if spec.margin is None and name in DEFAULT_MARGINS:
        spec = dataclasses.replace(spec, margin=DEFAULT_MARGINS[name])
    if name == "contrastive":
        return MetricLoss(
            losses.ContrastiveLoss(pos_margin=0.0, neg_margin=spec.margin, distance=dist), None
        )
    if name == "triplet-batch-hard":
        return MetricLoss(
            losses.TripletMarginLoss(margin=spec.margin, distance=dist),
            miners.BatchHardMiner(distance=dist),
        )
    if name == "triplet-semi-hard":
        return MetricLoss(
            losses.TripletMarginLoss(margin=spec.margin, distance=dist),
            miners.TripletMarginMiner(
                margin=spec.margin, type_of_triplets="semihard", distance=dist
            ),
        )
    if name == "multi-similarity":
        return MetricLoss(
            losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), miners.MultiSimilarityMiner(0.1)
        )
    if name == "supcon":
        return MetricLoss(losses.SupConLoss(temperature=spec.temperature), None)
    if name == "cosface":
        return MetricLoss(
            losses.CosFaceLoss(num_classes, embedding_dim, margin=spec.margin, scale=spec.scale),
            None,
        )
    if name == "arcface":
        # PML's ArcFace margin is in degrees.
        return MetricLoss(
            losses.ArcFaceLoss(num_classes, embedding_dim, margin=spec.margin, scale=spec.scale),
            None,
        )
    if name == "softmax":
        return MetricLoss(
            SmoothedSoftmaxLoss(num_classes, embedding_dim, spec.scale, spec.label_smoothing), None
        )
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
