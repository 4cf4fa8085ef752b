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

With --baseline-commit COMMIT, the same library goes through this tree's pipeline and
COMMIT's, checked out into a temporary git worktree under the system's temp folder (removed
afterwards, also on errors), e.g. ed87a77, the design whose launcher lists the photos and
ships them with beam.Create:

    python bench/pipeline_speed.py --photos 1000 --rounds 5 --baseline-commit ed87a77

Each tree runs as `python -m pipeline` with the same interpreter, flags (Beam flags after
`--` go to both; DirectRunner unless they say otherwise), library and caches
(~/.cache/facegroup: weights, converted FaceNet), the tree as working folder and as the
only PYTHONPATH entry (checked: each tree's `pipeline` package is the one imported), and a
fresh output folder per run; both trees' sources are byte-compiled first. Rounds are
interleaved and alternate which tree goes first. Both runs must record the same embedder
version. photos/s is photos / the child process's whole wall time (start to exit:
listing, model loading, pipeline, report), timed the same way for both trees: each
summary's own `wall_s` is printed too, but it is not comparable across these designs (the
beam.Create launcher listed the photos and loaded the embedder before its clock started;
the current one lists inside the pipeline). Prints each tree's median over the rounds and,
last, the ratio current / baseline (issue 15 asks >= 0.95).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


@dataclass(frozen=True)
class Run:
    """One pipeline run: its summary.json, peak process-tree RSS (bytes) and the child
    process's wall time from start to exit (s)."""

    summary: dict
    peak: int
    seconds: float


def run_pipeline(library: Path, output: Path, beam_flags: list[str], tree: Path = REPO,
                 log: Path | None = None) -> Run:
    """Run `python -m pipeline` of the source tree `tree` (working folder and only
    PYTHONPATH entry); its output goes to `log` when given."""
    cmd = [sys.executable, "-m", "pipeline", "--input", str(library), "--output", str(output), *beam_flags]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(child.pid))
            time.sleep(0.1)

    with open(log or os.devnull, "w") as out:
        redirect = {"stdout": out, "stderr": subprocess.STDOUT} if log else {}
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=tree, env=env, **redirect)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        child.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"pipeline failed with exit code {child.returncode}: {' '.join(cmd)}"
                           + (f" (see {log})" if log else ""))
    return Run(json.loads((output / "summary.json").read_text()), peak, seconds)


def git(*args: str) -> str:
    """Output of a git command in this checkout."""
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def baseline_tree(commit: str) -> Iterator[Path]:
    """`commit` checked out (detached) into a temporary git worktree outside the repository;
    removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="facegroup-baseline-"))
    tree = folder / "tree"
    git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield tree
    finally:
        try:
            git("worktree", "remove", "--force", str(tree))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            git("worktree", "prune")


def check_tree(tree: Path) -> None:
    """Byte-compile `tree` (so no run pays for it) and check that its `pipeline` package
    is the one a run of it imports."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "pipeline"), str(tree / "core"),
                    str(tree / "models")], check=True, stdout=subprocess.DEVNULL)
    found = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=tree,
                           env={**os.environ, "PYTHONPATH": str(tree)}, check=True, capture_output=True,
                           text=True).stdout.strip()
    if Path(found).resolve().parent != (tree / "pipeline").resolve():
        raise RuntimeError(f"a run of {tree} imports pipeline from {found}, not from that tree")


def describe_checkout() -> str:
    """This checkout's commit, and whether its working tree differs from it."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def compare_with_baseline(commit: str, library: Path, tmp: Path, rounds: int, beam_flags: list[str]) -> None:
    """Run this tree's and `commit`'s pipelines on `library` in interleaved rounds; print
    each run, each tree's medians and the ratio current / baseline."""
    full = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    photos = sum(1 for p in library.rglob("*") if p.is_file())
    with baseline_tree(full) as old:
        trees = {f"current {describe_checkout()}": REPO, f"baseline {full[:7]}": old}
        for tree in trees.values():
            check_tree(tree)
        runs: dict[str, list[Run]] = {name: [] for name in trees}
        for r in range(rounds):
            for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
                output = tmp / f"out-{r}-{name.split()[0]}"
                run = run_pipeline(library, output, beam_flags, trees[name], tmp / f"log-{r}-{name.split()[0]}.txt")
                runs[name].append(run)
                s = run.summary
                print(f"round {r + 1} {name}: {s['photos']} photos in {run.seconds:.1f} s = "
                      f"{s['photos'] / run.seconds:.2f} photos/s (summary wall_s {s['wall_s']:.1f} s = "
                      f"{s['photos'] / s['wall_s']:.2f} photos/s), faces {sum(u['faces'] for u in s['users'])}, "
                      f"peak RSS {run.peak / 1e9:.1f} GB", flush=True)
    versions = {run.summary["embedder"]["version"] for rs in runs.values() for run in rs}
    if len(versions) != 1 or any(run.summary["photos"] != photos for rs in runs.values() for run in rs):
        raise RuntimeError(f"the runs differ in embedder ({', '.join(sorted(versions))}) or photos written")
    medians = {name: float(np.median([run.summary["photos"] / run.seconds for run in rs])) for name, rs in runs.items()}
    inside = {name: float(np.median([run.summary["photos"] / run.summary["wall_s"] for run in rs]))
              for name, rs in runs.items()}
    for name in trees:
        print(f"median over {rounds} rounds ({name}): {medians[name]:.2f} photos/s whole process "
              f"({inside[name]:.2f} by summary wall_s)")
    current, baseline = list(trees)
    print(f"embedder {versions.pop()}")
    print(f"current / baseline {full[:7]}: {medians[current] / medians[baseline]:.3f} photos/s (whole process; "
          f"{photos} photos, median of {rounds} interleaved rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=1000, help="LFW photos in the library")
    parser.add_argument("--users", type=int, default=10, help="user folders")
    parser.add_argument("--embedders", default="", help="comma list of embedders to compare (first measured)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per embedder or tree, interleaved")
    parser.add_argument("--baseline-commit", default=None, metavar="COMMIT",
                        help="compare this tree's pipeline with COMMIT's (a temporary git worktree)")
    parser.add_argument("beam_flags", nargs="*", help="extra pipeline/Beam flags (after --)")
    args = parser.parse_args()
    if args.baseline_commit and args.embedders:
        parser.error("--baseline-commit compares trees with one embedder: give it as -- --embedder NAME")
    embedders = [e for e in args.embedders.split(",") if e] or [None]
    rates: dict[str | None, list[float]] = {e: [] for e in embedders}
    with tempfile.TemporaryDirectory(prefix="facegroup-bench-") as tmp:
        library = Path(tmp) / "library"
        build_library(LFW, library, args.photos, args.users)
        if args.baseline_commit:
            compare_with_baseline(args.baseline_commit, library, Path(tmp), args.rounds, args.beam_flags)
            return
        for r in range(args.rounds):
            for e in embedders:
                output = Path(tmp) / f"out-{r}-{e}"
                flags = args.beam_flags + (["--embedder", e] if e else [])
                run = run_pipeline(library, output, flags)
                summary = run.summary
                rates[e].append(summary["photos"] / summary["wall_s"])
                print(f"pipeline {summary['photos']} photos ({e or 'default embedder'}, round {r + 1}): "
                      f"{rates[e][-1]:.1f} photos/s, peak RSS {run.peak / 1e9:.1f} GB", flush=True)
    medians = {e: float(np.median(v)) for e, v in rates.items()}
    for e, m in medians.items():
        print(f"median over {args.rounds} rounds ({e or 'default embedder'}): {m:.1f} photos/s")
    for e in embedders[1:]:
        print(f"{embedders[0]} / {e}: {medians[embedders[0]] / medians[e]:.2f}x photos/s")


if __name__ == "__main__":
    main()
