"""Which photos to process, listed inside the pipeline, and their bytes, through Beam's file systems.

``--input`` is either a directory ``<root>/<user_id>/**/<photo>`` (every file below a
user folder is an input photo; files directly in the root belong to no user and are
reported as skipped) or a manifest (``.csv`` with a header, or ``.parquet``) with
columns ``user_id`` and ``path`` (relative paths are resolved against the manifest's
folder; absolute paths and URIs are used as they are and stored as given). Everything
goes through ``apache_beam.io.filesystems.FileSystems`` (what MatchFiles/ReadMatches
use), so local paths, gs://, s3://, ... work alike, with two exceptions for local
folders, where Beam's listing silently drops entries it cannot stat and its open()
blocks forever on a FIFO: local folders are walked with ``os.scandir``/``os.walk`` (every
non-folder entry becomes a photo, so broken links and symbolic-link loops end as read
failures instead of vanishing; links to folders are not followed, which rules out loops,
and are reported as skipped, like folders that cannot be listed), and a local path that
is not a regular file fails at read without being opened. A local library photo is read
only where its links lead inside its user's folder, unless ``--follow_links anywhere``
(pipeline.links); manifest rows may name any path.

The launcher never enumerates the photos (`ListInput`): the graph starts from
LISTING_SHARDS tiny elements (the input location and a shard number), so its size does
not depend on the library's. A local library folder is listed in two steps, its user
folders (`ListUsers`, each shard taking the users whose name hashes to it) and, after a
Reshuffle, each user's photos (`ListUserPhotos`); an object store has no folders to list,
only every file under a prefix, which shard 0 lists in one go; a manifest is read in chunks
(`ReadManifest`: a Parquet file's row groups are shared among the shards, a CSV is
streamed by shard 0). Why shards rather than one element: Beam's DaskRunner partitions a
pipeline only where it starts (its Create), and one element would put the whole run on
one Dask worker. What comes out is one PhotoRef or Skipped per entry, in no order;
pipeline.plan groups and sorts them per user.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.links import FOLLOW_USER, LinkLeavesFolder, confined
from pipeline.records import PhotoBytes, PhotoOutcome, PhotoRef, Skipped, describe_error, failed_outcome
from pipeline.tables import open_file
from pipeline.users import user_id_problem

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
MANIFEST_COLUMNS = ("user_id", "path")
READ_CHUNK = 8 << 20
#: Elements the graph starts from; at least as many as Dask partitions one would ask for.
LISTING_SHARDS = 256
#: Manifest rows read at a time (bounded memory for any manifest size).
MANIFEST_CHUNK_ROWS = 65536


class NoPhotos(ValueError):
    """The input held no photo at all (known only once the pipeline has listed it)."""


@dataclass(frozen=True)
class ListingShard:
    """One of the graph's first elements: list the part `shard` of `shards` of `location`."""

    location: str
    shard: int
    shards: int


@dataclass(frozen=True)
class UserFolder:
    """A top-level folder of a local library (a user, or files to report as skipped)."""

    root: str
    name: str


def is_manifest(location: str) -> bool:
    """Whether --input names a manifest file rather than a library directory."""
    return location.lower().endswith(MANIFEST_SUFFIXES)


def normalise_location(location: str) -> str:
    """Absolute form of a local path (workers may run elsewhere); URIs unchanged."""
    if "://" in location:
        return location.rstrip("/") if not location.endswith("://") else location
    return os.path.abspath(os.path.expanduser(location))


def shard_of(name: str, shards: int) -> int:
    """The listing shard of a top-level entry (stable in every process; undecodable bytes kept)."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) % shards


def no_photos(location: str, skipped: int) -> NoPhotos:
    """The error of an input in which the pipeline listed no photo."""
    layout = "rows with a valid user_id" if is_manifest(location) else "files in <root>/<user_id>/"
    return NoPhotos(f"--input {location}: no photos found (expected {layout}; {skipped} skipped)")


def list_user_folders(shard: ListingShard) -> Iterator[UserFolder | PhotoRef | Skipped]:
    """This shard's top-level entries of a library root: a UserFolder per folder, a Skipped
    item per link to a folder and per file (no user's photo). An object store has no
    folders to list, only every file under a prefix: there shard 0 lists them all and
    yields their PhotoRefs (or Skipped items) itself."""
    root = shard.location
    if "://" in root:
        if shard.shard == 0:
            for meta in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list:
                yield library_ref(meta.path, root)
        return
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        if shard.shard == 0:
            yield Skipped(".", f"cannot list folder: {exc.strerror or exc}")
        return
    for entry in entries:
        if shard_of(entry.name, shard.shards) != shard.shard:
            continue
        try:
            is_folder = entry.is_dir()
        except OSError:
            is_folder = False
        if is_folder and entry.is_symlink():
            yield Skipped(_printable(entry.name), "symbolic link to a folder (not followed)")
        elif is_folder:
            yield UserFolder(root, entry.name)
        else:
            yield library_ref(entry.path, root)


def list_user_photos(folder: UserFolder, confine_links: bool = True) -> Iterator[PhotoRef | Skipped]:
    """Every file under one local user folder as a PhotoRef (or Skipped when the folder's
    name is no valid user id). Every non-folder entry counts (FIFOs, broken links and link
    loops included: they fail at read), links to folders and folders that cannot be listed
    are Skipped; with confine_links each photo may be read only inside its user's folder."""
    top = os.path.join(folder.root, folder.name)
    prefix = folder.root.rstrip("/") + "/"
    unlistable: list[Skipped] = []

    def record(exc: OSError) -> None:
        rel = (exc.filename or top)[len(prefix):] or "."
        unlistable.append(Skipped(_printable(rel), f"cannot list folder: {exc.strerror or exc}"))

    for parent, subfolders, files in os.walk(top, onerror=record):
        yield from unlistable
        unlistable.clear()
        for name in subfolders:
            if os.path.islink(os.path.join(parent, name)):
                rel = os.path.join(parent, name)[len(prefix):]
                yield Skipped(_printable(rel), "symbolic link to a folder (not followed)")
        for name in files:
            yield library_ref(os.path.join(parent, name), folder.root, confine_links)
    yield from unlistable


def library_ref(path: str, root: str, confine_links: bool = False) -> PhotoRef | Skipped:
    """The PhotoRef of a file listed under a library root, or why it belongs to no user.
    With confine_links (local roots only), the photo may be read only inside its user's folder."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"listed file {path!r} is not under the input root {root!r}")
    rel = path[len(prefix):]
    if "/" not in rel:
        return Skipped(_printable(rel), "not inside a user folder")
    user_id = rel.split("/", 1)[0]
    problem = user_id_problem(user_id)
    if problem:
        return Skipped(_printable(rel), problem)
    return PhotoRef(user_id, _valid_utf8(rel), path,
                    link_folder=os.path.join(root, user_id) if confine_links else None)


def manifest_ref(row: tuple[object, object], manifest_dir: str) -> PhotoRef | Skipped:
    """The PhotoRef of one manifest row (user_id, path), or why the row was skipped."""
    user_id, path = ("" if v is None else str(v) for v in row)
    if not path:
        return Skipped(f"user {_printable(user_id)!r}", "manifest row without a path")
    problem = user_id_problem(user_id)
    if problem:
        return Skipped(_printable(path), problem)
    absolute = "://" in path or os.path.isabs(path)
    return PhotoRef(user_id, path, path if absolute else FileSystems.join(manifest_dir, path))


def _valid_utf8(text: str) -> str:
    """`text` with undecodable file-name bytes (surrogate escapes) written as \\xNN, so
    that it can be stored in Parquet strings."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _printable(text: str) -> str:
    """`text` with control characters and undecodable bytes escaped (for the summary)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def check_manifest(manifest: str) -> None:
    """ValueError unless the manifest has the user_id and path columns; reads only its
    header (CSV) or schema (Parquet), so the launcher can refuse a wrong file at once."""
    with open_file(manifest) as f:
        if manifest.lower().endswith(".csv"):
            header = next(csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", newline="")), [])
        else:
            header = pq.ParquetFile(f).schema_arrow.names
    _check_columns(list(header), manifest)


def manifest_rows(shard: ListingShard) -> Iterator[tuple[object, object]]:
    """(user_id, path) of this shard's manifest rows, MANIFEST_CHUNK_ROWS at a time: a
    Parquet file's row groups go round the shards; a CSV (no safe split points: quoted
    fields may hold newlines) is streamed by shard 0."""
    csv_file = shard.location.lower().endswith(".csv")
    if csv_file and shard.shard != 0:
        return
    with open_file(shard.location) as f:
        if csv_file:
            reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))
            _check_columns(list(reader.fieldnames or []), shard.location)
            yield from ((row["user_id"], row["path"]) for row in reader)
            return
        parquet = pq.ParquetFile(f)
        _check_columns(parquet.schema_arrow.names, shard.location)
        groups = [g for g in range(parquet.num_row_groups) if g % shard.shards == shard.shard]
        if groups:
            for batch in parquet.iter_batches(MANIFEST_CHUNK_ROWS, groups, list(MANIFEST_COLUMNS)):
                yield from zip(batch.column("user_id").to_pylist(), batch.column("path").to_pylist())


def _check_columns(columns: list[str], manifest: str) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"manifest {manifest} lacks column(s) {', '.join(missing)} "
                         f"(needs {', '.join(MANIFEST_COLUMNS)}; has {', '.join(columns) or 'none'})")


class ListUsers(beam.DoFn):
    """ListingShard -> UserFolder (one per top-level folder of its share) or Skipped (or,
    for an object store, PhotoRef: see list_user_folders)."""

    def process(self, shard: ListingShard) -> Iterable[UserFolder | PhotoRef | Skipped]:
        yield from list_user_folders(shard)


class ListUserPhotos(beam.DoFn):
    """UserFolder -> PhotoRef per file (or Skipped); what ListUsers listed itself passes through."""

    def __init__(self, confine_links: bool) -> None:
        self.confine_links = confine_links

    def process(self, item: UserFolder | PhotoRef | Skipped) -> Iterable[PhotoRef | Skipped]:
        if isinstance(item, UserFolder):
            yield from list_user_photos(item, self.confine_links)
        else:
            yield item


class ReadManifest(beam.DoFn):
    """ListingShard of a manifest -> PhotoRef per row of its share (or Skipped)."""

    def process(self, shard: ListingShard) -> Iterable[PhotoRef | Skipped]:
        manifest_dir = FileSystems.split(shard.location)[0]
        yield from (manifest_ref(row, manifest_dir) for row in manifest_rows(shard))


class ListInput(beam.PTransform):
    """PBegin -> every photo of --input as a PhotoRef, and every entry that belongs to no
    user as a Skipped item (unordered)."""

    def __init__(self, location: str, follow_links: str = FOLLOW_USER, shards: int = LISTING_SHARDS) -> None:
        super().__init__()
        self.location = location
        self.follow_links = follow_links
        self.shards = shards

    def expand(self, begin: beam.pvalue.PBegin) -> beam.PCollection:
        shards = begin | "ListingShards" >> beam.Create(
            [ListingShard(self.location, i, self.shards) for i in range(self.shards)])
        if is_manifest(self.location):
            return shards | "ReadManifest" >> beam.ParDo(ReadManifest())
        confine = self.follow_links == FOLLOW_USER and "://" not in self.location
        return (shards
                | "ListUsers" >> beam.ParDo(ListUsers())
                | "SpreadUsers" >> beam.Reshuffle()
                | "ListUserPhotos" >> beam.ParDo(ListUserPhotos(confine)))


class FileTooLarge(ValueError):
    """A file bigger than --max_file_bytes."""


class NotAFile(OSError):
    """A local path that names no regular file (FIFO, device, socket, broken link)."""


def check_local_file(path: str) -> None:
    """Raise NotAFile unless the local `path` is (a link to) a regular file; opening a
    FIFO would block forever and a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotAFile("broken symbolic link (its target does not exist)") from None
        raise
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "special")
        raise NotAFile(f"not a regular file ({kind})")


def read_bounded(uri: str, max_bytes: int, link_folder: str | None = None) -> bytes:
    """The bytes of `uri` (never decompressed), or FileTooLarge once it exceeds max_bytes.
    A local `uri` is read at its real path, which must lie in `link_folder` when given
    (LinkLeavesFolder otherwise; pipeline.links)."""
    if "://" not in uri:
        check_local_file(uri)
        uri = confined(uri, link_folder)
    chunks, total = [], 0
    with open_file(uri) as f:
        while chunk := f.read(READ_CHUNK):
            total += len(chunk)
            if total > max_bytes:
                raise FileTooLarge(f"file is larger than --max_file_bytes={max_bytes}")
            chunks.append(chunk)
    return b"".join(chunks)


def read_photo(ref: PhotoRef, max_bytes: int) -> PhotoBytes | PhotoOutcome:
    """The photo's bytes and SHA-256, or a failed outcome (stage "read") whose error names
    the photo by its relative path only (the real path of a followed link by its user's id)."""
    try:
        data = read_bounded(ref.uri, max_bytes, ref.link_folder)
    except (FileTooLarge, NotAFile, LinkLeavesFolder) as exc:
        return failed_outcome(ref.user_id, ref.photo_path, "read", str(exc))
    except Exception as exc:  # I/O errors of any file system become failure rows
        hidden = {ref.uri: ref.photo_path}
        if ref.link_folder:
            hidden[os.path.realpath(ref.link_folder)] = ref.user_id
        return failed_outcome(ref.user_id, ref.photo_path, "read", describe_error(exc, hidden))
    return PhotoBytes(ref, hashlib.sha256(data).hexdigest(), data)
