"""Incremental re-runs: time of an unchanged re-run against the first run, and person ids kept
when photos of known people are added.

Builds a 200-photo LFW library (4 users x 10 people x 5 photos, people with at least 6
photos), runs `python -m pipeline` on it, re-runs it unchanged into the same --output, then
adds the 6th photo of 20 of those people and runs again. Each run is timed twice: the
pipeline's own wall time (summary.json: from pipeline start to the last table written, the
time `python -m pipeline` reports and bench/pipeline_speed divides by), which the ratio is
taken on, and the child process from start to exit (Python start-up, imports, launcher,
report included: ~6 s of imports on this machine whatever the library, which dominates
a 200-photo run). A person id of the first run is kept when the cluster that holds most of
its faces afterwards still carries it. The last line is the result (exit status 1 if the
re-run takes 20% or more of the first run's pipeline time, or an id is lost):

    rerun 200 photos: first 10.9 s, unchanged rerun 0.9 s (8%), +20 photos kept 50/50 person ids (process 17.6 s / 7.6 s)

    python -m bench.rerun_speed [-- extra pipeline/Beam flags]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.dataset as ds

from bench.pipeline_speed import LFW, run_pipeline

USERS, PEOPLE, PHOTOS, ADDED = 4, 10, 5, 20
MAX_RATIO = 0.20


def build_library(lfw: Path, root: Path, seed: int = 11) -> list[tuple[Path, Path]]:
    """Write USERS x PEOPLE x PHOTOS LFW photos under root; returns (source, destination)
    of the ADDED photos to add later (the next photo of the first ADDED people)."""
    if not (lfw / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found at {lfw} (set FACEGROUP_LFW)")
    people = [p for p in sorted(lfw.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) > PHOTOS]
    random.Random(seed).shuffle(people)
    later = []
    for k, person in enumerate(people[:USERS * PEOPLE]):
        folder = root / f"user{k % USERS}" / f"album{k // USERS:02d}"
        folder.mkdir(parents=True)
        photos = sorted(person.glob("*.jpg"))
        for i, photo in enumerate(photos[:PHOTOS]):
            shutil.copyfile(photo, folder / f"IMG_{i:04d}.jpg")
        if len(later) < ADDED:
            later.append((photos[PHOTOS], folder / f"IMG_{PHOTOS:04d}.jpg"))
    return later


def person_of(output: Path) -> dict[tuple[str, str], int]:
    """{(user_id, face_key): person_id} of the faces in a person (not unclustered)."""
    table = ds.dataset(output / "clusters", format="parquet", partitioning="hive").to_table(
        columns=["user_id", "face_key", "person_id"])
    return {(u, k): p for u, k, p in zip(*(table.column(c).to_pylist() for c in ("user_id", "face_key", "person_id")))
            if p >= 0}


def kept_ids(before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]) -> tuple[int, int]:
    """(ids kept, ids before): an id is kept when the new cluster holding most of its
    faces carries the same id."""
    members: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for (user, key), pid in before.items():
        members[user, pid][after.get((user, key), -1)] += 1
    kept = sum(1 for (_, pid), now in members.items() if now.most_common(1)[0][0] == pid)
    return kept, len(members)


def timed(library: Path, output: Path, flags: list[str]) -> tuple[float, float]:
    """(pipeline wall time from its summary, child process wall time) of one run, seconds."""
    start = time.perf_counter()
    summary, _ = run_pipeline(library, output, flags)
    return summary["wall_s"], time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("beam_flags", nargs="*", help="extra pipeline/Beam flags (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facegroup-rerun-") as tmp:
        library, output = Path(tmp) / "library", Path(tmp) / "out"
        later = build_library(LFW, library)
        n_photos = sum(1 for _ in library.rglob("*.jpg"))
        first = timed(library, output, args.beam_flags)
        before = person_of(output)
        rerun = timed(library, output, args.beam_flags)
        for src, dst in later:
            shutil.copyfile(src, dst)
        added = timed(library, output, args.beam_flags)
        kept, total = kept_ids(before, person_of(output))
    ratio = rerun[0] / first[0]
    print(f"(machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"+{len(later)} photos run {added[0]:.1f} s, process {added[1]:.1f} s)")
    print(f"rerun {n_photos} photos: first {first[0]:.1f} s, unchanged rerun {rerun[0]:.1f} s ({ratio:.0%}), "
          f"+{len(later)} photos kept {kept}/{total} person ids (process {first[1]:.1f} s / {rerun[1]:.1f} s)")
    return 0 if ratio < MAX_RATIO and kept == total else 1


if __name__ == "__main__":
    sys.exit(main())
