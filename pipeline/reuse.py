"""Incremental runs: reuse what a previous run already computed.

``--previous OUTPUT_DIR`` names an earlier run's output (by default ``--output`` itself
when it already holds tables, so re-running into the same folder is incremental;
``--previous none`` processes everything again). A run without ``_SUCCESS`` is
usable too: a crashed run resumes where its tables got to.

A photo's previous result is reused when the file listed at the same user and path
still hashes to the SHA-256 recorded there, its status was "faces" or "no_face"
(failures are always tried again), its photos/ table names images/ parts (outputs of
an earlier layout kept JPEGs in faces/ and photos/ and are computed again), its faces/
rows are complete (face indexes 0..n_faces-1, embedded by this run's embedder name and
version) and both tables were
written with this run's InferenceSettings (embedder, detection options and face quality
version, in the Parquet metadata; outputs of a version without face quality therefore
are computed again). A renamed or moved photo is processed again; its face keys come from
its content, so its faces keep their person ids (pipeline.person_ids). Photos no
longer listed are simply not written again: they disappear from the outputs.

How it stays runner-independent (no side inputs, no state, no finish_bundle output):
  - nothing is planned in the launcher: when a user's listed photos meet in the graph
    (pipeline.plan), `mark_reusable` reads only the light columns of that user's
    previous photos/ and faces/ tables and joins them with the listing on (user, path,
    SHA-256), marking each reusable PhotoRef with its expected SHA-256. A worker that
    reads the bytes and finds that hash emits a REUSED outcome and skips decoding and
    inference (decode.load_photo);
  - the results (boxes, embeddings, quality, the images/ part holding the photo's JPEGs:
    pipeline.images) and the previous person ids are read on the workers by
    `ReadPrevious`, one PreviousPart per user, and meet the user's outcomes at the
    GroupByKey in front of the clustering (Flatten); the JPEGs stay where they are.
    GroupByKey is a barrier in batch mode, so every read of the previous tables ends
    before the first write, and --previous may be --output itself; a retried writer
    gets the same grouped data again.
The previous output must therefore be readable by the workers (a local path on one
machine, or a Beam file system URI), like --input.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from pipeline import schemas
from pipeline.object_store import folder_exists
from pipeline.inference import InferenceSettings
from pipeline.person_ids import PreviousPeople
from pipeline.records import Face, PhotoOutcome, PhotoRef, PreviousResults
from pipeline.tables import read_user_table
from pipeline.users import user_key

NO_PREVIOUS = "none"
REUSABLE_STATUSES = ("faces", "no_face")


@dataclass(frozen=True)
class PreviousPart:
    """Work item of ReadPrevious: a user with previous tables, and the SHA-256 of the
    photos whose results this run may reuse."""

    user_id: str
    sha256s: tuple[str, ...]


def resolve_previous(option: str | None, output: str) -> str | None:
    """The previous output to reuse: --previous as given (it must hold a photos/ table),
    None for "none", and by default --output itself when it holds one."""
    if option == NO_PREVIOUS:
        return None
    location = output if option is None else option
    if folder_exists(FileSystems.join(location, "photos")):
        return location
    if option is not None:
        raise FileNotFoundError(f"--previous {option} holds no photos/ table of an earlier run "
                                f"(give an earlier --output, or --previous {NO_PREVIOUS})")
    return None


def recorded_settings(table: pa.Table | None) -> bytes | None:
    """The InferenceSettings JSON a photos/ or faces/ file was written with."""
    return (table.schema.metadata or {}).get(schemas.SETTINGS_KEY) if table is not None else None


def _columns(table: pa.Table, *names: str) -> list[list]:
    return [table.column(name).to_pylist() for name in names]


def reusable_results(photos: pa.Table, faces: pa.Table | None, settings: InferenceSettings) -> dict[str, str]:
    """{photo_path: sha256} of one user's previous photos whose results can be reused."""
    wanted = settings.to_json().encode()
    if "images_part" not in photos.column_names:  # written before images/: no thumbnails to keep
        return {}
    if recorded_settings(photos) != wanted or (faces is not None and recorded_settings(faces) != wanted):
        return {}
    indexes: dict[str, list[int]] = defaultdict(list)
    foreign: set[str] = set()
    if faces is not None:
        current = (settings.embedder.name, settings.embedder.version)
        for sha, index, name, version in zip(*_columns(faces, "photo_sha256", "face_index", "embedder",
                                                       "embedder_version")):
            indexes[sha].append(index)
            if (name, version) != current:
                foreign.add(sha)
    reusable = {}
    for path, sha, status, n_faces in zip(*_columns(photos, "photo_path", "photo_sha256", "status", "n_faces")):
        if status not in REUSABLE_STATUSES or sha is None or sha in foreign:
            continue
        if sorted(indexes.get(sha, [])) == list(range(n_faces if status == "faces" else 0)):
            reusable[path] = sha
    return reusable


def mark_reusable(previous: str | None, user_id: str, refs: Sequence[PhotoRef],
                  settings: InferenceSettings) -> tuple[list[PhotoRef], PreviousPart | None]:
    """One user's listed photos, those whose results `previous` already holds marked with
    their SHA-256, and the PreviousPart to read back (None: no previous tables of the user).

    Reads only photos/ (path, sha256, status, n_faces) and faces/ (sha256, face index,
    embedder) of the user. A user whose previous tables cannot be read is processed from
    scratch (logged)."""
    if previous is None:
        return list(refs), None
    reusable: dict[str, str] = {}
    part = None
    try:
        old_photos = read_user_table(previous, "photos", user_id,
                                     ["photo_path", "photo_sha256", "status", "n_faces", "images_part"])
        if old_photos is not None:
            old_faces = read_user_table(previous, "faces", user_id,
                                        ["photo_sha256", "face_index", "embedder", "embedder_version"])
            reusable = reusable_results(old_photos, old_faces, settings)
            part = PreviousPart(user_id, tuple(sorted(set(reusable.values()))))
    except (OSError, pa.ArrowException) as exc:
        logging.warning("previous tables of user %r unreadable (%s): processing its photos again", user_id, exc)
    marked = [replace(ref, reuse_sha256=reusable[ref.photo_path]) if ref.photo_path in reusable else ref
              for ref in refs]
    return marked, part


def _rows(table: pa.Table | None, sha256s: set[str]) -> list[dict]:
    """Rows of `table` whose photo_sha256 is one of sha256s."""
    if table is None or not sha256s:
        return []
    return table.filter(pc.is_in(table.column("photo_sha256"), pa.array(sorted(sha256s)))).to_pylist()


def previous_results(previous: str, part: PreviousPart) -> PreviousResults:
    """Read one user's previous results for part.sha256s and all its person ids."""
    wanted = set(part.sha256s)
    faces: dict[str, list[Face]] = defaultdict(list)
    face_rows = _rows(read_user_table(previous, "faces", part.user_id, [
        "photo_sha256", "face_index", "box", "landmarks", "det_score", "embedding", "quality",
        "quality_reason"]), wanted)
    for row in sorted(face_rows, key=lambda r: (r["photo_sha256"], r["face_index"])):
        faces[row["photo_sha256"]].append(Face(
            np.asarray(row["box"], np.float32), np.asarray(row["landmarks"], np.float32).reshape(5, 2),
            float(row["det_score"]), np.asarray(row["embedding"], np.float32), None,
            float(row["quality"]), row["quality_reason"]))
    results: dict[str, PhotoOutcome] = {}
    photo_rows = _rows(read_user_table(previous, "photos", part.user_id, [
        "photo_sha256", "status", "width", "height", "images_part"]), wanted)
    for row in photo_rows:
        sha = row["photo_sha256"]
        results.setdefault(sha, PhotoOutcome(part.user_id, "", row["status"], sha, row["width"], row["height"],
                                             None, faces.get(sha, []), images_part=row["images_part"]))
    clusters = read_user_table(previous, "clusters", part.user_id, ["face_key", "person_id"])
    person_of: dict[str, int] = {}
    next_id = 0
    if clusters is not None:
        person_of = {k: p for k, p in zip(*_columns(clusters, "face_key", "person_id")) if p >= 0}
        next_id = int((clusters.schema.metadata or {}).get(schemas.NEXT_PERSON_ID_KEY, b"0"))
    return PreviousResults(part.user_id, results, PreviousPeople(person_of, next_id))


class ReadPrevious(beam.DoFn):
    """PreviousPart -> (user key, PreviousResults), keyed like the outcomes it joins."""

    def __init__(self, previous: str) -> None:
        self.previous = previous

    def process(self, part: PreviousPart):
        yield user_key(part.user_id), previous_results(self.previous, part)
