"""One run per --output folder: a lock file naming the run that holds it.

Two runs writing into one output would interleave their tables and delete each other's
run records. So the launcher creates ``OUTPUT/_LOCK`` (run id, host, pid, start time,
heartbeat) before any work, refreshes the heartbeat from a background thread while the
run goes on, and deletes the lock at the end. Another run refuses to start while the lock
is fresh; a lock whose process has ended (same host: a run killed with kill -9 is resumed
at once), a lock without a heartbeat for the stale period (a run killed elsewhere), or any
lock with --force, is taken over, and the launcher says so. Before writing _SUCCESS the
launcher checks that the lock is still its own.

Reads, heartbeats and deletes go through Beam's FileSystems. Creating the lock must be
exclusive: locally it is hard-linked into place (atomic; fails when a lock exists), and a
stale lock is first renamed aside (only one run can), so of two runs starting together
exactly one proceeds. Other file systems have no exclusive create: there the lock is
written when absent and read back, which narrows the race but cannot close it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

from apache_beam.io.filesystems import FileSystems

from pipeline.tables import read_text, write_text

LOCK = "_LOCK"
#: Heartbeats per stale period: a live run is never mistaken for a dead one by a late beat.
BEATS_PER_PERIOD = 4


class OutputLocked(ValueError):
    """Another run holds --output (a bad option: the launcher exits 2)."""


@dataclass(frozen=True)
class LockInfo:
    """What a lock file says: who holds the output, since when, and the last sign of life."""

    run_id: str
    host: str
    pid: int
    started: str  # ISO 8601, UTC
    heartbeat: float  # seconds since the epoch

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        return f"run {self.run_id} on {self.host} (pid {self.pid}, started {self.started})"

    def process_ended(self) -> bool:
        """Whether the lock's launcher ran on this host and its process is gone (a reused
        pid reads as alive: the lock then waits for the stale period)."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_lock(path: str) -> LockInfo | None:
    """The lock at `path`; None when there is none. An unreadable lock file reads as a run
    that never beat (stale), so garbage never blocks an output for good."""
    try:
        text = read_text(path)
    except Exception:  # missing (or vanished while read): no lock
        return None if not FileSystems.exists(path) else LockInfo("unknown", "unknown", 0, "unknown", 0.0)
    try:
        return LockInfo(**json.loads(text))
    except (ValueError, TypeError):
        return LockInfo("unknown", "unknown", 0, "unknown", 0.0)


def _create_new(path: str, text: str) -> bool:
    """Create `path` holding `text` unless it exists; whether this call created it."""
    if "://" in path:  # no exclusive create on object stores: check, write, read back
        if FileSystems.exists(path):
            return False
        write_text(path, text)
        found = read_lock(path)
        return found is not None and found.to_json() == text
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        os.link(temp, path)  # atomic, and never replaces an existing lock
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temp)


def _remove_stale(path: str, stale: LockInfo, run_id: str) -> bool:
    """Move the lock judged stale out of the way; False when another run got there first
    (what was moved is then put back, unless yet another lock took its place)."""
    aside = f"{path}.{run_id}.stale"
    try:
        FileSystems.rename([path], [aside])
    except Exception:  # gone: another run took it over
        return False
    moved = read_lock(aside)
    FileSystems.delete([aside])
    if moved != stale and moved is not None:
        _create_new(path, moved.to_json())
        return False
    return True


class RunLock:
    """A held lock: a context manager that beats while the run goes on and then releases."""

    def __init__(self, path: str, info: LockInfo, stale_after_s: float, took_over: str | None) -> None:
        self.path = path
        self.info = info
        self.took_over = took_over  # what was taken over and why, for the launcher to say
        self._every = stale_after_s / BEATS_PER_PERIOD
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="facegroup-lock-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            if not self.held():
                return
            self.info = replace(self.info, heartbeat=time.time())
            write_text(self.path, self.info.to_json())

    def held(self) -> bool:
        """Whether the lock file still names this run (not taken over by another)."""
        found = read_lock(self.path)
        return found is not None and found.run_id == self.info.run_id

    def __enter__(self) -> "RunLock":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.held():
            FileSystems.delete([self.path])


def acquire(output: str, run_id: str, stale_after_s: float, force: bool = False) -> RunLock:
    """The lock of `output` for `run_id`; OutputLocked, in one line, when another run holds it
    and has beaten within `stale_after_s` (unless `force`)."""
    path = FileSystems.join(output, LOCK)
    mine = LockInfo(run_id, socket.gethostname(), os.getpid(), _now_iso(), time.time())
    took_over = None
    for _ in range(3):  # lock vanished or was taken over between the steps: look again
        if _create_new(path, mine.to_json()):
            return RunLock(path, mine, stale_after_s, took_over)
        held = read_lock(path)
        if held is None:
            continue
        silent_s = time.time() - held.heartbeat
        if silent_s >= stale_after_s:
            why = f"no heartbeat for {silent_s / 60:.1f} min"
        elif held.process_ended():
            why = "its process has ended"
        elif force:
            why = "--force"
        else:
            raise OutputLocked(
                f"--output {output} is in use by {held.describe()}, last heartbeat {silent_s:.0f} s ago "
                f"(lock {path}); wait for it to end, or pass --force if it is dead")
        if _remove_stale(path, held, run_id):
            took_over = f"took over the lock of {held.describe()}: {why}"
    raise OutputLocked(f"--output {output}: could not take its lock {path} (other runs keep taking it)")
