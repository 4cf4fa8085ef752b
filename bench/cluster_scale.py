"""Time and memory of clustering one user's faces at 10k, 30k and 100k faces.

Faces are the real LFW embeddings (core.lfw's cache: all 13,233 images through
the real detector + aligner + embedder); sizes beyond that are reached with seeded
perturbed copies of them (each copy = an LFW embedding plus isotropic noise, re-normalised,
labelled as the same person), which the output says. Each run happens in a fresh process
so that its peak RSS is its own; BLAS/OpenMP are limited to --threads cores.

    python bench/cluster_scale.py                            # default method, 10k/30k/100k
    python bench/cluster_scale.py --methods agglomerative,hdbscan --sizes 10000,30000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Distance of a perturbed copy to its source embedding (same-person photos of LFW sit
#: about 0.25-0.4 apart with dlib-ResNet; copies stay closer than that).
COPY_DISTANCE = 0.15


def scaled_library(x: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """n faces (n,D) and labels (n,): a seeded sample of x (M,D) if n <= M, else all of x
    plus perturbed copies; also returns how many faces are copies."""
    rng = np.random.default_rng(seed)
    if n <= len(x):
        keep = np.sort(rng.choice(len(x), size=n, replace=False))
        return x[keep], labels[keep], 0
    src = rng.integers(0, len(x), size=n - len(x))
    noise = rng.normal(size=(len(src), x.shape[1])).astype(np.float32)
    noise *= COPY_DISTANCE / np.sqrt(x.shape[1])
    copies = x[src] + noise
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([x, copies]), np.concatenate([labels, labels[src]]), len(src)


def proc_status_kb(field: str) -> int:
    """A memory field of this process's /proc/self/status in kB: VmRSS (now) or VmHWM
    (peak). VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with BLAS/OpenMP limited to `threads` cores."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads)}


def method_list(text: str) -> list[str]:
    """The clustering methods of a --methods comma list, checked."""
    from pipeline.cluster import METHODS

    methods = [m for m in text.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown --methods entry {m!r}; choose from {', '.join(METHODS)}")
    return methods


def run_child(args: list[str], env: dict[str, str], what: str) -> dict:
    """Run `python *args` in a fresh process; returns the JSON object on its last stdout line."""
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _run_one(data: Path, method: str) -> None:
    """Child process: cluster the .npz at `data` and print a JSON line of time and peak RSS."""
    import time

    from bench.cluster_metrics import score
    from pipeline.cluster import cluster_faces

    arrays = np.load(data)
    start = time.perf_counter()
    result = cluster_faces(arrays["x"], method)
    seconds = time.perf_counter() - start
    peak_kb = proc_status_kb("VmHWM")
    s = score(arrays["labels"], result.person_id)
    print(json.dumps({"seconds": seconds, "peak_gb": peak_kb / 1e6, "bcubed_f": s.bcubed_f,
                      "pairwise_f": s.pairwise_f, "found": s.n_found, "true": s.n_true}))


def main(argv: list[str] | None = None) -> None:
    from bench.cluster_eval import lfw_identities
    from core.lfw import LFW, embed_images
    from pipeline.cluster import DEFAULT_METHOD, METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--methods", default=DEFAULT_METHOD, help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--sizes", default="10000,30000,100000", help="comma list of library sizes")
    parser.add_argument("--threads", type=int, default=2, help="cores each run may use")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = method_list(args.methods)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        raise ValueError(f"--sizes must be a comma list of integers, got {args.sizes!r}") from None

    identities = lfw_identities(args.lfw)
    paths = [p for name in identities for p in identities[name]]
    labels = np.array([i for i, name in enumerate(identities) for _ in identities[name]])
    x, _ = embed_images(paths, args.embedder)
    print(f"{len(x)} real LFW embeddings ({args.embedder}) of {len(identities)} people; "
          f"larger sizes add perturbed copies (noise ~{COPY_DISTANCE} from the source face)")
    env = thread_env(args.threads)
    last: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            xs, ls, n_copies = scaled_library(x, labels, n, args.seed)
            data = Path(tmp) / f"{n}.npz"
            np.savez(data, x=xs, labels=ls)
            for m in methods:
                r = run_child([__file__, "--child", str(data), m], env, f"{m} on {n} faces")
                print(f"{n:7d} faces ({n_copies} copies) {m:<14} {r['seconds']:7.1f} s  peak RSS "
                      f"{r['peak_gb']:.2f} GB  BCubed F {r['bcubed_f']:.3f}  pairwise F {r['pairwise_f']:.3f}  "
                      f"({r['true']} true, {r['found']} found)", flush=True)
                last[m] = f"cluster {n} faces: {r['seconds']:.0f} s, peak RSS {r['peak_gb']:.1f} GB ({m})"
    print(last[DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _run_one(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
