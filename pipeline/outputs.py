"""Per-user Parquet tables, written after ClusterUsers (pipeline.user_tables).

The writer puts each of a user's five tables at ``<output>/<table>/user_id=<encoded
id>/part-0.parquet`` (empty tables included, so a re-run replaces every stale file), with
the explicit schemas of pipeline.schemas less user_id (the folder name holds it:
pipeline.tables), through ``FileSystems`` (local paths, s3://, gs://, ...), each
atomically (pipeline.tables.write_table): a retried or duplicated bundle rewrites the same
deterministic content under the same name, so outputs never hold duplicates. Beam's file
sinks are not used: on DaskRunner they leave empty final files. Then the user's images/
folder is left with exactly the parts its photos/ rows name (pipeline.images.keep_parts).
"""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from pipeline.images import keep_parts
from pipeline.tables import table_path, write_table
from pipeline.user_tables import TABLES, UserTables


class WriteUserTables(beam.DoFn):
    """UserTables -> the user's five Parquet files and images/ parts kept; yields the
    UserTables on (to the report's step). `previous`: the output reused photos come from
    (their images/ parts are copied when it is another folder)."""

    def __init__(self, output: str, previous: str | None = None) -> None:
        self.output = output
        self.copy_from = previous if previous != output else None  # another folder's parts are copied
        self.counters = {name: beam.metrics.Metrics.counter("facegroup", name) for name in (
            "users_written", "photos_written", "photos_with_faces", "photos_without_faces",
            "photos_failed", "faces_written")}

    def process(self, user: UserTables) -> Iterator[UserTables]:
        for name in TABLES:
            write_table(table_path(self.output, name, user.user_id), user.tables[name])
        keep_parts(self.output, user.user_id, user.image_parts(), self.copy_from)
        stats, c = user.stats, self.counters
        c["users_written"].inc()
        c["photos_written"].inc(stats.photos)
        c["photos_with_faces"].inc(stats.with_faces)
        c["photos_without_faces"].inc(stats.without_faces)
        c["photos_failed"].inc(sum(stats.failed.values()))
        c["faces_written"].inc(stats.faces)
        yield user
