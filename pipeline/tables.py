"""The output tables: where each user's file lives, and the one way to write and read them.

Each table is written per user as ``<table>/user_id=<encoded id>/part-0.parquet``
(pipeline.users.user_folder; images/ holds several parts per user: pipeline.images), as
Hive partitions: user_id lives in the folder name only. Files written before this layout
also stored ``user_id`` inside, which made every Hive-aware reader
(``pyarrow.parquet.read_table`` on the folder, pandas, ...) fail to merge the file's string
column with the folder's dictionary column. So the writer drops the column from each file
(`file_table`) and readers take it from the folder, as text (`USER_PARTITIONING`: a
type-guessing reader would turn user "007" into 7).

Everything goes through Beam's ``FileSystems`` (local paths, s3://, gs://, ...): workers
write with `write_table` (a unique hidden temporary file renamed over the final name, so a
retried bundle replaces its file and readers never see half-written ones; pyarrow ignores
names starting with '.'), and the pipeline (reuse, report, search) reads one user's table
with `read_user_table`, only the columns asked for. `open_table` reads a whole local
table folder as one dataset (training, tests, the README's examples).
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterable
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import object_store  # noqa: F401 (every process reading or writing through here shares S3 clients)
from pipeline.users import USER_FOLDER_PREFIX, user_folder

PARTITION_COLUMN = "user_id"
PART = "part-0.parquet"
#: Records the workers of a run leave for the run's last step and the launcher (listing
#: counts, the run's summary): ``_runs/<run id>/...``, removed when the run completes.
RUNS = "_runs"
#: Hive partitioning of every table folder: user_id as a string, percent-decoded.
USER_PARTITIONING = ds.HivePartitioning(pa.schema([pa.field(PARTITION_COLUMN, pa.string())]),
                                        segment_encoding="uri")


def table_path(output: str, table: str, user_id: str, part: str = PART) -> str:
    """Location of one user's file (`part`) of `table`."""
    return FileSystems.join(output, table, user_folder(user_id), part)


def run_record_path(output: str, run_id: str, name: str) -> str:
    """Location of a record of run `run_id` (see RUNS)."""
    return FileSystems.join(output, RUNS, run_id, name)


def file_table(table: pa.Table) -> pa.Table:
    """`table` as stored in its user's file: without the partition column, metadata kept."""
    return table.drop_columns([PARTITION_COLUMN]) if PARTITION_COLUMN in table.column_names else table


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a unique temporary file in the same folder, then rename it
    over `path` (replacing what an earlier attempt or run wrote)."""
    folder, name = FileSystems.split(path)
    temp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with FileSystems.create(temp, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        write(f)
    FileSystems.rename([temp], [path])


def write_table(path: str, table: pa.Table) -> None:
    """Write a Parquet file (zstd) atomically, without the partition column."""
    write_atomically(path, lambda f: pq.write_table(file_table(table), f, compression="zstd"))


def write_text(path: str, text: str) -> None:
    """Write a small UTF-8 text file atomically."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def open_file(path: str) -> BinaryIO:
    """A file opened for reading through Beam's file systems, its bytes as stored."""
    return FileSystems.open(path, mime_type="application/octet-stream",
                            compression_type=CompressionTypes.UNCOMPRESSED)


def read_text(path: str) -> str:
    """A small UTF-8 file read through Beam's file systems."""
    with open_file(path) as f:
        return f.read().decode("utf-8")


def read_parquet(path: str, columns: Iterable[str] | None = None) -> pa.Table | None:
    """The asked `columns` of a Parquet file that it has (all when None), metadata kept;
    None when the file does not exist. Only those columns' chunks are read."""
    if not FileSystems.exists(path):
        return None
    with open_file(path) as f:
        parquet = pq.ParquetFile(f)
        present = parquet.schema_arrow.names
        return parquet.read(columns=None if columns is None else [c for c in columns if c in present])


def read_user_table(output: str, table: str, user_id: str, columns: Iterable[str] | None = None,
                    part: str = PART) -> pa.Table | None:
    """One user's file of `table` under `output` (None when it has none): the asked columns
    it holds (a table written before a column existed lacks it), with the schema metadata."""
    return read_parquet(table_path(output, table, user_id, part), columns)


def table_users(output: str, table: str) -> set[str]:
    """The users that have a file of `table` under `output` (ids decoded from the folders)."""
    found = set()
    for meta in FileSystems.match([FileSystems.join(output, table, "*", PART)])[0].metadata_list:
        name = FileSystems.split(FileSystems.split(meta.path)[0])[1]
        if name.startswith(USER_FOLDER_PREFIX):
            found.add(unquote(name[len(USER_FOLDER_PREFIX):], errors="strict"))
    return found


def open_table(root: str | Path, schema: pa.Schema | None = None) -> ds.Dataset:
    """One local table folder (e.g. ``OUTPUT/faces``) as a dataset whose rows carry user_id
    (string) from their folder; `schema`, when given, fixes the columns and their types."""
    return ds.dataset(root, format="parquet", schema=schema, partitioning=USER_PARTITIONING)
