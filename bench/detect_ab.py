"""Our MTCNN against an earlier version of itself: same photos, one process, interleaved.

Run-to-run noise on a shared VM (~10%) hides a few-percent change between two separate
runs of bench/detect_speed.py; timing both versions in one process, alternating rounds,
does not. The other version is a copy of models/mtcnn.py from any commit:

    git show HEAD~1:models/mtcnn.py > /tmp/mtcnn_before.py
    python bench/detect_ab.py /tmp/mtcnn_before.py [--set 1280x960] [--photos 40] [--rounds 5]

Photos: the first --photos of bench/detect_speed.py's sets (built there, or here into
--work-dir). Prints whether both versions give the same detections, per-round ms/photo,
where the current version spends its time (wall ms/photo of each MTCNN stage, nested
stages inside their parents, over all rounds), and last
`detect A/B: before X ms/photo, now Y ms/photo (Z x)` from the medians.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detect_speed import THREADS, make_sets  # noqa: E402
from models.mtcnn import MTCNN  # noqa: E402


def load_version(path: Path) -> type:
    """The MTCNN class of another copy of models/mtcnn.py."""
    spec = importlib.util.spec_from_file_location("mtcnn_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MTCNN


def max_difference(a: list, b: list) -> str:
    """How far two versions' detections are apart (same face counts required)."""
    same = sum(len(x) == len(y) for x, y in zip(a, b))
    pairs = [(x, y) for x, y in zip(a, b) if len(x) == len(y) and len(x)]
    box = max((float(np.abs(x.boxes - y.boxes).max()) for x, y in pairs), default=0.0)
    score = max((float(np.abs(x.scores - y.scores).max()) for x, y in pairs), default=0.0)
    return f"same face count on {same}/{len(a)} photos, max |box diff| {box:.1e} px, max |score diff| {score:.1e}"


#: MTCNN stages timed in the current version: (label, object attribute path).
STAGES = (("P-Net stage (pyramid + P-Net + NMS)", "_propose"), ("  P-Net calls", "_pnet"),
          ("  pyramid levels", "integral.level"), ("R-Net stage (crops + R-Net)", "_refine"),
          ("  R-Net calls", "rnet"), ("O-Net stage (crops + O-Net)", "_finish"),
          ("  O-Net calls", "onet"), ("integral images", "integral.__init__"))


def timed_stages(model: MTCNN) -> dict[str, float]:
    """Wrap model's stages (STAGES) with wall-time accumulators; returns the seconds dict."""
    import models.mtcnn as mtcnn

    seconds = {label: 0.0 for label, _ in STAGES}

    def wrap(label: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
        return timed

    for label, name in STAGES:
        if name.startswith("integral."):
            attr = name.split(".")[1]
            setattr(mtcnn._IntegralImages, attr, wrap(label, getattr(mtcnn._IntegralImages, attr)))
        else:
            setattr(model, name, wrap(label, getattr(model, name)))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="a copy of models/mtcnn.py from another commit")
    parser.add_argument("--set", choices=("lfw", "1280x960"), default="1280x960")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where detect_speed's photo sets are saved and reused (default: a temp dir)")
    args = parser.parse_args()
    if not args.before.is_file():
        raise SystemExit(f"error: {args.before} not found")
    if args.photos < 1 or args.rounds < 1:
        raise SystemExit("error: --photos and --rounds must be >= 1")
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        photo_set = next(s for s in make_sets(work, 500, 200, 0, 16, 1) if s.name == args.set)
        images = np.load(photo_set.path, mmap_mode="r")
        photos = [np.ascontiguousarray(images[i]) for i in range(min(args.photos, len(images)))]
    batches = [photos[i:i + photo_set.batch] for i in range(0, len(photos), photo_set.batch)]
    versions = {"before": load_version(args.before)(), "now": MTCNN()}
    found = {k: [d for b in batches for d in m.detect(b)] for k, m in versions.items()}  # warm-up too
    print(f"{args.set}, {len(photos)} photos in batches of {photo_set.batch}: "
          f"{max_difference(found['before'], found['now'])}")
    stages = timed_stages(versions["now"])
    times: dict[str, list[float]] = {k: [] for k in versions}
    for _ in range(args.rounds):
        for key, model in versions.items():
            start = time.perf_counter()
            for batch in batches:
                model.detect(batch)
            times[key].append(1000 * (time.perf_counter() - start) / len(photos))
    for key, values in times.items():
        print(f"{key}: {', '.join(f'{v:.1f}' for v in values)} ms/photo")
    per_photo = 1000 / (len(photos) * args.rounds)
    for label, value in stages.items():
        print(f"now, {label}: {value * per_photo:.1f} ms/photo")
    before, now = (statistics.median(times[k]) for k in ("before", "now"))
    print(f"detect A/B: before {before:.1f} ms/photo, now {now:.1f} ms/photo ({before / now:.2f}x)")


if __name__ == "__main__":
    main()
