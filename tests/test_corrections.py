"""User corrections (issue 17): a hand-written corrections file, one entry per action, gives
exactly the corrected people on the next run, and every later run keeps them.

Why: what users hate most in face grouping is losing their fixes to a re-run. The library
is real LFW photos through the real pipeline; each identity is one person in the first run
(checked), then the corrections below are written from that run's tables, as the report
exports them (face keys, person ids). Some are wrong on purpose (merging two different
men), so only the corrections can produce the expected people: these tests can fail.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.cluster import METHODS, cluster_faces
from pipeline.corrections import (CorrectionsError, IGNORED_REASON, Entry, UserConstraints, face_constraints,
                                  load_corrections, pinned_people, replay)
from pipeline.run import main, run
from pipeline.user_tables import face_embeddings
from tests.conftest import lfw_image
from tests.test_incremental import ARGS, read

# letter -> (user, LFW identity, photos in run 1); a face is "<letter><photo number>"
PEOPLE = {"a": ("u", "Tony_Blair", 4), "b": ("u", "Colin_Powell", 4), "c": ("u", "Junichiro_Koizumi", 3),
          "d": ("u", "Jean_Chretien", 3), "e": ("u", "Donald_Rumsfeld", 4), "f": ("u", "George_W_Bush", 3),
          "k": ("u", "Ariel_Sharon", 3), "g": ("v", "Hugo_Chavez", 3), "h": ("v", "John_Ashcroft", 3)}
ADDED = ("a5", "a6", "b5", "e5", "k4", "g4", "h4")  # run 3: new photos of corrected and other people
KNOWN = {"Tony Blair": ("Tony_Blair", (10, 11)), "Ariel Sharon": ("Ariel_Sharon", (10, 11))}
GHOST = "0" * 64 + ":0"  # a face key no library has


def photo_path(face: str) -> str:
    user = PEOPLE[face[0]][0]
    return f"{user}/{face}.jpg"


def put(lfw: Path, library: Path, face: str) -> None:
    _, identity, _ = PEOPLE[face[0]]
    (library / photo_path(face)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lfw_image(lfw, identity, int(face[1:])), library / photo_path(face))


def main_faces(out: Path, user: str) -> dict[str, str]:
    """{face name: face key} of the largest face of each photo of `user`."""
    faces = read(out, "faces", user).to_pylist()
    best: dict[str, dict] = {}
    for f in faces:
        area = (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1])
        name = Path(f["photo_path"]).stem
        if name not in best or area > best[name][1]:
            best[name] = (f["face_key"], area)
    return {name: key for name, (key, _) in best.items()}


def people_of(out: Path, user: str) -> tuple[dict[str, dict], dict[int, dict]]:
    """({face key: clusters/ row}, {person id: people/ row})."""
    return ({c["face_key"]: c for c in read(out, "clusters", user).to_pylist()},
            {p["person_id"]: p for p in read(out, "people", user).to_pylist()})


def partition(clusters: dict[str, dict], keys: dict[str, str]) -> set[frozenset[str]]:
    """The people made of the named faces: sets of face names, one per person id (alone: own set)."""
    groups: dict[object, set[str]] = {}
    for name, key in keys.items():
        pid = clusters[key]["person_id"]
        groups.setdefault(pid if pid >= 0 else name, set()).add(name)
    return {frozenset(g) for g in groups.values()}


def entry(action: str, user: str, at: int, **fields) -> dict:
    return {"action": action, "user_id": user, "at": f"2026-12-06T20:00:{at:02d}.000Z", **fields}


def corrections_file(keys: dict[str, str], ids: dict[str, int]) -> dict:
    """The corrections a user makes on run 1's report: one entry per action (see the
    module docstring); entry 5 comes before entry 6 in the file but is later in time."""
    def k(*names: str) -> list[str]:
        return [keys[n] for n in names]

    def of(letter: str, *but: str) -> list[str]:
        return [key for n, key in sorted(keys.items()) if n[0] == letter and n not in but]

    return {"format": "facegroup-corrections", "version": 1, "entries": [
        entry("rename", "u", 1, person_id=ids["a"], faces=of("a"), name="Alice"),
        entry("ignore", "u", 2, faces=k("b1")),
        entry("move", "u", 3, person_id=ids["b"], faces=k("b2"), rest=of("b", "b2"), to=None),
        entry("merge", "u", 4, person_id=ids["c"], faces=of("c"), into=ids["d"], into_faces=of("d")),
        entry("move", "u", 5, person_id=ids["e"], faces=k("e1", "e2"), rest=k("e3", "e4"), to="new"),
        entry("move", "u", 7, person_id=ids["a"], faces=k("f1"), rest=of("a"), to=None),  # later: wins
        entry("move", "u", 6, person_id=ids["f"], faces=k("f1"), rest=of("f", "f1"), to=ids["a"],
              to_faces=of("a")),
        entry("move", "v", 8, person_id=ids["g"], faces=k("g1"), rest=of("g", "g1"), to=ids["h"],
              to_faces=of("h")),
        entry("rename", "zed", 9, person_id=0, faces=[GHOST], name="Zed"),  # a user not in the library
        entry("rename", "u", 10, person_id=99, faces=[GHOST], name="Ghost"),  # faces no longer there
    ]}


#: run 2's people of u and v, by face name (faces alone in their own set)
EXPECTED = {
    "u": {frozenset(s) for s in (("a1", "a2", "a3", "a4"), ("b1",), ("b2",), ("b3", "b4"),
                                 ("c1", "c2", "c3", "d1", "d2", "d3"), ("e1", "e2"), ("e3", "e4"), ("f1",),
                                 ("f2", "f3"), ("k1", "k2", "k3"))},
    "v": {frozenset(s) for s in (("g2", "g3"), ("g1", "h1", "h2", "h3"))},
}


@pytest.fixture(scope="module")
def runs(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run 1; corrections written from its tables; run 2 with them; run 3 with new photos;
    run 4 with the same corrections given twice; runs 5 and 6 into other outputs, with HDBSCAN
    and with another embedder (every photo embedded again)."""
    base = tmp_path_factory.mktemp("corrections")
    library, out, known = base / "library", base / "out", base / "known"
    for letter, (_, _, n) in PEOPLE.items():
        for i in range(1, n + 1):
            put(lfw, library, f"{letter}{i}")
    for name, (identity, numbers) in KNOWN.items():
        (known / name).mkdir(parents=True)
        for i in numbers:
            shutil.copyfile(lfw_image(lfw, identity, i), known / name / f"{i}.jpg")
    args = ["--input", str(library), "--output", str(out), "--known_people", str(known)] + ARGS
    result: dict = {"out": out, "first": run(args)}
    keys = {user: main_faces(out, user) for user in ("u", "v")}
    clusters1 = {user: people_of(out, user)[0] for user in ("u", "v")}
    result["keys"], result["clusters1"] = keys, clusters1
    ids = {}
    for letter, (user, _, n) in PEOPLE.items():
        ids[letter] = clusters1[user][keys[user][f"{letter}1"]]["person_id"]
    result["ids"] = ids
    corrections = base / "corrections.json"
    corrections.write_text(json.dumps(corrections_file(keys["u"] | keys["v"], ids), indent=1))
    result["second"] = run(args + ["--corrections", str(corrections)])
    result["people2"] = {user: people_of(out, user) for user in ("u", "v")}
    for face in ADDED:
        put(lfw, library, face)
    result["third"] = run(args + ["--corrections", str(corrections)])
    result["people3"] = {user: people_of(out, user) for user in ("u", "v")}
    result["keys3"] = {user: main_faces(out, user) for user in ("u", "v")}
    result["fourth"] = run(args + ["--corrections", str(corrections), "--corrections", str(base)])
    result["people4"] = {user: people_of(out, user) for user in ("u", "v")}
    hdbscan = base / "hdbscan"
    run(["--input", str(library), "--output", str(hdbscan), "--previous", str(out), "--cluster", "hdbscan",
         "--corrections", str(corrections)] + ARGS)
    result["people5"] = {user: people_of(hdbscan, user) for user in ("u", "v")}
    result["faces5"] = {user: read(hdbscan, "faces", user) for user in ("u", "v")}
    facenet = base / "facenet"
    run(["--input", str(library), "--output", str(facenet), "--previous", str(out), "--embedder", "facenet-casia",
         "--corrections", str(corrections)] + ARGS)
    result["people6"] = {user: people_of(facenet, user) for user in ("u", "v")}
    result["embedders6"] = set(read(facenet, "faces", "u").column("embedder").to_pylist())
    return result


def test_before_corrections_each_identity_is_one_person(runs):
    for user in ("u", "v"):
        truth = {frozenset(n for n in runs["keys"][user] if n[0] == letter)
                 for letter in {n[0] for n in runs["keys"][user]}}
        assert partition(runs["clusters1"][user], runs["keys"][user]) == truth


def test_the_next_run_gives_exactly_the_corrected_people(runs):
    ids = runs["ids"]
    for user in ("u", "v"):
        clusters, people = runs["people2"][user]
        keys = runs["keys"][user]
        assert partition(clusters, keys) == EXPECTED[user]
        # no other face (a background face) joined a corrected person
        corrected = {clusters[keys[n]]["person_id"] for n in keys}
        assert all(c["face_key"] in keys.values() for c in clusters.values() if c["person_id"] in corrected - {-1})
    clusters, people = runs["people2"]["u"]
    keys = runs["keys"]["u"]
    pid = {n: clusters[k]["person_id"] for n, k in keys.items()}
    # ids the user knew: rename and move keep them, merge takes `into`, a split part is new
    assert pid["a1"] == ids["a"] and pid["b3"] == ids["b"] and pid["e3"] == ids["e"] and pid["f2"] == ids["f"]
    assert pid["c1"] == ids["d"] and ids["c"] not in {c["person_id"] for c in clusters.values()}
    assert pid["e1"] >= max(ids.values()) + 1
    # the user's name wins over the known one; a person nobody corrected keeps its known name
    assert (people[ids["a"]]["name"], people[ids["a"]]["name_source"]) == ("Alice", "user")
    assert (people[pid["k1"]]["name"], people[pid["k1"]]["name_source"]) == ("Ariel Sharon", "known_people")
    assert clusters[keys["a1"]]["name"] == "Alice"
    confirmed = {p for p, row in people.items() if row["confirmed"]}
    assert confirmed == {pid[n] for n in ("a1", "b3", "c1", "e1", "e3", "f2")}
    assert all(c["confirmed"] == (c["person_id"] in confirmed) for c in clusters.values())
    assert clusters[keys["b1"]]["unclustered_reason"] == IGNORED_REASON
    assert clusters[keys["b2"]]["unclustered_reason"] is None  # alone by the rule, not ignored
    v_clusters, v_people = runs["people2"]["v"]
    assert v_clusters[runs["keys"]["v"]["g1"]]["person_id"] == ids["h"] and v_people[ids["h"]]["confirmed"]


def test_the_summary_counts_what_could_not_be_applied(runs):
    record = runs["second"].corrections
    assert (record["entries"], record["users"], record["unknown_users"], record["unknown_user_examples"]) == (
        10, 3, 1, ["zed"])
    assert (record["not_applied"], record["unknown_faces"], record["unknown_face_examples"]) == (1, 1, [GHOST])
    assert record["not_applied_examples"][0].endswith("corrections.json entry 9")
    # f1 was moved into Alice's person (4 faces) and, later, out of it
    assert (record["overridden"], record["ignored"], record["confirmed"], record["user_named"]) == (4, 1, 8, 1)
    text = runs["second"].format()
    assert ("corrections: 10 entries in 1 file about 3 users; 8 people confirmed (1 named by the user), "
            "1 face ignored, 4 face pairs reversed by a later entry") in text
    assert "not applied: 1 entry about 1 user not in the library, e.g. zed" in text
    assert f"1 face key no longer in the library, e.g. {GHOST}" in text
    assert runs["first"].corrections is None and "corrections:" not in runs["first"].format()


def test_new_photos_keep_every_correction_and_join_the_right_people(runs):
    for user in ("u", "v"):
        before, _ = runs["people2"][user]
        after, people = runs["people3"][user]
        keys = runs["keys"][user]
        for column in ("person_id", "confirmed"):
            assert {n: after[k][column] for n, k in keys.items()} == {n: before[k][column] for n, k in keys.items()}
    clusters, people = runs["people3"]["u"]
    keys = runs["keys3"]["u"]
    pid = {n: clusters[k]["person_id"] for n, k in keys.items()}
    assert pid["a5"] == pid["a6"] == pid["a1"] and people[pid["a1"]]["name"] == "Alice"
    assert pid["b5"] == pid["b3"] and pid["k4"] == pid["k1"]
    assert pid["e5"] in (pid["e1"], pid["e3"])  # either part of the split man, by the normal rule
    assert clusters[keys["b1"]]["unclustered_reason"] == IGNORED_REASON
    v_clusters, _ = runs["people3"]["v"]
    v_keys = runs["keys3"]["v"]
    assert v_clusters[v_keys["h4"]]["person_id"] == runs["ids"]["h"]
    assert v_clusters[v_keys["g4"]]["person_id"] == runs["ids"]["g"]


def test_applying_the_same_corrections_twice_changes_nothing(runs):
    assert runs["fourth"].corrections["entries"] == 20 and runs["fourth"].corrections["files"][0] == \
        runs["fourth"].corrections["files"][1]
    for user in ("u", "v"):
        assert runs["people4"][user] == runs["people3"][user]


@pytest.mark.parametrize("changed", ["people5", "people6"], ids=["hdbscan", "facenet-casia"])
def test_corrections_hold_with_another_clustering_method_or_embedder(runs, changed):
    assert runs["embedders6"] == {"facenet-casia"}
    for user in ("u", "v"):
        clusters, _ = runs[changed][user]
        keys = runs["keys3"][user]
        pid = {n: clusters[k]["person_id"] for n, k in keys.items()}
        if user == "v":
            assert pid["g1"] == pid["h1"] >= 0
            continue
        assert pid["c1"] == pid["d1"] >= 0 and pid["e1"] == pid["e2"] >= 0 and pid["e1"] != pid["e3"]
        assert pid["f1"] != pid["a1"] >= 0 and pid["b1"] == -1
        assert pid["b2"] < 0 or pid["b2"] not in (pid["b3"], pid["b4"])


@pytest.mark.parametrize("method", METHODS)
def test_constraints_on_real_faces_for_every_method(runs, method):
    """cluster_faces itself: must-link makes two men one person, cannot-link parts one man."""
    faces = runs["faces5"]["u"]
    x = face_embeddings(faces)
    keys = runs["keys3"]["u"]
    row = {k: i for i, k in enumerate(faces.column("face_key").to_pylist())}
    a, c, d = ([row[keys[f"{p}{i}"]] for i in range(1, 4)] for p in "acd")
    def together(labels: np.ndarray, i: int, j: int) -> bool:
        return labels[i] == labels[j] >= 0

    version = faces.column("embedder_version")[0].as_py()  # each embedder has its own parameters
    free = cluster_faces(x, method, embedder_version=version).person_id
    assert not together(free, c[0], d[0]) and together(free, a[0], a[1]) and together(free, a[0], a[2])
    must = np.full(len(x), -1)
    must[c + d] = 0
    pairs = np.array([[a[0], a[1]], [a[0], a[2]]])
    photos = np.arange(len(x))
    photos[d[0]] = c[0]  # as if the two men were in one photo: the user's must-link still wins
    linked = cluster_faces(x, method, groups=photos, must_link=must, cannot_link=pairs,
                           embedder_version=version).person_id
    assert len(set(linked[c + d].tolist())) == 1 and linked[c[0]] >= 0
    assert not together(linked, a[0], a[1]) and not together(linked, a[0], a[2])
    assert together(linked, a[1], a[2]) or method != "agglomerative"  # HDBSCAN keeps the faces nearest


def test_a_malformed_file_stops_the_run_in_one_line_before_any_work(tmp_path, capsys):
    library, out = tmp_path / "library", tmp_path / "out"
    (library / "u").mkdir(parents=True)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "facegroup-corrections", "version": 1, "entries": [
        entry("ignore", "u", 1, faces=[GHOST]), entry("merge", "u", 2, person_id=1, faces=[GHOST], into=2)]}))
    assert main(["--input", str(library), "--output", str(out), "--corrections", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "entry 1" in err and "into_faces" in err, err
    assert not out.exists()  # not even the output probe ran


# ---------------------------------------------------------------- the file format, unit level

KEY = [f"{i:064x}:0" for i in range(10)]


def write(tmp_path: Path, entries: list, name: str = "c.json", **top) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"format": "facegroup-corrections", "version": 1, "entries": entries} | top))
    return path


@pytest.mark.parametrize("raw, problem", [
    ({"action": "rename", "user_id": "u", "person_id": 1, "faces": KEY[:1], "at": "2026-12-06T20:00:00Z"},
     "name must be a string"),
    ({"action": "split", "user_id": "u", "faces": KEY[:1], "at": "2026-12-06T20:00:00Z"}, "action 'split'"),
    ({"action": "ignore", "user_id": "", "faces": KEY[:1], "at": "2026-12-06T20:00:00Z"}, "user_id"),
    ({"action": "ignore", "user_id": "u", "faces": ["abc:0"], "at": "2026-12-06T20:00:00Z"}, "not a face key"),
    ({"action": "ignore", "user_id": "u", "faces": [], "at": "2026-12-06T20:00:00Z"}, "non-empty list"),
    ({"action": "ignore", "user_id": "u", "faces": KEY[:1], "at": "2026-12-06 20:00"}, "time zone"),
    ({"action": "ignore", "user_id": "u", "faces": KEY[:1], "at": "yesterday"}, "ISO 8601"),
    ({"action": "move", "user_id": "u", "person_id": 1, "faces": KEY[:1], "rest": KEY[:2], "to": None,
      "at": "2026-12-06T20:00:00Z"}, "faces and rest share"),
    ({"action": "move", "user_id": "u", "person_id": 1, "faces": KEY[:1], "rest": [], "to": 2,
      "at": "2026-12-06T20:00:00Z"}, "to_faces must be"),
    ({"action": "move", "user_id": "u", "person_id": 1, "faces": KEY[:1], "rest": [], "to": "other",
      "at": "2026-12-06T20:00:00Z"}, "to 'other'"),
    ({"action": "move", "user_id": "u", "person_id": 1, "faces": KEY[:1], "rest": [],
      "at": "2026-12-06T20:00:00Z"}, "to is required"),
    ({"action": "merge", "user_id": "u", "person_id": True, "faces": KEY[:1], "into": 2, "into_faces": KEY[1:2],
      "at": "2026-12-06T20:00:00Z"}, "person_id must be a person id"),
    ("rename", "must be an object"),
])
def test_each_malformed_entry_is_named_with_its_file_and_index(tmp_path, raw, problem):
    good = {"action": "ignore", "user_id": "u", "faces": KEY[:1], "at": "2026-12-06T20:00:00Z"}
    path = write(tmp_path, [good, good, raw])
    with pytest.raises(CorrectionsError) as err:
        load_corrections([str(tmp_path)])
    assert str(err.value).startswith(f"--corrections {path}: entry 2: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_files(tmp_path):
    cases = {"x.json": "{", "y.json": json.dumps({"format": "other", "version": 1, "entries": []}),
             "z.json": json.dumps({"format": "facegroup-corrections", "version": 2, "entries": []})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CorrectionsError, match=f"{name}: (not JSON|not a corrections file|version 2)"):
            load_corrections([str(tmp_path / name)])
    with pytest.raises(CorrectionsError, match="does not exist"):
        load_corrections([str(tmp_path / "missing.json")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_corrections([str(empty)]) == []


def constraints(tmp_path: Path, entries: list) -> dict[str, UserConstraints]:
    return replay(load_corrections([str(write(tmp_path, entries))]))


def test_replay_later_must_link_removes_an_earlier_cannot_link_and_the_other_way(tmp_path):
    # not this person: K0 out of {K1, K2}; later, merge K0's person into K1's
    out = constraints(tmp_path, [
        entry("move", "u", 1, person_id=1, faces=KEY[:1], rest=KEY[1:3], to=None),
        entry("merge", "u", 2, person_id=2, faces=KEY[:1], into=1, into_faces=KEY[1:2])])["u"]
    assert out.must_link == ((KEY[0], KEY[1]),) and out.cannot_link == ((KEY[0], KEY[2]),) and out.overridden == 1
    # merge, then move one face of the merged person out: it leaves the group
    out = constraints(tmp_path, [
        entry("merge", "u", 1, person_id=2, faces=KEY[:2], into=1, into_faces=KEY[2:4]),
        entry("move", "u", 2, person_id=1, faces=KEY[:1], rest=KEY[1:4], to=None)])["u"]
    assert out.must_link == (tuple(KEY[1:4]),) and out.overridden == 3
    assert set(out.cannot_link) == {(KEY[0], k) for k in KEY[1:4]}


def test_replay_follows_at_then_file_order_per_user(tmp_path):
    entries = [entry("move", "u", 5, person_id=1, faces=KEY[:1], rest=KEY[1:2], to=None),
               entry("merge", "u", 4, person_id=2, faces=KEY[:1], into=1, into_faces=KEY[1:2]),
               entry("merge", "w", 5, person_id=2, faces=KEY[5:6], into=1, into_faces=KEY[6:7]),
               entry("move", "w", 5, person_id=1, faces=KEY[5:6], rest=KEY[6:7], to=None)]
    out = constraints(tmp_path, entries)
    assert out["u"].must_link == () and out["u"].cannot_link == ((KEY[0], KEY[1]),)  # the later move wins
    assert out["w"].must_link == () and out["w"].cannot_link == ((KEY[5], KEY[6]),)  # same time: file order
    assert not set(KEY[5:7]) & {k for g in out["u"].must_link + out["u"].cannot_link for k in g}  # per user


def test_replay_ignore_split_and_move_into(tmp_path):
    out = constraints(tmp_path, [
        entry("merge", "u", 1, person_id=2, faces=KEY[:2], into=1, into_faces=KEY[2:3]),
        entry("ignore", "u", 2, faces=KEY[:1]),  # leaves the merged group
        entry("ignore", "u", 3, faces=KEY[3:4]),
        entry("move", "u", 4, person_id=5, faces=KEY[3:4], rest=KEY[4:5], to=1, to_faces=KEY[1:3]),  # back in
        entry("move", "u", 5, person_id=6, faces=KEY[5:7], rest=KEY[7:9], to="new")])["u"]
    assert out.ignored == {KEY[0]}
    assert set(out.must_link) == {(KEY[1], KEY[2], KEY[3]), (KEY[5], KEY[6])}
    assert set(out.cannot_link) == {(KEY[3], KEY[4])} | {(a, b) for a in KEY[5:7] for b in KEY[7:9]}
    assert out.overridden == 0


def test_replay_keeps_the_parts_the_user_joined(tmp_path):
    """A merged person's parts are the people joined, as the user saw them: a later merge into
    it adds a part (not one part of all it shows), a face moved out leaves its part, and a face
    moved in is a part of its own (one face: listed in no part). face_constraints numbers them."""
    out = constraints(tmp_path, [
        entry("merge", "u", 1, person_id=1, faces=KEY[:2], into=2, into_faces=KEY[2:5]),
        entry("merge", "u", 2, person_id=3, faces=KEY[5:7], into=2, into_faces=KEY[:5]),
        entry("move", "u", 3, person_id=2, faces=KEY[4:5], rest=KEY[:4] + KEY[5:7], to=None),
        entry("move", "u", 4, person_id=4, faces=KEY[7:8], rest=[], to=2, to_faces=KEY[:4] + KEY[5:7]),
        entry("move", "u", 5, person_id=2, faces=KEY[8:10], rest=[], to="new")])["u"]
    assert out.must_link == (tuple(KEY[:4] + KEY[5:8]), tuple(KEY[8:10]))
    assert out.parts == (tuple(KEY[:2]), tuple(KEY[2:4]), tuple(KEY[5:7]), tuple(KEY[8:10]))
    linked = face_constraints(out, KEY[1:])  # KEY[0] is gone: its part keeps one face, so none
    assert linked.must_link.tolist() == [0, 0, 0, -1, 0, 0, 0, 1, 1]
    assert linked.parts.tolist() == [-1, 1, 1, -1, 2, 2, -1, 3, 3]


def test_pins_go_to_the_cluster_holding_most_of_their_faces_and_later_pins_win(tmp_path):
    out = constraints(tmp_path, [
        entry("rename", "u", 1, person_id=3, faces=KEY[:3], name="Bob"),
        entry("rename", "u", 2, person_id=5, faces=KEY[3:5], name="Alice"),
        entry("merge", "u", 3, person_id=3, faces=KEY[:3], into=5, into_faces=KEY[3:5]),
        entry("rename", "u", 4, person_id=8, faces=KEY[6:8], name=""),
        entry("rename", "u", 5, person_id=9, faces=KEY[8:10], name="Gone")])["u"]
    labels = np.array([0, 0, 0, 0, 0, -1, 1, 1, -1, -1])
    pinned = pinned_people(out, KEY, labels)
    assert pinned.names == {0: "Alice", 1: ""} and pinned.person_ids == {0: 5, 1: 8}
    assert pinned.confirmed == {0, 1} and pinned.lost == (f"{tmp_path / 'c.json'} entry 4",)


def test_entries_keep_their_source_for_the_summary(tmp_path):
    (entry_,) = load_corrections([str(write(tmp_path, [entry("ignore", "u", 1, faces=KEY[:2] + KEY[:1])]))])
    assert isinstance(entry_, Entry) and entry_.faces == tuple(KEY[:2])  # duplicates dropped
    assert entry_.source == f"{tmp_path / 'c.json'} entry 0" and entry_.at.tzinfo is not None


def test_the_id_a_correction_names_comes_first_and_fresh_ids_stay_above_it():
    from pipeline.person_ids import PreviousPeople, stable_person_ids

    keys = ["a1", "a2", "b1", "b2", "c1", "c2"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    previous = PreviousPeople({"a1": 3, "a2": 3, "b1": 4, "b2": 4}, next_id=5)
    # a correction names cluster 1 as person 3: it takes 3, so cluster 0 (3's faces before) gets a fresh id
    ids, next_id = stable_person_ids(keys, labels, previous, {1: 3})
    assert ids.tolist() == [5, 5, 3, 3, 6, 6] and next_id == 7
    # numbered afresh (--previous none): no fresh id collides with the one the user named
    ids, next_id = stable_person_ids(keys, labels, None, {2: 1})
    assert ids.tolist() == [2, 2, 3, 3, 1, 1] and next_id == 4
