"""The hot path (core.faces) in Beam's RunInference, and its failure rows.

`FaceModelHandler` loads MTCNN and the embedder once per worker process (RunInference
keeps the loaded model in `shared.Shared`, so every thread and bundle of the process
reuses it) and runs each batch of photos through core.faces.faces_of: one detector call
and one embedder call per batch. Only a photo whose detection, alignment or embedding
raises becomes a failure row (stage "detect" or "embed"); the bundle never fails for a photo.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from core.faces import Failure, PhotoFaces, faces_of
from core.quality import QUALITY_VERSION
from pipeline.decode import encode_jpeg
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


def launcher_embedder_info(name: str, weights: str | None) -> EmbedderInfo:
    """What the outputs record about --embedder and --embedder_weights, validated (weights
    found, digests checked) without loading a network: the launcher of a run without
    --known_people never holds the models."""
    from models.embedders import describe_embedder

    return EmbedderInfo(name, *describe_embedder(name, weights))


def embedder_info(embedder: FaceEmbedder) -> EmbedderInfo:
    """What the outputs record about a loaded embedder."""
    return EmbedderInfo(embedder.name, embedder.version, embedder.dim, embedder.lineage)


class FaceModels:
    """The models of one worker process: MTCNN detector and embedder (weak-referenceable,
    as RunInference's shared cache requires)."""

    def __init__(self, detector: Any, embedder: Any) -> None:
        self.detector = detector
        self.embedder = embedder


class FaceModelHandler(ModelHandler[DecodedPhoto | PhotoOutcome, list[PhotoOutcome], FaceModels]):
    """RunInference handler: a batch of DecodedPhoto (and already failed PhotoOutcome,
    passed through) -> one element, the batch's PhotoOutcomes (one per item, in order),
    so that the next step writes the batch's JPEGs as one file (pipeline.images).

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
                      inference_args: dict[str, Any] | None = None) -> Iterable[list[PhotoOutcome]]:
        photos = [item for item in batch if isinstance(item, DecodedPhoto)]
        done = iter(process_batch(photos, model, self.min_det_score))
        return [[next(done) if isinstance(item, DecodedPhoto) else item for item in batch]]

    def get_num_bytes(self, batch: Sequence[DecodedPhoto | PhotoOutcome]) -> int:
        return sum(item.image.nbytes for item in batch if isinstance(item, DecodedPhoto))

    def get_metrics_namespace(self) -> str:
        return "facegroup_inference"


def process_batch(photos: Sequence[DecodedPhoto], models: FaceModels,
                  min_det_score: float) -> list[PhotoOutcome]:
    """One outcome per photo, in order: every face of each photo (core.faces.faces_of),
    a failure row for a photo whose detection, alignment or embedding raised."""
    outcomes = [_outcome(photo, found) for photo, found in
                zip(photos, faces_of(photos, models.detector, models.embedder, min_det_score))]
    _count(outcomes)
    return outcomes


def _outcome(photo: DecodedPhoto, found: PhotoFaces | Failure) -> PhotoOutcome:
    """The photo's row and face rows, or its failure row (alignment fails the embed stage)."""
    if isinstance(found, Failure):
        stage = "detect" if found.step == "detect" else "embed"
        error = ("alignment failed: " if found.step == "align" else "") + describe_error(found.error)
        return failed_outcome(photo.user_id, photo.photo_path, stage, error, photo=photo)
    det = found.detections
    faces = [Face(det.boxes[k], det.landmarks[k], float(det.scores[k]), found.embeddings[k],
                  encode_jpeg(found.chips[k], THUMBNAIL_QUALITY), *found.quality[k])
             for k in range(len(found))]
    return PhotoOutcome(photo.user_id, photo.photo_path, "faces" if faces else "no_face", photo.sha256,
                        photo.width, photo.height, photo.preview, faces)


_COUNTERS = {name: beam.metrics.Metrics.counter("facegroup", name)
             for name in ("photos_inferred", "faces_detected", "failed_detect", "failed_embed")}


def _count(outcomes: Sequence[PhotoOutcome]) -> None:
    _COUNTERS["photos_inferred"].inc(len(outcomes))
    _COUNTERS["faces_detected"].inc(sum(len(o.faces) for o in outcomes))
    for stage in ("detect", "embed"):
        failed = sum(1 for o in outcomes if o.stage == stage)
        if failed:
            _COUNTERS[f"failed_{stage}"].inc(failed)
