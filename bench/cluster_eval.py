"""Face clustering quality: user-shaped libraries of LFW and pins50dev, all of LFW, junk.

Libraries, all built from real photos embedded through the real detector + aligner +
embedder (core.lfw, cached by file hash and embedder version):
  * users    seeded long-tailed libraries: per user a few people with many photos and
             many with one or two (LFW: 30-60 people; pins50dev, 24 photos of each of 50
             people: 15-25 people drawn from one fold's 25);
  * LFW      every image of a set of identities as one library (LFW-all: 13,233 faces,
             5,749 people);
  * degraded the LFW user libraries re-made from LFW shrunk to faces of ~40/60/80 px or
             re-encoded at JPEG quality 20/50 (bench/lfw_degrade.py; --variants);
  * junk     the user libraries with 30% of their photos (seeded) made unrecognisable:
             heavy blur, near-black, cut by the frame, a ~20 px face in a large photo
             (bench/junk.py). Junk faces the detector misses drop out, as in the pipeline.
Faces whose quality (core.quality, bench/face_quality.py) is below the gate never
join a person (as in the pipeline; --no-gate to compare). Parameters are chosen on dev
identities only (best mean clean-face BCubed F among those that lose no dev suite more
than 0.005 against the parameters in use): LFW pairsDevTrain.txt identities (users clean and junk, and LFW-dev) and
pins50dev folds; LFW is reported on disjoint identities (all others), pins50dev by
cross-validation over its identities (each fold measured with parameters chosen on the
other fold and LFW dev). LFW-all, which includes the dev identities, is reported for
comparison with published figures. Measures: pairwise and BCubed precision / recall / F,
NMI, true vs found number of people (unclustered faces count as singletons); for junk
suites, BCubed F over the clean faces, junk faces put into a person, into a wrong
person, and people made of junk only; for every suite, clean faces the gate kept out.

    python bench/cluster_eval.py --methods agglomerative         # choose, cross-validate, report
    python bench/cluster_eval.py --methods agglomerative --no-select   # pipeline defaults only
    python bench/cluster_eval.py --embedder facenet                   # choose another embedder's parameters
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_metrics import JunkScores, Scores, junk_scores, mean_scores, score, sum_junk  # noqa: E402
from bench.face_quality import qualities  # noqa: E402
from bench.junk import KINDS, junk_path  # noqa: E402
from bench.lfw_degrade import CACHE as DEGRADED_CACHE, VARIANTS, degraded_path  # noqa: E402
from core.lfw import CACHE as EMBED_CACHE, LFW, View1, embed_images  # noqa: E402
from core.quality import GATE  # noqa: E402
from pipeline.cluster import METHODS, cluster_faces, params_for  # noqa: E402

PINS = LFW.parent / "pins50dev"
#: Share of a junk-mixed library's photos made unrecognisable.
JUNK_SHARE = 0.3
#: pins50dev folds for cross-validation over identities.
PINS_FOLDS = 2

#: Parameter grids searched on dev identities, per method, in dlib-resnet's distances;
#: for another embedder the agglomerative grid is scaled (grid_for).
GRIDS: dict[str, list[dict]] = {
    "agglomerative": [{"distance_threshold": float(t), "size_prior": b}
                      for b in (0.0, 0.005, 0.01, 0.02) for t in np.round(np.arange(0.30, 0.505, 0.01), 2)],
    "hdbscan": [{"min_samples": s, "cluster_selection_method": m} for s in (1, 2, 3) for m in ("eom", "leaf")],
}


@dataclass(frozen=True)
class Library:
    """One clustering problem: image paths (N,), their true identities (N,) and which were
    made unrecognisable (N,) bool (bench/junk.py)."""

    name: str
    paths: list[Path]
    identities: np.ndarray
    junk: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        if len(self.junk) != len(self.paths):
            object.__setattr__(self, "junk", np.zeros(len(self.paths), bool))


def lfw_identities(root: Path) -> dict[str, list[Path]]:
    """Identity name -> its image paths (sorted), for a folder-per-identity dataset."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} not found (--lfw)")
    out = {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}
    return {name: paths for name, paths in out.items() if paths}


def pair_names(pairs_file: Path) -> set[str]:
    """Identities named in an LFW pairs file (both matched and mismatched lines)."""
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file {pairs_file} not found")
    names: set[str] = set()
    for line in pairs_file.read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) == 3:
            names.add(parts[0])
        elif len(parts) == 4:
            names.update((parts[0], parts[2]))
    return names


def long_tailed_library(name: str, identities: dict[str, list[Path]], pool: list[str],
                        rng: np.random.Generator, people: tuple[int, int] = (30, 60)) -> Library:
    """A user-shaped library from identities in `pool`: photo counts follow a Zipf-like
    curve (top person 15-40 photos, `people` people, most with one or two photos)."""
    n_people = min(int(rng.integers(people[0], people[1] + 1)), len(pool))
    top, alpha = rng.uniform(15, 40), rng.uniform(1.0, 1.5)
    targets = np.maximum(1, np.round(top / np.arange(1, n_people + 1) ** alpha)).astype(int)
    free = [n for n in pool if identities[n]]
    rng.shuffle(free)
    paths: list[Path] = []
    labels: list[str] = []
    for target in targets:
        fits = [n for n in free if len(identities[n]) >= target]
        person = fits[0] if fits else max(free, key=lambda n: len(identities[n]))
        free.remove(person)
        count = min(target, len(identities[person]))
        chosen = rng.choice(len(identities[person]), size=count, replace=False)
        paths += [identities[person][i] for i in sorted(chosen)]
        labels += [person] * count
    return Library(name, paths, np.array(labels))


def user_libraries(identities: dict[str, list[Path]], pool: set[str], n_users: int, seed: int,
                   prefix: str, people: tuple[int, int] = (30, 60)) -> list[Library]:
    """n_users seeded long-tailed libraries drawn from the identities in pool."""
    names = sorted(pool)
    return [long_tailed_library(f"{prefix}{u}", identities, names, np.random.default_rng([seed, u]), people)
            for u in range(n_users)]


def whole_library(name: str, identities: dict[str, list[Path]], pool: set[str]) -> Library:
    """Every image of every identity in pool, as one library."""
    names = sorted(pool)
    return Library(name, [p for n in names for p in identities[n]],
                   np.array([n for n in names for _ in identities[n]]))


def with_junk(lib: Library, root: Path, seed: int, share: float = JUNK_SHARE) -> Library:
    """lib with `share` of its photos (seeded) replaced by unrecognisable copies, the four
    kinds in turn (photos whose clean face is not found stay clean)."""
    from bench.face_quality import detect_with_scores

    rng = np.random.default_rng([seed, *lib.name.encode()])
    chosen = rng.choice(len(lib.paths), size=round(share * len(lib.paths)), replace=False)
    found = detect_with_scores([lib.paths[i] for i in chosen])
    paths, junk = list(lib.paths), np.zeros(len(lib.paths), bool)
    for k, (i, face) in enumerate(zip(chosen.tolist(), found)):
        if face["detected"]:
            paths[i] = junk_path(lib.paths[i], root, KINDS[k % len(KINDS)], face["box"])
            junk[i] = True
    return Library(lib.name + "-junk", paths, lib.identities, junk)


@dataclass(frozen=True)
class Prepared:
    """A library as the pipeline would cluster it: faces the detector finds (score >= the
    pipeline's minimum), their embeddings (N,D), identities, junk and gated (N,) bool."""

    x: np.ndarray
    identities: np.ndarray
    junk: np.ndarray
    gated: np.ndarray


def prepare(libraries: list[Library], embedder: str, variant: str, root: Path) -> list[Prepared]:
    """Embed (clean, a degraded variant, or junk-mixed) libraries and compute their quality."""
    paths = sorted({p for lib in libraries for p in lib.paths})
    if variant == "clean":
        sources, caches = paths, [EMBED_CACHE] * len(paths)
    elif variant == "junk":
        sources = paths
        caches = [DEGRADED_CACHE / "embeddings" / "junk" if DEGRADED_CACHE in p.parents else EMBED_CACHE for p in paths]
    else:
        sources = [degraded_path(p, variant, root) for p in paths]
        caches = [DEGRADED_CACHE / "embeddings" / variant] * len(paths)
    emb: dict[Path, np.ndarray] = {}
    for cache in sorted(set(caches)):
        part = [src for src, c in zip(sources, caches) if c == cache]
        emb.update(zip(part, embed_images(part, embedder, cache_dir=cache, progress=True)[0]))
    detected, _, quality, _ = qualities(sources, progress=True)
    index = {p: i for i, p in enumerate(paths)}
    out = []
    for lib in libraries:
        rows = np.array([index[p] for p in lib.paths], dtype=int)
        keep = detected[rows]
        rows = rows[keep]
        out.append(Prepared(np.stack([emb[sources[i]] for i in rows]) if len(rows) else np.zeros((0, 1), np.float32),
                            lib.identities[keep], lib.junk[keep], quality[rows] < GATE))
    return out


@dataclass(frozen=True)
class Result:
    """A suite's scores averaged over its libraries."""

    scores: Scores
    junk: JunkScores


def evaluate(method: str, params: dict, libraries: list[Prepared], gate: bool = True) -> Result:
    """Scores of `method` with `params` over the libraries (gated faces kept out when gate)."""
    scores, junk = [], []
    for lib in libraries:
        labels = cluster_faces(lib.x, method, eligible=~lib.gated if gate else None, **params).person_id
        scores.append(score(lib.identities, labels))
        junk.append(junk_scores(lib.identities, labels, lib.junk, lib.gated & gate))
    return Result(mean_scores(scores), sum_junk(junk))


def objective(result: Result) -> float:
    """What the parameter choice maximises per suite: BCubed F of the clean faces."""
    return result.junk.clean_bcubed_f


def fmt(r: Result) -> str:
    s, j = r.scores, r.junk
    return (f"{s.pairwise_f:6.3f}  {s.bcubed_p:6.3f} {s.bcubed_r:6.3f} {s.bcubed_f:6.3f}  {s.nmi:6.3f} "
            f"{s.n_true:6d} {s.n_found:6d}  {j.clean_bcubed_f:6.3f} {j.clean_gated:5d}/{j.clean:<5d} "
            f"{j.junk:5d} {j.junk_joined:5d} {j.junk_wrong:5d} {j.junk_people:5d}")


HEADER = (f"{'suite':<16} {'method':<13} {'params':<40} {'pw F':>6}  {'B3 P':>6} {'B3 R':>6} {'B3 F':>6}  "
          f"{'NMI':>6} {'true':>6} {'found':>6}  {'cl F':>6} {'gated/clean':>11} {'junk':>5} {'joind':>5} "
          f"{'wrong':>5} {'jppl':>5}")


def describe(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "n_neighbors") or "-"


def mean_objective(results: dict[str, list[Result]], suites: list[str], g: int) -> float:
    """Mean objective over `suites` of grid entry g."""
    return float(np.mean([objective(results[s][g]) for s in suites]))


#: How much below the current parameters a dev suite may fall for a new choice (B3 F).
TOLERANCE = 0.005


def choose(grid: list[dict], results: dict[str, list[Result]], suites: list[str], current: int) -> dict:
    """The grid entry with the best mean objective over `suites` among those that lose no
    suite more than TOLERANCE against grid entry `current` (the parameters in use): a
    mean can hide one kind of library getting worse, e.g. one big library (LFW-dev) under
    a size prior that suits small ones."""
    def holds(g: int) -> bool:
        return all(objective(results[s][g]) >= objective(results[s][current]) - TOLERANCE for s in suites)

    allowed = [g for g in range(len(grid)) if holds(g)]
    return grid[max(allowed, key=lambda g: mean_objective(results, suites, g))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW, help="folder-per-identity dataset with pairsDevTrain.txt")
    parser.add_argument("--pins", type=Path, default=PINS, help="pins50dev (folder per identity)")
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--variants", default="clean,junk",
                        help=f"comma list of clean, junk, {', '.join(VARIANTS)} (LFW users)")
    parser.add_argument("--users", type=int, default=20, help="LFW test user libraries")
    parser.add_argument("--dev-users", type=int, default=10, help="LFW dev user libraries (parameter choice)")
    parser.add_argument("--pins-users", type=int, default=10, help="pins50dev user libraries per fold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-select", action="store_true", help="skip the dev grid; use the pipeline's defaults")
    parser.add_argument("--no-lfw", action="store_true", help="skip the whole-LFW libraries")
    parser.add_argument("--no-gate", action="store_true", help="let faces below the quality gate join people")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown --methods entry {m!r}; choose from {', '.join(METHODS)}")
    for v in variants:
        if v not in ("clean", "junk") and v not in VARIANTS:
            raise ValueError(f"unknown --variants entry {v!r}; choose from clean, junk, {', '.join(VARIANTS)}")

    identities = lfw_identities(args.lfw)
    dev = pair_names(args.lfw / "pairsDevTrain.txt") & set(identities)
    test = set(identities) - dev
    pins = lfw_identities(args.pins)
    folds = pins_folds(args.pins, args.seed)
    dev_users = user_libraries(identities, dev, args.dev_users, args.seed + 1000, "dev")
    test_users = user_libraries(identities, test, args.users, args.seed, "user")
    pins_users = [user_libraries(pins, fold, args.pins_users, args.seed + 2000 + k, f"pins{k}-", (15, 25))
                  for k, fold in enumerate(folds)]
    # suite -> (libraries, variant, dataset root); dev suites choose, the others report
    dev_suites: dict[str, tuple[list[Library], str, Path]] = {}
    test_suites: dict[str, tuple[list[Library], str, Path]] = {}
    for v in variants:
        make = (lambda libs, root: [with_junk(lib, root, args.seed) for lib in libs]) if v == "junk" \
            else (lambda libs, root: libs)
        dev_suites[f"lfw-users-{v}"] = (make(dev_users, args.lfw), v, args.lfw)
        test_suites[f"lfw-users-{v}"] = (make(test_users, args.lfw), v, args.lfw)
        if v in ("clean", "junk"):
            for k in range(PINS_FOLDS):
                dev_suites[f"pins{k}-users-{v}"] = (make(pins_users[k], args.pins), v, args.pins)
    if not args.no_lfw:
        dev_suites["LFW-dev"] = ([whole_library("LFW-dev", identities, dev)], "clean", args.lfw)
        test_suites["LFW-test"] = ([whole_library("LFW-test", identities, test)], "clean", args.lfw)
        test_suites["LFW-all"] = ([whole_library("LFW-all", identities, set(identities))], "clean", args.lfw)
    sizes = [len(lib.paths) for lib in test_users]
    print(f"LFW {len(identities)} identities: {len(dev)} dev (pairsDevTrain), {len(test)} test; "
          f"{len(test_users)} test users with {min(sizes)}-{max(sizes)} faces (mean {np.mean(sizes):.0f}); "
          f"pins50dev {len(pins)} identities in {PINS_FOLDS} folds, {args.pins_users} users per fold; "
          f"quality gate {'off' if args.no_gate else GATE}")
    prepared = {name: prepare(libs, args.embedder, v, root) for name, (libs, v, root) in dev_suites.items()}
    gate = not args.no_gate
    pins_dev = [s for s in dev_suites if s.startswith("pins")]
    lfw_dev = [s for s in dev_suites if not s.startswith("pins")]

    for m in methods:
        default = params_for(m, _embedder_version(args.embedder))
        grid = [default] if args.no_select else [{**default, **g} for g in grid_for(m, args.embedder, args.lfw)]
        if default not in grid:
            grid.append(default)
        results: dict[str, list[Result]] = {s: [] for s in dev_suites}
        t0 = time.time()
        for g in grid:
            for s in dev_suites:
                results[s].append(evaluate(m, g, prepared[s], gate))
        print(f"\n== {m}: {len(grid)} parameter sets on {len(dev_suites)} dev suites ({time.time() - t0:.0f} s)")
        print("pins50dev by cross-validation over identities: each fold with parameters chosen on LFW dev "
              "and the other fold(s)")
        print(HEADER)
        for k in range(PINS_FOLDS):
            mine = [s for s in pins_dev if s.startswith(f"pins{k}-")]
            chosen = choose(grid, results, lfw_dev + [s for s in pins_dev if s not in mine], grid.index(default))
            for s in mine:
                print(f"{s:<16} {m:<13} {describe(chosen):<40} {fmt(results[s][grid.index(chosen)])}")
        final = choose(grid, results, list(dev_suites), grid.index(default))
        print(f"chosen on all dev suites: {describe(final)}, objective "
              f"{mean_objective(results, list(dev_suites), grid.index(final)):.4f}"
              + ("" if final == default else f" (parameters in use {describe(default)}: "
                 f"{mean_objective(results, list(dev_suites), grid.index(default)):.4f})"))
        print("dev suites with it (not held out):")
        for s in dev_suites:
            print(f"{s:<16} {m:<13} {describe(final):<40} {fmt(results[s][grid.index(final)])}")
        print("held-out LFW identities (and LFW-all) with it:")
        for s, (libs, v, root) in test_suites.items():
            t0 = time.time()
            r = evaluate(m, final, prepare(libs, args.embedder, v, root), gate)
            print(f"{s:<16} {m:<13} {describe(final):<40} {fmt(r)}  ({time.time() - t0:.1f} s)")


def distance_unit(embedder: str, lfw: Path = LFW) -> float:
    """The embedder's verification threshold on View-1 DevTrain pairs (best accuracy):
    its own scale of "same person", measured without any test identity."""
    view1 = View1(lfw)
    return view1.train_threshold(embed_images(view1.paths, embedder)[0])


def grid_for(method: str, embedder: str, lfw: Path = LFW) -> list[dict]:
    """GRIDS[method]; for agglomerative clustering with another embedder than dlib-resnet,
    thresholds scaled by its distance unit over dlib's and size priors (squared distances)
    by the square of that ratio, so the same range of decisions is searched."""
    grid = GRIDS.get(method, [{}])
    if method != "agglomerative" or embedder == "dlib-resnet":
        return grid
    unit = distance_unit(embedder, lfw)
    ratio = unit / distance_unit("dlib-resnet", lfw)
    print(f"{embedder}: distance unit {unit:.4f} = {ratio:.3f} x dlib-resnet's; grid scaled")
    return [{"distance_threshold": round(g["distance_threshold"] * ratio, 3),
             "size_prior": round(g["size_prior"] * ratio ** 2, 4)} for g in grid]


def pins_folds(root: Path, seed: int = 0) -> list[set[str]]:
    """pins50dev identities split into PINS_FOLDS seeded folds."""
    order = np.random.default_rng(seed).permutation(sorted(lfw_identities(root)))
    return [set(order[k::PINS_FOLDS].tolist()) for k in range(PINS_FOLDS)]


def dev_junk_sets(lfw: Path = LFW, pins: Path = PINS, per_set: int = 300, seed: int = 0) -> dict[str, list[Path]]:
    """Development photos for choosing the quality gate: clean faces of LFW dev identities
    (also shrunk to ~40 px) and of pins50dev's fold 0, and each junk kind made from them
    (fold 1 of pins50dev and LFW's other identities are never used)."""
    identities = lfw_identities(lfw)
    dev = sorted(pair_names(lfw / "pairsDevTrain.txt") & set(identities))
    rng = np.random.default_rng(seed)
    lfw_paths = sorted(rng.choice([p for n in dev for p in identities[n]], per_set, replace=False).tolist())
    pins_ids = lfw_identities(pins)
    pins_paths = sorted(rng.choice([p for n in sorted(pins_folds(pins, seed)[0]) for p in pins_ids[n]],
                                   per_set, replace=False).tolist())
    sets = {"lfw-dev clean": [Path(p) for p in lfw_paths], "pins-f0 clean": [Path(p) for p in pins_paths],
            "lfw-dev px40": [degraded_path(Path(p), "px40", lfw) for p in lfw_paths]}
    from bench.face_quality import detect_with_scores

    for name, root, paths in (("lfw-dev", lfw, sets["lfw-dev clean"]), ("pins-f0", pins, sets["pins-f0 clean"])):
        found = detect_with_scores(paths)
        for kind in KINDS:
            sets[f"{name} {kind}"] = [junk_path(p, root, kind, f["box"]) for p, f in zip(paths, found) if f["detected"]]
    return sets


def _embedder_version(name: str) -> str:
    """The version of embedder `name` (its parameters in pipeline.cluster are keyed by it)."""
    from models.embedders import get_embedder

    return get_embedder(name).version


if __name__ == "__main__":
    main()
