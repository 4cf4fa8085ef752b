"""Progress of a running pipeline: a line on stderr every --progress_seconds.

Why: 100,000 photos at ~20 photos/s is 80 minutes, and a silent run looks hung. While
Beam runs, the launcher has no live counts (DirectRunner and DaskRunner report metrics
only at the end, if at all). So the inference step itself (`CountingModelHandler`, inside
RunInference: DaskRunner runs one step over a whole partition before the next, so a later
step would only count at the end of each partition) keeps a count per worker instance of
the photos it has finished and how many of them failed, and writes it now and then to
``OUTPUT/_progress/<run id>/<instance>.json`` through Beam's FileSystems, so it works
wherever the output does. The photos listed are counted the same way, by the step that
follows the listing in the graph (pipeline.plan), so the total grows while the workers
list the library. A launcher thread (`ProgressPrinter`) sums those files and prints
``progress: 340/1000 photos (34%), 18.2 photos/s, ETA 36 s, 2 failed``.

The counts are a progress estimate, not the summary: a retried batch counts again
(capped at the number listed), and the last moments of each inference worker show only
in the summary printed at the end.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any, Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.inference import FaceModelHandler
from pipeline.object_store import remove_folder
from pipeline.records import DecodedPhoto, PhotoOutcome
from pipeline.tables import read_text, write_text

PROGRESS = "_progress"
#: The rate is measured over this many seconds of recent progress (starting slowly while
#: models load, then following the current pace).
RATE_WINDOW_S = 60.0


def progress_folder(output: str, run_id: str) -> str:
    """Where the workers of run `run_id` leave their counts."""
    return FileSystems.join(output, PROGRESS, run_id)


class ProgressRecorder:
    """Worker side: the photos listed, or finished, by one DoFn instance, written to its own
    file at most every `every_s` seconds (and by `flush`). Progress is advisory: a failed
    write is logged, never raised."""

    def __init__(self, folder: str, every_s: float) -> None:
        self.folder = folder
        self.every_s = every_s
        self.listed = 0
        self.photos = 0
        self.failed = 0
        self._name: str | None = None  # chosen on the worker: every unpickled copy writes its own file
        self._written = float("-inf")
        self._unwritten = False

    def add(self, outcomes: Sequence[PhotoOutcome]) -> None:
        """Count finished photos."""
        self.photos += len(outcomes)
        self.failed += sum(o.status == "failed" for o in outcomes)
        self._changed()

    def add_listed(self, n: int) -> None:
        """Count photos listed."""
        self.listed += n
        self._changed()

    def _changed(self) -> None:
        self._unwritten = True
        if time.monotonic() - self._written >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the counts now if they changed since the last write."""
        if not self._unwritten:
            return
        self._written, self._unwritten = time.monotonic(), False
        self._name = self._name or uuid.uuid4().hex
        try:
            write_text(FileSystems.join(self.folder, f"{self._name}.json"),
                       json.dumps({"listed": self.listed, "photos": self.photos, "failed": self.failed}))
        except Exception as exc:  # a progress file must never fail a photo batch
            logging.warning("could not write progress to %s: %s", self.folder, exc)


class CountingModelHandler(FaceModelHandler):
    """FaceModelHandler that tells `recorder` about every batch it finishes."""

    def __init__(self, recorder: ProgressRecorder, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder

    def run_inference(self, batch: Sequence[DecodedPhoto | PhotoOutcome], model: Any,
                      inference_args: dict[str, Any] | None = None) -> Iterable[list[PhotoOutcome]]:
        batches = list(super().run_inference(batch, model, inference_args))
        for outcomes in batches:
            self.recorder.add(outcomes)
        return batches


def read_progress(folder: str) -> tuple[int, int, int]:
    """(photos listed, photos finished, photos failed) summed over the workers' files in
    `folder`; files that vanish or are unreadable while being read count as nothing."""
    totals = [0, 0, 0]
    try:
        found = FileSystems.match([FileSystems.join(folder, "*.json")])[0].metadata_list
    except Exception:  # nothing written yet (some file systems raise for an absent folder)
        return 0, 0, 0
    for meta in found:
        try:
            record = json.loads(read_text(meta.path))
            counts = [int(record[name]) for name in ("listed", "photos", "failed")]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        totals = [a + b for a, b in zip(totals, counts)]
    return totals[0], totals[1], totals[2]


def format_duration(seconds: float) -> str:
    """`36 s`, `12 min`, `1 h 20 min`: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(done: int, listed: int, rate: float, failed: int) -> str:
    """The line printed while a run goes on (done capped at listed; rate in photos/s)."""
    done = min(done, listed)
    percent = 100 * done // listed if listed else 0  # nothing listed yet: the listing is still going on
    eta = format_duration((listed - done) / rate) if rate > 0 else "unknown"
    return (f"progress: {done}/{listed} photos ({percent}%), {rate:.1f} photos/s, ETA {eta}, "
            f"{failed} failed")


class ProgressPrinter:
    """Launcher side: while in its `with` block, prints a progress line to stderr every
    `every_s` seconds from the workers' counts (photos listed so far included); removes
    the counts at the end."""

    def __init__(self, output: str, run_id: str, every_s: float) -> None:
        self.root = FileSystems.join(output, PROGRESS)
        self.folder = progress_folder(output, run_id)
        self.every_s = every_s
        self.samples: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._print, name="facegroup-progress", daemon=True)

    def recorder(self) -> ProgressRecorder:
        """What the workers count with: files written twice per printed line."""
        return ProgressRecorder(self.folder, self.every_s / 2)

    def line(self) -> str:
        """The current progress line (also records the sample the rate is measured on)."""
        listed, done, failed = read_progress(self.folder)
        now = time.monotonic()
        self.samples.append((now, min(done, listed)))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return progress_line(done, listed, (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0, failed)

    def _print(self) -> None:
        while not self._stop.wait(self.every_s):
            print(self.line(), file=sys.stderr, flush=True)

    def __enter__(self) -> "ProgressPrinter":
        self.samples.append((time.monotonic(), 0))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        try:  # this run's counts, and any left by a killed earlier run (one run per output)
            remove_folder(self.root)
        except Exception as exc:
            logging.warning("could not remove %s: %s", self.root, exc)
