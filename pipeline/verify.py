"""Are two photos of the same person? Face verification from the command line.

Each photo's face is the detected face covering most of the photo (ties: the most central;
core.faces.LARGEST). The decision is distance < the embedder version's
verification threshold (pipeline/thresholds.py, derived on LFW View-1).

    python -m pipeline.verify a.jpg b.jpg [--embedder dlib-resnet] [--weights PATH] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.faces import LARGEST
from models.embedders import DEFAULT_EMBEDDER, EMBEDDERS, FaceEmbedder, get_embedder
from models.mtcnn import MTCNN
from pipeline.photo_faces import photo_faces
from pipeline.thresholds import thresholds_for


def same_person(distance: float, threshold: float) -> bool:
    """The verification decision: same person iff the distance is below the threshold."""
    return distance < threshold


def main_faces(paths: Sequence[Path], detector: MTCNN, embedder: FaceEmbedder) -> list[tuple[np.ndarray, int]]:
    """(embedding (D,), number of faces found) of the largest face of each photo, detected
    and embedded in one batch; ValueError naming the first photo without a face."""
    out = []
    for path, found in zip(paths, photo_faces(paths, detector, embedder, LARGEST)):
        if len(found) == 0:
            raise ValueError(f"no face found in {path}")
        out.append((found.embeddings[0], found.found))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo_a", type=Path)
    parser.add_argument("photo_b", type=Path)
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER, choices=sorted(EMBEDDERS))
    parser.add_argument("--weights", default=None, help="embedder weights file (default: its standard source)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    try:
        embedder = get_embedder(args.embedder, args.device, args.weights)
        threshold = thresholds_for(embedder.version).verify
        detector = MTCNN(device=embedder.device)
        (a, n_a), (b, n_b) = main_faces([args.photo_a, args.photo_b], detector, embedder)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distance = float(np.linalg.norm(a - b))
    verdict = "same person" if same_person(distance, threshold) else "different people"
    print(f"faces found: {n_a} in {args.photo_a}, {n_b} in {args.photo_b} (largest used)")
    print(f"embedder {embedder.name} ({embedder.version})")
    print(f"distance {distance:.4f}, threshold {threshold:.4f}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
