"""Explicit pyarrow schemas of every Parquet table the pipeline writes.

Each table (photos, faces, clusters, failures, people) is written per user under
``<output>/<table>/user_id=<id>/part-0.parquet``; images/ (thumbnails and previews) per user
and photo batch under ``<output>/images/user_id=<id>/<images_part>`` (pipeline.images).
Keeping the schemas here makes readers (report, search, tests) and writers agree.
"""
from __future__ import annotations

import json

import pyarrow as pa

#: Outcome of one input photo: every photo read has exactly one row here.
PHOTO_STATUSES = ("faces", "no_face", "failed")
#: Pipeline stage at which a photo failed.
FAILURE_STAGES = ("read", "decode", "detect", "embed")

PHOTOS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("photo_path", pa.string(), nullable=False),
    pa.field("photo_sha256", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("n_faces", pa.int32(), nullable=False),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    # the images/ file holding the photo's preview and face thumbnails (pipeline.images); null = none
    pa.field("images_part", pa.string()),
])

#: JPEGs of the report, written before the per-user grouping (pipeline.images): each photo's
#: preview (face_index null, longest side 512 px) and each face's aligned chip (face_index).
IMAGES = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("photo_sha256", pa.string(), nullable=False),
    pa.field("face_index", pa.int32()),
    pa.field("jpeg", pa.binary(), nullable=False),
])


#: Schema-metadata key of faces/ under which a fine-tuned embedder's lineage is stored (JSON).
LINEAGE_KEY = b"facegroup.embedder_lineage"


def faces_schema(dim: int, lineage: dict | None = None) -> pa.Schema:
    """Schema of `faces/` for embeddings of `dim` components; the lineage of fine-tuned
    embedder weights (base model, data, steps: models.finetuned), when given, becomes
    schema metadata (LINEAGE_KEY, JSON), read back by `embedder_lineage`."""
    schema = pa.schema([
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("photo_path", pa.string(), nullable=False),
        pa.field("photo_sha256", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("face_key", pa.string(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 10), nullable=False),
        pa.field("det_score", pa.float32(), nullable=False),
        pa.field("quality", pa.float32()),  # core.quality, in [0, 1]; null in tables written before it
        pa.field("quality_reason", pa.string()),  # why it is below the gate; null = fine
        pa.field("embedder", pa.string(), nullable=False),
        pa.field("embedder_version", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ])
    return schema.with_metadata({LINEAGE_KEY: json.dumps(lineage, sort_keys=True)}) if lineage else schema


def embedder_lineage(schema: pa.Schema) -> dict | None:
    """The fine-tuned embedder lineage recorded in a faces/ schema, or None."""
    text = (schema.metadata or {}).get(LINEAGE_KEY)
    return json.loads(text) if text else None


CLUSTERS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("face_key", pa.string(), nullable=False),
    pa.field("photo_sha256", pa.string(), nullable=False),
    pa.field("face_index", pa.int32(), nullable=False),
    pa.field("person_id", pa.int32(), nullable=False),
    pa.field("cluster_size", pa.int32(), nullable=False),
    pa.field("distance_to_centre", pa.float32(), nullable=False),
    pa.field("name", pa.string()),  # the person's name (the user's, else --known_people's), null = unnamed
    # the person was confirmed by a user correction (pipeline.corrections); null in tables written before
    pa.field("confirmed", pa.bool_()),
    # why a face is in no person: "ignored by user", or its quality_reason when below the gate; else null
    pa.field("unclustered_reason", pa.string()),
])

FAILURES = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("photo_path", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("error", pa.string(), nullable=False),
])

#: One row per person (person_id >= 0) of a user, named by the user's corrections
#: (pipeline.corrections) or else from --known_people (pipeline.known_people); without
#: either every name is null (and without known people every match_distance).
PEOPLE = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("person_id", pa.int32(), nullable=False),
    pa.field("name", pa.string()),  # null = not named (unknown or ambiguous)
    pa.field("match_distance", pa.float32()),  # to the nearest known name; null = no known people
    pa.field("face_count", pa.int32(), nullable=False),
    pa.field("confirmed", pa.bool_()),  # confirmed by a user correction; null in tables written before
    pa.field("name_source", pa.string()),  # NAME_SOURCES, null when unnamed
])
#: Where a person's name comes from: the user's corrections win over --known_people.
NAME_SOURCES = ("user", "known_people")


#: Parquet key-value metadata. photos/ and faces/ files carry the InferenceSettings
#: (pipeline.inference) they were computed with, as JSON; clusters/ files carry the
#: user's next unused person id (pipeline.person_ids), as a decimal string; people/
#: files the naming rule they were named with (pipeline.naming.Naming), as JSON.
SETTINGS_KEY = b"facegroup.inference_settings"
NEXT_PERSON_ID_KEY = b"facegroup.next_person_id"
NAMING_KEY = b"facegroup.naming"


def face_key(photo_sha256: str, face_index: int) -> str:
    """Stable identifier of a face across runs: the photo's content hash and face index."""
    return f"{photo_sha256}:{face_index}"
