"""Photo files given on the command line (known people, search queries, verification),
decoded as the pipeline decodes them and run through the hot path (core.faces).

Decoding goes through pipeline.decode (EXIF orientation, pixel-count guard); detection runs
on a copy whose longest side is at most `max_detect_side`, and faces are aligned from the
full-resolution photo.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from core.faces import ALL, Pixels, PhotoFaces, faces_of, succeeded
from models.embedders import FaceEmbedder
from models.mtcnn import MTCNN
from pipeline.decode import DecodeError, decode_photo
from pipeline.options import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MAX_PIXELS, DEFAULT_MIN_DET_SCORE


def read_photo(path: str | Path, max_detect_side: int = DEFAULT_MAX_DETECT_SIDE) -> Pixels:
    """The decoded photo file at `path`, in displayed orientation; its detect_image is
    scaled to longest side <= max_detect_side."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"photo {path} not found")
    try:
        image, detect_image, _ = decode_photo(path.read_bytes(), DEFAULT_MAX_PIXELS, max_detect_side)
    except DecodeError as exc:
        raise ValueError(f"cannot read photo {path}: {exc}") from None
    return Pixels(image, detect_image)


def photo_faces(paths: Sequence[str | Path], detector: MTCNN, embedder: FaceEmbedder, faces: str = ALL,
                max_detect_side: int = DEFAULT_MAX_DETECT_SIDE,
                min_det_score: float = DEFAULT_MIN_DET_SCORE) -> list[PhotoFaces]:
    """Read the photos at `paths` and detect, choose (`faces`: core.faces.ALL, LARGEST or
    CENTRE), align and embed their faces in one batch (defaults: the pipeline's; a run's own
    --max_detect_side and --min_det_score may be passed)."""
    return succeeded(faces_of([read_photo(p, max_detect_side) for p in paths], detector, embedder,
                              min_det_score, faces))
