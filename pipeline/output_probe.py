"""Prove that --output can be written before any photo is read.

A read-only file system, a file in the way or a missing permission would otherwise show
only in the per-user writers, after every photo was decoded and detected. The probe does
what the writers and the launcher do, through Beam's FileSystems (so it holds for any
file system): create a file, write it, rename it, read it back and delete it.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.records import describe_error

PROBE = "_probe"


class OutputNotWritable(ValueError):
    """--output cannot be written (a bad option: the launcher exits 2)."""


def probe_output(output: str, run_id: str) -> None:
    """Create, write, rename, read back and delete a probe file under `output` (created
    when missing); OutputNotWritable, naming the folder and the reason, when any step fails."""
    temp = FileSystems.join(output, f".{PROBE}-{run_id}.tmp")
    final = FileSystems.join(output, f"{PROBE}-{run_id}")
    payload = f"facegroup write probe {run_id}\n".encode()
    with _beam_io_errors_unlogged():
        try:
            with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(payload)
            FileSystems.rename([temp], [final])
            with FileSystems.open(final, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                read_back = f.read()
            FileSystems.delete([final])
        except Exception as exc:  # any file system's error: say which folder, in one line
            _remove_quietly([temp, final])
            raise OutputNotWritable(f"--output {output} cannot be written: {reason(exc)}") from None
    if read_back != payload:
        raise OutputNotWritable(f"--output {output}: a probe file read back other bytes than were written")


@contextlib.contextmanager
def _beam_io_errors_unlogged() -> Iterator[None]:
    """Drop the error records Beam's object-store I/O logs itself on the root logger, with a
    traceback, before it raises (e.g. s3io for a bucket that does not exist): the probe's
    one-line error says the same."""
    def keep(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}apache_beam{os.sep}io{os.sep}" in record.pathname)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def reason(exc: BaseException) -> str:
    """The root cause of a file system error in one line (Beam wraps it in BeamIOError)."""
    if isinstance(exc, BeamIOError) and exc.exception_details:
        exc = next(iter(exc.exception_details.values()))
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({type(exc).__name__}, errno {exc.errno})"
    return describe_error(exc)


def _remove_quietly(paths: list[str]) -> None:
    """Delete whichever of `paths` a failed probe left (nothing else can be done there)."""
    for path in paths:
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except Exception:  # the probe's own error is the one to report
            pass
