"""Quality (core.quality) of the labelled face of dataset images, as the pipeline would
compute it: MTCNN with the pipeline's default options, the face nearest the image centre,
measures on the full-resolution photo. Detections (with scores, which bench/lfw_embed's
cache does not keep) are cached by file hash; measures are recomputed on every call, so
changing core/quality.py needs no cache flush.

    python bench/face_quality.py --dev        # measure distributions: clean dev faces vs junk, per kind
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lfw_embed import CACHE, NpzCache, _saved_batches  # noqa: E402
from models.weights import file_sha256  # noqa: E402
from pipeline.options import DEFAULT_MIN_DET_SCORE, DEFAULT_MIN_FACE_SIZE  # noqa: E402
from core.quality import BOUNDS, face_measures, quality_of  # noqa: E402


def detect_with_scores(paths: list[Path], cache_dir: Path = CACHE, batch_size: int = 16,
                       progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Per image: box (4,), landmarks (5,2), score () and detected () of the face nearest
    its centre among detections the pipeline keeps (score >= its default minimum)."""
    from models.mtcnn import MTCNN, Detections, centre_face

    cache = NpzCache(cache_dir / f"detections-scored-mtcnn-v1-min{DEFAULT_MIN_FACE_SIZE}.npz")
    keys = [file_sha256(p) for p in paths]
    todo = sorted({k: p for k, p in zip(keys, paths) if k not in cache.entries}.items())
    detector = MTCNN(min_face_size=DEFAULT_MIN_FACE_SIZE) if todo else None
    for chunk in _saved_batches(todo, batch_size, cache, "detected (scored)" if progress else None):
        images = [np.asarray(Image.open(p).convert("RGB")) for _, p in chunk]
        for (key, _), image, det in zip(chunk, images, detector.detect(images)):
            keep = det.scores >= DEFAULT_MIN_DET_SCORE
            kept = Detections(boxes=det.boxes[keep], scores=det.scores[keep], landmarks=det.landmarks[keep])
            i = centre_face(kept, image.shape[1], image.shape[0])
            cache.entries[key] = {"box": kept.boxes[i] if i is not None else np.zeros(4, np.float32),
                                  "landmarks": kept.landmarks[i] if i is not None else np.zeros((5, 2), np.float32),
                                  "score": np.float32(kept.scores[i] if i is not None else 0.0),
                                  "detected": np.array(i is not None)}
    return [cache.entries[k] for k in keys]


def qualities(paths: list[Path], progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(detected (N,) bool, measures (N, len(BOUNDS)) float64, quality (N,), reason (N,) str
    ("" when fine or undetected)) of the labelled face of each image."""
    found = detect_with_scores(paths, progress=progress)
    detected = np.array([bool(f["detected"]) for f in found])
    measures = np.zeros((len(paths), len(BOUNDS)))
    quality = np.zeros(len(paths))
    reason = np.full(len(paths), "", dtype=object)
    for i, (path, f) in enumerate(zip(paths, found)):
        if detected[i]:
            m = face_measures(np.asarray(Image.open(path).convert("RGB")), f["landmarks"], float(f["score"]))
            measures[i] = [m[k] for k in BOUNDS]
            quality[i], why = quality_of(m)
            reason[i] = why or ""
    return detected, measures, quality, reason


def main(argv: list[str] | None = None) -> None:
    from bench.cluster_eval import dev_junk_sets

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", action="store_true", help="print measure percentiles on dev faces, clean and junk")
    args = parser.parse_args(argv)
    if not args.dev:
        parser.error("nothing to do: give --dev")
    names = list(BOUNDS)
    print(f"{'set':<22} {'n':>5} {'found':>5}  " + " ".join(f"{n + ' p5/p50/p95':>24}" for n in names)
          + "   gated  reasons")
    for label, paths in dev_junk_sets().items():
        detected, measures, quality, reason = qualities(paths, progress=True)
        m = measures[detected]
        cols = " ".join(f"{np.percentile(m[:, j], 5):7.3g}/{np.percentile(m[:, j], 50):7.3g}/"
                        f"{np.percentile(m[:, j], 95):7.3g}" if len(m) else f"{'-':>24}" for j in range(len(names)))
        why, counts = np.unique(reason[detected & (reason != "")].astype(str), return_counts=True)
        gated = float(np.mean(reason[detected] != "")) if detected.any() else 0.0
        print(f"{label:<22} {len(paths):5d} {int(detected.sum()):5d}  {cols}   {gated:5.3f}  "
              + " ".join(f"{w}:{c}" for w, c in zip(why, counts)))


if __name__ == "__main__":
    main()
