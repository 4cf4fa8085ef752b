"""Decoded pixels -> faces: the one hot path (no Beam, no files).

Every user of faces goes through here: the pipeline (pipeline.inference wraps `faces_of`
in RunInference and turns failures into rows), known people, search and verification
(pipeline.known_people, .search, .verify), fine-tuning (models.train) and the benches
(through core.lfw for LFW-style datasets). Steps:

  detect   one MTCNN call for a batch of photos, each at detection resolution (a copy whose
           longest side is at most --max_detect_side); faces scoring at least
           min_det_score, most confident first (this order is the face index), with boxes
           and landmarks scaled to full-resolution pixels;
  choose   ALL faces, or the photo's main face by one of two rules (`main_face`);
  align    each face cut out of the full-resolution pixels as the embedder wants it;
  embed    one embedder call for every face of the batch (4-5x faster per photo on a CPU
           than photo by photo);
  quality  how recognisable each face is (core.quality), on the full-resolution pixels.

A batch call that raises is retried photo by photo, so only the photo that causes it fails
(a `Failure`); the others keep their faces.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np

from core.quality import face_quality
from models.embedders import FaceEmbedder
from models.mtcnn import MTCNN, Detections

#: Which faces of a photo go on to alignment and embedding (`choose`).
ALL = "all"
#: The main face of a photo that shows one person (a reference photo, a verification
#: photo): the face whose box covers most of the photo.
LARGEST = "largest"
#: The main face of a dataset crop centred on its labelled face (LFW, pins50dev): the face
#: nearest the centre. On LFW it differs from LARGEST on 61 of 13,233 images, where
#: another face (someone nearer the camera) shows larger than the labelled person's.
CENTRE = "centre"

T = TypeVar("T")
R = TypeVar("R")


class Decoded(Protocol):
    """A decoded photo: image (H,W,3) uint8 RGB at full resolution, in displayed
    orientation; detect_image (h,w,3) the same photo as the detector sees it (image itself
    when it is small enough). pipeline.records.DecodedPhoto is one."""

    image: np.ndarray
    detect_image: np.ndarray


@dataclass(frozen=True)
class Pixels:
    """A Decoded photo outside the pipeline (photo files, dataset images)."""

    image: np.ndarray
    detect_image: np.ndarray

    @classmethod
    def full(cls, image: np.ndarray) -> Pixels:
        """A photo detected at full resolution (dataset crops: small already)."""
        return cls(image, image)


@dataclass(frozen=True)
class Failure:
    """Why a photo of a batch has no faces: the step that raised ("detect", "align" or
    "embed") and its exception."""

    step: str
    error: Exception


@dataclass
class PhotoFaces:
    """The chosen faces of one photo, most confident first.

    detections: boxes (n,4), scores (n,), landmarks (n,5,2) in full-resolution pixels;
    found: faces detected (score >= min_det_score) before choosing; chips (n,S,S,3) uint8
    aligned faces (the embedder's thumbnails; no pixels when n = 0); embeddings (n,D)
    float32 unit norm;
    quality: (quality, reason or None) per face (core.quality).
    """

    detections: Detections
    found: int
    chips: np.ndarray
    embeddings: np.ndarray
    quality: list[tuple[float, str | None]]

    def __len__(self) -> int:
        return len(self.embeddings)


def faces_of(photos: Sequence[Decoded], detector: MTCNN, embedder: FaceEmbedder, min_det_score: float,
             faces: str = ALL) -> list[PhotoFaces | Failure]:
    """Detect, choose, align, embed and rate the faces of a batch of photos: one result
    per photo, in order."""
    found = detect(detector, photos, min_det_score)
    chosen = [det if isinstance(det, Failure) else choose(det, photo.image, faces)
              for photo, det in zip(photos, found)]
    inputs = align(embedder, photos, chosen)
    embedded = iter(embed(embedder, [x for x in inputs if isinstance(x, np.ndarray)]))
    out: list[PhotoFaces | Failure] = []
    for photo, det, kept, x in zip(photos, found, chosen, inputs):
        if isinstance(x, Failure):
            out.append(x)
        elif x is None:
            out.append(PhotoFaces(kept, len(det), np.zeros((0, 0, 0, 3), np.uint8),
                                  np.zeros((0, embedder.dim), np.float32), []))
        elif isinstance(embeddings := next(embedded), Failure):
            out.append(embeddings)
        else:
            quality = [face_quality(photo.image, lm, float(s)) for lm, s in zip(kept.landmarks, kept.scores)]
            out.append(PhotoFaces(kept, len(det), embedder.thumbnails(x), embeddings, quality))
    return out


def succeeded(results: list[T | Failure]) -> list[T]:
    """The results of a batch step whose every photo must succeed (a tool's few photos, a
    dataset): the first failure's exception is raised."""
    for result in results:
        if isinstance(result, Failure):
            raise result.error
    return results  # type: ignore[return-value]


def detect(detector: MTCNN, photos: Sequence[Decoded], min_det_score: float) -> list[Detections | Failure]:
    """Per photo: its faces scoring at least min_det_score, in full-resolution pixels."""
    found = _isolated(detector.detect, [photo.detect_image for photo in photos], "detect")
    return [det if isinstance(det, Failure) else full_resolution(confident(det, min_det_score), photo)
            for photo, det in zip(photos, found)]


def confident(det: Detections, min_score: float) -> Detections:
    """Detections with score >= min_score, ordered by descending score (this order is the
    face index; ties keep the detector's order)."""
    scores = np.asarray(det.scores, dtype=np.float32)
    keep = np.flatnonzero(scores >= min_score)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return Detections(np.asarray(det.boxes, np.float32)[keep].reshape(-1, 4), scores[keep],
                      np.asarray(det.landmarks, np.float32)[keep].reshape(-1, 5, 2))


def full_resolution(det: Detections, photo: Decoded) -> Detections:
    """Detections from detect_image pixels to full-resolution image pixels."""
    sx = photo.image.shape[1] / photo.detect_image.shape[1]
    sy = photo.image.shape[0] / photo.detect_image.shape[0]
    if sx == 1.0 and sy == 1.0:
        return det
    return Detections(det.boxes * np.float32([sx, sy, sx, sy]), det.scores, det.landmarks * np.float32([sx, sy]))


def choose(det: Detections, image: np.ndarray, faces: str) -> Detections:
    """The faces of `det` (in `image`'s pixels) that go on: all, or the main face by rule
    LARGEST or CENTRE (none when nothing was detected)."""
    if faces == ALL:
        return det
    i = main_face(det, image.shape[1], image.shape[0], faces)
    keep = [] if i is None else [i]
    return Detections(det.boxes[keep], det.scores[keep], det.landmarks[keep])


def main_face(det: Detections, width: int, height: int, rule: str) -> int | None:
    """Index of the main face of a width x height photo, None if it has none.

    LARGEST: the face whose box covers most of the photo, ties nearest the centre; the box
    is clipped to the photo first, so a face cut by the edge, whose box reaches outside,
    does not win over the person the photo shows. CENTRE: the face whose box centre is
    nearest the photo's centre.
    """
    if len(det) == 0:
        return None
    if rule == CENTRE:
        centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
        return int(np.argmin(((centres - np.array([width / 2, height / 2], np.float32)) ** 2).sum(axis=1)))
    if rule != LARGEST:
        raise ValueError(f"main face rule must be {LARGEST!r} or {CENTRE!r}, got {rule!r}")
    b = det.boxes.astype(np.float64)
    c = np.clip(b, 0, [width, height, width, height])
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    centre = np.hypot((b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2)
    return int(np.lexsort((centre, -area))[0])


def align(embedder: FaceEmbedder, photos: Sequence[Decoded],
          detections: Sequence[Detections | Failure]) -> list[np.ndarray | Failure | None]:
    """Per photo: the embedder's inputs (aligned chips) of its faces, cut from the
    full-resolution image; None for a photo without faces; failures passed through."""
    out: list[np.ndarray | Failure | None] = []
    for photo, det in zip(photos, detections):
        if isinstance(det, Failure) or len(det) == 0:
            out.append(det if isinstance(det, Failure) else None)
            continue
        try:
            out.append(embedder.face_inputs(photo.image, det))
        except Exception as exc:  # one photo's faces, not the batch
            out.append(Failure("align", exc))
    return out


def embed(embedder: FaceEmbedder, inputs: list[np.ndarray]) -> list[np.ndarray | Failure]:
    """Per photo: the embeddings (n_i,D) of its inputs (n_i,...), from one embedder call."""
    if not inputs:
        return []

    def run(batch: list[np.ndarray]) -> list[np.ndarray]:
        flat = embedder.embed(np.concatenate(batch))
        return np.split(flat, np.cumsum([len(x) for x in batch])[:-1])

    return _isolated(run, inputs, "embed")


def _isolated(run: Callable[[list[T]], list[R]], items: list[T], step: str) -> list[R | Failure]:
    """run(items), one result per item; when it raises, run([item]) item by item, so that
    only the items that fail alone become Failures."""
    try:
        return list(run(items))
    except Exception:
        out: list[R | Failure] = []
        for item in items:
            try:
                out.extend(run([item]))
            except Exception as exc:
                out.append(Failure(step, exc))
        return out
