"""Fine-tune a face embedder on labelled faces (FaceNet-style).

    python -m models.train --data PEOPLE_DIR --out runs/ft1            # folder per identity
    python -m models.train --faces OUT/faces --labels labels.csv --out runs/ft2
    python -m models.train ... --resume runs/ft1/last.pt --epochs 20   # continue

Training data: a folder per identity of photos (the face nearest each photo's centre,
core.faces' CENTRE rule, detected with our MTCNN and aligned with the embedder's AlignSpec
through the hot path; photos with no face are skipped), of already-aligned chips
(--aligned), or the pipeline's faces/ Parquet (with the aligned JPEG thumbnails of the
images/ table beside it) plus a CSV `face_key,label`. Batches hold P identities x K faces
(identities with a single face cannot form a positive pair and are left out).

Only the last layers are trained by default (--trainable last: the last residual level and
the final linear layer): the frozen part runs once over every face and its output is cached,
which makes CPU training feasible; --trainable all trains every layer from the chips.
After each epoch the model is evaluated on LFW View-1 (threshold chosen on pairsDevTrain,
accuracy on pairsDevTest) and a checkpoint is written (<out>/last.pt); the checkpoint is also
a weights file for the pipeline (`python -m pipeline --embedder dlib-resnet --embedder_weights
runs/ft1/last.pt ...`, see models.finetuned) and carries its lineage (base weights, data,
objective, steps, date), which the pipeline writes into the faces/ Parquet metadata.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from core.faces import CENTRE, Pixels, align, choose, detect, succeeded
from core.lfw import CACHE, LFW, best_threshold, detect_centre_faces, labelled_inputs, read_pairs, read_rgb
from models.align import AlignSpec
from models.embedders import Embedder, get_embedder, resolve_device
from models.finetuned import FINETUNABLE, read_checkpoint, save_checkpoint
from models.mtcnn import MTCNN
from models.triplet import MINING, LossOutput, SoftmaxCenterLoss, TripletLoss

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
OBJECTIVES = ("triplet", "center")
OPTIMIZERS = ("adam", "adagrad")


# --------------------------------------------------------------------------- networks

class _DlibStem(nn.Module):
    """dlib ResNet input stage: 7x7/2 conv, affine, relu, 3x3/2 max pool."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.conv, self.affine = network.stem_conv, network.stem_affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class _DlibTail(nn.Module):
    """dlib ResNet output stage: global average pool, then the 128-d linear map."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.fc = network.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class _FacenetTail(nn.Module):
    """Inception-ResNet-v1 output stage: pool, dropout, 512-d linear map, batch norm."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.pool, self.dropout = network.avgpool_1a, network.dropout
        self.linear, self.bn = network.last_linear, network.last_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.dropout(self.pool(x).flatten(1))))


def network_stages(network: nn.Module) -> tuple[list[nn.Module], nn.Module, int]:
    """The network as a chain: feature stages from the input side, the output stage (pool +
    linear), and how many trailing stages make its "last level". Composing them equals
    network(x); the modules share the network's parameters."""
    from models.dlib_resnet import DlibResNet
    from models.inception_resnet_v1 import InceptionResnetV1

    if isinstance(network, DlibResNet):
        return [_DlibStem(network), *network.blocks], _DlibTail(network), 1  # alevel0: 1 block
    if isinstance(network, InceptionResnetV1):
        names = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
                 "conv2d_4b", "repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3", "block8")
        return [getattr(network, n) for n in names], _FacenetTail(network), 1
    raise ValueError(f"fine-tuning does not know how to split a {type(network).__name__}")


class SplitNetwork:
    """A network cut into a frozen trunk (run once, its output cached) and a trainable head.

    trainable: "fc" (output stage only), "last" (last residual level + output stage), "all",
    or an integer string k (last k feature stages + output stage).
    trunk: (N,3,S,S) preprocessed chips -> features; head: features -> (N,D) raw embeddings.
    """

    def __init__(self, network: nn.Module, trainable: str) -> None:
        stages, tail, last = network_stages(network)
        if trainable == "all":
            k = len(stages)
        elif trainable == "last":
            k = last
        elif trainable == "fc":
            k = 0
        elif trainable.isdigit() and int(trainable) <= len(stages):
            k = int(trainable)
        else:
            raise ValueError(f"--trainable must be fc, last, all or 0..{len(stages)}, got {trainable!r}")
        self.network = network
        self.trainable = trainable
        self.trunk = nn.Sequential(*stages[:len(stages) - k])
        self.head = nn.Sequential(*stages[len(stages) - k:], tail)
        network.requires_grad_(False)
        self.head.requires_grad_(True)
        self.trunk.eval()

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters."""
        return [p for p in self.head.parameters() if p.requires_grad]


def preprocess(chips: np.ndarray, embedder: Embedder, device: torch.device) -> torch.Tensor:
    """uint8 chips (N,S,S,3) RGB -> (N,3,S,S) float network input, normalised as `embedder.embed` does."""
    x = torch.from_numpy(np.ascontiguousarray(chips)).to(device).permute(0, 3, 1, 2).float()
    return embedder.normalise(x)


class Features:
    """What the trainable head consumes for every face: the frozen trunk's output, computed
    once (also for the mirrored chip when `flip` augments training or the embedder averages
    each face with its mirror), or, when nothing is frozen, the chips themselves, mirrored
    and preprocessed batch by batch.

    batch(idx (B,), flips (B,) bool or None) -> (B,...) float tensor on the device.
    """

    def __init__(self, chips: np.ndarray, split: SplitNetwork, embedder: Embedder,
                 device: torch.device, flip: bool = False, batch_size: int = 64,
                 desc: str = "features") -> None:
        self.embedder, self.device, self.flip = embedder, device, flip
        self.mirrored = flip or embedder.config.flip
        self.chips = chips
        self.cache: torch.Tensor | None = None  # (views, N, ...) trunk outputs
        if len(split.trunk) == 0:
            return
        views = []
        for view in [chips] + ([chips[:, :, ::-1]] if self.mirrored else []):
            parts = []
            with torch.inference_mode():
                for start in tqdm(range(0, len(view), batch_size), desc=desc, leave=False,
                                  disable=len(view) <= batch_size):
                    parts.append(split.trunk(preprocess(view[start:start + batch_size], embedder,
                                                        device)).cpu())
            views.append(torch.cat(parts))
        self.cache = torch.stack(views)

    def __len__(self) -> int:
        return len(self.chips)

    def batch(self, idx: np.ndarray, flips: np.ndarray | None = None) -> torch.Tensor:
        """Head input for faces idx, each from its mirrored chip where flips is true (only
        when built with mirrored chips)."""
        flips = np.zeros(len(idx), bool) if flips is None or not self.mirrored else flips
        if self.cache is not None:
            return self.cache[torch.from_numpy(flips.astype(np.int64)), torch.from_numpy(idx)].to(self.device)
        chips = self.chips[idx]
        chips[flips] = chips[flips][:, :, ::-1]
        return preprocess(chips, self.embedder, self.device)


@torch.no_grad()
def embed_features(split: SplitNetwork, features: Features, batch_size: int = 256) -> np.ndarray:
    """(N,D) float32 unit embeddings of every face through the head in eval mode, as the
    embedder makes them (averaged with the mirrored chip's when it flips)."""
    was_training = split.head.training
    split.head.eval()
    views = (False, True) if features.embedder.config.flip else (False,)
    out = []
    for start in range(0, len(features), batch_size):
        idx = np.arange(start, min(start + batch_size, len(features)))
        y = sum(split.head(features.batch(idx, np.full(len(idx), view))) for view in views)
        out.append(F.normalize(y, dim=1).cpu())
    split.head.train(was_training)
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------- data

@dataclass
class FaceSet:
    """Labelled aligned faces: chips (N,S,S,3) uint8, labels (N,) int64 indexing
    `identities`, sources (N,) file or face_key of each chip; skipped: inputs without a face."""

    chips: np.ndarray
    labels: np.ndarray
    identities: list[str]
    sources: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)

    def digest(self) -> str:
        """SHA-256 over the sorted (source, identity) list: names the exact training data."""
        h = hashlib.sha256()
        for src, lab in sorted(zip(self.sources, self.labels.tolist())):
            h.update(f"{src}\t{self.identities[lab]}\n".encode())
        return h.hexdigest()


class CentreFaces:
    """Aligned chips of the CENTRE face of each photo (the labelled face of a
    folder-per-identity photo; core.faces), detected by MTCNN once per path and kept.

    chips(paths) -> (chips (N,S,S,3) uint8, detected (N,) bool); photos where MTCNN finds no
    face get an all-zero chip.
    """

    def __init__(self, embedder: Embedder, detector: MTCNN | None = None, batch_size: int = 16,
                 progress: bool = True) -> None:
        self.embedder, self.detector = embedder, detector or MTCNN()
        self.batch_size, self.progress = batch_size, progress
        self.found: dict[Path, np.ndarray | None] = {}  # path -> aligned chip, None if no face

    @property
    def align(self) -> AlignSpec:
        return self.embedder.align

    def chips(self, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
        todo = sorted({p for p in paths if p not in self.found})
        for start in tqdm(range(0, len(todo), self.batch_size), desc="detect+align", leave=False,
                          disable=not self.progress or not todo):
            batch = todo[start:start + self.batch_size]
            photos = [Pixels.full(read_rgb(p)) for p in batch]
            chosen = [choose(det, photo.image, CENTRE)
                      for photo, det in zip(photos, succeeded(detect(self.detector, photos, 0.0)))]
            for path, chips in zip(batch, succeeded(align(self.embedder, photos, chosen))):
                self.found[path] = None if chips is None else chips[0]
        size = self.align.size
        chips = np.zeros((len(paths), size, size, 3), np.uint8)
        detected = np.array([self.found[p] is not None for p in paths], bool)
        for k, path in enumerate(paths):
            if detected[k]:
                chips[k] = self.found[path]
        return chips, detected


class LfwCentreFaces:
    """CentreFaces for LFW images from core.lfw's detection cache (shared with the
    verification benches; MTCNN runs only for images not in it). Undetected images are cut
    at the mean relative landmarks of the detected ones, as LFW's centred crops allow
    (core.lfw's convention), and flagged in `detected`.

    chips(paths) -> (chips (N,S,S,3) uint8, detected (N,) bool).
    """

    def __init__(self, embedder: Embedder, cache_dir: Path = CACHE, progress: bool = True) -> None:
        self.embedder, self.cache_dir, self.progress = embedder, cache_dir, progress

    @property
    def align(self) -> AlignSpec:
        return self.embedder.align

    def chips(self, paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
        found = detect_centre_faces(list(paths), self.cache_dir, progress=self.progress)
        chips = labelled_inputs(self.embedder, tqdm(list(zip(paths, found)), desc="align", leave=False,
                                                    disable=not self.progress))
        return chips, np.array([bool(f["detected"]) for f in found])


def _labelled_files(root: Path) -> tuple[list[Path], list[str]]:
    """Image files of a folder-per-identity tree and their identity (folder name), sorted."""
    if not root.is_dir():
        raise FileNotFoundError(f"--data folder not found: {root}")
    paths, names = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                names.append(folder.name)
    if not paths:
        raise ValueError(f"--data {root} has no identity sub-folders with images "
                         f"({', '.join(IMAGE_SUFFIXES)})")
    return paths, names


def _faceset(chips: np.ndarray, names: Sequence[str], sources: Sequence[str], description: str,
             skipped: list[str]) -> FaceSet:
    identities = sorted(set(names))
    index = {n: i for i, n in enumerate(identities)}
    return FaceSet(chips, np.array([index[n] for n in names], np.int64), identities,
                   list(sources), description, skipped)


def load_folder_tree(root: Path, align: AlignSpec, faces: CentreFaces | LfwCentreFaces | None = None,
                     identities: Iterable[str] | None = None) -> FaceSet:
    """Faces of `root`/<identity>/<image>: the centre face of each photo detected and aligned
    by `faces` (photos with no face are skipped), or, when `faces` is None, already aligned
    chips read as they are (each must be S x S). `identities` restricts the tree to those
    folders."""
    paths, names = _labelled_files(root)
    if identities is not None:
        keep = set(identities)
        paths = [p for p, n in zip(paths, names) if n in keep]
        names = [n for n in names if n in keep]
        if not paths:
            raise ValueError(f"--data {root} has none of the requested identities")
    if faces is None:
        chips = np.stack([read_rgb(p) for p in paths])
        if chips.shape[1:3] != (align.size, align.size):
            raise ValueError(f"--aligned chips must be {align.size}x{align.size}, "
                             f"got {chips.shape[2]}x{chips.shape[1]} in {root}")
        detected = np.ones(len(paths), bool)
    else:
        if faces.align != align:
            raise ValueError("the face aligner's AlignSpec differs from the embedder's")
        chips, detected = faces.chips(paths)
    skipped = [str(p) for p, d in zip(paths, detected) if not d]
    names = [n for n, d in zip(names, detected) if d]
    sources = [str(p.relative_to(root)) for p, d in zip(paths, detected) if d]
    chosen = "" if identities is None else f" ({len(set(names))} chosen identities)"
    return _faceset(chips[detected], names, sources, f"folder tree {root}{chosen}", skipped)


def load_parquet_faces(faces_dir: Path, labels_csv: Path, embedder: Embedder) -> FaceSet:
    """Labelled faces from the pipeline's faces/ Parquet, their aligned JPEG thumbnails from
    the images/ table beside it, and a CSV with header `face_key,label`. Faces must come from
    `embedder`'s alignment, i.e. the same embedder name; faces without a thumbnail are skipped."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.tables import open_table

    if not faces_dir.is_dir():
        raise FileNotFoundError(f"--faces folder not found: {faces_dir}")
    if not labels_csv.is_file():
        raise FileNotFoundError(f"--labels file not found: {labels_csv}")
    with open(labels_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"face_key", "label"} <= set(reader.fieldnames):
            raise ValueError(f"--labels {labels_csv} needs a header with columns face_key,label")
        labels = {row["face_key"]: row["label"] for row in reader if row["label"]}
    table = open_table(faces_dir).to_table(columns=["face_key", "embedder"])
    thumbs: dict[str, bytes] = {}
    images = faces_dir.parent / "images"
    if images.is_dir():
        shas = sorted({key.rsplit(":", 1)[0] for key in labels})
        found = open_table(images).to_table(columns=["photo_sha256", "face_index", "jpeg"],
                                            filter=pc.is_in(ds.field("photo_sha256"), pa.array(shas, pa.string()))
                                            & ds.field("face_index").is_valid())
        for sha, index, jpeg in zip(*(found.column(c).to_pylist() for c in ("photo_sha256", "face_index", "jpeg"))):
            thumbs.setdefault(f"{sha}:{index}", jpeg)
    rows: dict[str, tuple[str, bytes | None]] = {}
    for key, name in zip(*(table.column(c).to_pylist() for c in ("face_key", "embedder"))):
        if key in labels and key not in rows:
            rows[key] = (name, thumbs.get(key))
    unknown = [k for k in labels if k not in rows]
    if unknown:
        raise ValueError(f"--labels: {len(unknown)} face_key(s) not in {faces_dir}, e.g. {unknown[0]}")
    other = {name for name, _ in rows.values()} - {embedder.name}
    if other:
        raise ValueError(f"--faces were aligned for embedder {', '.join(sorted(other))}, "
                         f"not {embedder.name}; re-run the pipeline with --embedder {embedder.name}")
    keys = sorted(k for k, (_, thumb) in rows.items() if thumb is not None)
    size = embedder.input_size
    chips = np.zeros((len(keys), size, size, 3), np.uint8)
    for i, key in enumerate(keys):
        with Image.open(io.BytesIO(rows[key][1])) as im:
            chip = np.asarray(im.convert("RGB"))
        if chip.shape[:2] != (size, size):
            raise ValueError(f"thumbnail of face {key} is {chip.shape[1]}x{chip.shape[0]}; "
                             f"training needs the {size}x{size} aligned chips")
        chips[i] = chip
    skipped = sorted(k for k, (_, thumb) in rows.items() if thumb is None)
    return _faceset(chips, [labels[k] for k in keys], keys,
                    f"faces {faces_dir} labelled by {labels_csv}", skipped)


class PKSampler:
    """Batches of P identities x K faces, covering every face once per epoch.

    Each identity's faces are shuffled and cut into chunks of K (a single leftover face
    joins the previous chunk, so chunks hold 2..K+1 faces); chunks are shuffled and packed
    P to a batch with distinct identities. Identities with one face are left out; a final
    batch with a single identity (no negatives) is dropped. The order depends only on
    (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int = 0) -> None:
        if p < 2 or k < 2:
            raise ValueError(f"batches need P >= 2 identities and K >= 2 faces, got P={p} K={k}")
        self.p, self.k, self.seed = p, k, seed
        groups: dict[int, list[int]] = {}
        for i, lab in enumerate(labels.tolist()):
            groups.setdefault(lab, []).append(i)
        self.groups = [np.array(g) for _, g in sorted(groups.items()) if len(g) >= 2]
        if len(self.groups) < 2:
            raise ValueError("training needs at least 2 identities with 2 or more faces each")

    @property
    def faces(self) -> int:
        """Faces that the sampler can draw (those of identities with >= 2 faces)."""
        return sum(len(g) for g in self.groups)

    def epoch(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches of face indices, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks: list[tuple[int, np.ndarray]] = []
        for ident, group in enumerate(self.groups):
            faces = rng.permutation(group)
            parts = [faces[i:i + self.k] for i in range(0, len(faces), self.k)]
            if len(parts[-1]) == 1:
                parts[-2:] = [np.concatenate(parts[-2:])]
            chunks += [(ident, part) for part in parts]
        pending = [chunks[i] for i in rng.permutation(len(chunks))]
        batches = []
        while pending:
            batch, seen, rest = [], set(), []
            for ident, part in pending:
                if len(batch) < self.p and ident not in seen:
                    batch.append(part)
                    seen.add(ident)
                else:
                    rest.append((ident, part))
            pending = rest
            if len(batch) >= 2:
                batches.append(np.concatenate(batch))
        return batches


# --------------------------------------------------------------------------- evaluation

def view1_pairs(lfw: Path) -> tuple[list[tuple[Path, Path, bool]], list[tuple[Path, Path, bool]]]:
    """(image_a, image_b, same) pairs of LFW View-1: pairsDevTrain and pairsDevTest."""
    files = [lfw / "pairsDevTrain.txt", lfw / "pairsDevTest.txt"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"LFW pairs file not found: {f} (set --lfw)")
    return read_pairs(files[0], lfw)[0], read_pairs(files[1], lfw)[0]


class View1Evaluator:
    """LFW View-1 verification: threshold chosen on pairsDevTrain, accuracy on pairsDevTest.

    The pair images' chips (LfwCentreFaces unless `faces` is given: the detections of the
    LFW benches, core.lfw) are featurised once through the frozen trunk.
    evaluate(split) -> {"devtest_accuracy", "threshold", "devtrain_accuracy", "devtest_auc"}:
    the accuracies at the DevTrain threshold, and DevTest's threshold-free ROC AUC;
    `devtest_correct` (M,) bool then holds each DevTest pair's outcome, for paired comparisons.
    """

    def __init__(self, lfw: Path, split: SplitNetwork, embedder: Embedder, device: torch.device,
                 faces: LfwCentreFaces | None = None) -> None:
        self.train_pairs, self.test_pairs = view1_pairs(lfw)
        paths = sorted({p for a, b, _ in self.train_pairs + self.test_pairs for p in (a, b)})
        self.index = {p: i for i, p in enumerate(paths)}
        chips, detected = (faces or LfwCentreFaces(embedder)).chips(paths)
        self.undetected = int((~detected).sum())
        self.features = Features(chips, split, embedder, device, desc="LFW View-1 features")

    def evaluate(self, split: SplitNetwork) -> dict[str, float]:
        emb = embed_features(split, self.features)

        def distances(pairs: list[tuple[Path, Path, bool]]) -> tuple[np.ndarray, np.ndarray]:
            a = emb[[self.index[p] for p, _, _ in pairs]]
            b = emb[[self.index[q] for _, q, _ in pairs]]
            return np.linalg.norm(a - b, axis=1), np.array([s for *_, s in pairs])

        from sklearn.metrics import roc_auc_score

        d_train, s_train = distances(self.train_pairs)
        d_test, s_test = distances(self.test_pairs)
        t = best_threshold(d_train, s_train)
        self.devtest_correct = (d_test < t) == s_test
        return {"devtest_accuracy": float(self.devtest_correct.mean()), "threshold": t,
                "devtrain_accuracy": float(np.mean((d_train < t) == s_train)),
                "devtest_auc": float(roc_auc_score(s_test, -d_test))}


# --------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    """Everything that defines a training run; a resumed run must match its checkpoint's."""

    embedder: str = "dlib-resnet"
    trainable: str = "last"
    objective: str = "triplet"
    mining: str = "semi-hard"
    alpha: float = 0.2
    center_weight: float = 0.01
    center_rate: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-4  # relative to each pretrained tensor's RMS (see parameter_groups)
    head_lr: float = 1e-2  # absolute, for the center objective's fresh classifier
    weight_decay: float = 0.0
    p: int = 32
    k: int = 4
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr <= 0 or self.head_lr <= 0:
            raise ValueError(f"--lr and --head-lr must be positive, got {self.lr}, {self.head_lr}")

    def describe_objective(self) -> str:
        """One line for the lineage."""
        if self.objective == "triplet":
            return f"triplet {self.mining} alpha={self.alpha} P={self.p} K={self.k}"
        return (f"softmax + {self.center_weight} * center (rate {self.center_rate}) "
                f"P={self.p} K={self.k}")


def parameter_groups(network: list[nn.Parameter], fresh: list[nn.Parameter],
                     config: TrainConfig) -> list[dict]:
    """Optimizer groups: each pretrained tensor steps by config.lr times its own RMS, the
    objective's fresh layers (the center objective's classifier) by config.head_lr.

    Adam and AdaGrad move every element by about lr per step whatever its scale, and
    pretrained tensors differ in scale by orders of magnitude: dlib's convolutions have
    weights around 1e-3 (their scale lives in the following affine layers, around 5-10), so
    an absolute lr of 1e-3 rewrites them in one step while barely touching the affines.
    Tensors that are ~0 (dlib's conv biases, ~1e-8) thereby stay ~fixed.
    """
    groups = [{"params": [p], "lr": config.lr * float(p.detach().pow(2).mean().sqrt())}
              for p in network]
    return groups + ([{"params": fresh, "lr": config.head_lr}] if fresh else [])


class Trainer:
    """Fine-tunes `embedder.network` on a FaceSet; see the module docstring.

    The objective, optimizer and sampler are built from `config`; `run(epochs)` trains up to
    that many epochs in total (continuing a resumed run), evaluating and checkpointing to
    `out`/last.pt after each one, and returns the per-epoch history.
    """

    def __init__(self, embedder: Embedder, faces: FaceSet, config: TrainConfig, out: Path,
                 device: torch.device, evaluator: View1Evaluator | None = None,
                 split: SplitNetwork | None = None) -> None:
        self.embedder, self.faces, self.config, self.out = embedder, faces, config, out
        self.device = device
        self.split = split or SplitNetwork(embedder.network.to(device), config.trainable)
        self.sampler = PKSampler(faces.labels, config.p, config.k, config.seed)
        self.features = Features(faces.chips, self.split, embedder, device, config.flip,
                                 desc="training features")
        self.evaluator = evaluator
        if config.objective == "triplet":
            self.objective: nn.Module = TripletLoss(config.alpha, config.mining)
        else:
            self.objective = SoftmaxCenterLoss(len(faces.identities), embedder.dim,
                                               config.center_weight, config.center_rate)
        self.objective.to(device)
        optimizer = torch.optim.Adam if config.optimizer == "adam" else torch.optim.Adagrad
        self.optimizer: torch.optim.Optimizer = optimizer(
            parameter_groups(self.split.parameters(), list(self.objective.parameters()), config),
            lr=config.lr, weight_decay=config.weight_decay)
        self.epoch, self.batch, self.step = 0, 0, 0
        self.history: list[dict] = []
        self.train_seconds, self.train_faces = 0.0, 0

    def lineage(self) -> dict:
        """Where the weights came from, for the checkpoint and the pipeline's Parquet metadata."""
        return {
            "base_model": self.embedder.name, "base_weights": self.embedder.version,
            "align": self.embedder.align.name,
            "data": {"description": self.faces.description, "identities": len(self.faces.identities),
                     "faces": len(self.faces.labels), "sha256": self.faces.digest()},
            "objective": self.config.describe_objective(), "trainable": self.config.trainable,
            "optimizer": f"{self.config.optimizer} lr={self.config.lr} x tensor RMS "
                         f"head_lr={self.config.head_lr} weight_decay={self.config.weight_decay}",
            "flip": self.config.flip, "steps": self.step, "epochs": self.epoch,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": str(torch.__version__), "evaluation": self.history[-1] if self.history else {},
        }

    def save(self, path: Path | None = None) -> Path:
        path = path or self.out / "last.pt"
        state = {"optimizer": self.optimizer.state_dict(), "objective": self.objective.state_dict(),
                 "epoch": self.epoch, "batch": self.batch, "step": self.step,
                 "config": vars(self.config), "history": self.history,
                 "data_sha256": self.faces.digest()}
        save_checkpoint(path, self.split.network, self.lineage(), state)
        return path

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint of the same configuration and data."""
        ckpt = read_checkpoint(path)
        state = ckpt["train_state"]
        for key, value in vars(self.config).items():
            if state["config"].get(key) != value:
                raise ValueError(f"--resume {path}: it was trained with {key}={state['config'].get(key)!r}, "
                                 f"not {value!r}")
        if state["data_sha256"] != self.faces.digest():
            raise ValueError(f"--resume {path}: it was trained on different data")
        if ckpt["lineage"]["base_weights"] != self.embedder.version:
            raise ValueError(f"--resume {path}: it was fine-tuned from {ckpt['lineage']['base_weights']}, "
                             f"not {self.embedder.version}")
        self.split.network.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.history = state["history"]

    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate(self.split) if self.evaluator else {}

    def train_step(self, idx: np.ndarray, flips: np.ndarray) -> LossOutput:
        """One optimisation step on the faces idx (B,)."""
        x = self.features.batch(idx, flips)
        labels = torch.from_numpy(self.faces.labels[idx]).to(self.device)
        out = self.objective(self.split.head(x), labels)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self.step += 1
        return out

    def run(self, epochs: int, checkpoint_every: int = 0, progress: bool = True) -> list[dict]:
        self.split.head.train()
        self.objective.train()
        while self.epoch < epochs:
            batches = self.sampler.epoch(self.epoch)
            bar = tqdm(range(self.batch, len(batches)), desc=f"epoch {self.epoch + 1}/{epochs}",
                       disable=not progress, dynamic_ncols=True)
            for b in bar:
                idx = batches[b]
                flips = np.random.default_rng([self.config.seed, self.epoch, b]).random(len(idx)) < 0.5
                start = time.perf_counter()
                out = self.train_step(idx, flips & self.config.flip)
                loss = out.loss.item()  # waits for the device, so the timing is honest on CUDA
                self.train_seconds += time.perf_counter() - start
                self.train_faces += len(idx)
                self.batch = b + 1
                bar.set_postfix(loss=f"{loss:.4f}", **{k: f"{v:.2f}" for k, v in out.stats.items()})
                if checkpoint_every and self.step % checkpoint_every == 0:
                    self.save()
            self.epoch, self.batch = self.epoch + 1, 0
            record = {"epoch": self.epoch, "step": self.step, **self.evaluate()}
            self.history.append(record)
            self.split.head.train()
            if progress:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in record.items()), file=sys.stderr)
            self.save()
        return self.history


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("data (one of --data or --faces + --labels)")
    src.add_argument("--data", type=Path, help="folder with one sub-folder of photos per identity")
    src.add_argument("--aligned", action="store_true",
                     help="--data holds already aligned chips of the embedder's input size")
    src.add_argument("--faces", type=Path, help="the pipeline's faces/ Parquet folder")
    src.add_argument("--labels", type=Path, help="CSV with header face_key,label for --faces")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints (last.pt)")
    parser.add_argument("--embedder", default="dlib-resnet", help="base embedder (models.embedders)")
    parser.add_argument("--weights", help="base weights file (default: the embedder's own)")
    parser.add_argument("--trainable", default="last",
                        help="fc | last (last residual level + fc) | all | K (last K stages + fc)")
    parser.add_argument("--objective", default="triplet", choices=OBJECTIVES)
    parser.add_argument("--mining", default="semi-hard", choices=MINING)
    parser.add_argument("--alpha", type=float, default=0.2, help="triplet margin (squared distance)")
    parser.add_argument("--center-weight", type=float, default=0.01, help="lambda of center loss")
    parser.add_argument("--center-rate", type=float, default=0.5, help="centre update rate")
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="step size relative to each pretrained tensor's RMS")
    parser.add_argument("--head-lr", type=float, default=1e-2,
                        help="step size of the center objective's new classifier")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("-P", "--identities-per-batch", dest="p", type=int, default=32)
    parser.add_argument("-K", "--faces-per-identity", dest="k", type=int, default=4)
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no mirrored faces")
    parser.add_argument("--epochs", type=int, default=5, help="total epochs (also when resuming)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps")
    parser.add_argument("--resume", type=Path, help="continue from this checkpoint")
    parser.add_argument("--lfw", help="LFW root for View-1 evaluation after each epoch, or 'none' "
                        f"(default: {LFW} when it exists)")
    parser.add_argument("--min-face", type=int, default=20, help="MTCNN's smallest face side (px)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if (args.data is None) == (args.faces is None):
        parser.error("give either --data or --faces (with --labels)")
    if args.faces is not None and args.labels is None:
        parser.error("--faces needs --labels")
    if args.embedder not in FINETUNABLE:
        parser.error(f"--embedder {args.embedder} cannot be fine-tuned; choose one of {', '.join(FINETUNABLE)} "
                     "(the converted FaceNet checkpoints run with batch norms folded, the ensemble is several networks)")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TrainConfig(args.embedder, args.trainable, args.objective, args.mining, args.alpha,
                             args.center_weight, args.center_rate, args.optimizer, args.lr,
                             args.head_lr, args.weight_decay, args.p, args.k, args.flip, args.seed)
        device = resolve_device(args.device)
        embedder = get_embedder(args.embedder, device, args.weights)
        split = SplitNetwork(embedder.network, args.trainable)
        lfw = None if args.lfw == "none" else Path(args.lfw) if args.lfw else LFW if LFW.is_dir() else None
        if args.data is None:
            faces = load_parquet_faces(args.faces, args.labels, embedder)
        elif args.aligned:
            faces = load_folder_tree(args.data, embedder.align)
        else:
            faces = load_folder_tree(args.data, embedder.align, CentreFaces(
                embedder, MTCNN(min_face_size=args.min_face, device=device)))
        print(f"{len(faces.labels)} faces of {len(faces.identities)} identities "
              f"({len(faces.skipped)} inputs without a face skipped)", file=sys.stderr)
        evaluator = View1Evaluator(lfw, split, embedder, device) if lfw else None
        if evaluator is None:
            print("no LFW View-1 evaluation (--lfw none, or LFW not found)", file=sys.stderr)
        else:
            shared = set(faces.identities) & {p.parent.name for a, b, _ in evaluator.test_pairs for p in (a, b)}
            if shared:
                print(f"warning: {len(shared)} training identities appear in LFW DevTest pairs "
                      f"(e.g. {sorted(shared)[0]}): the View-1 accuracy is optimistic", file=sys.stderr)
        trainer = Trainer(embedder, faces, config, args.out, device, evaluator, split)
        if args.resume:
            trainer.resume(args.resume)
        elif evaluator is not None:
            print("before: " + " ".join(f"{k}={v:.4f}" for k, v in trainer.evaluate().items()),
                  file=sys.stderr)
        trainer.run(args.epochs, args.checkpoint_every)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint: {args.out / 'last.pt'} ({trainer.train_faces / max(trainer.train_seconds, 1e-9):.0f} "
          f"faces/s training)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
