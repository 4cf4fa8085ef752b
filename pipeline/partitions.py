"""The output tables as Hive partitions by user: user_id lives in the folder name only.

Each table is written per user as ``<table>/user_id=<encoded id>/part-0.parquet``
(pipeline.users.user_folder). Files written before this module also stored ``user_id``
inside, which made every Hive-aware reader (``pyarrow.parquet.read_table`` on the folder,
pandas, ...) fail to merge the file's string column with the folder's dictionary column.
So the writer drops the column from each file (`file_table`) and readers take it from the
folder, as text (`USER_PARTITIONING`: a type-guessing reader would turn user "007" into 7).
Readers here still accept files of the old layout: where a file holds ``user_id``, its
value is the folder's.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

PARTITION_COLUMN = "user_id"
#: Hive partitioning of every table folder: user_id as a string, percent-decoded.
USER_PARTITIONING = ds.HivePartitioning(pa.schema([pa.field(PARTITION_COLUMN, pa.string())]),
                                        segment_encoding="uri")


def file_table(table: pa.Table) -> pa.Table:
    """`table` as stored in its user's file: without the partition column, metadata kept."""
    return table.drop_columns([PARTITION_COLUMN]) if PARTITION_COLUMN in table.column_names else table


def open_table(root: str | Path, schema: pa.Schema | None = None) -> ds.Dataset:
    """One table folder (e.g. ``OUTPUT/faces``) as a dataset whose rows carry user_id
    (string) from their folder; `schema`, when given, fixes the columns and their types."""
    return ds.dataset(root, format="parquet", schema=schema, partitioning=USER_PARTITIONING)
