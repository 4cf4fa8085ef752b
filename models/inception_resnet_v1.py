"""Inception-ResNet-v1, the FaceNet embedder (Schroff et al. 2015; Sandberg's TF port).

Module and parameter names follow facenet-pytorch exactly (``conv2d_1a`` ... ``block8``,
``avgpool_1a``, ``last_linear``, ``last_bn``, optional ``logits``) so that its published
state dicts (20180402-114759 trained on VGGFace2, 20180408-102900 on CASIA-WebFace) load
with ``strict=True``. The residual blocks share one implementation; only their branch
layouts differ, and the branch attribute names (``branch0`` ...) keep the key names.
The same network reads davidsandberg's TensorFlow checkpoints (models.facenet_convert):
``embedding_dim`` is 128 for the 2017 models, and ``folded_bn`` builds the convolutions
with a bias and no batch norm, the form of a frozen graph whose batch norms were folded.

Input: (N, 3, 160, 160) float RGB, standardised as the weights were trained.
Output of :meth:`InceptionResnetV1.forward`: (N, embedding_dim) embeddings before L2
normalisation.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models.weights import file_sha256, resolve

INPUT_SIZE = 160
EMBEDDING_DIM = 512
# Classes of the published classifier heads (dropped on load; kept for fine-tuning).
CHECKPOINT_CLASSES = {"vggface2": 8631, "casia-webface": 10575}


def fixed_image_standardization(images: torch.Tensor) -> torch.Tensor:
    """Map pixel values 0..255 to about -1..1, the scaling the FaceNet weights were trained on.

    images: (N, 3, H, W) float or uint8 RGB -> (N, 3, H, W) float32.
    """
    return (images.float() - 127.5) / 128.0


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TF's eps 1e-3), ReLU; or, with the batch norm
    folded into the weights (``folded``), convolution with bias, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_ch, eps=0.001, momentum=0.1)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold the batch norm's running statistics into the convolution (same outputs in
        eval mode, one pass fewer over the activations; no longer trainable as a BN)."""
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                         self.conv.stride, self.conv.padding, bias=True)
        conv.weight.copy_(self.conv.weight * scale.view(-1, 1, 1, 1))
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        self.conv, self.bn = conv, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Branches(nn.Module):
    """Parallel branches ``branch0``..``branchK`` on one input, concatenated along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.n_branches = len(branches)
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)

    def concat(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, sum of branch channels, H', W')."""
        return torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.n_branches)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(x)


class ResidualInception(Branches):
    """x + scale * conv2d(concat(branches(x))), then ReLU unless it is the last block."""

    def __init__(self, channels: int, branches: tuple[nn.Module, ...], scale: float,
                 relu: bool = True) -> None:
        super().__init__(*branches)
        width = sum(_out_channels(b) for b in branches)
        self.conv2d = nn.Conv2d(width, channels, kernel_size=1)
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(self.concat(x)) * self.scale + x
        return F.relu(out) if self.relu else out


def _out_channels(branch: nn.Module) -> int:
    """Output channels of a branch made of BasicConv2d layers."""
    last = branch[-1] if isinstance(branch, nn.Sequential) else branch
    return last.conv.out_channels


def block35(scale: float) -> ResidualInception:
    """Inception-ResNet-A on the 35x35 grid (256 channels)."""
    return ResidualInception(256, (
        BasicConv2d(256, 32, 1),
        nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1)),
        nn.Sequential(BasicConv2d(256, 32, 1), BasicConv2d(32, 32, 3, padding=1),
                      BasicConv2d(32, 32, 3, padding=1)),
    ), scale)


def block17(scale: float) -> ResidualInception:
    """Inception-ResNet-B on the 17x17 grid (896 channels), factorised 7x7."""
    return ResidualInception(896, (
        BasicConv2d(896, 128, 1),
        nn.Sequential(BasicConv2d(896, 128, 1), BasicConv2d(128, 128, (1, 7), padding=(0, 3)),
                      BasicConv2d(128, 128, (7, 1), padding=(3, 0))),
    ), scale)


def block8(scale: float, relu: bool = True) -> ResidualInception:
    """Inception-ResNet-C on the 8x8 grid (1792 channels), factorised 3x3."""
    return ResidualInception(1792, (
        BasicConv2d(1792, 192, 1),
        nn.Sequential(BasicConv2d(1792, 192, 1), BasicConv2d(192, 192, (1, 3), padding=(0, 1)),
                      BasicConv2d(192, 192, (3, 1), padding=(1, 0))),
    ), scale, relu)


def mixed_6a() -> Branches:
    """Reduction-A: 35x35x256 -> 17x17x896."""
    return Branches(
        BasicConv2d(256, 384, 3, stride=2),
        nn.Sequential(BasicConv2d(256, 192, 1), BasicConv2d(192, 192, 3, padding=1),
                      BasicConv2d(192, 256, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


def mixed_7a() -> Branches:
    """Reduction-B: 17x17x896 -> 8x8x1792."""
    return Branches(
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 384, 3, stride=2)),
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, stride=2)),
        nn.Sequential(BasicConv2d(896, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                      BasicConv2d(256, 256, 3, stride=2)),
        nn.MaxPool2d(3, stride=2),
    )


class InceptionResnetV1(nn.Module):
    """FaceNet Inception-ResNet-v1: (N, 3, 160, 160) standardised RGB -> (N, embedding_dim).

    num_classes adds the ``logits`` classifier head of the training checkpoints; it is used
    only by :meth:`classify` (fine-tuning), never by :meth:`forward`. folded_bn: batch
    norms folded into the convolutions (inference only: there are no statistics to train).
    """

    def __init__(self, num_classes: int | None = None, dropout: float = 0.6,
                 embedding_dim: int = EMBEDDING_DIM, folded_bn: bool = False) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, stride=2)
        self.repeat_1 = nn.Sequential(*(block35(0.17) for _ in range(5)))
        self.mixed_6a = mixed_6a()
        self.repeat_2 = nn.Sequential(*(block17(0.10) for _ in range(10)))
        self.mixed_7a = mixed_7a()
        self.repeat_3 = nn.Sequential(*(block8(0.20) for _ in range(5)))
        self.block8 = block8(1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(1792, embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=0.001, momentum=0.1)
        if num_classes is not None:
            self.logits = nn.Linear(embedding_dim, num_classes)
        if folded_bn:
            self.fold_batch_norms()

    def fold_batch_norms(self) -> "InceptionResnetV1":
        """Fold every convolution's batch norm into its weights (see BasicConv2d.fold_bn);
        the bottleneck's ``last_bn`` stays. Returns self."""
        for module in self.modules():
            if isinstance(module, BasicConv2d):
                module.fold_bn()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) standardised RGB (H = W = 160 for the published weights) -> (N, embedding_dim)."""
        for layer in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a,
                      self.conv2d_3b, self.conv2d_4a, self.conv2d_4b, self.repeat_1,
                      self.mixed_6a, self.repeat_2, self.mixed_7a, self.repeat_3, self.block8):
            x = layer(x)
        x = self.dropout(self.avgpool_1a(x).flatten(1))
        return self.last_bn(self.last_linear(x))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) training-identity logits; needs num_classes."""
        if not hasattr(self, "logits"):
            raise ValueError("this InceptionResnetV1 has no logits layer; "
                             "build it with num_classes")
        return self.logits(self.forward(x))


def facenet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Embedding weights from a facenet-pytorch checkpoint, with any ``logits.*`` head dropped.

    Accepts a bare state dict (the published release files) or one wrapped as
    ``{"state_dict": ...}``; raises ValueError when the file holds neither.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not an InceptionResnetV1 state dict")
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


class LoadedFacenet(NamedTuple):
    """A loaded network and the version string that ties embeddings to its exact weights."""

    model: InceptionResnetV1
    version: str  # "<checkpoint file stem>-<first 12 hex of its sha256>"


def load_facenet(checkpoint: str = "vggface2", weights: str | Path | None = None,
                 cache_dir: str | Path | None = None, download: bool = True,
                 url: str | None = None, sha256: str | None = None) -> LoadedFacenet:
    """InceptionResnetV1 in eval mode with a published (or user-supplied) checkpoint,
    and its version, e.g. ``20180402-114759-vggface2-281cebca8662``.

    checkpoint: "vggface2" or "casia-webface" (registry entries facenet-<checkpoint>).
    weights: a local checkpoint file (the ``--facenet_weights`` option); otherwise the
    release file is taken from cache_dir, downloading it from url (default: the release URL)
    when missing. sha256, when given, must match the file; otherwise the registry's pinned
    digest is checked when one is known. See :func:`models.weights.resolve` for errors.
    """
    name = facenet_registry_name(checkpoint)
    path = resolve(name, weights, cache_dir=cache_dir, download=download, url=url, sha256=sha256)
    model = InceptionResnetV1()
    try:
        model.load_state_dict(facenet_state_dict(path), strict=True)
    except RuntimeError as err:  # wrong architecture: one line naming the file
        detail = " ".join(str(err).split())
        raise ValueError(f"{path} does not fit InceptionResnetV1: {detail[:300]}") from None
    return LoadedFacenet(model.eval(), facenet_id(path))


def facenet_id(path: Path) -> str:
    """The version of a checkpoint file: its stem and the first 12 hex of its sha256."""
    return f"{path.stem}-{file_sha256(path)[:12]}"


def facenet_registry_name(checkpoint: str) -> str:
    """Registry name of a facenet checkpoint; ValueError for an unknown one."""
    if checkpoint not in CHECKPOINT_CLASSES:
        raise ValueError(f"unknown facenet checkpoint {checkpoint!r}; "
                         f"known: {', '.join(CHECKPOINT_CLASSES)}")
    return f"facenet-{checkpoint}"
