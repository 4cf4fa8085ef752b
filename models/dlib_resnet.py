"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1) in PyTorch.

The architecture is dlib's `anet_type` from dnn_face_recognition_ex.cpp (29 conv layers,
150x150 RGB in, 128-d out); the weights are parsed from dlib's own .dat file by
models.dlib_format, so neither dlib nor a converted checkpoint is needed. Layer semantics
follow dlib's CPU implementation: conv padding 0 when strided else size // 2, pooling without
padding, affine = frozen batch norm, and `add_prev` of tensors of different shape sums the
overlapping region, i.e. both are zero-padded at the end of each dim to the larger size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import weights
from models.dlib_format import (AddPrev, Affine, Con, FcNoBias, Layer, Pool, Relu, Skip, Tag,
                                read_metric_network)

CHIP_SIZE = 150
EMBEDDING_DIM = 128
RGB_MEAN = (122.782, 117.001, 104.298)  # input_rgb_image_sized's avg_red/green/blue
# (channels, residual blocks, whether the first block halves the resolution) per level, from
# the input side: dlib's alevel4, alevel3, alevel2, alevel1, alevel0.
LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def preprocess_chips(chips: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 RGB chips (N,150,150,3) -> float32 (N,3,150,150) as dlib's input layer makes them:
    (pixel - RGB_MEAN) / 256 per channel. The result stays channels-last in memory, which
    makes the CPU forward ~30% faster than a contiguous NCHW copy."""
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"chips must be uint8 (N,{CHIP_SIZE},{CHIP_SIZE},3) RGB, "
                         f"got {chips.dtype} {chips.shape}")
    x = torch.from_numpy(np.ascontiguousarray(chips)).to(device).permute(0, 3, 1, 2).float()
    mean = torch.tensor(RGB_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / 256.0


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's tt::add(dest, a, b) for (N,C,H,W) tensors that may differ in C, H and W: the
    result has the larger size in every dim and each input counts as zero outside itself."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ChannelAffine(nn.Module):
    """dlib `affine` in CONV_MODE: x * weight[c] + bias[c] (batch norm with frozen statistics)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))


def conv_affine(x: torch.Tensor, conv: nn.Conv2d, affine: ChannelAffine) -> torch.Tensor:
    """affine(conv(x)) as one convolution, the per-channel scale and shift folded into the
    kernel and bias: the same function to float rounding (autograd included) without a pass
    over the activations. The kernel takes x's memory layout, so that a channels-last x is
    not met by a kernel re-laid out inside every call."""
    layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
              else torch.contiguous_format)
    weight = (conv.weight * affine.weight.view(-1, 1, 1, 1)).contiguous(memory_format=layout)
    bias = torch.addcmul(affine.bias, conv.bias, affine.weight)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding)


class ResidualBlock(nn.Module):
    """dlib `ares` (down=False) or `ares_down` (down=True): relu(shortcut + block(x)), where
    block = affine(conv3x3(relu(affine(conv3x3/stride(x))))) and the shortcut is x, or a 2x2
    average pool of x when down (then channels and sizes may differ: see add_zero_padded)."""

    def __init__(self, in_channels: int, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=0 if down else 1)
        self.affine1 = ChannelAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=1)
        self.affine2 = ChannelAffine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(conv_affine(x, self.conv1, self.affine1), inplace=True)
        y = conv_affine(y, self.conv2, self.affine2)
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        c, h, w = shortcut.shape[1:]
        if y.shape[1] >= c and y.shape[2] >= h and y.shape[3] >= w:
            y[:, :c, :h, :w] += shortcut  # y is fresh: add in place, zero beyond the shortcut
        else:
            y = add_zero_padded(shortcut, y)
        return F.relu(y, inplace=True)


def _blocks() -> list[tuple[int, int, bool]]:
    """(in_channels, channels, down) of every residual block from the input side."""
    out, in_channels = [], LEVELS[0][0]
    for channels, count, down in LEVELS:
        for j in range(count):
            out.append((in_channels, channels, down and j == 0))
            in_channels = channels
    return out


class DlibResNet(nn.Module):
    """dlib's 128-d face descriptor network. forward: x (N,3,150,150) float, already
    normalised by preprocess_chips -> (N,128), not L2-normalised (as dlib returns it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(3, 32, 7, 2)
        self.stem_affine = ChannelAffine(32)
        self.blocks = nn.ModuleList(ResidualBlock(*spec) for spec in _blocks())
        self.fc = nn.Linear(LEVELS[-1][0], EMBEDDING_DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"input must be (N,3,{CHIP_SIZE},{CHIP_SIZE}), got {tuple(x.shape)}")
        x = F.max_pool2d(F.relu(conv_affine(x, self.stem_conv, self.stem_affine), inplace=True), 3, 2)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


def dlib_layers() -> list[Layer]:
    """The network as dlib's layer chain from the input side, each parameterised layer keyed
    by its DlibResNet state-dict prefix; mirrors anet_type's template nesting exactly."""
    layers: list[Layer] = [Con(3, 32, 7, 2, "stem_conv"), Affine(32, "stem_affine"), Relu(),
                           Pool("max", 3, 2)]
    for i, (in_channels, channels, down) in enumerate(_blocks()):
        key = f"blocks.{i}"
        layers += [Tag(1), Con(in_channels, channels, 3, 2 if down else 1, f"{key}.conv1"),
                   Affine(channels, f"{key}.affine1"), Relu(),
                   Con(channels, channels, 3, 1, f"{key}.conv2"),
                   Affine(channels, f"{key}.affine2")]
        # residual_down = add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<..>>>>>>
        layers += [Tag(2), Skip(1), Pool("avg", 2, 2), AddPrev(2)] if down else [AddPrev(1)]
        layers.append(Relu())
    layers += [Pool("avg", 0, 1), FcNoBias(LEVELS[-1][0], EMBEDDING_DIM, "fc")]
    return layers


def load_dlib_resnet(path: str | Path | None = None) -> DlibResNet:
    """DlibResNet in eval mode with weights parsed from dlib_face_recognition_resnet_model_v1.dat
    (the installed face_recognition_models copy unless `path` is given). Raises
    FileNotFoundError when missing and ValueError when the file is not this network."""
    file = weights.resolve("dlib-resnet", path)
    net = read_metric_network(file.read_bytes(), str(file), dlib_layers(), CHIP_SIZE)
    if not np.allclose(net.input_mean, RGB_MEAN, rtol=0, atol=1e-4):
        raise ValueError(f"{file}: input mean {net.input_mean} differs from {RGB_MEAN}, "
                         "which preprocess_chips uses")
    state = {f"{layer.key}.{name}": torch.from_numpy(array.copy())
             for layer, arrays in net.layers for name, array in arrays.items()}
    model = DlibResNet()
    model.load_state_dict(state)
    return model.eval()
