"""MTCNN detection speed and recall: ours (models.mtcnn) vs facenet-pytorch's MTCNN.

Same photos, same machine, same run, torch.set_num_threads(2) in both:
  (a) lfw: --n-lfw (500) LFW photos (250x250) picked with a seeded RNG; a photo counts as
      found when a detection's box centre lies within 20% of the photo size (50 px) of the
      photo centre along both axes (LFW photos are centred on their labelled face).
  (b) 1280x960: --n-synth (200) photos, each 1-6 LFW photos pasted without overlap at
      random scales (0.25-2x, faces ~28-230 px) onto a smooth random background (seeded).
      The truth is each pasted photo's central face box: the 113.6 px square about the
      centre of the 250x250 photo (LFW cut its photos around a Viola-Jones box enlarged
      2.2x), scaled and moved with the paste; a face is found when a detection has
      IoU >= 0.4 with it.
Both detectors read the same decoded uint8 arrays (saved once as .npy under the work
directory) and get the same batches (--batch-lfw / --batch-synth photos per call;
facenet-pytorch batches only equal-size photos, and every photo of a set has one size).
The defaults, 16 and 1, are the batch sizes at which facenet-pytorch ran fastest here (of
1/16/64 for LFW and 1/4/8 for 1280x960); ours is about as fast at any of them.
A repetition times one pass over a set after a warm-up batch, decoding and model loading
excluded; repetitions alternate between the two detectors so that load drift on a shared
machine hits both, and medians are reported (photos/s from wall time; CPU ms/photo, summed
over threads, is printed too as a check that is less sensitive to other load).

facenet-pytorch needs torchvision, which cannot be installed beside our torch, so it runs
as a subprocess of its own virtual environment (--peer-python), made once with:

    python3 -m venv /work/peer-venv
    /work/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/peer-venv/bin/pip install --no-deps facenet-pytorch==2.6.0 pillow
    /work/peer-venv/bin/pip install requests tqdm   # imported by facenet_pytorch/__init__

Usage (the last line printed is the result):

    python bench/detect_speed.py --peer-python /work/peer-venv/bin/python
    python bench/detect_speed.py --n-lfw 50 --n-synth 10 --repeats 1      # quick look

    detect speedup vs facenet-pytorch: 2.4x (lfw), 3.1x (1280x960)
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.mtcnn import MTCNN  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("FACEGROUP_LFW", REPO.parent / "shared" / "data" / "lfw"))
THREADS = 2
SYNTH_SIZE = (960, 1280)  # height, width
LFW_FACE = 250 / 2.2  # side of the face box LFW photos were cut around (px, centred)

# Runs inside the facenet-pytorch venv: one timed pass over a set, detections pickled.
PEER_SCRIPT = r'''
import pickle, sys, time
import numpy as np, torch
from facenet_pytorch import MTCNN
images_path, batch, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
images = np.load(images_path, mmap_mode="r")
mtcnn = MTCNN(keep_all=True, device="cpu")
batches = [np.ascontiguousarray(images[i:i + batch]) for i in range(0, len(images), batch)]
mtcnn.detect(batches[0], landmarks=True)  # warm-up
start, cpu = time.perf_counter(), time.process_time()
found = [mtcnn.detect(b, landmarks=True) for b in batches]
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
dets = []
for boxes, probs, points in found:
    for b, p, q in zip(boxes, probs, points):
        if b is None:
            b, p, q = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        dets.append(tuple(np.asarray(a, np.float32) for a in (b, p, q)))
with open(out_path, "wb") as f:
    pickle.dump({"seconds": seconds, "cpu": cpu, "detections": dets}, f)
'''


@dataclass
class PhotoSet:
    """A benchmark set: photos (N,H,W,3) uint8 saved at `path`, and how to score it."""

    name: str
    path: Path
    batch: int
    truth: list[np.ndarray] | None  # per photo (k,4) true face boxes; None: LFW centre rule


def lfw_paths(n: int, seed: int) -> list[Path]:
    """n LFW photo paths picked with a seeded RNG (deterministic for a given LFW)."""
    paths = sorted(LFW.glob("*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no LFW photos under {LFW} (set FACEGROUP_LFW)")
    if n > len(paths):
        raise ValueError(f"--n-lfw {n} exceeds the {len(paths)} LFW photos")
    pick = np.random.default_rng(seed).choice(len(paths), size=n, replace=False)
    return [paths[i] for i in pick]


def read_rgb(path: Path) -> np.ndarray:
    """Decoded HxWx3 uint8 RGB photo."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def synth_photo(rng: np.random.Generator, sources: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x960 photo with 1-6 LFW photos pasted without overlap, and its true face boxes
    (k,4) x1,y1,x2,y2."""
    height, width = SYNTH_SIZE
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    canvas = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
    canvas = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
    placed: list[tuple[int, int, int]] = []  # x, y, side of pasted photos
    for _ in range(int(rng.integers(1, 7))):
        source = sources[int(rng.integers(len(sources)))]
        side = int(round(250 * rng.uniform(0.25, 2.0)))
        for _attempt in range(50):
            x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
            if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                   for px, py, ps in placed):
                pasted = Image.fromarray(read_rgb(source)).resize((side, side), Image.BILINEAR)
                canvas[y:y + side, x:x + side] = np.asarray(pasted)
                placed.append((x, y, side))
                break
    scale = np.array([side / 250 for _, _, side in placed], np.float32)[:, None]
    corner = np.array([[x, y, x, y] for x, y, _ in placed], np.float32)
    face = np.float32([125 - LFW_FACE / 2] * 2 + [125 + LFW_FACE / 2] * 2)
    return canvas, corner + scale * face


def make_sets(work: Path, n_lfw: int, n_synth: int, seed: int, batch_lfw: int,
              batch_synth: int) -> list[PhotoSet]:
    """Build (or reuse, when already in `work`) the two photo sets."""
    sets = []
    lfw_file = work / f"lfw_{n_lfw}_{seed}.npy"
    if not lfw_file.exists():
        np.save(lfw_file, np.stack([read_rgb(p) for p in lfw_paths(n_lfw, seed)]))
    sets.append(PhotoSet("lfw", lfw_file, batch_lfw, None))
    synth_file = work / f"synth_{n_synth}_{seed}.npy"
    truth_file = work / f"synth_{n_synth}_{seed}_truth.pkl"
    if not (synth_file.exists() and truth_file.exists()):
        rng = np.random.default_rng(seed + 1)
        sources = lfw_paths(1000, seed + 2)
        photos = np.lib.format.open_memmap(synth_file, mode="w+", dtype=np.uint8,
                                           shape=(n_synth, *SYNTH_SIZE, 3))
        truth = []
        for i in range(n_synth):
            photos[i], boxes = synth_photo(rng, sources)
            truth.append(boxes)
        photos.flush()
        del photos
        with open(truth_file, "wb") as f:
            pickle.dump(truth, f)
    with open(truth_file, "rb") as f:
        sets.append(PhotoSet("1280x960", synth_file, batch_synth, pickle.load(f)))
    return sets


def run_ours(photo_set: PhotoSet) -> tuple[float, float, list[tuple[np.ndarray, ...]]]:
    """Wall and CPU seconds of one pass of our MTCNN over the set, and its detections."""
    torch.set_num_threads(THREADS)
    images = np.load(photo_set.path, mmap_mode="r")
    batches = [list(np.ascontiguousarray(images[i:i + photo_set.batch]))
               for i in range(0, len(images), photo_set.batch)]
    mtcnn = MTCNN(device="cpu")
    mtcnn.detect(batches[0])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    found = [mtcnn.detect(b) for b in batches]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, [(d.boxes, d.scores, d.landmarks) for b in found for d in b]


def run_peer(photo_set: PhotoSet, peer_python: str, work: Path
             ) -> tuple[float, float, list[tuple[np.ndarray, ...]]]:
    """Wall and CPU seconds of one pass of facenet-pytorch's MTCNN (subprocess), and its
    detections."""
    script = work / "peer_detect.py"
    script.write_text(PEER_SCRIPT)
    out = work / "peer_out.pkl"
    subprocess.run([peer_python, str(script), str(photo_set.path), str(photo_set.batch),
                    str(out), str(THREADS)], check=True)
    with open(out, "rb") as f:
        result = pickle.load(f)
    return result["seconds"], result["cpu"], result["detections"]


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU (k,) of boxes (k,4) with one box (4,)."""
    w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = w * h
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (box[2] - box[0]) * (box[3] - box[1]) - inter)


def recall(photo_set: PhotoSet, dets: list[tuple[np.ndarray, ...]]) -> tuple[int, int]:
    """(faces found, faces) under the set's rule (see the module docstring)."""
    if photo_set.truth is None:
        found = 0
        for boxes, _, _ in dets:
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            found += bool((np.abs(centres - 125) <= 0.2 * 250).all(axis=1).any())
        return found, len(dets)
    found = sum(int((iou(boxes, t) >= 0.4).any())
                for (boxes, _, _), truth in zip(dets, photo_set.truth) for t in truth)
    return found, sum(len(t) for t in photo_set.truth)


def agreement(ours: list[tuple[np.ndarray, ...]], peer: list[tuple[np.ndarray, ...]]) -> str:
    """How closely our detections match facenet-pytorch's, photo by photo."""
    same_count = sum(len(a[1]) == len(b[1]) for a, b in zip(ours, peer))
    matched = total = 0
    box_diff = score_diff = 0.0
    for (boxes, scores, _), (pboxes, pscores, _) in zip(ours, peer):
        total += len(pscores)
        for box, score in zip(pboxes, pscores):
            if len(boxes):
                overlap = iou(boxes, box)
                j = int(np.argmax(overlap))
                if overlap[j] > 0.9:
                    matched += 1
                    box_diff = max(box_diff, float(np.abs(boxes[j] - box).max()))
                    score_diff = max(score_diff, float(abs(scores[j] - score)))
    return (f"same face count on {same_count}/{len(peer)} photos, {matched}/{total} of its faces "
            f"matched (IoU > 0.9), max |box diff| {box_diff:.2g} px, "
            f"max |score diff| {score_diff:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer-python", default="/work/peer-venv/bin/python",
                        help="python of the venv with facenet-pytorch (see the docstring)")
    parser.add_argument("--n-lfw", type=int, default=500)
    parser.add_argument("--n-synth", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-lfw", type=int, default=16)
    parser.add_argument("--batch-synth", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the photo sets are saved and reused (default: a temp dir)")
    args = parser.parse_args()
    for name in ("n_lfw", "n_synth", "repeats", "batch_lfw", "batch_synth"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if not Path(args.peer_python).is_file():
        raise SystemExit(f"error: --peer-python {args.peer_python} not found; "
                         "see the set-up commands in bench/detect_speed.py")

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sets = make_sets(work, args.n_lfw, args.n_synth, args.seed, args.batch_lfw,
                         args.batch_synth)
        print(f"machine: {os.cpu_count()} CPUs, torch threads {THREADS}, "
              f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
        speedups = []
        for photo_set in sets:
            n = len(np.load(photo_set.path, mmap_mode="r"))
            times: dict[str, list[float]] = {"ours": [], "peer": []}
            cpu: dict[str, list[float]] = {"ours": [], "peer": []}
            dets = {}
            for _ in range(args.repeats):
                for key in ("peer", "ours"):
                    seconds, cpu_seconds, dets[key] = (
                        run_peer(photo_set, args.peer_python, work) if key == "peer"
                        else run_ours(photo_set))
                    times[key].append(seconds)
                    cpu[key].append(cpu_seconds)
            rate = {k: n / statistics.median(v) for k, v in times.items()}
            for key, label in (("ours", "ours"), ("peer", "facenet-pytorch")):
                found, faces = recall(photo_set, dets[key])
                print(f"{photo_set.name} ({n} photos, batches of {photo_set.batch}) {label}: "
                      f"{rate[key]:.1f} photos/s, recall {found}/{faces} = {found / faces:.3f} "
                      f"(pass times {', '.join(f'{t:.2f}' for t in times[key])} s; "
                      f"CPU {1000 * statistics.median(cpu[key]) / n:.1f} ms/photo)", flush=True)
            print(f"{photo_set.name} agreement with facenet-pytorch: "
                  f"{agreement(dets['ours'], dets['peer'])}", flush=True)
            speedups.append(f"{rate['ours'] / rate['peer']:.1f}x ({photo_set.name})")
        print(f"load average {os.getloadavg()[0]:.2f} at end")
        print(f"detect speedup vs facenet-pytorch: {', '.join(speedups)}")


if __name__ == "__main__":
    main()
