"""The elements that flow between the pipeline's stages.

One input photo becomes one `PhotoRef`, then (when readable) `PhotoBytes`, then (when
decodable) `DecodedPhoto`, and always ends as exactly one `PhotoOutcome`: the record
from which the per-user writer builds its `photos/`, `faces/` and `failures/` rows. Its
JPEGs (preview, thumbnails) leave it for images/ right after inference (pipeline.images),
so what is grouped per user is light: keys, boxes, quality and embeddings.
Failures at any stage are turned into outcomes where they happen, so one bad photo
never fails a bundle. In an incremental run, a photo whose previous result is reused
ends as a REUSED outcome, and each user's `PreviousResults` meets that user's outcomes
at the writer, which resolves them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from pipeline.person_ids import PreviousPeople

MAX_ERROR_LENGTH = 300


#: Status of an outcome whose results come from the previous run (see pipeline.reuse);
#: the writer replaces it by the previous "faces"/"no_face" result before writing.
REUSED = "reused"


@dataclass(frozen=True)
class PhotoRef:
    """A photo to process. `uri` is where to read it and is never written to outputs.

    reuse_sha256: the SHA-256 this path had in the previous run when that run's results
    for it can be reused (pipeline.reuse); if the bytes still hash to it, the photo is
    not decoded, detected or embedded again.
    link_folder: the local folder (its user's) that the photo's real path must lie in,
    or None when links may lead anywhere (pipeline.links).
    """

    user_id: str
    photo_path: str  # relative to the input root, or the manifest's path as given
    uri: str
    reuse_sha256: str | None = None
    link_folder: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A listed file or manifest row that belongs to no valid user (reported, not processed)."""

    path: str
    reason: str


@dataclass
class PhotoBytes:
    """A photo's file content and its SHA-256 (hex)."""

    ref: PhotoRef
    sha256: str
    data: bytes


@dataclass
class DecodedPhoto:
    """A decoded photo in displayed orientation.

    image: (H,W,3) uint8 RGB at full resolution (faces are aligned from it);
    detect_image: (h,w,3) uint8, the same photo with longest side <= --max_detect_side
    (the same array when no downscaling was needed); preview: JPEG bytes for the report.
    """

    user_id: str
    photo_path: str
    sha256: str
    image: np.ndarray
    detect_image: np.ndarray
    preview: bytes

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass
class Face:
    """One detected, aligned and embedded face, in full-resolution displayed pixels.

    box: (4,) float32 x1,y1,x2,y2; landmarks: (5,2) float32; embedding: (D,) float32 unit
    norm; thumbnail: JPEG of the aligned chip until written to images/ (then None);
    quality in [0,1] and, below the gate, the reason (core.quality): low-quality faces
    never start or join a person.
    """

    box: np.ndarray
    landmarks: np.ndarray
    det_score: float
    embedding: np.ndarray
    thumbnail: bytes | None
    quality: float = 1.0
    quality_reason: str | None = None


@dataclass
class PhotoOutcome:
    """Everything the outputs need about one input photo, whatever happened to it.

    status is "faces", "no_face", "failed" or, until the writer resolves it, REUSED;
    failed outcomes carry `stage` (one of
    pipeline.schemas.FAILURE_STAGES) and a one-line `error`. Faces are in face_index
    order (descending detection score). `preview` (and each face's thumbnail) is set until
    pipeline.images writes them to the images/ file named `images_part`.
    """

    user_id: str
    photo_path: str
    status: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    preview: bytes | None = None
    faces: list[Face] = field(default_factory=list)
    stage: str | None = None
    error: str | None = None
    images_part: str | None = None


def failed_outcome(user_id: str, photo_path: str, stage: str, error: str,
                   sha256: str | None = None, photo: DecodedPhoto | None = None) -> PhotoOutcome:
    """A failed photo's outcome; keeps size and preview when the photo was decoded."""
    if photo is None:
        return PhotoOutcome(user_id, photo_path, "failed", sha256, stage=stage, error=error)
    return PhotoOutcome(user_id, photo_path, "failed", photo.sha256, photo.width, photo.height,
                        None, stage=stage, error=error)


def describe_error(exc: BaseException, replace: Mapping[str, str] | None = None) -> str:
    """One line naming the exception, with each `replace` key (e.g. a photo's absolute
    location) replaced by its value (the photo's relative path).

    Errors end up in failures/, which must never reveal paths outside the input root.
    """
    text = f"{type(exc).__name__}: {exc}"
    for old, new in (replace or {}).items():
        if old:
            text = text.replace(old, new)
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH - 3] + "..."


@dataclass
class PreviousResults:
    """What the previous run left for one user (read by pipeline.reuse.ReadPrevious):
    results by photo SHA-256 (outcomes with status "faces"/"no_face", faces included,
    photo_path empty) for the photos this run may reuse, and the user's person ids."""

    user_id: str
    results: dict[str, PhotoOutcome]
    people: PreviousPeople

    def resolve(self, outcome: PhotoOutcome) -> PhotoOutcome:
        """`outcome` itself, or for a REUSED one the previous result under its path (a
        failed read when that result is missing, which only happens when the previous
        tables changed during the run)."""
        if outcome.status != REUSED:
            return outcome
        found = self.results.get(outcome.sha256 or "")
        if found is None:
            return failed_outcome(outcome.user_id, outcome.photo_path, "read",
                                  "the previous run's result for this photo could not be read back "
                                  "(its tables changed during the run); run again", sha256=outcome.sha256)
        return replace(found, user_id=outcome.user_id, photo_path=outcome.photo_path)
