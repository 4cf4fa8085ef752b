"""Embed the labelled (centre) face of LFW-style images through our detector + aligner +
embedder, with an on-disk cache keyed by file content hash and embedder version.

The labelled face of an LFW image is the detection whose box centre is nearest the image
centre. Images where MTCNN finds nothing fall back to the mean relative landmark positions
of all detected faces (LFW crops are centred and scaled alike), and are counted as
undetected. Detections are cached apart from embeddings, so trying another alignment or
embedder re-runs only the embedding.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.embedders import EnsembleEmbedder, FaceEmbedder, get_embedder  # noqa: E402
from models.weights import file_sha256  # noqa: E402
from models.mtcnn import MTCNN, Detections, centre_face  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("FACEGROUP_LFW", REPO.parent / "shared" / "data" / "lfw"))
CACHE = Path(os.environ.get("FACEGROUP_CACHE", Path.home() / ".cache" / "facegroup")) / "embeddings"


def lfw_path(name: str, index: int, root: Path = LFW) -> Path:
    """Path of the index-th (1-based) image of an LFW identity."""
    return root / name / f"{name}_{index:04d}.jpg"


def read_pairs(path: Path, root: Path = LFW) -> tuple[list[tuple[Path, Path, bool]], int]:
    """Pairs of an LFW pairs file as (path_a, path_b, same) and its number of folds.

    Handles both View-2 (`10<TAB>300` header) and View-1 (`1100` header) files.
    """
    lines = path.read_text().split("\n")
    header = lines[0].split()
    folds = int(header[0]) if len(header) == 2 else 1
    pairs = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 3:
            pairs.append((lfw_path(parts[0], int(parts[1]), root), lfw_path(parts[0], int(parts[2]), root), True))
        elif len(parts) == 4:
            pairs.append((lfw_path(parts[0], int(parts[1]), root), lfw_path(parts[2], int(parts[3]), root), False))
    return pairs, folds


class NpzCache:
    """sha256 -> fixed-shape record of named arrays, stored as one .npz, saved atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, np.ndarray]] = {}
        if path.is_file():
            with np.load(path) as data:  # each data[f] reads the whole array: read each once
                arrays = {f: data[f] for f in data.files}
            keys = arrays.pop("keys")
            for i, key in enumerate(keys):
                self.entries[str(key)] = {f: a[i] for f, a in arrays.items()}

    def save(self) -> None:
        """Write to a temp file then rename, so an interrupted run never corrupts the cache."""
        if not self.entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.entries)
        fields = self.entries[keys[0]].keys()
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp.npz")  # benches may run side by side
        np.savez(tmp, keys=np.array(keys), **{f: np.stack([self.entries[k][f] for k in keys]) for f in fields})
        tmp.replace(self.path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)


def _saved_batches(todo: list, batch_size: int, cache: NpzCache, verb: str | None) -> Iterator[list]:
    """Yield `todo` in batches; the caller fills `cache`, saved every 20 batches and at the
    end when anything was added (long runs survive interruption); progress on stderr as
    `verb n/total` when given."""
    for start in range(0, len(todo), batch_size):
        yield todo[start:start + batch_size]
        if verb:
            print(f"\r{verb} {min(start + batch_size, len(todo))}/{len(todo)}", end="", file=sys.stderr)
        if (start // batch_size) % 20 == 19:
            cache.save()
    if todo:  # nothing new: leave the file alone
        cache.save()
    if verb and todo:
        print(file=sys.stderr)


def detect_centre_faces(paths: list[Path], cache_dir: Path = CACHE, batch_size: int = 32,
                        detector: MTCNN | None = None, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Per image: box (4,), landmarks (5,2) and detected () of the face nearest its centre.

    Undetected images get the mean relative landmark position of all detected faces in
    the cache, scaled to their size. Cached by file hash; saved every few hundred images.
    """
    cache = NpzCache(cache_dir / "detections-mtcnn-v1.npz")
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in cache.entries}.items())
    detector = detector or (MTCNN() if todo else None)
    for chunk in _saved_batches(todo, batch_size, cache, "detected" if progress else None):
        images = [np.asarray(Image.open(p).convert("RGB")) for _, p in chunk]
        for (key, _), image, det in zip(chunk, images, detector.detect(images)):
            i = centre_face(det, image.shape[1], image.shape[0])
            size = np.array(image.shape[1::-1], dtype=np.float32)
            if i is None:
                cache.entries[key] = {"box": np.zeros(4, np.float32), "landmarks": np.zeros((5, 2), np.float32),
                                      "detected": np.array(False), "size": size}
            else:
                cache.entries[key] = {"box": det.boxes[i], "landmarks": det.landmarks[i],
                                      "detected": np.array(True), "size": size}
    found = [e for e in cache.entries.values() if e["detected"]]
    mean = np.mean([e["landmarks"] / e["size"] for e in found], axis=0) if found else np.full((5, 2), 0.5)
    out = []
    for key in keys:
        entry = dict(cache.entries[key])
        if not entry["detected"]:
            entry["landmarks"] = (mean * entry["size"]).astype(np.float32)
            entry["box"] = np.array([*entry["landmarks"].min(0), *entry["landmarks"].max(0)], np.float32)
        out.append(entry)
    return out


def embed_images(paths: list[Path], embedder: str | FaceEmbedder = "dlib-resnet", cache_dir: Path = CACHE,
                 batch_size: int = 64, detector: MTCNN | None = None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N,D) float32 of the centre face of each image, and detected (N,) bool.

    An ensemble is combined from its members' embeddings, each cached on its own."""
    model = get_embedder(embedder) if isinstance(embedder, str) else embedder
    if isinstance(model, EnsembleEmbedder):
        parts = [embed_images(paths, m, cache_dir, batch_size, detector, progress) for m in model.members]
        return model.combine([emb for emb, _ in parts]), parts[0][1]
    faces = detect_centre_faces(paths, cache_dir, detector=detector, progress=progress)
    cache = NpzCache(cache_dir / f"{_safe(model.name + '-' + model.version)}.emb.npz")
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: (p, f) for k, p, f in zip(keys, paths, faces) if k not in cache.entries}.items())
    for chunk in _saved_batches(todo, batch_size, cache, "embedded" if progress else None):
        chips = np.concatenate([
            model.face_inputs(np.asarray(Image.open(p).convert("RGB")),
                              Detections(boxes=f["box"][None], scores=np.ones(1, np.float32),
                                         landmarks=f["landmarks"][None]))
            for _, (p, f) in chunk])
        for (key, _), emb in zip(chunk, model.embed(chips)):
            cache.entries[key] = {"embedding": emb}
    embeddings = np.stack([cache.entries[k]["embedding"] for k in keys]).astype(np.float32)
    return embeddings, np.array([bool(f["detected"]) for f in faces])
