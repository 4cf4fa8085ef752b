"""Pipeline throughput and memory: 1,000 LFW photos in 10 user folders on DirectRunner.

Runs `python -m pipeline` as a child process (so model loading, Beam start-up and any
worker processes are measured as a user would see them), samples the resident memory of
the whole process tree (the pipeline and every descendant, from /proc) every 0.1 s, and
takes photos/s from the pipeline's own wall time (summary.json: from pipeline start to
the last file written, report excluded). The last line is the result:

    pipeline 1000 photos: 23.4 photos/s, peak RSS 2.1 GB

    python bench/pipeline_speed.py                       # 1000 photos, DirectRunner defaults
    python bench/pipeline_speed.py --photos 200 -- --direct_num_workers 2 --direct_running_mode multi_processing
    python bench/pipeline_speed.py --photos 300 --embedders ensemble,dlib-resnet --rounds 3

With --embedders, each round runs the pipeline once per embedder, in turn (so machine noise
hits all alike); it prints each one's median photos/s over the rounds and, last, the first
embedder's ratio to each other one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("FACEGROUP_LFW", REPO.parent / "shared" / "data" / "lfw"))
PAGE = os.sysconf("SC_PAGE_SIZE")


def build_library(lfw: Path, root: Path, photos: int, users: int) -> None:
    """Copy the first `photos` LFW photos (identities in name order) into `users` folders,
    all photos of an identity in the same user."""
    if not (lfw / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found at {lfw} (set FACEGROUP_LFW)")
    copied = 0
    for k, person in enumerate(sorted(p for p in lfw.iterdir() if p.is_dir())):
        folder = root / f"user{k % users:02d}" / person.name
        for photo in sorted(person.glob("*.jpg")):
            if copied == photos:
                return
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, folder / photo.name)
            copied += 1


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and all its descendants (0 once it is gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_pipeline(library: Path, output: Path, beam_flags: list[str]) -> tuple[dict, int]:
    """Run the pipeline; returns (its summary.json, peak process-tree RSS in bytes)."""
    cmd = [sys.executable, "-m", "pipeline", "--input", str(library), "--output", str(output), *beam_flags]
    child = subprocess.Popen(cmd, cwd=REPO)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(child.pid))
        time.sleep(0.1)
    if child.returncode != 0:
        raise RuntimeError(f"pipeline failed with exit code {child.returncode}: {' '.join(cmd)}")
    return json.loads((output / "summary.json").read_text()), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000, help="LFW photos in the library")
    parser.add_argument("--users", type=int, default=10, help="user folders")
    parser.add_argument("--embedders", default="", help="comma list of embedders to compare (first measured)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per embedder, interleaved")
    parser.add_argument("beam_flags", nargs="*", help="extra pipeline/Beam flags (after --)")
    args = parser.parse_args()
    embedders = [e for e in args.embedders.split(",") if e] or [None]
    rates: dict[str | None, list[float]] = {e: [] for e in embedders}
    with tempfile.TemporaryDirectory(prefix="facegroup-bench-") as tmp:
        library = Path(tmp) / "library"
        build_library(LFW, library, args.photos, args.users)
        for r in range(args.rounds):
            for e in embedders:
                output = Path(tmp) / f"out-{r}-{e}"
                flags = args.beam_flags + (["--embedder", e] if e else [])
                summary, peak = run_pipeline(library, output, flags)
                rates[e].append(summary["photos"] / summary["wall_s"])
                print(f"pipeline {summary['photos']} photos ({e or 'default embedder'}, round {r + 1}): "
                      f"{rates[e][-1]:.1f} photos/s, peak RSS {peak / 1e9:.1f} GB", flush=True)
    medians = {e: float(np.median(v)) for e, v in rates.items()}
    for e, m in medians.items():
        print(f"median over {args.rounds} rounds ({e or 'default embedder'}): {m:.1f} photos/s")
    for e in embedders[1:]:
        print(f"{embedders[0]} / {e}: {medians[embedders[0]] / medians[e]:.2f}x photos/s")


if __name__ == "__main__":
    main()
