"""Face clustering quality on LFW: user-shaped libraries, all of LFW, degraded photos.

Libraries, all built from real LFW photos embedded through the real detector + aligner +
embedder (bench/lfw_embed.py, cached by file hash and embedder version):
  * users    seeded long-tailed libraries: per user a few people with many photos and
             many with one or two (20 users, ~100-200 faces each);
  * LFW      every image of a set of identities as one library (LFW-all: 13,233 faces,
             5,749 people);
  * degraded the user libraries re-made from LFW shrunk to faces of ~40/60/80 px or
             re-encoded at JPEG quality 20/50 (bench/lfw_degrade.py).
Each method's parameters are chosen on libraries of pairsDevTrain.txt identities only
(dev users clean and degraded, and LFW-dev) and reported on disjoint identities (all
others: DevTest and the rest); LFW-all, which includes the dev identities, is reported
for comparison with published figures. Measures: pairwise and BCubed precision / recall
/ F, NMI, true vs found number of people; unclustered faces count as singletons.

    python bench/cluster_eval.py                       # everything (embeds degraded copies once)
    python bench/cluster_eval.py --variants clean      # clean photos only
    python bench/cluster_eval.py --methods agglomerative --no-select   # pipeline defaults only
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_metrics import Scores, mean_scores, score  # noqa: E402
from bench.lfw_degrade import CACHE as DEGRADED_CACHE, VARIANTS, degraded_path  # noqa: E402
from bench.lfw_embed import CACHE as EMBED_CACHE, LFW, embed_images  # noqa: E402
from pipeline.cluster import DEFAULT_METHOD, DEFAULT_PARAMS, METHODS, cluster_faces  # noqa: E402

#: Parameter grids searched on dev identities, per method.
GRIDS: dict[str, list[dict]] = {
    "agglomerative": [{"distance_threshold": float(t), "size_prior": b}
                      for b in (0.0, 0.005, 0.01, 0.015) for t in np.round(np.arange(0.30, 0.405, 0.01), 2)],
    "hdbscan": [{"min_samples": s, "cluster_selection_method": m} for s in (1, 2, 3) for m in ("eom", "leaf")],
}


@dataclass(frozen=True)
class Library:
    """One clustering problem: image paths (N,) and their true identities (N,)."""

    name: str
    paths: list[Path]
    identities: np.ndarray


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
                        rng: np.random.Generator) -> Library:
    """A user-shaped library from identities in `pool`: photo counts follow a Zipf-like
    curve (top person 15-40 photos, 30-60 people, most with one or two photos)."""
    n_people = int(rng.integers(30, 61))
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


def user_libraries(identities: dict[str, list[Path]], pool: set[str], n_users: int,
                   seed: int, prefix: str) -> list[Library]:
    """n_users seeded long-tailed libraries drawn from the identities in pool."""
    names = sorted(pool)
    return [long_tailed_library(f"{prefix}{u}", identities, names, np.random.default_rng([seed, u]))
            for u in range(n_users)]


def whole_library(name: str, identities: dict[str, list[Path]], pool: set[str]) -> Library:
    """Every image of every identity in pool, as one library."""
    names = sorted(pool)
    return Library(name, [p for n in names for p in identities[n]],
                   np.array([n for n in names for _ in identities[n]]))


class Embeddings:
    """Embeddings of clean or degraded images, computed through lfw_embed (cached: clean
    ones in lfw_embed's cache, each degraded variant in its own beside the copies)."""

    def __init__(self, embedder: str, root: Path) -> None:
        self.embedder = embedder
        self.root = root

    def of(self, libraries: list[Library], variant: str) -> list[np.ndarray]:
        """Per library, embeddings (N,D) of its images in `variant` ("clean" or VARIANTS)."""
        paths = sorted({p for lib in libraries for p in lib.paths})
        if variant == "clean":
            sources, cache = paths, EMBED_CACHE
        else:
            sources = [degraded_path(p, variant, self.root) for p in paths]
            cache = DEGRADED_CACHE / "embeddings" / variant
        emb, _ = embed_images(sources, self.embedder, cache_dir=cache, progress=True)
        index = {p: i for i, p in enumerate(paths)}
        return [emb[[index[p] for p in lib.paths]] for lib in libraries]


def evaluate(method: str, params: dict, libraries: list[Library], embeddings: list[np.ndarray]) -> Scores:
    """Scores of `method` with `params`, averaged over the libraries."""
    return mean_scores([score(lib.identities, cluster_faces(x, method, **params).person_id)
                        for lib, x in zip(libraries, embeddings)])


def fmt(s: Scores) -> str:
    return (f"{s.pairwise_p:6.3f} {s.pairwise_r:6.3f} {s.pairwise_f:6.3f}  {s.bcubed_p:6.3f} "
            f"{s.bcubed_r:6.3f} {s.bcubed_f:6.3f}  {s.nmi:6.3f} {s.n_true:6d} {s.n_found:6d}")


HEADER = (f"{'suite':<14} {'method':<14} {'params':<62} {'pw P':>6} {'pw R':>6} {'pw F':>6}  "
          f"{'B3 P':>6} {'B3 R':>6} {'B3 F':>6}  {'NMI':>6} {'true':>6} {'found':>6}")


def describe(params: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items())) or "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW, help="folder-per-identity dataset with pairsDevTrain.txt")
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--variants", default=",".join(["clean", *VARIANTS]),
                        help=f"comma list of clean, {', '.join(VARIANTS)}")
    parser.add_argument("--users", type=int, default=20, help="test user libraries")
    parser.add_argument("--dev-users", type=int, default=10, help="dev user libraries (parameter choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-select", action="store_true", help="skip the dev grid; use the pipeline's defaults")
    parser.add_argument("--no-lfw", action="store_true", help="skip the whole-LFW libraries")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown --methods entry {m!r}; choose from {', '.join(METHODS)}")
    for v in variants:
        if v != "clean" and v not in VARIANTS:
            raise ValueError(f"unknown --variants entry {v!r}; choose from clean, {', '.join(VARIANTS)}")

    identities = lfw_identities(args.lfw)
    dev = pair_names(args.lfw / "pairsDevTrain.txt") & set(identities)
    test = set(identities) - dev
    suites_dev: dict[str, list[Library]] = {}
    suites_test: dict[str, list[Library]] = {}
    dev_users = user_libraries(identities, dev, args.dev_users, args.seed + 1000, "dev")
    test_users = user_libraries(identities, test, args.users, args.seed, "user")
    for v in variants:
        suites_dev[f"users-{v}"] = dev_users
        suites_test[f"users-{v}"] = test_users
    if not args.no_lfw:
        suites_dev["LFW-dev"] = [whole_library("LFW-dev", identities, dev)]
        suites_test["LFW-test"] = [whole_library("LFW-test", identities, test)]
        suites_test["LFW-all"] = [whole_library("LFW-all", identities, set(identities))]
    sizes = [len(lib.paths) for lib in test_users]
    print(f"{len(identities)} identities: {len(dev)} dev (pairsDevTrain), {len(test)} test; "
          f"{len(test_users)} test users with {min(sizes)}-{max(sizes)} faces (mean {np.mean(sizes):.0f})")

    embeddings = Embeddings(args.embedder, args.lfw)

    def embed(suites: dict[str, list[Library]]) -> dict[str, list[np.ndarray]]:
        return {name: embeddings.of(libs, name.split("-", 1)[1] if name.startswith("users-") else "clean")
                for name, libs in suites.items()}

    chosen: dict[str, dict] = {m: dict(DEFAULT_PARAMS[m]) for m in methods}
    if not args.no_select:
        dev_x = embed(suites_dev)
        print("\n== parameter choice on dev identities (objective: mean BCubed F over dev suites)")
        print(HEADER)
        for m in methods:
            best, best_obj = None, -1.0
            for params in GRIDS.get(m, [DEFAULT_PARAMS[m]]):
                t0 = time.time()
                rows = {s: evaluate(m, params, libs, dev_x[s]) for s, libs in suites_dev.items()}
                obj = float(np.mean([r.bcubed_f for r in rows.values()]))
                for s, r in rows.items():
                    print(f"{s:<14} {m:<14} {describe(params):<62} {fmt(r)}")
                print(f"{'objective':<14} {m:<14} {describe(params):<62} {obj:.4f}  ({time.time() - t0:.1f} s)")
                if obj > best_obj:
                    best, best_obj = params, obj
            chosen[m] = {**DEFAULT_PARAMS[m], **best}
            if chosen[m] != DEFAULT_PARAMS[m]:
                print(f"NOTE: dev choice for {m} {describe(chosen[m])} differs from pipeline default "
                      f"{describe(DEFAULT_PARAMS[m])}")

    test_x = embed(suites_test)
    print("\n== held-out identities (and LFW-all) with the chosen parameters")
    print(HEADER)
    lfw_all: dict[str, Scores] = {}
    for m in methods:
        for s, libs in suites_test.items():
            t0 = time.time()
            r = evaluate(m, chosen[m], libs, test_x[s])
            print(f"{s:<14} {m:<14} {describe(chosen[m]):<62} {fmt(r)}  ({time.time() - t0:.1f} s)")
            if s == "LFW-all":
                lfw_all[m] = r
    final = DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]
    if final in lfw_all:
        r = lfw_all[final]
        print(f"LFW-all {final}: pairwise F {r.pairwise_f:.3f}, BCubed F {r.bcubed_f:.3f}, NMI {r.nmi:.3f} "
              f"({r.n_true} true, {r.n_found} found)")


if __name__ == "__main__":
    main()
