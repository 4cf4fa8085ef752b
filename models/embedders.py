"""Face embedders behind one small interface: a photo's faces in, unit vectors out.

`face_inputs(image, faces)` cuts each face's network input out of the photo (aligned
chips), `embed(inputs)` turns a batch of them (from many photos) into unit vectors, and
`thumbnails(inputs)` gives the aligned faces to show. An embedding is only comparable with
embeddings of the same network, weights AND preprocessing, so `version` names all of
them; the pipeline refuses to mix versions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from models.align import AlignSpec, HasFaces, align_faces

#: MTCNN landmarks (left eye, right eye, nose, mouth corners) in dlib's 150x150 chip frame
#: (get_face_chip_details, padding 0.25): the median position over LFW DevTrain faces, with
#: eyes weighted above nose and mouth, which move with pose and expression. Derived and
#: chosen on View-1 by bench/fit_dlib_template.py.
DLIB_TEMPLATE = ((47.9, 46.0), (102.1, 46.0), (74.7, 78.0), (51.4, 105.9), (98.8, 105.9))
DLIB_ALIGN = AlignSpec("landmarks", 150, DLIB_TEMPLATE, weights=(1.0, 1.0, 1.0, 1.0, 1.0),
                       tag="lm150-v2")
#: facenet-pytorch's preprocessing for its VGGFace2 release: MTCNN box plus a 32 px margin of
#: the 160x160 chip. Not measurable here: that checkpoint cannot be downloaded.
FACENET_ALIGN = AlignSpec("box", 160, margin=32.0, tag="box160m32")
#: davidsandberg's preprocessing, which his models were trained and evaluated with
#: (align_dataset_mtcnn.py --image_size 160 --margin 32): the MTCNN box grown by 16 photo
#: pixels on each side, resized to 160x160. Chosen on View-1 (bench/choose_facenet.py).
SANDBERG_ALIGN = AlignSpec("box", 160, margin=32.0, margin_space="photo", tag="box160pm32")


@dataclass(frozen=True)
class EmbedderConfig:
    """What distinguishes one embedder: input normalisation and alignment."""

    name: str
    dim: int
    align: AlignSpec
    mean: tuple[float, float, float]  # subtracted per R,G,B
    scale: float  # then divided by
    #: Test-time augmentation: embed each chip and its mirror image and average the two.
    flip: bool = False
    #: Instead of mean/scale: each chip minus its own mean, over its own standard deviation
    #: (davidsandberg's "prewhiten", which his 2017 models were trained with).
    prewhiten: bool = False

    @property
    def preprocessing(self) -> str:
        """Alignment, standardisation and augmentation, as recorded in the embedder version."""
        return self.align.name + ("+prewhiten" if self.prewhiten else "") + ("+flip" if self.flip else "")


def embedder_version(weights_id: str, config: EmbedderConfig, bf16: bool = False) -> str:
    """What ties embeddings to their exact weights, preprocessing and arithmetic."""
    return f"{weights_id}/{config.preprocessing}" + ("+bf16" if bf16 else "")


def ensemble_version(members: list[tuple[str, str, float]]) -> str:
    """An ensemble's version from its members' (name, version, distance unit)."""
    return "ensemble(" + ",".join(f"{name}:{version}/u{unit:g}" for name, version, unit in members) + ")"


class FaceEmbedder(Protocol):
    """What the pipeline needs of an embedder (Embedder, EnsembleEmbedder)."""

    name: str
    version: str
    dim: int
    lineage: dict | None

    def face_inputs(self, image: np.ndarray, faces: HasFaces) -> np.ndarray: ...

    def thumbnails(self, inputs: np.ndarray) -> np.ndarray: ...

    def embed(self, inputs: np.ndarray) -> np.ndarray: ...


class Embedder:
    """A face embedding network with its preprocessing.

    embed(chips (N,S,S,3) uint8 RGB aligned by `align`) -> (N,dim) float32, unit L2 norm.
    """

    def __init__(self, config: EmbedderConfig, network: nn.Module, weights_id: str,
                 device: str | torch.device = "cpu", batch_size: int = 64,
                 lineage: dict | None = None, channels_last: bool = False, bf16: bool = False) -> None:
        self.config = config
        self.lineage = lineage  # where fine-tuned weights came from (models.finetuned); else None
        self.device = resolve_device(device)
        #: NHWC activations: oneDNN's fast layout for plain convolutions (~1.3-2x on the
        #: CPU for Inception-ResNet-v1; same numbers up to float rounding).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weights_id = weights_id
        self.version = embedder_version(weights_id, config, bf16)
        self._options = {"batch_size": batch_size, "lineage": lineage, "channels_last": channels_last, "bf16": bf16}
        #: bfloat16 weights and activations (8 bits of mantissa; oneDNN and cuDNN sum the
        #: products in float32), where the device computes them natively (bf16_native);
        #: float32 elsewhere, within 1% of the unit norm of the same embedding.
        self.dtype = torch.bfloat16 if bf16 and bf16_native(self.device) else torch.float32
        self.network = network.to(self.device, self.dtype, memory_format=self.memory_format).eval()
        self.batch_size = batch_size

    def with_preprocessing(self, **changes: object) -> "Embedder":
        """The same network (shared, not copied) with other preprocessing: `changes` to
        its EmbedderConfig (e.g. flip=False); the version names them."""
        return Embedder(dataclasses.replace(self.config, **changes), self.network, self.weights_id,
                        self.device, **self._options)

    name = property(lambda self: self.config.name)
    dim = property(lambda self: self.config.dim)
    align = property(lambda self: self.config.align)
    input_size = property(lambda self: self.config.align.size)

    def face_inputs(self, image: np.ndarray, faces: HasFaces) -> np.ndarray:
        """The network inputs of every face of one photo (H,W,3) uint8: aligned chips
        (n,S,S,3) uint8."""
        return align_faces(image, faces, self.align)

    def thumbnails(self, inputs: np.ndarray) -> np.ndarray:
        """The aligned faces (n,S,S,3) uint8 of face_inputs' rows, for showing them."""
        return inputs

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Chips (N,3,S,S) float 0..255 -> the network's input scale."""
        if self.config.prewhiten:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), unbiased=False, keepdim=True)
            return (x - mean) / std.clamp_min(1.0 / np.sqrt(x[0].numel()))
        mean = torch.tensor(self.config.mean, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / self.config.scale

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings (N,dim) float32 of aligned chips (N,S,S,3) uint8."""
        size = self.input_size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3):
            raise ValueError(f"{self.name} expects chips of shape (N,{size},{size},3), got {chips.shape}")
        out = np.empty((len(chips), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                x = torch.from_numpy(chips[start:start + self.batch_size]).to(self.device)
                x = self.normalise(x.permute(0, 3, 1, 2).float())
                x = x.to(self.dtype).contiguous(memory_format=self.memory_format)
                if self.config.flip:  # one call on the chips and their mirrors, then average
                    y = self.network(torch.cat([x, x.flip(3)])).float().view(2, len(x), -1).sum(0)
                else:
                    y = self.network(x).float()
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


def bf16_native(device: torch.device) -> bool:
    """Whether `device` has bfloat16 arithmetic in hardware (a CUDA GPU that supports it, a
    CPU with AVX512-BF16 or AMX-BF16): elsewhere bfloat16 is emulated, slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return device.type == "cpu" and bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


CONFIGS = {c.name: c for c in (
    # Mirror averaging chosen on View-1 (bench/choose_alignment.py, bench/RESULTS.md).
    EmbedderConfig("dlib-resnet", 128, DLIB_ALIGN, (122.782, 117.001, 104.298), 256.0, flip=True),
    EmbedderConfig("facenet", 512, FACENET_ALIGN, (127.5, 127.5, 127.5), 128.0),
    # davidsandberg's checkpoints: crop, standardisation and mirror averaging chosen on
    # View-1 (bench/choose_facenet.py, bench/RESULTS.md); mirror averaging helped the 2017
    # model (10-fold 0.9900 -> 0.9912) and not the 2018 one (0.9891 -> 0.9859).
    EmbedderConfig("facenet-casia", 512, SANDBERG_ALIGN, (127.5, 127.5, 127.5), 128.0),
    EmbedderConfig("facenet-msceleb", 128, SANDBERG_ALIGN, (0.0, 0.0, 0.0), 1.0, flip=True, prewhiten=True),
)}


def _dlib_weights(weights: str | None) -> tuple[Path, str]:
    """dlib-resnet's weights file (checked) and its weights id."""
    from models import weights as registry

    path = registry.resolve("dlib-resnet", weights)
    return path, f"dlib-v1-{registry.file_sha256(path)[:12]}"


def _dlib_resnet(device: str | torch.device, weights: str | None, bf16: bool = False) -> Embedder:
    from models.dlib_resnet import load_dlib_resnet

    path, weights_id = _dlib_weights(weights)
    return Embedder(CONFIGS["dlib-resnet"], load_dlib_resnet(path), weights_id, device, channels_last=True, bf16=bf16)


def _facenet_id(weights: str | None) -> str:
    from models.inception_resnet_v1 import facenet_id, facenet_registry_name
    from models.weights import resolve

    return facenet_id(resolve(facenet_registry_name("vggface2"), weights))


def _converted_id(name: str) -> Callable[[str | None], str]:
    def weights_id(weights: str | None) -> str:
        from models.facenet_convert import converted_id

        return converted_id(name, weights)

    return weights_id


def _facenet(device: str | torch.device, weights: str | None) -> Embedder:
    from models.inception_resnet_v1 import load_facenet

    network, weights_id = load_facenet(weights=weights)
    return Embedder(CONFIGS["facenet"], network, weights_id, device)


def _converted(name: str) -> Callable[..., Embedder]:
    """Loader of a davidsandberg checkpoint converted by models.facenet_convert."""

    def load(device: str | torch.device, weights: str | None, bf16: bool = False) -> Embedder:
        from models.facenet_convert import load_converted

        network, weights_id = load_converted(name, weights)
        return Embedder(CONFIGS[name], network, weights_id, device, channels_last=True, bf16=bf16)

    return load


class EnsembleEmbedder:
    """Several embedders as one: each member embeds the face its own way, and the
    embedding is the concatenation of the members' unit vectors, member i divided by its
    distance unit u_i, renormalised. A squared distance is then proportional to
    sum_i (d_i / u_i)^2: each member's distance counts in units of its own scale.

    face_inputs rows hold every member's chip, flattened and concatenated; thumbnails show
    the first member's.
    """

    name = "ensemble"

    def __init__(self, members: list[Embedder], units: tuple[float, ...]) -> None:
        if len(members) != len(units) or not members:
            raise ValueError("an ensemble needs one distance unit per member")
        self.members = members
        self.units = units
        inverse = 1.0 / np.asarray(units, np.float64)
        self.scales = (inverse / np.linalg.norm(inverse)).astype(np.float32)
        self.dim = sum(m.dim for m in members)
        self.lineage = None
        self.device = members[0].device
        self.version = ensemble_version([(m.name, m.version, u) for m, u in zip(members, units)])
        self._widths = [m.input_size ** 2 * 3 for m in members]

    def face_inputs(self, image: np.ndarray, faces: HasFaces) -> np.ndarray:
        """(n, sum of members' S*S*3) uint8: each member's aligned chip, flattened."""
        chips = [m.face_inputs(image, faces) for m in self.members]
        return np.concatenate([c.reshape(len(c), -1) for c in chips], axis=1)

    def _split(self, inputs: np.ndarray) -> list[np.ndarray]:
        if inputs.ndim != 2 or inputs.shape[1] != sum(self._widths):
            raise ValueError(f"ensemble expects inputs of shape (N,{sum(self._widths)}), got {inputs.shape}")
        bounds = np.cumsum([0, *self._widths])
        return [inputs[:, a:b].reshape(len(inputs), m.input_size, m.input_size, 3)
                for m, a, b in zip(self.members, bounds[:-1], bounds[1:])]

    def thumbnails(self, inputs: np.ndarray) -> np.ndarray:
        return self._split(inputs)[0]

    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """Unit-norm embeddings (N,dim) float32 of face_inputs rows (N, width) uint8."""
        return self.combine([m.embed(x) for m, x in zip(self.members, self._split(inputs))])

    def combine(self, parts: list[np.ndarray]) -> np.ndarray:
        """The ensemble embedding (N,dim) of the members' unit embeddings, in member order."""
        out = np.concatenate([p * s for p, s in zip(parts, self.scales)], axis=1)
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


#: The ensemble's members and their distance units. Models trained on different data make
#: different mistakes (dlib's on ~3M faces of VGG, FaceScrub and web photos; FaceNet's on
#: MS-Celeb-1M). A member's unit is its verification threshold chosen on View-1 DevTrain
#: (bench/choose_facenet.py): the members count alike at their own decision boundaries, a
#: rule rather than weights fitted to View-1's noise (bench/RESULTS.md compares both).
#: FaceNet joins without its mirror pass: the ensemble with it is 0.53x dlib-resnet's
#: pipeline photos/s, below the 0.6x an ensemble default may cost (issue 18), and without it
#: the ensemble still beats each member on View-1 (bench/RESULTS.md). Members compute in
#: bfloat16 where the hardware has it.
ENSEMBLE_MEMBERS: tuple[tuple[str, float, dict], ...] = (
    ("dlib-resnet", 0.4203, {}), ("facenet-msceleb", 1.0865, {"flip": False}))


def _ensemble(device: str | torch.device, weights: str | None) -> FaceEmbedder:
    if weights is not None:
        raise ValueError("--embedder_weights does not apply to the ensemble: its members load "
                         "their own published weights")
    members = [EMBEDDERS[n](device, None, bf16=True) for n, _, _ in ENSEMBLE_MEMBERS]
    return EnsembleEmbedder([m.with_preprocessing(**changes) if changes else m
                             for m, (_, _, changes) in zip(members, ENSEMBLE_MEMBERS)],
                            tuple(u for _, u, _ in ENSEMBLE_MEMBERS))


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


EMBEDDERS: dict[str, Callable[[str | torch.device, str | None], FaceEmbedder]] = {
    "dlib-resnet": _dlib_resnet,
    "facenet": _facenet,
    "facenet-casia": _converted("facenet-casia"),
    "facenet-msceleb": _converted("facenet-msceleb"),
    "ensemble": _ensemble,
}
#: The default: the ensemble wins LFW View-1 (and View-2) and the clustering harness's dev
#: suites over each single model, at 0.6x or more of dlib-resnet's pipeline photos/s with
#: bfloat16 arithmetic (bench/RESULTS.md, issue 18).
DEFAULT_EMBEDDER = "ensemble"


#: Each published embedder's weights id from its weights file alone (describe_embedder).
WEIGHTS_IDS: dict[str, Callable[[str | None], str]] = {
    "dlib-resnet": lambda weights: _dlib_weights(weights)[1], "facenet": _facenet_id,
    "facenet-casia": _converted_id("facenet-casia"), "facenet-msceleb": _converted_id("facenet-msceleb"),
}


def describe_embedder(name: str, weights: str | None = None) -> tuple[str, int, dict | None]:
    """(version, dimension, lineage) of get_embedder(name, weights=weights), checked
    (weights found, pinned digests verified) without loading a network: what a launcher
    needs to write its outputs. Fine-tuned checkpoints are loaded (their lineage is inside)."""
    from models.finetuned import is_finetuned

    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
    if weights is not None and is_finetuned(weights):
        embedder = get_embedder(name, "cpu", weights)
        return embedder.version, embedder.dim, embedder.lineage
    if name != "ensemble":
        return embedder_version(WEIGHTS_IDS[name](weights), CONFIGS[name]), embedding_dim(name), None
    if weights is not None:
        _ensemble("cpu", weights)  # its one-line refusal
    members = [(n, embedder_version(WEIGHTS_IDS[n](None), dataclasses.replace(CONFIGS[n], **changes), True), u)
               for n, u, changes in ENSEMBLE_MEMBERS]
    return ensemble_version(members), embedding_dim(name), None


def embedding_dim(name: str) -> int:
    """The dimension of `name`'s embeddings, known without loading its networks."""
    if name == "ensemble":
        return sum(CONFIGS[n].dim for n, _, _ in ENSEMBLE_MEMBERS)
    return CONFIGS[name].dim


def get_embedder(name: str = DEFAULT_EMBEDDER, device: str | torch.device = "cpu",
                 weights: str | None = None) -> FaceEmbedder:
    """The embedder `name` on `device`, with weights from `weights` (a weights file of the
    network, or a checkpoint that models.train fine-tuned from it) or its default source."""
    from models.finetuned import is_finetuned

    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
    if weights is not None and is_finetuned(weights):
        return _finetuned(name, device, weights)
    return EMBEDDERS[name](device, weights)
