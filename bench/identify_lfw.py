"""Derive the verification and naming thresholds on LFW View-1, measure them on View-2.

Verification: the threshold maximising accuracy on pairsDevTrain.txt (View-1 training
pairs, core.lfw.best_threshold); reported: DevTest accuracy, and on the 6,000
View-2 pairs (pairs.txt) the false-accept rate (different pairs at distance < threshold),
the false-reject rate (same pairs at distance >= threshold) and accuracy; then the
agreement of the decision with the label on 500 seeded View-2 pairs (tests/test_identify.py
asserts the same sample).

Naming (pipeline.naming.name_people): user-shaped libraries of the clustering
harness (bench/cluster_eval.user_libraries, long-tailed, clustered with the pipeline's
default clustering); per library, every identity that has photos outside the library is
a known person with probability 1/2 (1-3 of those other photos as references), plus 5
known people absent from the library. A cluster is scored against its majority identity:
correctly named, wrongly named (a name that is not its identity: the false accept), or
unnamed although its identity is known (the false reject). (threshold, margin) is chosen
on libraries of pairsDevTrain.txt identities (View-1): the fewest false rejects among
the rules whose wrong-name rate is <= MAX_WRONG_NAME_RATE, ties broken towards the
largest margin, then the middle of the tied thresholds; the rates are then measured on
libraries of View-2 identities not in pairsDevTrain.txt.

    python bench/identify_lfw.py [--embedder dlib-resnet] [--users 300]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_eval import Library, lfw_identities, pair_names, user_libraries  # noqa: E402
from core.lfw import LFW, best_threshold, embed_images, pair_distances, read_pairs  # noqa: E402
from models.embedders import FaceEmbedder, get_embedder  # noqa: E402
from pipeline.cluster import cluster_faces  # noqa: E402
from pipeline.cluster import cluster_means  # noqa: E402
from pipeline.naming import name_distances  # noqa: E402

#: Naming may give a wrong name to at most this fraction of the dev clusters.
MAX_WRONG_NAME_RATE = 0.005
NAME_THRESHOLDS = np.round(np.arange(0.20, 1.301, 0.01), 2)  # FaceNet distances run to ~1.3
MARGINS = np.round(np.arange(0.0, 0.201, 0.01), 2)
#: Known people per library who are not in it (distractors).
ABSENT_KNOWN = 5
VERIFY_SAMPLE = 500
VERIFY_SEED = 0


def verify_sample(root: Path = LFW, n: int = VERIFY_SAMPLE, seed: int = VERIFY_SEED) -> list[tuple[Path, Path, bool]]:
    """n View-2 pairs drawn without replacement with a fixed seed (same and different mixed)."""
    pairs, _ = read_pairs(root / "pairs.txt", root)
    chosen = np.random.default_rng(seed).choice(len(pairs), size=n, replace=False)
    return [pairs[i] for i in sorted(chosen)]


def pair_rates(dist: np.ndarray, same: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(false-accept rate, false-reject rate, accuracy) of `dist < threshold` on labelled pairs."""
    accept = dist < threshold
    return float(accept[~same].mean()), float((~accept[same]).mean()), float((accept == same).mean())


@dataclass(frozen=True)
class Scenario:
    """A user library and the known-people folder given with it: reference paths per name."""

    library: Library
    known: dict[str, list[Path]]


def naming_scenarios(identities: dict[str, list[Path]], pool: set[str], n_users: int, seed: int,
                     prefix: str) -> list[Scenario]:
    """Seeded libraries of `pool` identities, each with its known people (module docstring)."""
    out = []
    names = sorted(pool)
    for u, lib in enumerate(user_libraries(identities, pool, n_users, seed, prefix)):
        rng = np.random.default_rng([seed, u, 1])
        used = set(lib.paths)
        present = sorted(set(lib.identities))
        known: dict[str, list[Path]] = {}
        for name in present:
            spare = [p for p in identities[name] if p not in used]
            if spare and rng.random() < 0.5:
                k = min(len(spare), int(rng.integers(1, 4)))
                known[name] = [spare[i] for i in sorted(rng.choice(len(spare), size=k, replace=False))]
        absent = [n for n in names if n not in set(present)]
        for name in (absent[i] for i in rng.choice(len(absent), size=ABSENT_KNOWN, replace=False)):
            k = min(len(identities[name]), int(rng.integers(1, 4)))
            known[name] = [identities[name][i] for i in sorted(rng.choice(len(identities[name]), size=k, replace=False))]
        out.append(Scenario(lib, known))
    return out


@dataclass(frozen=True)
class ClusterMatches:
    """Per cluster of every scenario (C,): nearest and second-nearest known-name distances,
    whether the nearest name is the cluster's majority identity, and whether that identity
    is a known person at all."""

    best: np.ndarray
    second: np.ndarray
    best_is_true: np.ndarray
    true_known: np.ndarray


def cluster_matches(scenarios: list[Scenario], embedder: FaceEmbedder) -> ClusterMatches:
    """Cluster each scenario's library (with the embedder version's clustering parameters)
    and measure its clusters against its known people."""
    paths = sorted({p for s in scenarios for p in [*s.library.paths, *(q for r in s.known.values() for q in r)]})
    emb, _ = embed_images(paths, embedder, progress=len(paths) > 500)
    index = {p: i for i, p in enumerate(paths)}
    best, second, best_is_true, true_known = [], [], [], []
    for s in scenarios:
        x = emb[[index[p] for p in s.library.paths]]
        person = cluster_faces(x, embedder_version=embedder.version).person_id
        ids, centroids, _ = cluster_means(x, person)
        refs = [(name, index[p]) for name, ps in s.known.items() for p in ps]
        names, dist = name_distances(centroids, emb[[i for _, i in refs]], np.array([n for n, _ in refs]))
        order = np.argsort(dist, axis=1)
        for k, pid in enumerate(ids):
            members, counts = np.unique(s.library.identities[person == pid], return_counts=True)
            truth = members[np.argmax(counts)]
            best.append(dist[k, order[k, 0]])
            second.append(dist[k, order[k, 1]])
            best_is_true.append(names[order[k, 0]] == truth)
            true_known.append(truth in s.known)
    return ClusterMatches(np.array(best), np.array(second), np.array(best_is_true), np.array(true_known))


def naming_rates(m: ClusterMatches, threshold: float, margin: float) -> tuple[float, float, float]:
    """(wrong-name rate over all clusters, false-reject rate and correct-name rate over
    clusters of known people) of the rule (threshold, margin)."""
    named = (m.best < threshold) & (m.second - m.best >= margin)
    wrong = named & ~m.best_is_true
    correct = named & m.best_is_true
    return (float(wrong.mean()), float((~correct[m.true_known]).mean()), float(correct[m.true_known].mean()))


def choose_naming(m: ClusterMatches) -> tuple[float, float]:
    """(threshold, margin) by the rule of the module docstring."""
    rates = np.array([[naming_rates(m, t, g) for g in MARGINS] for t in NAME_THRESHOLDS])  # (T, G, 3)
    ok = rates[..., 0] <= MAX_WRONG_NAME_RATE
    frr = np.where(ok, rates[..., 1], np.inf)
    best = frr.min()
    ti, gi = np.nonzero(frr == best)
    g = gi.max()
    tied = np.sort(ti[gi == g])
    return float(NAME_THRESHOLDS[tied[len(tied) // 2]]), float(MARGINS[g])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embedder", default="dlib-resnet")
    parser.add_argument("--lfw", type=Path, default=LFW, help="LFW root with the pairs files")
    parser.add_argument("--users", type=int, default=300,
                        help="libraries per identity set (naming); 300 gives ~3,300 clusters per set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    embedder = get_embedder(args.embedder)
    version = embedder.version

    # Verification threshold: View-1 DevTrain; checked on DevTest and View-2.
    dev_train, _ = read_pairs(args.lfw / "pairsDevTrain.txt", args.lfw)
    dev_test, _ = read_pairs(args.lfw / "pairsDevTest.txt", args.lfw)
    view2, _ = read_pairs(args.lfw / "pairs.txt", args.lfw)
    sample = verify_sample(args.lfw)
    paths = sorted({p for a, b, _ in dev_train + dev_test + view2 for p in (a, b)})
    emb, detected = embed_images(paths, embedder, progress=True)
    lookup = dict(zip(paths, emb))
    print(f"{args.embedder} {version}: {len(paths)} pair images, {int((~detected).sum())} without a detected face")

    def rates(pairs: list[tuple[Path, Path, bool]], t: float) -> tuple[float, float, float]:
        return pair_rates(pair_distances(pairs, lookup), np.array([s for *_, s in pairs]), t)

    t = best_threshold(pair_distances(dev_train, lookup), np.array([s for *_, s in dev_train]))
    _, _, acc_dev = rates(dev_test, t)
    far, frr, acc = rates(view2, t)
    print(f"verification threshold {t:.4f} (best accuracy on {len(dev_train)} DevTrain pairs); "
          f"DevTest accuracy {acc_dev:.4f}")
    print(f"View-2 ({len(view2)} pairs) at {t:.4f}: FAR {far:.4f}, FRR {frr:.4f}, accuracy {acc:.4f}")
    _, _, agree = rates(sample, t)
    print(f"verify agrees with the label on {agree:.4f} of {len(sample)} View-2 pairs (seed {VERIFY_SEED})")

    # Naming rule: clustering-harness libraries of DevTrain identities; measured on View-2 identities.
    identities = lfw_identities(args.lfw)
    dev_pool = pair_names(args.lfw / "pairsDevTrain.txt") & set(identities)
    test_pool = (pair_names(args.lfw / "pairs.txt") & set(identities)) - dev_pool
    dev = cluster_matches(naming_scenarios(identities, dev_pool, args.users, args.seed + 1000, "dev"), embedder)
    test = cluster_matches(naming_scenarios(identities, test_pool, args.users, args.seed, "user"), embedder)
    threshold, margin = choose_naming(dev)
    for label, m in (("View-1 DevTrain identities", dev), ("View-2 identities not in DevTrain", test)):
        wrong, miss, correct = naming_rates(m, threshold, margin)
        print(f"naming on {label}: {len(m.best)} clusters ({int(m.true_known.sum())} of known people): "
              f"wrong name (FAR) {wrong:.4f}, known left unnamed or misnamed (FRR) {miss:.4f}, "
              f"correctly named {correct:.4f}")
    print(f"naming rule: threshold {threshold:.2f}, margin {margin:.2f} "
          f"(fewest dev false rejects with dev wrong-name rate <= {MAX_WRONG_NAME_RATE})")
    print(f'THRESHOLDS["{version}"] = Thresholds(verify={t:.4f}, name={threshold:.2f}, margin={margin:.2f})')


if __name__ == "__main__":
    main()
