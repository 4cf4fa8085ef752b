"""Derive where MTCNN's 5 landmarks sit in dlib's 150x150 face-chip frame.

dlib's ResNet was trained on chips cut by dlib's own 5-point shape predictor
(get_face_chip_details, size 150, padding 0.25). For LFW DevTrain images (View-1
development identities only) we detect with both dlib and our MTCNN, map MTCNN's
landmarks into dlib's chip with dlib's chip transform and take the per-point median: the
template our aligner uses for `dlib-resnet` (models/embedders.py: DLIB_TEMPLATE). It also
checks that our warp with dlib's transform reproduces dlib's chip pixels.
dlib (dlib-bin) is a development/test dependency only.

    python bench/fit_dlib_template.py [--limit 1000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.faces import CENTRE, Pixels, detect, main_face, succeeded  # noqa: E402
from core.lfw import LFW, read_pairs, read_rgb  # noqa: E402
from models.align import warp_faces  # noqa: E402
from models.mtcnn import MTCNN  # noqa: E402
from models.weights import REGISTRY  # noqa: E402


def dlib_chip_transform(details) -> np.ndarray:
    """(2,3) photo-to-chip affine of a dlib chip_details (rect rotated by angle about its centre)."""
    rect = details.rect
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    c, s = np.cos(details.angle), np.sin(details.angle)
    rot = np.array([[c, -s], [s, c]])
    corners = np.array([[rect.left(), rect.top()], [rect.right(), rect.top()], [rect.right(), rect.bottom()]])
    src = (corners - [cx, cy]) @ rot.T + [cx, cy]
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], dtype=float)
    a = np.hstack([src, np.ones((3, 1))])
    return np.linalg.solve(a, dst).T


def dlib_models_dir() -> Path:
    """Folder of face_recognition_models' .dat files (located without importing it)."""
    return REGISTRY["dlib-resnet"].resource.locate().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=1000, help="DevTrain images to use")
    args = parser.parse_args()
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    mtcnn = MTCNN()
    pairs, _ = read_pairs(LFW / "pairsDevTrain.txt")
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})[:args.limit]
    samples, pixel_err = [], []
    for start in range(0, len(paths), 32):
        images = [read_rgb(p) for p in paths[start:start + 32]]
        for image, det in zip(images, succeeded(detect(mtcnn, [Pixels.full(im) for im in images], 0.0))):
            i = main_face(det, image.shape[1], image.shape[0], CENTRE)
            rects = detector(image, 1)
            if i is None or not rects:
                continue
            centre = np.array(image.shape[1::-1]) / 2
            rect = min(rects, key=lambda r: np.hypot(r.center().x - centre[0], r.center().y - centre[1]))
            details = dlib.get_face_chip_details(predictor(image, rect), size=150, padding=0.25)
            m = dlib_chip_transform(details)
            samples.append(det.landmarks[i] @ m[:, :2].T + m[:, 2])
            if len(pixel_err) < 50:
                ours = warp_faces(image, m[None], 150)[0].astype(float)
                theirs = np.asarray(dlib.extract_image_chip(image, details)).astype(float)
                pixel_err.append(np.abs(ours - theirs).mean())
    samples = np.array(samples)
    template = np.median(samples, axis=0)
    spread = np.median(np.linalg.norm(samples - template, axis=2), axis=0)
    print(f"faces used: {len(samples)}; mean abs pixel difference our warp vs dlib chip: {np.mean(pixel_err):.2f}")
    print("median abs deviation per point (px):", np.round(spread, 2).tolist())
    weights = (spread.min() / spread) ** 2  # inverse-variance least-squares weights
    print("DLIB_TEMPLATE = (" + ", ".join(f"({x:.1f}, {y:.1f})" for x, y in template) + ")")
    print("inverse-variance weights = (" + ", ".join(f"{w:.2f}" for w in weights) + ")")


if __name__ == "__main__":
    main()
