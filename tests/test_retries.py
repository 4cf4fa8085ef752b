"""Retried and duplicated work never duplicates a face.

Why: Beam runs a failed bundle again, and some runners deliver an element more than once;
the table writer is where a user's files are made. A retried writer must leave
exactly the tables of one clean attempt: no duplicate face keys, no extra part files, no
leftover temporary files, in plain and in incremental runs.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import schemas
from pipeline.finish import remove_stale
from pipeline.inference import EmbedderInfo, InferenceSettings
from pipeline.outputs import WriteUserTables
from pipeline.person_ids import PreviousPeople
from pipeline.records import REUSED, Face, PhotoOutcome, PreviousResults
from pipeline.user_tables import ClusterUsers, UserStats
from pipeline.users import user_folder, user_key

SETTINGS = InferenceSettings(EmbedderInfo("dlib-resnet", "v1", 4), 20, 0.9, 1600)
USERS = ("ann", "ben")


def outcome(user: str, path: str, sha: str, n_faces: int) -> PhotoOutcome:
    rng = np.random.default_rng(sum(map(ord, path)))
    faces = [Face(np.float32([1, 2, 30, 40]), np.zeros((5, 2), np.float32), 0.99,
                  (v := rng.normal(size=4).astype(np.float32)) / np.linalg.norm(v), b"jpeg") for _ in range(n_faces)]
    return PhotoOutcome(user, path, "faces" if n_faces else "no_face", sha, 50, 60, b"p", faces)


def write(out: Path, element: tuple[int, list]) -> list[UserStats]:
    """Cluster one grouped element and write its users' tables, as the pipeline does."""
    return [written.stats for user in ClusterUsers(SETTINGS, "agglomerative").process(element)
            for written in WriteUserTables(str(out)).process(user)]


def groups() -> list[tuple[int, list[PhotoOutcome]]]:
    """Two users' grouped outcomes, 3 photos with 1-2 faces and one without each."""
    return [(user_key(u), [outcome(u, f"{u}/{i}.jpg", f"{u}{i}", i % 3) for i in range(4)]) for u in USERS]


class FailsOnce(WriteUserTables):
    """A writer whose first attempt writes every table of its element, leaves a temporary
    file behind as a killed write would, then fails; later attempts work. A marker file
    tells attempts apart (each attempt may run on a fresh copy of the DoFn)."""

    def __init__(self, marker: str, *args) -> None:
        super().__init__(*args)
        self.marker = marker

    def process(self, user):
        if not os.path.exists(f"{self.marker}-{user.user_id}"):
            open(f"{self.marker}-{user.user_id}", "w").close()
            list(super().process(user))
            Path(self.output, "faces", user_folder(user.user_id), ".part-0.parquet.killed.tmp").write_bytes(b"half")
            raise RuntimeError("worker lost after writing")
        yield from super().process(user)


def part_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_bundle_retried_by_beam_leaves_the_tables_of_one_clean_attempt(tmp_path):
    clean = tmp_path / "clean"
    for element in groups():
        write(clean, element)
    remove_stale(str(clean), USERS)

    out = tmp_path / "retried"
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create(groups())
             | beam.ParDo(ClusterUsers(SETTINGS, "agglomerative"))
             | beam.ParDo(FailsOnce(str(tmp_path / "attempted"), str(out))))
    assert all((tmp_path / f"attempted-{u}").exists() for u in USERS)  # the first attempts did fail
    remove_stale(str(out), USERS)
    assert part_files(out) == part_files(clean)  # no duplicates, no extra parts, no temp files left
    for user in USERS:
        assert sorted(os.listdir(out / "faces" / user_folder(user))) == ["part-0.parquet"]
        keys = pq.read_table(out / "faces" / user_folder(user) / "part-0.parquet").column("face_key").to_pylist()
        assert len(keys) == len(set(keys)) == 3


def test_duplicated_deliveries_and_reruns_into_the_previous_output_are_idempotent(tmp_path):
    out = tmp_path / "out"
    key, outcomes = groups()[0]
    write(out, (key, outcomes))
    remove_stale(str(out), ["ann"])
    first = part_files(out)
    # an incremental run into the same folder reusing every photo, as ReadPrevious would give it
    clusters = pq.read_table(out / "clusters" / user_folder("ann") / "part-0.parquet")
    people = PreviousPeople(dict(zip(clusters.column("face_key").to_pylist(), clusters.column("person_id").to_pylist())),
                            int(clusters.schema.metadata[schemas.NEXT_PERSON_ID_KEY]))
    previous = PreviousResults("ann", {o.sha256: replace(o, photo_path="") for o in outcomes}, people)
    reused = [PhotoOutcome("ann", o.photo_path, REUSED, o.sha256) for o in outcomes]
    for _ in range(2):  # a retried bundle, every element delivered twice
        users = write(out, (key, reused + reused[::-1] + [previous, previous]))
    remove_stale(str(out), ["ann"])
    assert (users[0].photos, users[0].reused, users[0].duplicate_listings, users[0].faces) == (4, 4, 4, 3)
    assert part_files(out) == first  # byte for byte the tables of the first run
