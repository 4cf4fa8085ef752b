"""Corrections that stick (issue 17): does a user who fixes the worst errors get better people?

Each library of bench/cluster_eval.py's suites (LFW user libraries of held-out identities,
pins50dev user libraries of each fold; clean, and with 30% of the photos made
unrecognisable) is clustered with the pipeline's defaults, quality gate included. A
simulated user then looks at the people, as the report shows them, and fixes the
`--fixes` worst errors, writing one entry each in the corrections file format:
  * a wrong merge (a person holding faces of other identities than its most common one):
    the intruding faces are moved out ("not this person": move, to=null, rest = the
    person's own faces);
  * a split (an identity that is the most common one of several people): each smaller
    such person is merged into the largest (merge, into = the largest).
Errors are ranked by the number of faces they put right (intruders; the smaller part's
faces of the identity), largest first. The file is read back through
pipeline.corrections (load, replay, face_constraints) and the library clustered again with
the constraints, as the pipeline's writer does. Reported per suite: mean BCubed F before
and after (over all faces, and over the clean faces: cluster_eval's objective; unclustered
faces count as singletons), libraries that got worse (all faces), whether every
constraint held in the new clustering, and the errors out of reach (`lone`: faces left
alone although their identity is the most common one of a person). Lone faces ("other faces") are no person, so the
format's merge and move cannot reach them: the user fixes errors among people only.
A second table has the user fix the errors seen before `--new-share` of each library's
photos (drawn at random) are added, then clusters all of them: without the corrections,
with each must-link group as one part (as before issue 17's merged parts), and with its
parts, as the pipeline does (pipeline.cluster): do corrections still help when new photos
come, and do a merged person's parts gather new photos at least as well as one part?

    python bench/corrections_sim.py                       # LFW users and pins50dev, clean and junk
    python bench/corrections_sim.py --variants clean --fixes 5
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster_eval import (LFW, PINS, PINS_FOLDS, Prepared, lfw_identities, pair_names,  # noqa: E402
                                pins_folds, prepare, user_libraries, with_junk)
from bench.cluster_metrics import bcubed_prf  # noqa: E402
from models.embedders import DEFAULT_EMBEDDER, get_embedder  # noqa: E402
from pipeline.cluster import cluster_faces  # noqa: E402
from pipeline.corrections import FORMAT, VERSION, face_constraints, load_corrections, replay  # noqa: E402

USER = "sim"


def face_keys(n: int) -> list[str]:
    """A face key per face of a library (one face per photo, as in the suites)."""
    return [f"{i:064x}:0" for i in range(n)]


def worst_errors(true: np.ndarray, labels: np.ndarray, keys: list[str], fixes: int) -> list[dict]:
    """The corrections entries (format version 1) that fix the `fixes` largest errors of
    labels (N,) (-1 alone) against identities true (N,); see the module docstring."""
    def ids(rows: np.ndarray) -> list[str]:
        return [keys[i] for i in rows.tolist()]

    candidates = []  # (faces put right, order, entry)
    own: dict[int, str] = {}
    for person in np.unique(labels[labels >= 0]).tolist():
        members = np.flatnonzero(labels == person)
        names, counts = np.unique(true[members], return_counts=True)
        own[person] = names[np.argmax(counts)]
        intruders = members[true[members] != own[person]]
        if len(intruders):
            candidates.append((len(intruders), len(candidates), {
                "action": "move", "person_id": person, "faces": ids(intruders),
                "rest": ids(members[true[members] == own[person]]), "to": None}))
    for name in sorted(set(own.values())):
        parts = sorted((int(np.sum((labels == p) & (true == name))), -p, p) for p, o in own.items() if o == name)
        into = parts[-1][2]
        for count, _, person in parts[:-1]:
            candidates.append((count, len(candidates), {
                "action": "merge", "person_id": person, "faces": ids(np.flatnonzero(labels == person)),
                "into": into, "into_faces": ids(np.flatnonzero(labels == into))}))
    chosen = sorted(candidates, key=lambda c: (-c[0], c[1]))[:fixes]
    return [{**e, "user_id": USER, "at": f"2026-12-06T20:00:{k:02d}.000Z"} for k, (_, _, e) in enumerate(chosen)]


def constraints_hold(labels: np.ndarray, must: np.ndarray, pairs: np.ndarray) -> bool:
    """Every must-link group is one person and no cannot-link pair is."""
    groups = all(len(set(labels[must == g].tolist())) == 1 and labels[must == g][0] >= 0
                 for g in np.unique(must[must >= 0]).tolist())
    return groups and not any(labels[a] == labels[b] >= 0 for a, b in pairs.tolist())


def simulate(lib: Prepared, fixes: int, folder: Path, version: str,
             new: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[dict], bool, np.ndarray]:
    """(labels (N,) before, after, the entries written, constraints held, labels after with
    each must-link group as one part) for one library. new (N,) bool: faces added after the
    user's corrections (the entries are made on the others' clustering; before and after
    cluster them all, without and with the corrections). version: the embedder version,
    whose clustering parameters the pipeline uses."""
    new = np.zeros(len(lib.x), bool) if new is None else new
    old = np.flatnonzero(~new)
    keys = face_keys(len(lib.x))
    seen = cluster_faces(lib.x[old], eligible=~lib.gated[old], embedder_version=version).person_id
    entries = worst_errors(lib.identities[old], seen, [keys[i] for i in old], fixes)
    before = cluster_faces(lib.x, eligible=~lib.gated, embedder_version=version).person_id if new.any() else seen
    path = folder / "corrections.json"
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "entries": entries}))
    constraints = replay(load_corrections([str(path)])).get(USER)
    if constraints is None:
        return before, before, entries, True, before
    linked = face_constraints(constraints, keys)
    after, one_part = (cluster_faces(lib.x, eligible=linked.eligible(~lib.gated), must_link=linked.must_link,
                                     cannot_link=linked.cannot_link, parts=parts, embedder_version=version).person_id
                       for parts in (linked.parts, linked.must_link))
    return before, after, entries, constraints_hold(after, linked.must_link, linked.cannot_link), one_part


def bcubed_f(lib: Prepared, labels: np.ndarray, clean: bool) -> float:
    """BCubed F of labels (N,) over all faces, or over the clean ones (junk suites' objective)."""
    keep = ~lib.junk if clean else np.ones(len(labels), bool)
    return bcubed_prf(lib.identities[keep], labels[keep])[2]


def unreachable(true: np.ndarray, labels: np.ndarray) -> int:
    """Lone faces (labels (N,) -1) of an identity that is the most common one of a person:
    errors no version-1 entry can fix (merge and move name a person id)."""
    having = set()
    for person in np.unique(labels[labels >= 0]).tolist():
        names, counts = np.unique(true[labels == person], return_counts=True)
        having.add(names[np.argmax(counts)])
    return int(sum(1 for name, label in zip(true.tolist(), labels.tolist()) if label < 0 and name in having))


def table_row(suite: str, prepared: list[Prepared], rows: list[tuple]) -> str:
    """One suite's line: libraries, faces, entries by action, lone faces out of reach (before),
    mean BCubed F before / after over all faces and over clean faces, libraries worse (all
    faces), constraints held."""
    def f(clean: bool, i: int) -> np.ndarray:
        """Per library BCubed F of the labels before (i=0) or after (i=1) the corrections."""
        return np.array([bcubed_f(lib, r[i], clean) for lib, r in zip(prepared, rows)])

    def gain(clean: bool, width: int) -> str:
        before, after = f(clean, 0).mean(), f(clean, 1).mean()
        return f"{before:>{width}.4f} {after:>7.4f} {after - before:>+7.4f}"

    actions = [e["action"] for r in rows for e in r[2]]
    worse = int((f(False, 1) < f(False, 0) - 1e-9).sum())
    return (f"{suite:<20} {len(rows):>4} {sum(len(p.x) for p in prepared):>6} {actions.count('move'):>5} "
            f"{actions.count('merge'):>6} {sum(unreachable(lib.identities, r[0]) for lib, r in zip(prepared, rows)):>5}"
            f"  {gain(False, 11)}  {gain(True, 14)}  {worse:>5} "
            f"{sum(r[3] for r in rows):>2}/{len(rows):<2}")


def new_photos_row(suite: str, prepared: list[Prepared], rows: list[tuple], new: list[np.ndarray]) -> str:
    """One suite's line when new photos come after the corrections: libraries, faces, new faces,
    merges written, mean BCubed F (all faces; clean faces) without the corrections, with each
    must-link group as one part, and with its parts (as the pipeline clusters), libraries where
    parts do worse than one part (all faces), constraints held."""
    def f(clean: bool, i: int) -> np.ndarray:
        return np.array([bcubed_f(lib, r[i], clean) for lib, r in zip(prepared, rows)])

    def three(clean: bool, width: int) -> str:
        before, one, parts = f(clean, 0).mean(), f(clean, 4).mean(), f(clean, 1).mean()
        return f"{before:>{width}.4f} {one:>8.4f} {parts:>7.4f} {parts - one:>+7.4f}"

    merges = sum(e["action"] == "merge" for r in rows for e in r[2])
    worse = int((f(False, 1) < f(False, 4) - 1e-9).sum())
    return (f"{suite:<20} {len(rows):>4} {sum(len(p.x) for p in prepared):>6} {sum(int(n.sum()) for n in new):>5} "
            f"{merges:>6}  {three(False, 9)}  {three(True, 9)}  {worse:>5} {sum(r[3] for r in rows):>2}/{len(rows):<2}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--pins", type=Path, default=PINS)
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    parser.add_argument("--variants", default="clean,junk", help="comma list of clean, junk")
    parser.add_argument("--users", type=int, default=20, help="LFW user libraries (held-out identities)")
    parser.add_argument("--pins-users", type=int, default=10, help="pins50dev user libraries per fold")
    parser.add_argument("--fixes", type=int, default=5, help="errors the simulated user fixes per library")
    parser.add_argument("--new-share", type=float, default=0.25,
                        help="second table: share of each library's photos added after the corrections")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    identities = lfw_identities(args.lfw)
    test = set(identities) - (pair_names(args.lfw / "pairsDevTrain.txt") & set(identities))
    pins = lfw_identities(args.pins)
    suites = {"lfw-users": (user_libraries(identities, test, args.users, args.seed, "user"), args.lfw)}
    for k, fold in enumerate(pins_folds(args.pins, args.seed)[:PINS_FOLDS]):
        suites[f"pins{k}-users"] = (user_libraries(pins, fold, args.pins_users, args.seed + 2000 + k,
                                                   f"pins{k}-", (15, 25)), args.pins)
    version = get_embedder(args.embedder).version  # its own clustering parameters, as in the pipeline
    print(f"simulated user fixes the {args.fixes} largest errors per library (embedder {args.embedder}, "
          f"pipeline's default clustering, quality gate on); BCubed F over all faces and over clean faces")
    print(f"{'suite':<20} {'libs':>4} {'faces':>6} {'moves':>5} {'merges':>6} {'lone':>5}  "
          f"{'B3 F before':>11} {'after':>7} {'gain':>7}  {'clean F before':>14} {'after':>7} {'gain':>7}  {'worse':>5} {'held':>5}")
    later = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in [v for v in args.variants.split(",") if v]:
            for name, (libraries, root) in suites.items():
                if variant == "junk":
                    libraries = [with_junk(lib, root, args.seed) for lib in libraries]
                prepared = prepare(libraries, args.embedder, variant, root)
                rows = [simulate(lib, args.fixes, Path(tmp), version) for lib in prepared]
                print(table_row(f"{name}-{variant}", prepared, rows))
                rng = np.random.default_rng(args.seed)
                new = [rng.random(len(lib.x)) < args.new_share for lib in prepared]
                rows = [simulate(lib, args.fixes, Path(tmp), version, n) for lib, n in zip(prepared, new)]
                later.append(new_photos_row(f"{name}-{variant}", prepared, rows, new))
    print(f"\nthe same user fixes the {args.fixes} largest errors seen before {args.new_share:.0%} of the photos "
          f"(at random) are added; BCubed F of all the photos without the corrections, with each merged group "
          f"as one part, and with its parts (the pipeline)")
    print(f"{'suite':<20} {'libs':>4} {'faces':>6} {'new':>5} {'merges':>6}  {'B3 F none':>9} {'one part':>8} "
          f"{'parts':>7} {'gain':>7}  {'clean none':>9} {'one part':>8} {'parts':>7} {'gain':>7}  {'worse':>5} {'held':>5}")
    print("\n".join(later))

if __name__ == "__main__":
    main()
