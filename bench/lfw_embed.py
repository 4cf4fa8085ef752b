"""Embed the labelled (centre) face of LFW-style images through our detector + aligner +
embedder, with an on-disk cache keyed by file content hash and embedder version.

The labelled face of an LFW image is the detection whose box centre is nearest the image
centre. Images where MTCNN finds nothing fall back to the mean landmark positions of the
detected faces of the same batch run (LFW crops are centred and scaled alike), and are
counted as undetected.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.align import align_faces  # noqa: E402
from models.embedders import Embedder, get_embedder  # noqa: E402
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


class EmbeddingCache:
    """sha256 -> (embedding, detected) for one embedder version, stored as one .npz."""

    def __init__(self, version: str, cache_dir: Path = CACHE) -> None:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in version)
        self.path = cache_dir / f"{safe}.npz"
        self.entries: dict[str, tuple[np.ndarray, bool]] = {}
        if self.path.is_file():
            data = np.load(self.path)
            for key, emb, det in zip(data["keys"], data["embeddings"], data["detected"]):
                self.entries[str(key)] = (emb, bool(det))

    def save(self) -> None:
        """Write atomically (rename), so an interrupted run never corrupts the cache."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.entries)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), embeddings=np.stack([self.entries[k][0] for k in keys]),
                 detected=np.array([self.entries[k][1] for k in keys]))
        tmp.replace(self.path)


def _centre_detections(detector: MTCNN, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(box (4,), landmarks (5,2)) of each image's centre face, or None when undetected."""
    found = []
    for image, det in zip(images, detector.detect(images)):
        i = centre_face(det, image.shape[1], image.shape[0])
        found.append(None if i is None else (det.boxes[i], det.landmarks[i]))
    return found


def embed_images(paths: list[Path], embedder: str | Embedder = "dlib-resnet", cache_dir: Path = CACHE,
                 batch_size: int = 32, detector: MTCNN | None = None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (N,D) float32 of the centre face of each image, and detected (N,) bool."""
    model = get_embedder(embedder) if isinstance(embedder, str) else embedder
    cache = EmbeddingCache(f"{model.name}-{model.version}", cache_dir)
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in cache.entries}.items())
    if todo:
        detector = detector or MTCNN()
        fallback: list[tuple[str, np.ndarray]] = []
        landmark_sum, landmark_n = np.zeros((5, 2)), 0
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = [np.asarray(Image.open(p).convert("RGB")) for _, p in chunk]
            hits = []
            for (key, _), image, hit in zip(chunk, images, _centre_detections(detector, images)):
                if hit is None:
                    fallback.append((key, image))
                    continue
                landmark_sum += hit[1] / np.array(image.shape[1::-1])
                landmark_n += 1
                hits.append((key, image, hit[0], hit[1]))
            _embed_into(cache, model, hits, detected=True)
            if progress:
                print(f"\rembedded {min(start + batch_size, len(todo))}/{len(todo)}", end="", file=sys.stderr)
        mean_landmarks = landmark_sum / max(landmark_n, 1)
        guesses = []
        for key, image in fallback:
            lm = mean_landmarks * np.array(image.shape[1::-1])
            guesses.append((key, image, np.array([*lm.min(0), *lm.max(0)]), lm))
        _embed_into(cache, model, guesses, detected=False)
        cache.save()
        if progress:
            print(file=sys.stderr)
    embeddings = np.stack([cache.entries[k][0] for k in keys]).astype(np.float32)
    detected = np.array([cache.entries[k][1] for k in keys])
    return embeddings, detected


def _embed_into(cache: EmbeddingCache, model: Embedder,
                faces: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], detected: bool) -> None:
    """Align and embed (key, image, box (4,), landmarks (5,2)) faces in one batch into the cache."""
    if not faces:
        return
    chips = np.concatenate([
        align_faces(image, Detections(boxes=box[None].astype(np.float32), scores=np.ones(1, np.float32),
                                      landmarks=lm[None].astype(np.float32)), model.align)
        for _, image, box, lm in faces])
    for (key, *_), emb in zip(faces, model.embed(chips)):
        cache.entries[key] = (emb, detected)
