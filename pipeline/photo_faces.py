"""The faces of photo files, detected, aligned and embedded the way the pipeline does it.

Used where photos are given on the command line or in a folder (known people, search
queries, verification): decoding goes through pipeline.decode (EXIF orientation,
pixel-count guard), detection runs on a copy whose longest side is at most
`max_detect_side`, and faces are aligned from the full-resolution photo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.embedders import FaceEmbedder
from models.mtcnn import MTCNN
from pipeline.decode import DecodeError, decode_photo
from pipeline.inference import ScaledDetections, confident, full_resolution
from pipeline.options import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MAX_PIXELS, DEFAULT_MIN_DET_SCORE


@dataclass
class PhotoFaces:
    """Every face found in one photo, by descending detection score (the face index order).

    image: (H,W,3) uint8 RGB in displayed orientation; detections: boxes (n,4), scores (n,),
    landmarks (n,5,2) in `image` pixels, scores >= min_det_score (photo_faces);
    chips: (n,S,S,3) uint8 aligned faces (the embedder's thumbnails); embeddings: (n,D)
    float32 unit norm.
    """

    image: np.ndarray
    detections: ScaledDetections
    chips: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


def read_photo(path: str | Path, max_detect_side: int = DEFAULT_MAX_DETECT_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(image (H,W,3), detect_image (h,w,3)) uint8 RGB of the photo file at `path`.

    Both in displayed orientation; detect_image is scaled to longest side <= max_detect_side.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} not found")
    try:
        image, detect_image, _ = decode_photo(path.read_bytes(), DEFAULT_MAX_PIXELS, max_detect_side)
    except DecodeError as exc:
        raise ValueError(f"cannot read photo {path}: {exc}") from None
    return image, detect_image


def faces_in(photos: Sequence[tuple[np.ndarray, np.ndarray]], detector: MTCNN, embedder: FaceEmbedder,
             min_det_score: float = DEFAULT_MIN_DET_SCORE) -> list[PhotoFaces]:
    """Detect, align and embed every face of several photos, each (image (H,W,3),
    detect_image (h,w,3)) from read_photo: one detector call for all photos and one
    embedder call for all their faces (4-5x faster per photo on CPU than one by one).
    Faces above min_det_score, by descending score: the pipeline's face_index order."""
    if not photos:
        return []
    found = detector.detect([detect_image for _, detect_image in photos])
    dets, inputs = [], []
    for (image, detect_image), det in zip(photos, found):
        scale = (image.shape[1] / detect_image.shape[1], image.shape[0] / detect_image.shape[0])
        dets.append(full_resolution(confident(det, min_det_score), scale))
        inputs.append(embedder.face_inputs(image, dets[-1]))
    all_inputs = np.concatenate(inputs)
    embeddings = embedder.embed(all_inputs) if len(all_inputs) else np.zeros((0, embedder.dim), np.float32)
    ends = np.cumsum([len(c) for c in inputs])
    return [PhotoFaces(image, det, embedder.thumbnails(c), e)
            for (image, _), det, c, e in zip(photos, dets, inputs, np.split(embeddings, ends[:-1]))]


def photo_faces(path: str | Path, detector: MTCNN, embedder: FaceEmbedder, max_detect_side: int = DEFAULT_MAX_DETECT_SIDE,
                min_det_score: float = DEFAULT_MIN_DET_SCORE) -> PhotoFaces:
    """Read the photo at `path`, then detect, align and embed every face in it (defaults:
    the pipeline's; a run's own --max_detect_side and --min_det_score may be passed)."""
    return faces_in([read_photo(path, max_detect_side)], detector, embedder, min_det_score)[0]


def largest_face(det: ScaledDetections, width: int, height: int) -> int | None:
    """Index of the face whose box covers the most of the photo (ties: nearest the image
    centre), None if none. The box is clipped to the photo first: a face cut by the edge,
    whose box reaches outside, must not win over the person the photo shows.

    The rule for photos that show one person (reference photos, verification photos).
    """
    if len(det.boxes) == 0:
        return None
    b = det.boxes.astype(np.float64)
    c = np.clip(b, 0, [width, height, width, height])
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    centre = np.hypot((b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2)
    return int(np.lexsort((centre, -area))[0])
