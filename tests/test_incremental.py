"""Incremental runs on real LFW photos: what is reused, what is redone, what disappears,
and which person ids survive.

Why: a re-run must not detect and embed a whole library again, must not lose or keep
stale photos, and must not renumber everyone. The library changes between runs the way
real ones do: photos added (of known people and of a new person), deleted (a whole
person, one photo, a whole user), edited in place, moved, and a user added.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import schemas
from pipeline.decode import LoadPhotos
from pipeline.images import IMAGES, user_images
from pipeline.inference import EmbedderInfo, InferenceSettings
from pipeline.outputs import WriteUserTables
from pipeline.records import REUSED, DecodedPhoto, Face, PhotoOutcome, PhotoRef
from pipeline.reuse import PreviousPart, mark_reusable, previous_results
from pipeline.run import run
from pipeline.user_tables import TABLES, ClusterUsers
from pipeline.users import user_folder
from tests.conftest import lfw_image
from tests.test_pipeline_e2e import landscape

# (path, LFW identity, photo number); P-names are the people of the test.
RUN1 = {
    "ann/2019/p1-a.jpg": ("Tony_Blair", 1), "ann/2019/p1-b.jpg": ("Tony_Blair", 2),
    "ann/2019/p1-c.jpg": ("Tony_Blair", 3),
    "ann/2020/p2-a.jpg": ("Donald_Rumsfeld", 1), "ann/2020/p2-b.jpg": ("Donald_Rumsfeld", 2),
    "ann/2020/p2-c.jpg": ("Donald_Rumsfeld", 3),
    "ann/2021/p3-a.jpg": ("Gerhard_Schroeder", 1), "ann/2021/p3-b.jpg": ("Gerhard_Schroeder", 2),
    "ann/2021/p3-c.jpg": ("Gerhard_Schroeder", 3),
    "ann/old/p4-a.jpg": ("Ariel_Sharon", 1), "ann/old/p4-b.jpg": ("Ariel_Sharon", 2),
    "ann/old/p4-c.jpg": ("Ariel_Sharon", 3),
    "ben/p5-a.jpg": ("Hugo_Chavez", 1), "ben/p5-b.jpg": ("Hugo_Chavez", 2), "ben/p5-c.jpg": ("Hugo_Chavez", 3),
    "ben/p6-a.jpg": ("Jean_Chretien", 1), "ben/p6-b.jpg": ("Jean_Chretien", 2),
    "ben/p6-c.jpg": ("Jean_Chretien", 3),
    "dan/p7-a.jpg": ("John_Ashcroft", 1), "dan/p7-b.jpg": ("John_Ashcroft", 2),
}
ADDED = {
    "ann/2019/p1-d.jpg": ("Tony_Blair", 4), "ann/2020/p2-d.jpg": ("Donald_Rumsfeld", 4),
    "ann/new/p8-a.jpg": ("Junichiro_Koizumi", 1), "ann/new/p8-b.jpg": ("Junichiro_Koizumi", 2),
    "ann/new/p8-c.jpg": ("Junichiro_Koizumi", 3),
    "cat/p9-a.jpg": ("Vladimir_Putin", 1), "cat/p9-b.jpg": ("Vladimir_Putin", 2),
}
DELETED = ("ann/old/p4-a.jpg", "ann/old/p4-b.jpg", "ann/old/p4-c.jpg", "ann/2021/p3-c.jpg",
           "dan/p7-a.jpg", "dan/p7-b.jpg")
EDITED = ("ann/2020/p2-a.jpg", ("Donald_Rumsfeld", 5))  # same path, other bytes
MOVED = ("ann/2019/p1-b.jpg", "ann/moved/p1-b.jpg")  # same bytes, other path
NO_FACE, BROKEN = "ann/landscape.jpg", "ann/broken.jpg"
PERSON_OF = {"Tony_Blair": "P1", "Donald_Rumsfeld": "P2", "Gerhard_Schroeder": "P3", "Ariel_Sharon": "P4",
             "Hugo_Chavez": "P5", "Jean_Chretien": "P6", "John_Ashcroft": "P7", "Junichiro_Koizumi": "P8",
             "Vladimir_Putin": "P9"}
ARGS = ["--runner", "DirectRunner", "--direct_num_workers", "1", "--batch_size", "8"]


def read(out: Path, table: str, user: str) -> pa.Table:
    return pq.read_table(out / table / user_folder(user) / "part-0.parquet", partitioning=None)


def snapshot(out: Path, users: tuple[str, ...] = ("ann", "ben", "cat", "dan")) -> dict:
    """{(table, user): rows} of every table present, the JPEGs its photos/ rows name
    ("images"), plus clusters' next_person_id."""
    found = {}
    for table in TABLES:
        for user in users:
            if (out / table / user_folder(user)).exists():
                t = read(out, table, user)
                found[table, user] = t.to_pylist()
                if table == "clusters":
                    found["next_id", user] = int(t.schema.metadata[schemas.NEXT_PERSON_ID_KEY])
                if table == "photos":
                    found[IMAGES, user] = user_images(str(out), user)
    return found


def person_ids(snap: dict, user: str, truth: dict[str, tuple[str, int]]) -> dict[str, set[int]]:
    """{test person: person ids of their photos' main (largest) faces}."""
    photos = {p["photo_path"]: p["photo_sha256"] for p in snap["photos", user]}
    pid = {c["face_key"]: c["person_id"] for c in snap["clusters", user]}
    faces: dict[str, list[dict]] = {}
    for f in snap["faces", user]:
        faces.setdefault(f["photo_sha256"], []).append(f)
    out: dict[str, set[int]] = {}
    for path, (identity, _) in truth.items():
        if path.startswith(user + "/") and path in photos:
            main = max(faces[photos[path]], key=lambda f: (f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]))
            out.setdefault(PERSON_OF[identity], set()).add(pid[main["face_key"]])
    return out


def put(lfw: Path, library: Path, path: str, photo: tuple[str, int]) -> None:
    (library / path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lfw_image(lfw, *photo), library / path)


@pytest.fixture(scope="module")
def runs(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run 1; change the library; run 2 into the same output; run 3 with --previous into a
    fresh output; run 4 with --previous none. Returns their summaries and snapshots."""
    base = tmp_path_factory.mktemp("incremental")
    library, out = base / "library", base / "out"
    for path, photo in RUN1.items():
        put(lfw, library, path, photo)
    (library / NO_FACE).write_bytes(landscape())
    (library / BROKEN).write_bytes(lfw_image(lfw, "Tony_Blair", 9).read_bytes()[:2000])
    first = run(["--input", str(library), "--output", str(out)] + ARGS)
    result = {"first": first, "snap1": snapshot(out)}

    for path, photo in ADDED.items():
        put(lfw, library, path, photo)
    for path in DELETED:
        (library / path).unlink()
    (library / "dan").rmdir()
    put(lfw, library, EDITED[0], EDITED[1])
    (library / MOVED[1]).parent.mkdir()
    (library / MOVED[0]).rename(library / MOVED[1])
    result["second"] = run(["--input", str(library), "--output", str(out)] + ARGS)
    result["snap2"] = snapshot(out)
    result["files2"] = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    result["third"] = run(["--input", str(library), "--output", str(base / "out3"), "--previous", str(out)] + ARGS)
    result["snap3"] = snapshot(base / "out3")
    result["files2_after"] = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    result["fourth"] = run(["--input", str(library), "--output", str(base / "out4"), "--previous", "none"] + ARGS)
    result["snap4"] = snapshot(base / "out4")
    result["out"] = out
    return result


def truth2() -> dict[str, tuple[str, int]]:
    """(identity, photo number) of every photo with faces in run 2, by path."""
    truth = {p: v for p, v in (RUN1 | ADDED).items() if p not in DELETED}
    truth[EDITED[0]] = EDITED[1]
    truth[MOVED[1]] = truth.pop(MOVED[0])
    return truth


def test_unchanged_photos_are_not_detected_or_embedded_again(runs):
    second = runs["second"]
    unchanged = [p for p in RUN1 if p not in DELETED and p not in (EDITED[0], MOVED[0])] + [NO_FACE]
    processed = list(ADDED) + [EDITED[0], MOVED[1]]
    assert second.previous == str(runs["out"])
    assert second.total("reused") == len(unchanged) == 13
    # the model saw exactly the new, edited and moved photos (Beam counters of the run)
    assert second.counters["photos_inferred"] == len(processed) == 9
    assert second.counters["photos_reused"] == 13
    assert second.counters["failed_decode"] == 1  # the broken file is tried again, not reused
    assert runs["first"].counters["photos_inferred"] == len(RUN1) + 1
    # reused faces are the previous rows, byte for byte
    for user in ("ann", "ben"):
        before = {f["face_key"]: f for f in runs["snap1"]["faces", user]}
        for face in runs["snap2"]["faces", user]:
            if face["photo_path"] in unchanged:
                old = before[face["face_key"]]
                assert (face["embedding"], face["box"]) == (old["embedding"], old["box"])
    assert runs["snap2"]["photos", "ben"] == runs["snap1"]["photos", "ben"]
    assert runs["snap2"]["clusters", "ben"] == runs["snap1"]["clusters", "ben"]
    assert runs["snap2"][IMAGES, "ben"] == runs["snap1"][IMAGES, "ben"]  # thumbnails and previews kept


def test_deleted_photos_and_users_disappear_and_new_ones_appear(runs):
    snap, out = runs["snap2"], runs["out"]
    expected = set(truth2()) | {NO_FACE, BROKEN}
    paths = {p["photo_path"] for user in ("ann", "ben", "cat") for p in snap["photos", user]}
    assert paths == expected
    assert not any(user == "dan" for _, user in snap)
    assert not any((out / t / user_folder("dan")).exists() for t in TABLES)
    assert "dan" not in (out / "report" / "index.html").read_text(encoding="utf-8")
    for user in ("ann", "ben", "cat"):
        shas = {p["photo_sha256"] for p in snap["photos", user]}
        keys = [f["face_key"] for f in snap["faces", user]]
        assert {f["photo_sha256"] for f in snap["faces", user]} <= shas and len(keys) == len(set(keys))
        assert sorted(c["face_key"] for c in snap["clusters", user]) == sorted(keys)
    assert [(f["photo_path"], f["stage"]) for f in snap["failures", "ann"]] == [(BROKEN, "decode")]
    for user in ("ann", "ben", "cat"):  # every photo with faces has its JPEGs; no part is left unnamed
        named = {p["images_part"] for p in snap["photos", user] if p["images_part"]}
        assert sorted(os.listdir(out / IMAGES / user_folder(user))) == sorted(named)
        jpegs = snap[IMAGES, user]
        assert all((f["photo_sha256"], f["face_index"]) in jpegs for f in snap["faces", user])
        assert all((p["photo_sha256"], None) in jpegs for p in snap["photos", user] if p["status"] != "failed")
    assert not (out / IMAGES / user_folder("dan")).exists()
    second = runs["second"]
    assert second.photos == second.listed == len(expected)


def test_person_ids_are_kept_joined_and_never_reused(runs):
    before = person_ids(runs["snap1"], "ann", RUN1)
    after = person_ids(runs["snap2"], "ann", truth2())
    # precondition: run 1 grouped each test person into one person of its own
    assert all(len(ids) == 1 and min(ids) >= 0 for ids in before.values()), before
    assert len({min(ids) for ids in before.values()}) == len(before)
    for person in ("P1", "P2", "P3"):  # kept, with the added, edited and moved photos joined
        assert after[person] == before[person], (person, before, after)
    (p8,) = after["P8"]
    assert p8 >= runs["snap1"]["next_id", "ann"] and p8 not in set().union(*before.values())
    used = {c["person_id"] for c in runs["snap2"]["clusters", "ann"]}
    assert not before["P4"] & used  # the deleted person's id is retired
    assert runs["snap2"]["next_id", "ann"] > p8
    # every face present in both runs keeps its person id (the moved photo's included)
    old = {c["face_key"]: c["person_id"] for c in runs["snap1"]["clusters", "ann"]}
    new = {c["face_key"]: c["person_id"] for c in runs["snap2"]["clusters", "ann"]}
    assert all(new[k] == old[k] for k in new.keys() & old.keys() if old[k] >= 0)


def test_previous_elsewhere_gives_the_same_tables_and_leaves_it_untouched(runs):
    third = runs["third"]
    assert third.counters["photos_inferred"] == 0 and third.total("reused") == third.photos - 1  # all but broken
    for key, rows in runs["snap2"].items():
        assert runs["snap3"][key] == rows, key
    assert runs["files2_after"] == runs["files2"]


def test_previous_none_processes_everything_with_the_same_results(runs):
    fourth = runs["fourth"]
    assert fourth.previous is None and fourth.total("reused") == 0
    assert fourth.counters["photos_inferred"] == runs["second"].photos - 1
    for user in ("ann", "ben", "cat"):
        again = {f["face_key"]: f for f in runs["snap4"]["faces", user]}
        reused = {f["face_key"]: f for f in runs["snap2"]["faces", user]}
        assert again.keys() == reused.keys()
        for key, face in reused.items():
            # float noise only (batches differ); faces of one person are ~0.3 apart
            assert np.linalg.norm(np.subtract(face["embedding"], again[key]["embedding"])) < 1e-4
            assert np.allclose(face["box"], again[key]["box"], atol=1e-3)


# ---------------------------------------------------------------- reuse decisions, unit level

INFO = EmbedderInfo("dlib-resnet", "v1", 4)
SETTINGS = InferenceSettings(INFO, 20, 0.9, 1600)


def _outcome(path: str, sha: str, n_faces: int) -> PhotoOutcome:
    rng = np.random.default_rng(len(path))
    faces = [Face(np.float32([1, 2, 30, 40]), np.zeros((5, 2), np.float32), 0.99,
                  (v := rng.normal(size=4).astype(np.float32)) / np.linalg.norm(v), b"jpeg") for _ in range(n_faces)]
    return PhotoOutcome("u", path, "faces" if n_faces else "no_face", sha, 50, 60, b"p", faces)


def _write(folder: Path, settings: InferenceSettings, outcomes: list[PhotoOutcome]) -> None:
    """Cluster and write user u's tables as the pipeline does (JPEGs named, not written)."""
    outcomes = [replace(o, images_part="part-x.parquet") if o.status != "failed" else o for o in outcomes]
    for user in ClusterUsers(settings, "agglomerative").process((1, outcomes)):
        list(WriteUserTables(str(folder)).process(user))


def _previous(folder: Path) -> str:
    """An earlier run's tables for user u: a.jpg with 2 faces, b.jpg with none, c.jpg failed."""
    _write(folder, SETTINGS, [_outcome("u/a.jpg", "sa", 2), _outcome("u/b.jpg", "sb", 0),
                              PhotoOutcome("u", "u/c.jpg", "failed", "sc", stage="decode", error="bad")])
    return str(folder)


def _marks(previous: str, settings: InferenceSettings) -> dict[str, str | None]:
    """{path: reuse_sha256} that mark_reusable gives the listed photos of user u."""
    refs = [PhotoRef("u", p, f"/nowhere/{p}") for p in ("u/a.jpg", "u/b.jpg", "u/c.jpg", "u/new.jpg")]
    marked, _ = mark_reusable(previous, "u", refs, settings)
    return {ref.photo_path: ref.reuse_sha256 for ref in marked}


def test_only_complete_results_of_the_same_settings_are_reused(tmp_path):
    previous = _previous(tmp_path / "prev")
    assert _marks(previous, SETTINGS) == {
        "u/a.jpg": "sa", "u/b.jpg": "sb", "u/c.jpg": None, "u/new.jpg": None}  # failures are retried
    for changed in (InferenceSettings(EmbedderInfo("dlib-resnet", "v2", 4), 20, 0.9, 1600),
                    InferenceSettings(INFO, 20, 0.95, 1600), InferenceSettings(INFO, 40, 0.9, 1600),
                    InferenceSettings(INFO, 20, 0.9, 800)):
        assert set(_marks(previous, changed).values()) == {None}, changed
    # a faces table that lost a row (e.g. written by another, interrupted run) makes that photo unusable
    faces = tmp_path / "prev" / "faces" / "user_id=u" / "part-0.parquet"
    table = pq.read_table(faces)
    pq.write_table(table.slice(0, 1).replace_schema_metadata(table.schema.metadata), faces)
    assert _marks(previous, SETTINGS) == {"u/a.jpg": None, "u/b.jpg": "sb", "u/c.jpg": None, "u/new.jpg": None}


def test_an_output_that_kept_jpegs_in_its_tables_is_processed_again(tmp_path):
    """Outputs written before images/ name no part for their photos: their JPEGs would be lost."""
    previous = _previous(tmp_path / "prev")
    photos = tmp_path / "prev" / "photos" / "user_id=u" / "part-0.parquet"
    table = pq.read_table(photos)
    pq.write_table(table.drop_columns(["images_part"]).replace_schema_metadata(table.schema.metadata), photos)
    assert set(_marks(previous, SETTINGS).values()) == {None}


def test_an_output_that_stores_user_id_in_its_files_is_still_reused(tmp_path):
    """Outputs written before user_id moved to the folder name only hold it in every file too."""
    new = _previous(tmp_path / "new")
    old = _previous(tmp_path / "old")
    for path in (tmp_path / "old").glob("*/user_id=u/part-0.parquet"):
        table = pq.read_table(path)
        assert "user_id" not in table.column_names
        pq.write_table(table.add_column(0, "user_id", pa.array(["u"] * table.num_rows, pa.string()))
                       .replace_schema_metadata(table.schema.metadata), path)
    assert _marks(old, SETTINGS) == _marks(new, SETTINGS) == {
        "u/a.jpg": "sa", "u/b.jpg": "sb", "u/c.jpg": None, "u/new.jpg": None}
    was, now = (previous_results(folder, PreviousPart("u", ("sa", "sb"))) for folder in (old, new))
    assert was.people == now.people
    assert sorted(was.results) == sorted(now.results) == ["sa", "sb"]
    assert [f.embedding.tolist() for f in was.results["sa"].faces] == \
        [f.embedding.tolist() for f in now.results["sa"].faces] and len(now.results["sa"].faces) == 2


def test_settings_are_recorded_beside_the_embedder_lineage(tmp_path):
    lineage = {"base": "dlib-resnet", "steps": 10}
    tuned = InferenceSettings(EmbedderInfo("dlib-resnet", "v1+ft", 4, lineage), 20, 0.9, 1600)
    _write(tmp_path, tuned, [_outcome("u/a.jpg", "sa", 1)])
    schema = pq.read_schema(tmp_path / "faces" / "user_id=u" / "part-0.parquet")
    assert schemas.embedder_lineage(schema) == lineage
    assert schema.metadata[schemas.SETTINGS_KEY] == tuned.to_json().encode()


def test_a_reused_photo_is_read_and_hashed_but_never_decoded(lfw, tmp_path):
    photo = tmp_path / "p.jpg"
    photo.write_bytes(lfw_image(lfw, "Tony_Blair", 1).read_bytes())
    sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    load = LoadPhotos(1 << 20, 10**8, 1600, 16)
    (same,), = load.process([PhotoRef("u", "p.jpg", str(photo), reuse_sha256=sha)])
    assert (same.status, same.sha256, same.faces, same.preview) == (REUSED, sha, [], None)
    (changed,), = load.process([PhotoRef("u", "p.jpg", str(photo), reuse_sha256="0" * 64)])
    assert isinstance(changed, DecodedPhoto) and changed.sha256 == sha
    assert Image.open(io.BytesIO(changed.preview)).size == (250, 250)
