"""Progress lines while the pipeline runs (pipeline.progress).

Why: a long run that prints nothing for an hour looks hung. Workers count finished
photos, and the step after the listing counts listed photos, into small files under
OUTPUT/_progress/; the launcher sums them and prints a line every --progress_seconds.
Here: the line's arithmetic (rate, ETA, capping), the counting files, and real
DirectRunner runs that print lines (counts growing, the number listed growing to every
photo, done within it) or, with --quiet, none. DaskRunner's lines are checked in
test_runners.py.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline import progress
from pipeline.progress import ProgressPrinter, ProgressRecorder, format_duration, progress_line, read_progress
from pipeline.records import PhotoOutcome
from pipeline.run import main, run
from tests.conftest import lfw_image

LINE = re.compile(r"progress: (\d+)/(\d+) photos \((\d+)%\), (\d+\.\d) photos/s, ETA (.+), (\d+) failed")
PHOTOS = [("Colin_Powell", i) for i in range(1, 7)] + [("Tony_Blair", i) for i in range(1, 7)]


def outcomes(n: int, failed: int = 0) -> list[PhotoOutcome]:
    return [PhotoOutcome("u", f"u/{i}.jpg", "failed" if i < failed else "no_face") for i in range(n)]


def test_line_shows_done_of_listed_rate_eta_and_failures():
    assert progress_line(340, 1000, 18.2, 2) == "progress: 340/1000 photos (34%), 18.2 photos/s, ETA 36 s, 2 failed"
    assert progress_line(0, 1000, 0.0, 0) == "progress: 0/1000 photos (0%), 0.0 photos/s, ETA unknown, 0 failed"
    assert progress_line(1020, 1000, 5.0, 1).startswith("progress: 1000/1000 photos (100%)")  # retried batches
    assert progress_line(0, 0, 0.0, 0).startswith("progress: 0/0 photos (0%)")  # still listing
    assert [format_duration(s) for s in (0.4, 89, 90, 100_000 / 20, 5400, 7199)] == [
        "0 s", "89 s", "2 min", "83 min", "1 h 30 min", "2 h 00 min"]


def test_workers_counts_are_summed_and_written_at_most_every_interval(tmp_path):
    folder = str(tmp_path / "_progress" / "run")
    first, second, lister = (ProgressRecorder(folder, s) for s in (3600.0, 0.0, 3600.0))
    first.add(outcomes(16, failed=2))
    first.add(outcomes(16))  # within the interval: counted, not written yet
    second.add(outcomes(5, failed=1))
    second.add(outcomes(5))
    lister.add_listed(7)
    lister.add_listed(3)  # within the interval: written by the flush at the end of the bundle
    assert (first.photos, first.failed) == (32, 2)
    assert read_progress(folder) == (7, 16 + 10, 2 + 1)
    lister.flush()
    assert read_progress(folder) == (10, 16 + 10, 2 + 1)
    assert len(list(Path(folder).glob("*.json"))) == 3 and not list(Path(folder).glob(".*"))
    assert read_progress(str(tmp_path / "nothing")) == (0, 0, 0)


def test_rate_follows_recent_progress(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    printer = ProgressPrinter(str(tmp_path), "run", 10.0)
    printer.samples.append((0.0, 0))  # what entering the block records
    recorder = ProgressRecorder(printer.folder, 0.0)
    recorder.add_listed(1000)
    for t, n, failed, line in (
            (10.0, 100, 0, "100/1000 photos (10%), 10.0 photos/s, ETA 2 min, 0 failed"),
            (20.0, 100, 0, "200/1000 photos (20%), 10.0 photos/s, ETA 80 s, 0 failed"),
            (200.0, 400, 3, "600/1000 photos (60%), 2.2 photos/s, ETA 3 min, 3 failed")):  # last 180 s only
        now[0] = t
        recorder.add(outcomes(n, failed))
        assert printer.line() == "progress: " + line


@pytest.fixture(scope="module")
def library(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progress") / "library"
    for i, (name, index) in enumerate(PHOTOS):
        folder = root / ("ann" if i % 2 else "bob")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lfw_image(lfw, name, index), folder / f"{name}_{index}.jpg")
    (root / "ann" / "broken.jpg").write_bytes(b"not a photo")
    return root


def run_lines(library: Path, out: Path, capsys, *flags: str) -> list[tuple[int, int, int]]:
    """(done, listed, failed) of each progress line a DirectRunner run prints to stderr."""
    run(["--input", str(library), "--output", str(out), "--runner", "DirectRunner", "--direct_num_workers", "1",
         "--batch_size", "2", "--previous", "none", *flags])
    captured = capsys.readouterr()
    assert "progress:" not in captured.out
    lines = [line for line in captured.err.splitlines() if line.startswith("progress:")]
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert not (out / progress.PROGRESS).exists()
    return [(int(m[1]), int(m[2]), int(m[6])) for m in map(LINE.fullmatch, lines)]


def test_a_direct_runner_run_prints_growing_progress(library, tmp_path, capsys):
    lines = run_lines(library, tmp_path / "out", capsys, "--progress_seconds", "0.3")
    listed = len(PHOTOS) + 1  # counted by the graph as it lists
    assert lines and [n for _, n, _ in lines] == sorted(n for _, n, _ in lines) and lines[-1][1] == listed, lines
    assert all(d <= n for d, n, _ in lines), lines
    done = [d for d, _, _ in lines]
    assert done == sorted(done) and any(0 < d for d in done), lines
    assert [f for _, _, f in lines] == sorted(f for _, _, f in lines) and lines[-1][2] <= 1


def test_quiet_prints_no_progress(library, tmp_path, capsys):
    assert run_lines(library, tmp_path / "out", capsys, "--progress_seconds", "0.3", "--quiet") == []


def test_progress_seconds_must_be_positive(tmp_path, capsys):
    (tmp_path / "library").mkdir()
    assert main(["--input", str(tmp_path / "library"), "--output", str(tmp_path / "out"),
                 "--progress_seconds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --progress_seconds must be positive, got 0.0"
