"""The faces of one photo file, detected, aligned and embedded the way the pipeline does it.

Used where a single photo is given on the command line or in a folder (known people,
search queries, verification): decoding goes through pipeline.decode (EXIF orientation,
pixel-count guard), detection runs on a copy whose longest side is at most
`max_detect_side`, and faces are aligned from the full-resolution photo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.align import align_faces
from models.embedders import Embedder
from models.mtcnn import MTCNN
from pipeline.decode import DecodeError, decode_photo
from pipeline.inference import ScaledDetections, confident, full_resolution
from pipeline.options import DEFAULT_MIN_DET_SCORE

#: Longest side of the copy the detector sees (the pipeline's --max_detect_side default).
MAX_DETECT_SIDE = 1600
#: Photos above this many pixels are refused (the pipeline's --max_pixels default).
MAX_PIXELS = 200_000_000


@dataclass
class PhotoFaces:
    """Every face found in one photo, by descending detection score (the face index order).

    image: (H,W,3) uint8 RGB in displayed orientation; detections: boxes (n,4), scores (n,),
    landmarks (n,5,2) in `image` pixels, scores >= min_det_score (photo_faces);
    chips: (n,S,S,3) uint8 aligned for the embedder; embeddings: (n,D) float32 unit norm.
    """

    image: np.ndarray
    detections: ScaledDetections
    chips: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


def read_photo(path: str | Path, max_detect_side: int = MAX_DETECT_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(image (H,W,3), detect_image (h,w,3)) uint8 RGB of the photo file at `path`.

    Both in displayed orientation; detect_image is scaled to longest side <= max_detect_side.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} not found")
    try:
        image, detect_image, _ = decode_photo(path.read_bytes(), MAX_PIXELS, max_detect_side)
    except DecodeError as exc:
        raise ValueError(f"cannot read photo {path}: {exc}") from None
    return image, detect_image


def detect_faces(image: np.ndarray, detect_image: np.ndarray, detector: MTCNN,
                 min_det_score: float = DEFAULT_MIN_DET_SCORE) -> ScaledDetections:
    """Confident faces found in detect_image (h,w,3), in image (H,W,3) pixels, by descending
    score: the same selection and order (face_index) as the pipeline's."""
    det = confident(detector.detect([detect_image])[0], min_det_score)
    return full_resolution(det, (image.shape[1] / detect_image.shape[1], image.shape[0] / detect_image.shape[0]))


def photo_faces(path: str | Path, detector: MTCNN, embedder: Embedder, max_detect_side: int = MAX_DETECT_SIDE,
                min_det_score: float = DEFAULT_MIN_DET_SCORE) -> PhotoFaces:
    """Read the photo at `path`, then detect, align and embed every face in it (defaults:
    the pipeline's; a run's own --max_detect_side and --min_det_score may be passed)."""
    image, detect_image = read_photo(path, max_detect_side)
    det = detect_faces(image, detect_image, detector, min_det_score)
    chips = align_faces(image, det, embedder.align)
    embeddings = embedder.embed(chips) if len(chips) else np.zeros((0, embedder.dim), np.float32)
    return PhotoFaces(image, det, chips, embeddings)


def largest_face(det: ScaledDetections, width: int, height: int) -> int | None:
    """Index of the face with the largest box (ties: nearest the image centre), None if none.

    The rule for photos that show one person (reference photos, verification photos).
    """
    if len(det.boxes) == 0:
        return None
    b = det.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    centre = np.hypot((b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2)
    return int(np.lexsort((centre, -area))[0])
