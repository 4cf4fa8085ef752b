"""The checkpoint file of a fine-tuned embedder (written by models.train).

One torch.save archive holds the whole network's state dict (base key names), the
lineage (base model and weights, training data, objective, steps) and, for --resume
only, the training state. The pipeline loads it as a weights file of its base embedder
(`--embedder dlib-resnet --embedder_weights last.pt`, see models.embedders), and the
lineage then travels into the Parquet metadata of faces/.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

CHECKPOINT_FORMAT = "facegroup-finetuned-embedder/1"


def save_checkpoint(path: Path, network: nn.Module, lineage: dict, train_state: dict) -> None:
    """Write atomically: {"format", "state_dict" (the whole network), "lineage",
    "train_state" (optimizer, objective, position; for --resume only)}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": network.state_dict(),
                "lineage": lineage, "train_state": train_state}, tmp)
    tmp.replace(path)


def is_finetuned(path: str | Path) -> bool:
    """Whether `path` is a checkpoint of models.train (rather than a base weights file:
    dlib's .dat, or a facenet-pytorch state dict, which is also a torch.save archive)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any archive that torch cannot read safely is not ours
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict; FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuned checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a fine-tuned checkpoint (not a torch.save archive)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return ckpt


#: Embedders that models.train can fine-tune. Not the converted FaceNet checkpoints
#: (facenet-casia, facenet-msceleb: loaded with their batch norms folded into the
#: convolutions for inference) nor the ensemble (several networks).
FINETUNABLE = ("dlib-resnet", "facenet")


def base_network(name: str) -> nn.Module:
    """An untrained network of the embedder `name`'s architecture."""
    from models.dlib_resnet import DlibResNet
    from models.inception_resnet_v1 import InceptionResnetV1

    builders: dict[str, Callable[[], nn.Module]] = {"dlib-resnet": DlibResNet, "facenet": InceptionResnetV1}
    if name not in builders:
        raise ValueError(f"checkpoint base model {name!r} is not one of {', '.join(builders)}")
    return builders[name]()


def load_finetuned(path: str | Path) -> tuple[nn.Module, dict]:
    """(network in eval mode, lineage dict) of a checkpoint written by models.train.

    lineage: base_model, base_weights (version of the base embedder), align, data
    {description, identities, faces, sha256}, objective, trainable, optimizer, steps,
    epochs, date, torch, evaluation. Raises FileNotFoundError / ValueError naming the file.
    """
    ckpt = read_checkpoint(path)
    lineage = ckpt["lineage"]
    network = base_network(lineage["base_model"])
    try:
        network.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit {lineage['base_model']}: {str(err).splitlines()[0]}") from None
    return network.eval(), lineage
