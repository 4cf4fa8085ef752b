"""LFW-style datasets through the hot path (core.faces): the labelled face of each image,
detected and embedded with on-disk caches, the pairs files and the verification protocol.

Used by fine-tuning (models.train: training data and View-1 evaluation), by the benches
(bench/ imports this; nothing here imports bench/) and by tests. An LFW-style dataset is a
folder per identity of photo crops centred on the labelled person (LFW; pins50dev alike).

The labelled face of an image is its CENTRE face (core.faces.main_face) among all of
MTCNN's detections. Images where MTCNN finds nothing fall back to the mean relative
landmark positions of all detected faces (LFW crops are centred and scaled alike), and are
counted as undetected. Detections are cached apart from embeddings, both by file content
hash (embeddings also by embedder version) under $FACEGROUP_CACHE/embeddings, so trying
another alignment or embedder re-runs only the embedding.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from core.faces import CENTRE, Pixels, align, detect, embed, main_face, succeeded
from models.embedders import EnsembleEmbedder, FaceEmbedder, get_embedder
from models.mtcnn import MTCNN, Detections
from models.weights import file_sha256

#: LFW's root: a folder per identity and the pairs files (default: beside the checkout).
LFW = Path(os.environ.get("FACEGROUP_LFW", Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"))
CACHE = Path(os.environ.get("FACEGROUP_CACHE", Path.home() / ".cache" / "facegroup")) / "embeddings"
#: Fields of a cached labelled-face record (`centre_faces`): the detection cache of the
#: embedding benches keeps the image size (for the undetected fallback).
LABELLED_FIELDS = ("box", "landmarks", "detected", "size")


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


def read_rgb(path: Path) -> np.ndarray:
    """(H,W,3) uint8 RGB pixels of a dataset image file, as stored (no EXIF rotation)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


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


def saved_batches(todo: list, batch_size: int, cache: NpzCache, verb: str | None) -> Iterator[list]:
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


def centre_faces(paths: list[Path], cache: NpzCache, make_detector: Callable[[], MTCNN],
                 min_det_score: float = 0.0, fields: tuple[str, ...] = LABELLED_FIELDS, batch_size: int = 32,
                 verb: str | None = None) -> list[dict[str, np.ndarray]]:
    """Per image, the record of its CENTRE face among detections scoring >= min_det_score,
    cached in `cache` by file hash: `fields` of box (4,), landmarks (5,2), score (),
    detected () and size () (width, height); zeros where no face was found."""
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in cache.entries}.items())
    detector = make_detector() if todo else None
    for chunk in saved_batches(todo, batch_size, cache, verb):
        photos = [Pixels.full(read_rgb(p)) for _, p in chunk]
        for (key, _), photo, det in zip(chunk, photos, succeeded(detect(detector, photos, min_det_score))):
            height, width = photo.image.shape[:2]
            i = main_face(det, width, height, CENTRE)
            record = {"box": np.zeros(4, np.float32), "landmarks": np.zeros((5, 2), np.float32),
                      "score": np.float32(0.0), "detected": np.array(i is not None),
                      "size": np.array([width, height], dtype=np.float32)}
            if i is not None:
                record.update(box=det.boxes[i], landmarks=det.landmarks[i], score=np.float32(det.scores[i]))
            cache.entries[key] = {f: record[f] for f in fields}
    return [cache.entries[k] for k in keys]


def detect_centre_faces(paths: list[Path], cache_dir: Path = CACHE, batch_size: int = 32,
                        detector: MTCNN | None = None, progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Per image: box (4,), landmarks (5,2) and detected () of its labelled face.

    Undetected images get the mean relative landmark position of all detected faces in
    the cache, scaled to their size. Cached by file hash; saved every few hundred images.
    """
    cache = NpzCache(cache_dir / "detections-mtcnn-v1.npz")
    records = centre_faces(paths, cache, lambda: detector or MTCNN(), batch_size=batch_size,
                           verb="detected" if progress else None)
    found = [e for e in cache.entries.values() if e["detected"]]
    mean = np.mean([e["landmarks"] / e["size"] for e in found], axis=0) if found else np.full((5, 2), 0.5)
    out = []
    for record in records:
        entry = dict(record)
        if not entry["detected"]:
            entry["landmarks"] = (mean * entry["size"]).astype(np.float32)
            entry["box"] = np.array([*entry["landmarks"].min(0), *entry["landmarks"].max(0)], np.float32)
        out.append(entry)
    return out


def labelled_inputs(embedder: FaceEmbedder, faces: Iterable[tuple[Path, dict[str, np.ndarray]]]) -> np.ndarray:
    """The embedder's inputs (N,...) of each image's labelled face, from (path, record of
    detect_centre_faces) pairs: aligned from the image's pixels."""
    return np.concatenate([
        succeeded(align(embedder, [Pixels.full(read_rgb(path))],
                        [Detections(face["box"][None], np.ones(1, np.float32), face["landmarks"][None])]))[0]
        for path, face in faces])


def embedding_caches(model: FaceEmbedder, cache_dir: Path = CACHE) -> list[Path]:
    """The cache files `embed_images` keeps `model`'s embeddings in under `cache_dir` (an
    ensemble: each member's), beside the detections of detect_centre_faces."""
    if isinstance(model, EnsembleEmbedder):
        return [path for m in model.members for path in embedding_caches(m, cache_dir)]
    return [cache_dir / f"{_safe(model.name + '-' + model.version)}.emb.npz"]


def embed_images(paths: list[Path], embedder: str | FaceEmbedder = "dlib-resnet", cache_dir: Path = CACHE,
                 batch_size: int = 64, detector: MTCNN | None = None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N,D) float32 of the labelled face of each image, and detected (N,) bool.

    An ensemble is combined from its members' embeddings, each cached on its own."""
    model = get_embedder(embedder) if isinstance(embedder, str) else embedder
    if isinstance(model, EnsembleEmbedder):
        parts = [embed_images(paths, m, cache_dir, batch_size, detector, progress) for m in model.members]
        return model.combine([emb for emb, _ in parts]), parts[0][1]
    faces = detect_centre_faces(paths, cache_dir, detector=detector, progress=progress)
    cache = NpzCache(embedding_caches(model, cache_dir)[0])
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: (p, f) for k, p, f in zip(keys, paths, faces) if k not in cache.entries}.items())
    for chunk in saved_batches(todo, batch_size, cache, "embedded" if progress else None):
        embeddings = succeeded(embed(model, [labelled_inputs(model, [path_face for _, path_face in chunk])]))[0]
        for (key, _), emb in zip(chunk, embeddings):
            cache.entries[key] = {"embedding": emb}
    embeddings = np.stack([cache.entries[k]["embedding"] for k in keys]).astype(np.float32)
    return embeddings, np.array([bool(f["detected"]) for f in faces])


# --------------------------------------------------------------------------- verification

def best_threshold(dist: np.ndarray, same: np.ndarray) -> float:
    """Distance threshold (same person iff dist < t) maximising accuracy on (dist, same)."""
    order = np.sort(dist)
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    acc = [np.mean((dist < t) == same) for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def fold_accuracies(dist: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy and threshold, each threshold chosen on the other folds."""
    accs, thresholds = [], []
    for k in np.unique(folds):
        train = folds != k
        t = best_threshold(dist[train], same[train])
        accs.append(np.mean((dist[~train] < t) == same[~train]))
        thresholds.append(t)
    return np.array(accs), np.array(thresholds)


def pair_distances(pairs: list[tuple[Path, Path, bool]], lookup: dict[Path, np.ndarray]) -> np.ndarray:
    """Euclidean distance of each pair's two embeddings."""
    return np.array([np.linalg.norm(lookup[a] - lookup[b]) for a, b, _ in pairs])


class View1:
    """LFW View-1 as the choice benches use it: the 3,200 pairs of pairsDevTrain +
    pairsDevTest and their images; `score` rates embeddings of those images by 10-fold
    cross-validation (each fold's threshold chosen on the other 9), DevTest accuracy at the
    DevTrain threshold, and the ROC AUC of all pairs."""

    def __init__(self, root: Path = LFW) -> None:
        self.train, _ = read_pairs(root / "pairsDevTrain.txt", root)
        self.test, _ = read_pairs(root / "pairsDevTest.txt", root)
        self.pairs = self.train + self.test
        self.same = np.array([s for *_, s in self.pairs])
        self.is_test = np.array([0] * len(self.train) + [1] * len(self.test))
        self.folds = np.arange(len(self.pairs)) % 10
        self.paths = sorted({p for a, b, _ in self.pairs for p in (a, b)})

    def train_threshold(self, embeddings: np.ndarray) -> float:
        """The best-accuracy threshold on the DevTrain pairs of embeddings (len(paths), D)."""
        dist = pair_distances(self.pairs, dict(zip(self.paths, embeddings)))
        return best_threshold(dist[self.is_test == 0], self.same[self.is_test == 0])

    def score(self, name: str, embeddings: np.ndarray) -> float:
        """Print the scores of embeddings (len(paths), D) of `paths`; return the 10-fold mean."""
        from sklearn.metrics import roc_auc_score

        dist = pair_distances(self.pairs, dict(zip(self.paths, embeddings)))
        cv, _ = fold_accuracies(dist, self.same, self.folds)
        threshold = self.train_threshold(embeddings)
        dev_test = np.mean((dist[self.is_test == 1] < threshold) == self.same[self.is_test == 1])
        print(f"{name:34s} View-1 10-fold {cv.mean():.4f} +- {cv.std():.4f}; DevTest {dev_test:.4f} "
              f"(t={threshold:.3f}); AUC {roc_auc_score(self.same, -dist):.5f}", flush=True)
        return float(cv.mean())
