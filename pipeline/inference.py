"""Detect, align and embed faces with Beam's RunInference.

`FaceModelHandler` loads MTCNN and the embedder once per worker process (RunInference
keeps the loaded model in `shared.Shared`, so every thread and bundle of the process
reuses it). Each batch of photos is detected in one MTCNN call (photos of mixed sizes,
at detection resolution), every face is aligned from the full-resolution pixels
(landmarks scaled back), and all faces of the batch are embedded in one call. An
exception in a batch call is retried photo by photo, so only the photo that causes it
becomes a failure row (stage "detect" or "embed"); the bundle never fails for a photo.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipeline.decode import encode_jpeg
from core.quality import QUALITY_VERSION, face_quality
from pipeline.records import DecodedPhoto, Face, PhotoOutcome, describe_error, failed_outcome

if TYPE_CHECKING:  # models (torch) load lazily, where a run needs them
    from models.embedders import FaceEmbedder

THUMBNAIL_QUALITY = 85


@dataclass(frozen=True)
class EmbedderInfo:
    """What the outputs record about the embedder: name, version and dimension, and the
    lineage of fine-tuned weights (models.finetuned; None for published weights)."""

    name: str
    version: str
    dim: int
    lineage: dict | None = None


@dataclass(frozen=True)
class InferenceSettings:
    """Everything a photo's faces depend on besides its bytes: the embedder, the
    detection options and the face quality computation. Recorded in the photos/ and
    faces/ Parquet metadata, so that an incremental run reuses only results it would have
    computed itself (pipeline.reuse)."""

    embedder: EmbedderInfo
    min_face_size: int
    min_det_score: float
    max_detect_side: int
    quality: str = QUALITY_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def launcher_embedder(name: str, weights: str | None) -> FaceEmbedder:
    """Load the embedder once on the launching machine (CPU): validates --embedder and
    --embedder_weights before any worker starts; gives the version and dimension that
    every output file is written with, and embeds --known_people's reference faces."""
    from models.embedders import get_embedder

    return get_embedder(name, "cpu", weights)


def embedder_info(embedder: FaceEmbedder) -> EmbedderInfo:
    """What the outputs record about a loaded embedder."""
    return EmbedderInfo(embedder.name, embedder.version, embedder.dim, embedder.lineage)


class FaceModels:
    """The models of one worker process: MTCNN detector and embedder (weak-referenceable,
    as RunInference's shared cache requires)."""

    def __init__(self, detector: Any, embedder: Any) -> None:
        self.detector = detector
        self.embedder = embedder


class FaceModelHandler(ModelHandler[DecodedPhoto | PhotoOutcome, PhotoOutcome, FaceModels]):
    """RunInference handler: a batch of DecodedPhoto (and already failed PhotoOutcome,
    passed through) -> one PhotoOutcome per item, in order.

    Used as ``RunInference(handler.with_no_batching())`` on batches made by
    decode.LoadPhotos: Beam's BatchElements emits its last batch from finish_bundle,
    which DaskRunner drops.
    """

    def __init__(self, embedder: EmbedderInfo, embedder_weights: str | None, device: str,
                 min_face_size: int, min_det_score: float) -> None:
        super().__init__()
        self.embedder = embedder
        self.embedder_weights = embedder_weights
        self.device = device
        self.min_face_size = min_face_size
        self.min_det_score = min_det_score

    def load_model(self) -> FaceModels:
        from models.embedders import get_embedder, resolve_device
        from models.mtcnn import MTCNN

        device = resolve_device(self.device)
        embedder = get_embedder(self.embedder.name, device, self.embedder_weights)
        if embedder.version != self.embedder.version:
            raise RuntimeError(f"worker loaded {embedder.name} version {embedder.version}, but the run "
                               f"was launched with version {self.embedder.version}: the weights differ")
        return FaceModels(MTCNN(min_face_size=self.min_face_size, device=device), embedder)

    def run_inference(self, batch: Sequence[DecodedPhoto | PhotoOutcome], model: FaceModels,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PhotoOutcome]:
        photos = [item for item in batch if isinstance(item, DecodedPhoto)]
        done = iter(process_batch(photos, model, self.min_det_score))
        return [next(done) if isinstance(item, DecodedPhoto) else item for item in batch]

    def get_num_bytes(self, batch: Sequence[DecodedPhoto | PhotoOutcome]) -> int:
        return sum(item.image.nbytes for item in batch if isinstance(item, DecodedPhoto))

    def get_metrics_namespace(self) -> str:
        return "facegroup_inference"


def process_batch(photos: Sequence[DecodedPhoto], models: FaceModels,
                  min_det_score: float) -> list[PhotoOutcome]:
    """One outcome per photo, in order: detect all, align each, embed all faces at once;
    each face's quality is measured on the full-resolution photo."""
    outcomes: list[PhotoOutcome | None] = [None] * len(photos)
    detections = _detect(models.detector, photos)
    chips: dict[int, tuple[Any, np.ndarray]] = {}
    for i, (photo, found) in enumerate(zip(photos, detections)):
        if isinstance(found, str):
            outcomes[i] = failed_outcome(photo.user_id, photo.photo_path, "detect", found, photo=photo)
            continue
        det = full_resolution(confident(found, min_det_score), photo.detect_scale)
        if len(det.scores) == 0:
            outcomes[i] = PhotoOutcome(photo.user_id, photo.photo_path, "no_face", photo.sha256,
                                       photo.width, photo.height, photo.preview)
            continue
        try:
            chips[i] = (det, models.embedder.face_inputs(photo.image, det))
        except Exception as exc:  # alignment belongs to the embed stage
            outcomes[i] = failed_outcome(photo.user_id, photo.photo_path, "embed",
                                         f"alignment failed: {describe_error(exc)}", photo=photo)
    embeddings = _embed(models.embedder, {i: c for i, (_, c) in chips.items()})
    for i, (det, photo_chips) in chips.items():
        photo = photos[i]
        found = embeddings[i]
        if isinstance(found, str):
            outcomes[i] = failed_outcome(photo.user_id, photo.photo_path, "embed", found, photo=photo)
            continue
        thumbnails = models.embedder.thumbnails(photo_chips)
        faces = [Face(det.boxes[k], det.landmarks[k], float(det.scores[k]), found[k],
                      encode_jpeg(thumbnails[k], THUMBNAIL_QUALITY),
                      *face_quality(photo.image, det.landmarks[k], float(det.scores[k])))
                 for k in range(len(det.scores))]
        outcomes[i] = PhotoOutcome(photo.user_id, photo.photo_path, "faces", photo.sha256,
                                   photo.width, photo.height, photo.preview, faces)
    _count(outcomes)
    return outcomes  # type: ignore[return-value]


def _detect(detector: Any, photos: Sequence[DecodedPhoto]) -> list[Any]:
    """Detections per photo from one batched call; per photo on failure (error strings)."""
    try:
        return list(detector.detect([p.detect_image for p in photos]))
    except Exception:  # isolate the photo(s) that make the batch fail
        found: list[Any] = []
        for photo in photos:
            try:
                found.extend(detector.detect([photo.detect_image]))
            except Exception as exc:
                found.append(describe_error(exc))
        return found


def _embed(embedder: Any, chips: dict[int, np.ndarray]) -> dict[int, np.ndarray | str]:
    """Embeddings (n_i,D) per photo index from one call over all chips; per photo on failure."""
    if not chips:
        return {}
    order = list(chips)
    try:
        flat = embedder.embed(np.concatenate([chips[i] for i in order]))
        bounds = np.cumsum([0] + [len(chips[i]) for i in order])
        return {i: flat[bounds[j]:bounds[j + 1]] for j, i in enumerate(order)}
    except Exception:  # isolate the photo(s) that make the batch fail
        out: dict[int, np.ndarray | str] = {}
        for i in order:
            try:
                out[i] = embedder.embed(chips[i])
            except Exception as exc:
                out[i] = describe_error(exc)
        return out


@dataclass
class ScaledDetections:
    """Detections in full-resolution pixels, most confident first.

    boxes (n,4) float32, scores (n,) float32, landmarks (n,5,2) float32.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def confident(det: Any, min_score: float) -> ScaledDetections:
    """Detections with score >= min_score, ordered by descending score (this order is
    face_index; ties keep the detector's order)."""
    scores = np.asarray(det.scores, dtype=np.float32)
    keep = np.flatnonzero(scores >= min_score)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return ScaledDetections(np.asarray(det.boxes, np.float32)[keep].reshape(-1, 4), scores[keep],
                            np.asarray(det.landmarks, np.float32)[keep].reshape(-1, 5, 2))


def full_resolution(det: ScaledDetections, scale: tuple[float, float]) -> ScaledDetections:
    """Detections from detection-image pixels to full-resolution pixels (scale = (sx, sy))."""
    sx, sy = scale
    if sx == 1.0 and sy == 1.0:
        return det
    return ScaledDetections(det.boxes * np.float32([sx, sy, sx, sy]), det.scores,
                            det.landmarks * np.float32([sx, sy]))


_COUNTERS = {name: beam.metrics.Metrics.counter("facegroup", name)
             for name in ("photos_inferred", "faces_detected", "failed_detect", "failed_embed")}


def _count(outcomes: Sequence[PhotoOutcome | None]) -> None:
    _COUNTERS["photos_inferred"].inc(len(outcomes))
    _COUNTERS["faces_detected"].inc(sum(len(o.faces) for o in outcomes if o))
    for stage in ("detect", "embed"):
        failed = sum(1 for o in outcomes if o and o.stage == stage)
        if failed:
            _COUNTERS[f"failed_{stage}"].inc(failed)
