"""images/: the report's JPEGs, written right after inference, before the per-user grouping.

Why: the per-user GroupByKey would otherwise carry every preview and face thumbnail of a
user to one worker. So `WriteImages` takes each inference batch (one user's photos: a
batch never mixes users, pipeline.plan), writes its JPEGs as one Parquet file,
``images/user_id=<id>/<images_part>`` (pipeline.schemas.IMAGES: the photo's preview with
face_index null, each face's aligned chip with its face_index), and passes the outcomes
on without them, naming that file (`PhotoOutcome.images_part`, stored in photos/). What
is grouped is then keys, boxes, quality and embeddings.

The file's name is a digest of the inference settings and the batch's photos (paths and
SHA-256), so a retried batch rewrites the same file. A photo reused by an incremental run
keeps naming the part an earlier run wrote; after each user's tables are written,
`keep_parts` copies such parts from another --previous folder and deletes the user's parts
that no photos/ row names any more. A part may hold rows of photos since deleted or
processed again (their other photos keep it), so readers take only the rows of the
photos and faces they show (`read_images`).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline import schemas
from pipeline.records import PhotoOutcome
from pipeline.tables import open_file, read_user_table, table_path, write_table
from pipeline.users import user_folder, user_key

IMAGES = "images"


def part_name(settings: str, outcomes: Sequence[PhotoOutcome]) -> str:
    """The images/ file of a batch: a digest of the settings JSON and its photos."""
    digest = hashlib.sha256(settings.encode("utf-8"))
    for o in sorted(outcomes, key=lambda o: o.photo_path):
        digest.update(f"\0{o.photo_path}\0{o.sha256}".encode("utf-8"))
    return f"part-{digest.hexdigest()[:32]}.parquet"


def images_table(user_id: str, outcomes: Sequence[PhotoOutcome]) -> pa.Table:
    """The previews and thumbnails of one user's outcomes (a photo's once)."""
    rows: list[tuple[str, int | None, bytes]] = []
    seen: set[str] = set()
    for o in outcomes:
        if o.sha256 is None or o.sha256 in seen:
            continue
        seen.add(o.sha256)
        if o.preview is not None:
            rows.append((o.sha256, None, o.preview))
        rows += [(o.sha256, k, f.thumbnail) for k, f in enumerate(o.faces) if f.thumbnail is not None]
    return pa.Table.from_pydict({"user_id": [user_id] * len(rows), "photo_sha256": [r[0] for r in rows],
                                 "face_index": [r[1] for r in rows], "jpeg": [r[2] for r in rows]},
                                schema=schemas.IMAGES)


def without_images(outcome: PhotoOutcome, part: str | None) -> PhotoOutcome:
    """The outcome without its JPEGs, naming the part that holds them (None: it had none)."""
    had = outcome.preview is not None or any(f.thumbnail is not None for f in outcome.faces)
    return replace(outcome, preview=None, faces=[replace(f, thumbnail=None) for f in outcome.faces],
                   images_part=part if had else None)


class WriteImages(beam.DoFn):
    """A batch's outcomes -> (user key, outcome without JPEGs) each, after writing the
    batch's JPEGs to images/ (see module docstring)."""

    def __init__(self, output: str, settings_json: str) -> None:
        self.output = output
        self.settings_json = settings_json
        self.written = beam.metrics.Metrics.counter("facegroup", "image_parts_written")

    def process(self, outcomes: Sequence[PhotoOutcome]) -> Iterator[tuple[int, PhotoOutcome]]:
        by_user: dict[str, list[PhotoOutcome]] = defaultdict(list)
        for o in outcomes:
            by_user[o.user_id].append(o)
        for user_id, group in by_user.items():
            table = images_table(user_id, group)
            part = part_name(self.settings_json, group) if table.num_rows else None
            if part is not None:
                write_table(table_path(self.output, IMAGES, user_id, part), table)
                self.written.inc()
            for o in group:
                yield user_key(user_id), without_images(o, part)


def keep_parts(output: str, user_id: str, named: Iterable[str], previous: str | None = None) -> None:
    """Leave exactly the `named` parts in the user's images/ folder: copy those only
    `previous` holds, delete the others (and temporary files of failed attempts)."""
    named = set(named)
    folder = FileSystems.join(output, IMAGES, user_folder(user_id))
    present = {FileSystems.split(m.path)[1]: m.path
               for m in FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list}
    if previous is not None:
        missing = sorted(p for p in named if p not in present)
        sources = [table_path(previous, IMAGES, user_id, p) for p in missing]
        found = [(s, table_path(output, IMAGES, user_id, p)) for s, p in zip(sources, missing)
                 if FileSystems.exists(s)]
        if found:
            if not present:  # a local destination folder must exist; object stores have none
                with contextlib.suppress(IOError):
                    FileSystems.mkdirs(folder)
            FileSystems.copy([s for s, _ in found], [d for _, d in found])
    stale = [path for name, path in present.items() if name not in named]
    if stale:
        FileSystems.delete(stale)


def read_images(output: str, user_id: str, parts: Iterable[str],
                wanted: set[tuple[str, int | None]] | None = None) -> Iterator[tuple[str, int | None, bytes]]:
    """(photo_sha256, face_index, jpeg) of the `wanted` images (face_index None = the
    photo's preview; None = all) found in the user's `parts`, each once, one row group at a time."""
    done: set[tuple[str, int | None]] = set()
    for part in sorted(set(parts)):
        path = table_path(output, IMAGES, user_id, part)
        if (wanted is not None and done >= wanted) or not FileSystems.exists(path):
            continue
        with open_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["photo_sha256", "face_index", "jpeg"]):
                for sha, index, jpeg in zip(*(batch.column(c).to_pylist() for c in range(3))):
                    if (sha, index) not in done and (wanted is None or (sha, index) in wanted):
                        done.add((sha, index))
                        yield sha, index, jpeg


def user_images(output: str, user_id: str, wanted: set[tuple[str, int | None]] | None = None
                ) -> dict[tuple[str, int | None], bytes]:
    """The `wanted` JPEGs (None: all) of one user among the parts its photos/ rows name, by
    (photo_sha256, face_index)."""
    photos = read_user_table(output, "photos", user_id, ["images_part"])
    parts = {p for p in photos.column("images_part").to_pylist() if p} if photos is not None else set()
    return {(sha, index): jpeg for sha, index, jpeg in read_images(output, user_id, parts, wanted)}
