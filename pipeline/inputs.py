"""Which photos to process, and their bytes, through Beam's file systems.

``--input`` is either a directory ``<root>/<user_id>/**/<photo>`` (every file below a
user folder is an input photo; files directly in the root belong to no user and are
reported as skipped) or a manifest (``.csv`` with a header, or ``.parquet``) with
columns ``user_id`` and ``path`` (relative paths are resolved against the manifest's
folder; absolute paths and URIs are used as they are and stored as given). Everything
goes through ``apache_beam.io.filesystems.FileSystems`` (what MatchFiles/ReadMatches
use), so local paths, gs://, s3://, ... work alike, with two exceptions for local
folders, where Beam's listing silently drops entries it cannot stat and its open()
blocks forever on a FIFO: local folders are walked with ``os.walk`` (every non-folder
entry becomes a photo, so broken links and symbolic-link loops end as read failures
instead of vanishing; links to folders are not followed, which rules out loops, and
are reported as skipped, like folders that cannot be listed), and a local path that is
not a regular file fails at read without being opened. A local library photo is read only
where its links lead inside its user's folder, unless ``--follow_links anywhere``
(pipeline.links); manifest rows may name any path.

The launcher lists the library before the pipeline starts (`list_photos`): the listing
is sorted, so batches are the same on every runner and every retry, and the number of
photos listed is known independently of the runner's metrics (the end-of-run check).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import stat
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.links import FOLLOW_USER, LinkLeavesFolder, confined
from pipeline.records import PhotoBytes, PhotoOutcome, PhotoRef, Skipped, describe_error, failed_outcome
from pipeline.users import user_id_problem

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
MANIFEST_COLUMNS = ("user_id", "path")
READ_CHUNK = 8 << 20


@dataclass
class Listing:
    """The photos of a library, sorted by (user_id, photo_path), and the files skipped."""

    photos: list[PhotoRef]
    skipped: list[Skipped]

    def batches(self, size: int) -> list[tuple[PhotoRef, ...]]:
        """Consecutive groups of `size` photos (the last one may be smaller)."""
        return [tuple(self.photos[i:i + size]) for i in range(0, len(self.photos), size)]


def is_manifest(location: str) -> bool:
    """Whether --input names a manifest file rather than a library directory."""
    return location.lower().endswith(MANIFEST_SUFFIXES)


def normalise_location(location: str) -> str:
    """Absolute form of a local path (workers may run elsewhere); URIs unchanged."""
    if "://" in location:
        return location.rstrip("/") if not location.endswith("://") else location
    return os.path.abspath(os.path.expanduser(location))


def list_photos(location: str, follow_links: str = FOLLOW_USER) -> Listing:
    """List a library folder or manifest; ValueError when it holds no photo at all.
    With follow_links FOLLOW_USER, local library photos are confined to their user's folder."""
    if is_manifest(location):
        manifest_dir = FileSystems.split(location)[0]
        items = [manifest_ref(row, manifest_dir) for row in read_manifest_rows(location)]
    elif "://" in location:
        matched = FileSystems.match([FileSystems.join(location, "**")])[0].metadata_list
        items = [library_ref(meta.path, location) for meta in matched]
    else:
        items = list_local(location, follow_links == FOLLOW_USER)
    photos = sorted((i for i in items if isinstance(i, PhotoRef)), key=lambda r: (r.user_id, r.photo_path))
    skipped = sorted((i for i in items if isinstance(i, Skipped)), key=lambda s: (s.path, s.reason))
    if not photos:
        layout = "rows with a valid user_id" if is_manifest(location) else "files in <root>/<user_id>/"
        raise ValueError(f"--input {location}: no photos found (expected {layout}; {len(skipped)} skipped)")
    return Listing(photos, skipped)


def list_local(root: str, confine_links: bool = True) -> list[PhotoRef | Skipped]:
    """Every non-folder entry under a local library root (FIFOs, broken links and link
    loops included: they fail at read), plus a Skipped item for each link to a folder
    (not followed) and each folder that cannot be listed. With confine_links, each photo
    may be read only inside its user's folder (PhotoRef.link_folder)."""
    items: list[PhotoRef | Skipped] = []
    prefix = root.rstrip("/") + "/"

    def unlistable(exc: OSError) -> None:
        rel = (exc.filename or root)[len(prefix):] or "."
        items.append(Skipped(_printable(rel), f"cannot list folder: {exc.strerror or exc}"))

    for folder, subfolders, files in os.walk(root, onerror=unlistable):
        for name in subfolders:
            if os.path.islink(os.path.join(folder, name)):
                rel = os.path.join(folder, name)[len(prefix):]
                items.append(Skipped(_printable(rel), "symbolic link to a folder (not followed)"))
        items.extend(library_ref(os.path.join(folder, name), root, confine_links) for name in files)
    return items


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


def read_manifest_rows(manifest: str) -> list[tuple[object, object]]:
    """(user_id, path) of every row of a CSV or Parquet manifest, in file order."""
    with FileSystems.open(manifest, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    if manifest.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        _check_columns(reader.fieldnames or [], manifest)
        return [(row["user_id"], row["path"]) for row in reader]
    table = pq.read_table(io.BytesIO(data))
    _check_columns(table.column_names, manifest)
    return list(zip(table.column("user_id").to_pylist(), table.column("path").to_pylist()))


def _check_columns(columns: list[str], manifest: str) -> None:
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"manifest {manifest} lacks column(s) {', '.join(missing)} "
                         f"(needs {', '.join(MANIFEST_COLUMNS)}; has {', '.join(columns) or 'none'})")


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
    with FileSystems.open(uri, mime_type="application/octet-stream",
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
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
