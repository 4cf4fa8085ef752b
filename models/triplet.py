"""Metric-learning objectives for fine-tuning face embedders (FaceNet, Schroff et al. 2015).

Triplet loss on L2-normalised embeddings with ONLINE mining inside each P x K batch:

    L = mean over mined triplets of  d(a,p) - d(a,n) + alpha,   d = squared Euclidean

d is the squared distance of unit vectors (in [0, 4]), as in the FaceNet paper, so the
default margin alpha = 0.2 is the paper's.

- ``semi-hard`` (FaceNet section 3.2): every anchor-positive pair of the batch is used; its
  negative is one with d(a,p) < d(a,n) < d(a,p) + alpha, the closest such one (as in
  TensorFlow's triplet_semihard_loss). A pair with NO semi-hard negative is dropped (no loss
  term, counted as inactive): either all its negatives are beyond the margin already (any
  triplet would have zero loss), or the only negatives within the margin are closer than the
  positive, and FaceNet avoids exactly those "hard" negatives because picking them early
  leads to bad local minima (a collapsed model). The loss averages over the mined triplets,
  all of which have a positive loss, so its scale does not shrink as training succeeds;
  ``active`` = mined triplets / anchor-positive pairs tells how much of the batch still
  teaches something.
- ``batch-hard`` (Hermans et al. 2017): for every anchor, its farthest positive and closest
  negative; the loss averages the hinge max(0, .) over all anchors, ``active`` is the share
  of anchors with a positive hinge.

The alternative objective is softmax cross-entropy plus lambda * center loss (Wen et al.
2016) on the same unit embeddings, with the class centres moved by the paper's update rule
rather than by gradient descent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MINING = ("semi-hard", "batch-hard")


@dataclass(frozen=True)
class Triplets:
    """Indices into the batch of the (T,) anchors, positives and negatives used, and the
    number of candidates they were chosen for (anchor-positive pairs, or anchors)."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    candidates: int


@dataclass(frozen=True)
class LossOutput:
    """A differentiable scalar loss and, for the progress bar, the share of the batch that
    produced gradient (`active`: triplets; or softmax accuracy for the center objective)."""

    loss: torch.Tensor
    stats: dict[str, float]


def squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(N,N) squared Euclidean distances between the rows of (N,D) embeddings (clamped >= 0,
    exactly 0 on the diagonal)."""
    sq = (embeddings * embeddings).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * embeddings @ embeddings.T).clamp_min(0.0)
    return dist * (1.0 - torch.eye(len(embeddings), dtype=dist.dtype, device=dist.device))


def _check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"need embeddings (N,D) and labels (N,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")


@torch.no_grad()
def semi_hard_triplets(dist: torch.Tensor, labels: torch.Tensor, alpha: float) -> Triplets:
    """For every ordered anchor-positive pair (a != p, same label), the closest negative n
    with dist[a,p] < dist[a,n] < dist[a,p] + alpha; pairs without one are left out.
    dist: (N,N); labels: (N,)."""
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a, p = pos.nonzero(as_tuple=True)
    d_ap = dist[a, p][:, None]  # (M,1)
    d_an = dist[a]  # (M,N)
    semi = ~same[a] & (d_an > d_ap) & (d_an < d_ap + alpha)
    n = torch.where(semi, d_an, torch.full_like(d_an, float("inf"))).argmin(1)
    keep = semi.any(1)
    return Triplets(a[keep], p[keep], n[keep], len(a))


@torch.no_grad()
def batch_hard_triplets(dist: torch.Tensor, labels: torch.Tensor) -> Triplets:
    """For every anchor with at least one positive and one negative: its farthest positive
    and closest negative. dist: (N,N); labels: (N,)."""
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    neg = ~same
    usable = pos.any(1) & neg.any(1)
    a = usable.nonzero(as_tuple=True)[0]
    p = torch.where(pos[a], dist[a], torch.full_like(dist[a], -1.0)).argmax(1)
    n = torch.where(neg[a], dist[a], torch.full_like(dist[a], float("inf"))).argmin(1)
    return Triplets(a, p, n, len(a))


class TripletLoss(nn.Module):
    """FaceNet triplet loss with online mining; forward(embeddings (N,D) raw network output,
    labels (N,) int) -> LossOutput. Embeddings are L2-normalised here."""

    def __init__(self, alpha: float = 0.2, mining: str = "semi-hard") -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"--alpha must be positive, got {alpha}")
        if mining not in MINING:
            raise ValueError(f"--mining must be one of {', '.join(MINING)}, got {mining!r}")
        self.alpha = alpha
        self.mining = mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        _check_batch(embeddings, labels)
        dist = squared_distances(F.normalize(embeddings, dim=1))
        if self.mining == "semi-hard":
            t = semi_hard_triplets(dist, labels, self.alpha)
            hinge = dist[t.anchors, t.positives] - dist[t.anchors, t.negatives] + self.alpha
        else:
            t = batch_hard_triplets(dist, labels)
            hinge = F.relu(dist[t.anchors, t.positives] - dist[t.anchors, t.negatives] + self.alpha)
        active = int((hinge > 0).sum())
        # An empty selection still returns a graph-connected zero, so backward() works.
        loss = hinge.mean() if len(hinge) else dist.sum() * 0.0
        return LossOutput(loss, {"active": active / max(t.candidates, 1)})


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016, eq. 2 and 4): 1/2 mean_i ||x_i - c_{y_i}||^2 over the batch
    (x: (N,D) features, labels (N,)), gradients flowing to x only; `update` moves each centre
    c_j by -rate * sum_{y_i=j}(c_j - x_i) / (1 + n_j). Centres start at zero."""

    def __init__(self, n_classes: int, dim: int, rate: float = 0.5) -> None:
        super().__init__()
        if not 0 < rate <= 1:
            raise ValueError(f"--center-rate must be in (0, 1], got {rate}")
        self.rate = rate
        self.register_buffer("centers", torch.zeros(n_classes, dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((features - self.centers[labels]) ** 2).sum(1).mean()

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Wen et al.'s eq. 4 step for the classes present in the batch."""
        diff = self.centers[labels] - features  # (N,D)
        delta = torch.zeros_like(self.centers).index_add_(0, labels, diff)
        counts = torch.zeros(len(self.centers), device=labels.device).index_add_(
            0, labels, torch.ones_like(labels, dtype=torch.float32))
        self.centers -= self.rate * delta / (1.0 + counts)[:, None]


class SoftmaxCenterLoss(nn.Module):
    """Softmax cross-entropy + lambda * center loss on L2-normalised embeddings.

    The classifier is a linear layer on scale * unit embedding: unit vectors alone give logits
    too small for softmax to become confident (NormFace, Wang et al. 2017). In training mode
    each forward also updates the centres. forward(embeddings (N,D), labels (N,)) -> LossOutput
    with the batch's classification accuracy as `acc`.
    """

    def __init__(self, n_classes: int, dim: int, center_weight: float = 0.01,
                 center_rate: float = 0.5, scale: float = 16.0) -> None:
        super().__init__()
        if center_weight < 0:
            raise ValueError(f"--center-weight must be >= 0, got {center_weight}")
        self.classifier = nn.Linear(dim, n_classes)
        self.center = CenterLoss(n_classes, dim, center_rate)
        self.center_weight = center_weight
        self.scale = scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        _check_batch(embeddings, labels)
        x = F.normalize(embeddings, dim=1)
        logits = self.classifier(self.scale * x)
        loss = F.cross_entropy(logits, labels) + self.center_weight * self.center(x, labels)
        if self.training:
            self.center.update(x.detach(), labels)
        acc = float((logits.argmax(1) == labels).float().mean())
        return LossOutput(loss, {"acc": acc})
