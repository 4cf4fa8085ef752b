"""Face embedders behind one small interface: aligned chips in, unit vectors out.

An embedding is only comparable with embeddings of the same network, weights AND
alignment, so `version` names all three; the pipeline refuses to mix versions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.align import AlignSpec

#: MTCNN landmarks (left eye, right eye, nose, mouth corners) in dlib's 150x150 chip frame
#: (get_face_chip_details, padding 0.25): the median position over LFW DevTrain faces, with
#: eyes weighted above nose and mouth, which move with pose and expression. Derived and
#: chosen on View-1 by bench/fit_dlib_template.py.
DLIB_TEMPLATE = ((47.9, 46.0), (102.1, 46.0), (74.7, 78.0), (51.4, 105.9), (98.8, 105.9))
DLIB_ALIGN = AlignSpec("landmarks", 150, DLIB_TEMPLATE, weights=(1.0, 1.0, 1.0, 1.0, 1.0),
                       tag="lm150-v2")
#: FaceNet's own preprocessing: MTCNN box plus a 32 px margin at 160x160 (davidsandberg/facenet
#: LFW protocol). Not measurable here: the published checkpoints cannot be downloaded.
FACENET_ALIGN = AlignSpec("box", 160, margin=32.0, tag="box160m32")


@dataclass(frozen=True)
class EmbedderConfig:
    """What distinguishes one embedder: input normalisation and alignment."""

    name: str
    dim: int
    align: AlignSpec
    mean: tuple[float, float, float]  # subtracted per R,G,B
    scale: float  # then divided by


class Embedder:
    """A face embedding network with its preprocessing.

    embed(chips (N,S,S,3) uint8 RGB aligned by `align`) -> (N,dim) float32, unit L2 norm.
    """

    def __init__(self, config: EmbedderConfig, network: nn.Module, weights_id: str,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 lineage: dict | None = None) -> None:
        self.config = config
        self.lineage = lineage  # where fine-tuned weights came from (models.finetuned); else None
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.version = f"{weights_id}/{config.align.name}"
        self.batch_size = batch_size

    name = property(lambda self: self.config.name)
    dim = property(lambda self: self.config.dim)
    align = property(lambda self: self.config.align)
    input_size = property(lambda self: self.config.align.size)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings (N,dim) float32 of aligned chips (N,S,S,3) uint8."""
        size = self.input_size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.name} expects chips of shape (N,{size},{size},3), got {chips.shape}")
        out = np.empty((len(chips), self.dim), dtype=np.float32)
        mean = torch.tensor(self.config.mean, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                x = torch.from_numpy(chips[start:start + self.batch_size]).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() - mean) / self.config.scale
                y = self.network(x)
                out[start:start + len(x)] = torch.nn.functional.normalize(y, dim=1).cpu().numpy()
        return out


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return device


CONFIGS = {c.name: c for c in (
    EmbedderConfig("dlib-resnet", 128, DLIB_ALIGN, (122.782, 117.001, 104.298), 256.0),
    EmbedderConfig("facenet", 512, FACENET_ALIGN, (127.5, 127.5, 127.5), 128.0),
)}


def _dlib_resnet(device: str | torch.device, weights: str | None) -> Embedder:
    from models import weights as registry
    from models.dlib_resnet import load_dlib_resnet

    path = registry.resolve("dlib-resnet", weights)
    return Embedder(CONFIGS["dlib-resnet"], load_dlib_resnet(path),
                    f"dlib-v1-{registry.file_sha256(path)[:12]}", device)


def _facenet(device: str | torch.device, weights: str | None) -> Embedder:
    from models.inception_resnet_v1 import load_facenet

    network, weights_id = load_facenet(weights=weights)
    return Embedder(CONFIGS["facenet"], network, weights_id, device)


def _finetuned(name: str, device: str | torch.device, path: str) -> Embedder:
    """A checkpoint of models.train: the base embedder's preprocessing with the checkpoint's
    network; the version names the checkpoint file's digest, the lineage its origin."""
    from models.finetuned import load_finetuned
    from models.weights import file_sha256

    network, lineage = load_finetuned(path)
    config = CONFIGS[name]
    if lineage["base_model"] != name:
        raise ValueError(f"{path} was fine-tuned from {lineage['base_model']}, not {name}; "
                         f"use --embedder {lineage['base_model']}")
    if lineage["align"] != config.align.name:
        raise ValueError(f"{path} was trained on chips aligned as {lineage['align']}, but {name} "
                         f"now aligns as {config.align.name}; fine-tune it again")
    return Embedder(config, network, f"ft-{file_sha256(path)[:12]}", device, lineage=lineage)


EMBEDDERS: dict[str, Callable[[str | torch.device, str | None], Embedder]] = {
    "dlib-resnet": _dlib_resnet,
    "facenet": _facenet,
}
DEFAULT_EMBEDDER = "dlib-resnet"


def get_embedder(name: str = DEFAULT_EMBEDDER, device: str | torch.device = "cpu",
                 weights: str | None = None) -> Embedder:
    """The embedder `name` on `device`, with weights from `weights` (a weights file of the
    network, or a checkpoint that models.train fine-tuned from it) or its default source."""
    from models.finetuned import is_finetuned

    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
    if weights is not None and is_finetuned(weights):
        return _finetuned(name, device, weights)
    return EMBEDDERS[name](device, weights)
