"""Peak memory of a worker's per-user step for one user with 20,000 faces (issue 15).

One user's library of real faces: the cached embeddings (default embedder, the ensemble)
of every LFW image and of the pins50dev images embedded so far, topped up to --faces with
degraded LFW copies (bench/lfw_degrade.py: faces of ~40/60/80 px, JPEG quality 20/50; a
degraded copy is another photo of the same person, like a burst or a re-shared copy).
Nothing is detected or embedded again: images whose embeddings are not in the cache are
left out. Each face keeps its real detection (box, landmarks, score) and its real quality
(core.quality, as bench/face_quality.py computes it; faces below the gate stay
unclustered, as in the pipeline: few of these are, so nearly every face is clustered, the
costly case). Faces are put into photos (seeded: most photos hold one face, some up to
five, never two of one person), and 10% more photos have no face, 0.5% failed to decode.

Each --methods entry runs in a fresh process (`worker_step`): it builds the user's
outcomes as the inference stage emits them, light records (no thumbnail or preview
bytes), and runs what a worker runs for a user after GroupByKey, three fused steps:
ClusterUsers (pipeline.user_tables: the five tables with clustering, person ids, naming
and counts), WriteUserTables (their Parquet files, into a temporary folder) and
WriteUserPages (the user's report pages; no images/ here, so thumbnails are placeholders). It
reports the process's RSS before the step (imports and the faces as numpy arrays), its
peak (VmHWM; also ru_maxrss, which shows the launching process's RSS instead where that
was larger: Linux carries it over fork and exec), and the step's wall time. BLAS/OpenMP
are limited to --threads cores.

    python bench/cluster_memory.py                          # 20,000 faces, agglomerative and hdbscan
    python bench/cluster_memory.py --faces 5000 --methods hdbscan
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_scale import method_list, proc_status_kb, run_child, thread_env  # noqa: E402

USER = "bench-user"
#: Faces per photo and how often each count occurs.
FACES_PER_PHOTO = {1: 0.60, 2: 0.22, 3: 0.10, 4: 0.05, 5: 0.03}
#: Photos without faces and failed photos, as shares of the photos with faces.
NO_FACE_SHARE, FAILED_SHARE = 0.10, 0.005
#: Peak RSS the issue allows a worker (bytes).
TARGET = 2e9


def cached(paths: list[Path], model, cache_dir: Path) -> list[Path]:
    """The paths whose embeddings by `model` are all in the caches under cache_dir."""
    from core.lfw import NpzCache, embedding_caches
    from models.weights import file_sha256

    keys = set.intersection(*(set(NpzCache(path).entries) for path in embedding_caches(model, cache_dir)))
    return [p for p in paths if file_sha256(p) in keys]


def real_faces(n: int, embedder: str, seed: int) -> dict[str, np.ndarray]:
    """n real faces as arrays: embedding (n,D), identity (n,) str, box (n,4), landmarks
    (n,5,2), score (n,), quality (n,), reason (n,) str ("" above the gate), source (n,) str."""
    from bench.cluster_eval import PINS, lfw_identities
    from bench.face_quality import detect_with_scores, qualities
    from bench.lfw_degrade import CACHE as DEGRADED, VARIANTS, degraded_path
    from core.lfw import CACHE, LFW, embed_images
    from models.embedders import get_embedder

    model = get_embedder(embedder)
    rng = np.random.default_rng(seed)
    clean = [p for root in (LFW, PINS) for paths in lfw_identities(root).values() for p in paths]
    parts = [(cached(clean, model, CACHE), CACHE)]
    lfw = [p for p in clean if LFW in p.parents]
    for variant in VARIANTS:  # only copies already made and embedded
        made = [c for c in (degraded_path(p, variant, LFW, create=False) for p in lfw) if c.is_file()]
        parts.append((cached(made, model, DEGRADED / "embeddings" / variant), DEGRADED / "embeddings" / variant))
    sources, caches, names = [], [], []
    for paths, cache in parts:
        sources += paths
        caches += [cache] * len(paths)
        names += [p.parent.name for p in paths]  # a degraded copy keeps its identity's folder
    detected = np.array([bool(f["detected"]) for f in detect_with_scores(sources)])
    pool = np.flatnonzero(detected)
    n_clean = int(detected[:len(parts[0][0])].sum())
    if n > len(pool):
        raise ValueError(f"only {len(pool)} cached faces; ask for fewer --faces")
    # a seeded sample of the clean faces, or all of them and a seeded sample of degraded copies
    chosen = np.sort(rng.choice(pool[:n_clean], size=n, replace=False)) if n <= n_clean else np.concatenate(
        [pool[:n_clean], np.sort(rng.choice(pool[n_clean:], size=n - n_clean, replace=False))])
    chosen_sources = [sources[i] for i in chosen]
    x = np.zeros((n, model.dim), np.float32)
    for cache in sorted(set(caches)):
        rows = [k for k, i in enumerate(chosen) if caches[i] == cache]
        if not rows:
            continue
        x[rows] = embed_images([chosen_sources[k] for k in rows], model, cache_dir=cache)[0]
    found = detect_with_scores(chosen_sources)
    _, _, quality, reason = qualities(chosen_sources)
    return {"embedding": x, "identity": np.array([names[i] for i in chosen]),
            "box": np.stack([f["box"] for f in found]).astype(np.float32),
            "landmarks": np.stack([f["landmarks"] for f in found]).astype(np.float32),
            "score": np.array([f["score"] for f in found], np.float32),
            "quality": quality.astype(np.float32), "reason": reason.astype(str),
            "source": np.array([str(s) for s in chosen_sources])}


def photo_of(identity: np.ndarray, seed: int) -> np.ndarray:
    """Photo number (n,) of each face: seeded counts from FACES_PER_PHOTO, never two faces
    of one person in a photo."""
    rng = np.random.default_rng([seed, 1])
    pending = deque(rng.permutation(len(identity)).tolist())
    photo = np.zeros(len(identity), np.int64)
    counts, shares = list(FACES_PER_PHOTO), list(FACES_PER_PHOTO.values())
    p = 0
    while pending:
        want, people, skipped = int(rng.choice(counts, p=shares)), set(), []
        while pending and len(people) < want and len(skipped) < 50:
            face = pending.popleft()
            if identity[face] in people:
                skipped.append(face)
                continue
            people.add(identity[face])
            photo[face] = p
        pending.extendleft(reversed(skipped))
        p += 1
    return photo


def photo_sha(photo: int) -> str:
    """The (made-up) SHA-256 of photo number `photo`."""
    return hashlib.sha256(f"photo {photo}".encode()).hexdigest()


def photo_rows(photo: np.ndarray, score: np.ndarray) -> list[np.ndarray]:
    """Rows of each photo's faces (photo (n,), score (n,)), in face_index order (by
    detection score, as the detector emits them), photos in number order."""
    order = np.lexsort((-score, photo))
    return np.split(order, np.flatnonzero(np.diff(photo[order])) + 1)


def worker_step(faces: dict[str, np.ndarray], settings, method: str, output: str):
    """Build the user's outcomes from `faces` (arrays of real_faces plus photo (n,)) as the
    inference stage emits them, then run the worker's steps for the user after GroupByKey:
    its tables, their Parquet files and its report pages under `output`. Returns its UserStats."""
    from pipeline.finish import WriteUserPages
    from pipeline.outputs import WriteUserTables
    from pipeline.records import Face, PhotoOutcome
    from pipeline.user_tables import ClusterUsers

    outcomes = []
    for rows in photo_rows(faces["photo"], faces["score"]):
        p = int(faces["photo"][rows[0]])
        outcomes.append(PhotoOutcome(USER, f"photos/{p:06d}.jpg", "faces", photo_sha(p), 250, 250, preview=None, faces=[
            Face(faces["box"][i].copy(), faces["landmarks"][i].copy(), float(faces["score"][i]),
                 faces["embedding"][i].copy(), thumbnail=b"", quality=float(faces["quality"][i]),
                 quality_reason=str(faces["reason"][i]) or None) for i in rows.tolist()]))
    photos = len(outcomes)
    outcomes += [PhotoOutcome(USER, f"no-face/{k:06d}.jpg", "no_face", photo_sha(-1 - k), 250, 250)
                 for k in range(round(NO_FACE_SHARE * photos))]
    outcomes += [PhotoOutcome(USER, f"failed/{k:06d}.jpg", "failed", stage="decode",
                              error="UnidentifiedImageError: cannot identify image file")
                 for k in range(round(FAILED_SHARE * photos))]
    [user] = ClusterUsers(settings, method).process((0, outcomes))
    [written] = WriteUserTables(output).process(user)
    [card] = WriteUserPages(output).process(written)
    return card.stats


def _run_one(data: Path, method: str) -> None:
    """Child process: the worker step on the faces at `data` (.npz, and settings in .json);
    prints a JSON line of RSS before, peak RSS, time, counts and BCubed F of the clusters."""
    import resource
    import time

    import pyarrow.parquet as pq

    from bench.cluster_metrics import score
    from pipeline.inference import EmbedderInfo, InferenceSettings
    from pipeline.finish import WriteUserPages  # noqa: F401 (imported before the step, as on a worker)
    from pipeline.schemas import face_key

    with np.load(data) as arrays:
        faces = {name: arrays[name] for name in arrays.files}
    recorded = json.loads(data.with_suffix(".json").read_text())
    settings = InferenceSettings(EmbedderInfo(**recorded.pop("embedder")), **recorded)
    before_kb = proc_status_kb("VmRSS")
    with tempfile.TemporaryDirectory(prefix="facegroup-memory-") as output:
        start = time.perf_counter()
        stats = worker_step(faces, settings, method, output)
        seconds = time.perf_counter() - start
        peak_kb, maxrss_kb = proc_status_kb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        clusters = pq.read_table(Path(output) / "clusters", columns=["face_key", "person_id"]).to_pydict()
    identity = {face_key(photo_sha(int(faces["photo"][rows[0]])), k): faces["identity"][i]
                for rows in photo_rows(faces["photo"], faces["score"]) for k, i in enumerate(rows.tolist())}
    s = score(np.array([identity[k] for k in clusters["face_key"]]), np.array(clusters["person_id"]))
    print(json.dumps({"before_gb": before_kb / 1e6, "peak_gb": peak_kb / 1e6, "maxrss_gb": maxrss_kb / 1e6,
                      "seconds": seconds, "faces": stats.faces, "photos": stats.photos, "people": stats.people,
                      "unclustered": stats.unclustered, "bcubed_f": s.bcubed_f}))


def main(argv: list[str] | None = None) -> None:
    from pipeline.cluster import METHODS
    from pipeline.inference import InferenceSettings, launcher_embedder_info
    from pipeline.options import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MIN_DET_SCORE, DEFAULT_MIN_FACE_SIZE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=20000, help="faces of the user")
    parser.add_argument("--embedder", default="ensemble")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=2, help="cores each run may use")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = method_list(args.methods)
    faces = real_faces(args.faces, args.embedder, args.seed)
    faces["photo"] = photo_of(faces["identity"], args.seed)
    settings = InferenceSettings(launcher_embedder_info(args.embedder, None), DEFAULT_MIN_FACE_SIZE,
                                 DEFAULT_MIN_DET_SCORE, DEFAULT_MAX_DETECT_SIDE)
    degraded = int(sum("/degraded/" in s for s in faces["source"]))
    print(f"one user: {args.faces} real faces ({args.embedder}, {faces['embedding'].shape[1]}-d) of "
          f"{len(np.unique(faces['identity']))} people ({degraded} degraded LFW copies), in "
          f"{faces['photo'].max() + 1} photos with faces; {int(np.sum(faces['reason'] != ''))} below the quality gate")
    print(f"{'method':<14} {'faces':>6} {'photos':>6} {'people':>6} {'alone':>6} {'B3 F':>6} "
          f"{'RSS before':>10} {'peak VmHWM':>10} {'ru_maxrss':>10} {'step s':>7}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="facegroup-memory-") as tmp:
        data = Path(tmp) / "faces.npz"
        np.savez(data, **{k: v for k, v in faces.items() if k != "source"})
        data.with_suffix(".json").write_text(settings.to_json())
        for m in methods:
            r = results[m] = run_child([__file__, "--child", str(data), m], thread_env(args.threads),
                                       f"{m} on {args.faces} faces")
            print(f"{m:<14} {r['faces']:6d} {r['photos']:6d} {r['people']:6d} {r['unclustered']:6d} "
                  f"{r['bcubed_f']:6.3f} {r['before_gb']:8.2f} GB {r['peak_gb']:8.2f} GB {r['maxrss_gb']:8.2f} GB "
                  f"{r['seconds']:7.1f}", flush=True)
    worst = max(results, key=lambda m: results[m]["peak_gb"])
    verdict = "under" if results[worst]["peak_gb"] * 1e9 < TARGET else "OVER"
    print(f"worker step for {args.faces} faces: peak RSS {results[worst]['peak_gb']:.2f} GB ({worst}), "
          f"{verdict} the {TARGET / 1e9:.0f} GB target")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _run_one(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
