"""Are two photos of the same person? Face verification from the command line.

Each photo's face is its largest detected face (ties: the most central). The decision is
distance < the embedder version's verification threshold (pipeline/thresholds.py, derived
on LFW View-1).

    python -m pipeline.verify a.jpg b.jpg [--embedder dlib-resnet] [--weights PATH] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from models.embedders import DEFAULT_EMBEDDER, EMBEDDERS, Embedder, get_embedder
from models.mtcnn import MTCNN
from pipeline.photo_faces import largest_face, photo_faces
from pipeline.thresholds import thresholds_for


def same_person(distance: float, threshold: float) -> bool:
    """The verification decision: same person iff the distance is below the threshold."""
    return distance < threshold


def main_face(path: Path, detector: MTCNN, embedder: Embedder) -> tuple[np.ndarray, int]:
    """(embedding (D,), number of faces found) of the largest face of the photo at `path`."""
    faces = photo_faces(path, detector, embedder)
    i = largest_face(faces.detections, faces.image.shape[1], faces.image.shape[0])
    if i is None:
        raise ValueError(f"no face found in {path}")
    return faces.embeddings[i], len(faces)


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
        a, n_a = main_face(args.photo_a, detector, embedder)
        b, n_b = main_face(args.photo_b, detector, embedder)
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
