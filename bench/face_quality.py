"""Quality (core.quality) of the labelled face of dataset images, as the pipeline would
compute it: MTCNN with the pipeline's default options, the face nearest the image centre,
measures on the full-resolution photo. Detections (with scores, which core.lfw's embedding
cache does not keep) are cached by file hash; measures are recomputed on every call, so
changing core/quality.py needs no cache flush.

    python bench/face_quality.py --dev        # measure distributions: clean dev faces vs junk, per kind
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.lfw import CACHE, NpzCache, centre_faces, read_rgb  # noqa: E402
from core.quality import BOUNDS, face_measures, quality_of  # noqa: E402
from models.mtcnn import MTCNN  # noqa: E402
from pipeline.options import DEFAULT_MIN_DET_SCORE, DEFAULT_MIN_FACE_SIZE  # noqa: E402


def detect_with_scores(paths: list[Path], cache_dir: Path = CACHE, batch_size: int = 16,
                       progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Per image: box (4,), landmarks (5,2), score () and detected () of the face nearest
    its centre among detections the pipeline keeps (score >= its default minimum)."""
    return centre_faces(paths, NpzCache(cache_dir / f"detections-scored-mtcnn-v1-min{DEFAULT_MIN_FACE_SIZE}.npz"),
                        lambda: MTCNN(min_face_size=DEFAULT_MIN_FACE_SIZE), DEFAULT_MIN_DET_SCORE,
                        ("box", "landmarks", "score", "detected"), batch_size,
                        "detected (scored)" if progress else None)


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
            m = face_measures(read_rgb(path), f["landmarks"], float(f["score"]))
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
