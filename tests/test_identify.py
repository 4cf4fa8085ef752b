"""Naming clusters from known people, search by face and verification, on real LFW photos.

Why: these are the user-facing identification features; each must give the right answer
on real faces through the real detector + aligner + embedder. Identities come from View-2
and are not in pairsDevTrain.txt, on which the thresholds were derived.
Naming runs the whole pipeline (DirectRunner, --known_people) on a small library; search and
verification libraries are embedded through core.lfw (computed afresh on a clean machine,
cached in ~/.cache/facegroup), query and reference photos through the code under test
(detector included).
"""
from __future__ import annotations

import html
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bench.cluster_eval import lfw_identities, pair_names
from bench.identify_lfw import verify_sample
from core.faces import ALL, CENTRE, LARGEST, main_face
from core.lfw import embed_images
from models.embedders import DEFAULT_EMBEDDER, get_embedder
from models.mtcnn import MTCNN, Detections
from models.weights import file_sha256
from pipeline import schemas, search, verify
from pipeline.decode import encode_jpeg
from pipeline.inference import InferenceSettings, embedder_info
from pipeline.known_people import load_known_people, load_naming, reference_photos
from pipeline.naming import people_table
from pipeline.photo_faces import photo_faces
from pipeline.report import digest
from pipeline.run import main, run
from pipeline.tables import PART, file_table, table_path, write_table
from pipeline.thresholds import thresholds_for
from pipeline.user_tables import ClusterUsers
from pipeline.users import user_folder


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(DEFAULT_EMBEDDER)  # what the pipeline and the commands run with


@pytest.fixture(scope="module")
def detector():
    return MTCNN()


@pytest.fixture(scope="module")
def pool(lfw: Path) -> dict[str, list[Path]]:
    """View-2 identities outside pairsDevTrain.txt -> their photos."""
    identities = lfw_identities(lfw)
    names = (pair_names(lfw / "pairs.txt") - pair_names(lfw / "pairsDevTrain.txt")) & set(identities)
    return {n: identities[n] for n in sorted(names)}


def pick(pool: dict[str, list[Path]], min_photos: int, n: int, seed: int,
         exclude: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """n seeded identities of `pool` with at least min_photos photos."""
    names = [k for k, v in pool.items() if len(v) >= min_photos and k not in exclude]
    return sorted(np.random.default_rng(seed).choice(names, size=n, replace=False).tolist())


# --- naming clusters --------------------------------------------------------------------

def label(identity: str) -> str:
    """The known-people folder name (the person's name) of an LFW identity."""
    return identity.replace("_", " ")


def copy_photos(root: Path, photos: dict[str, list[Path]]) -> Path:
    """root/<key>/<photo file> for each key; returns root."""
    for key, paths in photos.items():
        (root / key).mkdir(parents=True, exist_ok=True)
        for p in paths:
            shutil.copyfile(p, root / key / p.name)
    return root


def read(out: Path, table: str, user: str) -> pa.Table:
    return pq.read_table(out / table / user_folder(user) / "part-0.parquet", partitioning=None)


@pytest.fixture(scope="module")
def naming_runs(pool, tmp_path_factory):
    """The real pipeline (DirectRunner) on a 2-user library (5 and 3 people with 4 photos,
    4 and 2 people seen once), named from 3 known people (one in both libraries, one in
    each); then again into the same output (incremental: nothing is embedded again) with 3
    known people absent from both. Returns (truth {user: {photo path: identity}}, known
    identities, (summary, tables, user index pages) of run 1, (summary, tables) of run 2)."""
    base = tmp_path_factory.mktemp("naming")
    people = pick(pool, 7, 7, seed=1)  # 4 library photos each; the last 2 are the references
    singles = pick(pool, 1, 6, seed=2, exclude=set(people))
    libraries = {"u1": (people[:5], singles[:4]), "u2": ([people[0], *people[5:]], singles[4:])}
    truth: dict[str, dict[str, str]] = {}
    for user, (multi, single) in libraries.items():
        truth[user] = {}
        for name in multi + single:
            for src in pool[name][:4 if name in multi else 1]:
                copy_photos(base / "library", {user: [src]})
                truth[user][f"{user}/{src.name}"] = name
    known = [people[0], people[1], people[5]]
    named_dir = copy_photos(base / "known", {label(n): pool[n][-2:] for n in known})
    absent = pick(pool, 2, 3, seed=3, exclude=set(people) | set(singles))
    absent_dir = copy_photos(base / "absent", {label(n): pool[n][:2] for n in absent})
    out = base / "out"
    args = ["--input", str(base / "library"), "--output", str(out), "--runner", "DirectRunner",
            "--direct_num_workers", "1"]
    first = run(args + ["--known_people", str(named_dir)])
    tables1 = {(t, u): read(out, t, u) for t in ("photos", "faces", "clusters", "people") for u in truth}
    pages = {u: (out / "report" / f"u-{digest(u, 16)}" / "index.html").read_text(encoding="utf-8") for u in truth}
    second = run(args + ["--known_people", str(absent_dir)])
    tables2 = {(t, u): read(out, t, u) for t in ("clusters", "people") for u in truth}
    return truth, known, (first, tables1, pages), (second, tables2)


def labelled_faces(faces: pa.Table, photos: pa.Table, truth: dict[str, str]) -> dict[str, str]:
    """face_key -> LFW identity of each photo's labelled face (the face nearest the photo
    centre, as LFW crops them); other faces are people in the background, of no known identity."""
    photo = {p["photo_sha256"]: p for p in photos.to_pylist()}
    by_photo: dict[str, list[dict]] = {}
    for f in sorted(faces.to_pylist(), key=lambda f: f["face_index"]):
        by_photo.setdefault(f["photo_sha256"], []).append(f)
    out = {}
    for sha, found in by_photo.items():
        det = Detections(np.array([f["box"] for f in found], np.float32), np.array([f["det_score"] for f in found]),
                         np.array([f["landmarks"] for f in found], np.float32).reshape(-1, 5, 2))
        p = photo[sha]
        out[found[main_face(det, p["width"], p["height"], CENTRE)]["face_key"]] = truth[p["photo_path"]]
    return out


def cluster_identities(clusters: pa.Table, labelled: dict[str, str]) -> dict[int, str | None]:
    """person_id -> the identity of most of its labelled faces (None: background faces only)."""
    votes: dict[int, list[str]] = {}
    for c in clusters.to_pylist():
        if c["person_id"] >= 0:
            votes.setdefault(c["person_id"], [])
            if c["face_key"] in labelled:
                votes[c["person_id"]].append(labelled[c["face_key"]])
    return {pid: max(sorted(set(v)), key=v.count) if v else None for pid, v in votes.items()}


def test_known_people_name_exactly_their_clusters(naming_runs, embedder):
    truth, known, (summary, tables, pages), _ = naming_runs
    t = thresholds_for(embedder.version)
    named = 0
    for user in truth:
        clusters, people = tables["clusters", user], tables["people", user]
        assert people.schema.equals(file_table(schemas.PEOPLE.empty_table()).schema, check_metadata=False)
        rule = json.loads(people.schema.metadata[schemas.NAMING_KEY])
        assert (rule["threshold"], rule["margin"], rule["known_names"]) == (t.name, t.margin, 3)
        labelled = labelled_faces(tables["faces", user], tables["photos", user], truth[user])
        identity = cluster_identities(clusters, labelled)
        rows = {r["person_id"]: r for r in people.to_pylist()}
        assert sorted(rows) == sorted(identity) and len(rows) >= 3
        for pid, r in rows.items():
            expected = label(identity[pid]) if identity[pid] in known else None
            assert r["name"] == expected, (user, r, identity[pid])
            assert r["face_count"] == (clusters.column("person_id").to_numpy() == pid).sum()
            assert r["match_distance"] is not None and (expected is None or r["match_distance"] < t.name)
        present = {label(n) for n in known if n in truth[user].values()}
        assert len(present) == 2 and {r["name"] for r in rows.values()} - {None} == present
        name_of = {pid: r["name"] for pid, r in rows.items()}
        assert [c["name"] for c in clusters.to_pylist()] == [name_of.get(p) for p in clusters.column("person_id").to_pylist()]
        assert all(html.escape(n) in pages[user] for n in present)
        named += sum(r["name"] is not None for r in rows.values())
    assert summary.known_people["names"] == 3 and summary.known_people["faces"] == 6
    assert summary.known_people["skipped"] == [] and summary.total("named") == named
    assert "known people: 3 names from 6 reference faces" in summary.format()


def test_absent_people_name_nothing_and_names_follow_each_run(naming_runs):
    truth, _, (first, tables1, _), (second, tables2) = naming_runs
    assert second.total("reused") == second.photos == first.photos  # nothing detected or embedded again
    for user in truth:
        people1, people2 = tables1["people", user], tables2["people", user]
        assert people2.column("name").null_count == people2.num_rows > 0
        assert tables2["clusters", user].column("name").null_count == tables2["clusters", user].num_rows
        assert all(d is not None for d in people2.column("match_distance").to_pylist())
        # the same people under the same ids: only the names changed
        assert people2.select(["person_id", "face_count"]) == people1.select(["person_id", "face_count"])
    assert second.total("named") == 0


def test_one_person_under_two_names_is_named_neither(pool, tmp_path, detector, embedder):
    """Two names equally near a cluster (the margin rule): neither is given; either alone is."""
    name = pick(pool, 6, 1, seed=6)[0]
    x, _ = embed_images(pool[name][:4], embedder)
    known = load_known_people(copy_photos(tmp_path, {"A": pool[name][-2:], "B": pool[name][-2:]}), detector, embedder)
    emb, names = known.for_user("u")
    t = thresholds_for(embedder.version)
    once = people_table("u", np.zeros(4, int), x, emb[names == "A"], names[names == "A"], t.name, t.margin)
    twice = people_table("u", np.zeros(4, int), x, emb, names, t.name, t.margin)
    assert once.column("name").to_pylist() == ["A"] and twice.column("name").to_pylist() == [None]


def test_reference_face_is_the_largest_visible_one(lfw, detector, embedder):
    """Ali_Naimi_0008 shows him in the middle and, cut by the photo's edge, a face whose
    box is larger but reaches outside the photo: his face is the one used."""
    photo = lfw / "Ali_Naimi" / "Ali_Naimi_0008.jpg"
    faces = photo_faces([photo], detector, embedder)[0]
    main = photo_faces([photo], detector, embedder, LARGEST)[0]
    b = faces.detections.boxes
    chosen = main_face(faces.detections, 250, 250, LARGEST)
    widest = int(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).argmax())
    assert widest != chosen and ((b[widest] < 0) | (b[widest] > 250)).any()
    assert chosen == main_face(faces.detections, 250, 250, CENTRE)
    assert len(main) == 1 and main.found == len(faces) > 1
    np.testing.assert_array_equal(main.detections.boxes[0], b[chosen])


def test_known_people_refuse_other_embedder_versions_and_missing_folders(lfw, embedder, tmp_path, capsys):
    """Distances from another embedder version mean nothing: refused before any run."""
    folder = copy_photos(tmp_path / "known", {"Aaron": [lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"]})
    info = embedder_info(embedder)
    other = InferenceSettings(replace(info, version="dlib-v1-000000000000/lm150-v1"), 20, 0.9, 1600)
    with pytest.raises(ValueError, match="but the run embeds with dlib-v1-000000000000"):
        load_naming(str(folder), other, embedder)
    naming = load_naming(str(folder), InferenceSettings(info, 20, 0.9, 1600), embedder)
    assert naming.known.names.tolist() == ["Aaron"] and naming.threshold == thresholds_for(info.version).name
    with pytest.raises(ValueError, match="cannot name faces embedded with dlib-v1-000000000000"):
        ClusterUsers(other, "agglomerative", naming)
    with pytest.raises(ValueError, match="no thresholds derived for embedder version 'dlib-v1-000000000000"):
        thresholds_for(other.embedder.version)
    assert main(["--input", str(lfw / "Aaron_Peirsol"), "--output", str(tmp_path / "out"),
                 "--known_people", str(tmp_path / "missing")]) == 2
    assert f"--known_people folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_known_people_layouts(tmp_path, lfw):
    photo = lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    (tmp_path / "shared" / "Aaron").mkdir(parents=True)
    (tmp_path / "shared" / "Aaron" / "a.jpg").symlink_to(photo)
    (tmp_path / "shared" / "Aaron" / "notes.txt").write_text("ignored")
    assert reference_photos(tmp_path / "shared") == [(None, "Aaron", tmp_path / "shared" / "Aaron" / "a.jpg")]
    (tmp_path / "per_user" / "alice" / "Aaron").mkdir(parents=True)
    (tmp_path / "per_user" / "alice" / "Aaron" / "a.jpg").symlink_to(photo)
    assert reference_photos(tmp_path / "per_user")[0][:2] == ("alice", "Aaron")
    (tmp_path / "per_user" / "Bob").mkdir()
    (tmp_path / "per_user" / "Bob" / "b.jpg").symlink_to(photo)
    with pytest.raises(ValueError, match="mixes"):
        reference_photos(tmp_path / "per_user")
    with pytest.raises(FileNotFoundError, match="--known_people"):
        reference_photos(tmp_path / "missing")


# --- search -----------------------------------------------------------------------------

def write_faces(out: Path, user: str, paths: list[Path], lfw: Path, x: np.ndarray, embedder,
                version: str | None = None) -> None:
    """A user's faces/ table (pipeline/schemas.py) of the given LFW photos and their embeddings,
    with the photos/ rows and the images/ part that hold their thumbnails (pipeline.images).

    Box/landmarks are the whole 250x250 photo (the cache keeps only embeddings); the
    thumbnail is the photo's centre, as the pipeline's aligned chip would roughly show.
    """
    faces, photos, images = [], [], []
    for p, e in zip(paths, x):
        sha = file_sha256(p)
        path = p.relative_to(lfw).as_posix()
        faces.append({"user_id": user, "photo_path": path, "photo_sha256": sha,
                      "face_index": 0, "face_key": schemas.face_key(sha, 0), "box": [0.0, 0.0, 250.0, 250.0],
                      "landmarks": [0.0] * 10, "det_score": 1.0, "embedder": embedder.name,
                      "embedder_version": version or embedder.version, "embedding": e.tolist()})
        photos.append({"user_id": user, "photo_path": path, "photo_sha256": sha, "status": "faces", "n_faces": 1,
                       "width": 250, "height": 250, "images_part": "part-test.parquet"})
        images.append({"user_id": user, "photo_sha256": sha, "face_index": 0,
                       "jpeg": encode_jpeg(np.asarray(Image.open(p).convert("RGB"))[60:190, 60:190], 80)})
    for table, rows, schema, part in (("faces", faces, schemas.faces_schema(x.shape[1]), PART),
                                      ("photos", photos, schemas.PHOTOS, PART),
                                      ("images", images, schemas.IMAGES, "part-test.parquet")):
        write_table(table_path(str(out), table, user, part), pa.Table.from_pylist(rows, schema=schema))


@pytest.fixture(scope="module")
def search_library(pool, lfw, embedder, tmp_path_factory):
    """24 people with >= 5 photos (first photo held out as the query) and 60 people seen once."""
    people = pick(pool, 5, 24, seed=4)
    others = pick(pool, 1, 60, seed=5, exclude=set(people))
    paths = [p for n in people for p in pool[n][1:6]] + [pool[n][0] for n in others]
    x, _ = embed_images(paths, embedder)
    out = tmp_path_factory.mktemp("out")
    write_faces(out, "u1", paths, lfw, x, embedder)
    return out, people, paths


def query_embedding(photo: Path, detector, embedder) -> tuple[np.ndarray, int]:
    """(embedding, face index) of the labelled (centre) face of an LFW photo, through the
    search's query path."""
    faces = photo_faces([photo], detector, embedder, ALL)[0]
    i = search.query_face(faces, photo, main_face(faces.detections, 250, 250, CENTRE))
    return faces.embeddings[i], i


def test_search_ranks_the_persons_photos_first(search_library, pool, detector, embedder):
    out, people, _ = search_library
    faces = search.load_user_faces(out, "u1")
    precision = []
    for name in people:
        k = len(pool[name][1:6])
        query, _ = query_embedding(pool[name][0], detector, embedder)
        rows, dist = search.rank_photos(faces.embeddings, faces.photo_paths, query, k)
        assert np.all(np.diff(dist) >= 0)
        precision.append(np.mean([p.startswith(f"{name}/") for p in faces.photo_paths[rows]]))
    assert np.mean(precision) >= 0.9, dict(zip(people, precision))


def test_search_command_prints_and_writes_page(search_library, pool, tmp_path, detector, embedder, capsys):
    out, people, _ = search_library
    name = people[0]
    query = tmp_path / "query <1>.jpg"
    query.symlink_to(pool[name][0])
    _, i = query_embedding(query, detector, embedder)
    assert search.main(["--output", str(out), "--user", "u1", "--photo", str(query), "--top", "5",
                        "--face-index", str(i)]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines() if line[:4].strip().isdigit()]
    assert len(lines) == 5 and sum(line[-1].startswith(f"{name}/") for line in lines) >= 4
    page = out / "search" / f"u1-query__1_-face{i}.html"
    assert f"page: {page}" in printed
    text = page.read_text()
    assert html.escape("query <1>.jpg") in text and "<1>" not in text
    assert len(list((out / "search" / f"u1-query__1_-face{i}_files").glob("*.jpg"))) == 6  # query + 5


def test_search_refuses_other_embedder_version_and_bad_input(lfw, embedder, tmp_path, capsys):
    out = tmp_path / "out"
    paths = [lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"]
    write_faces(out, "u2", paths, lfw, np.zeros((1, embedder.dim), np.float32), embedder,
                version="dlib-v1-000000000000/lm150-v1")
    assert search.main(["--output", str(out), "--user", "u2", "--photo", str(paths[0])]) == 2
    assert "were embedded with dlib-v1-000000000000" in capsys.readouterr().err
    assert search.main(["--output", str(out), "--user", "nobody", "--photo", str(paths[0])]) == 2
    assert "no faces/ table for --user 'nobody'" in capsys.readouterr().err
    assert (out / "faces" / user_folder("u2")).is_dir()


def test_search_asks_which_face_when_several(search_library, lfw, tmp_path, capsys):
    out, *_ = search_library
    two = np.concatenate([np.asarray(Image.open(lfw / n / f"{n}_0001.jpg").convert("RGB"))
                          for n in ("Aaron_Peirsol", "Abdullah_Gul")], axis=1)
    photo = tmp_path / "two.jpg"
    Image.fromarray(two).save(photo, quality=95)
    assert search.main(["--output", str(out), "--user", "u1", "--photo", str(photo)]) == 2
    err = capsys.readouterr().err
    assert "faces; choose one with --face-index" in err
    assert search.main(["--output", str(out), "--user", "u1", "--photo", str(photo), "--face-index", "1"]) == 0


# --- verification -----------------------------------------------------------------------

def test_verify_agrees_with_lfw_labels(lfw, detector, embedder):
    """The command's own path (largest face of each photo) on 500 seeded View-2 pairs."""
    pairs = verify_sample(lfw)
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    e = {}
    for start in range(0, len(paths), 64):  # batched as the command batches its two photos
        batch = paths[start:start + 64]
        e.update(zip(batch, (emb for emb, _ in verify.main_faces(batch, detector, embedder))))
    t = thresholds_for(embedder.version).verify
    agree = [verify.same_person(float(np.linalg.norm(e[a] - e[b])), t) == same for a, b, same in pairs]
    assert len(pairs) == 500 and np.mean(agree) >= 0.99, np.mean(agree)


def test_verify_command(lfw, embedder, capsys):
    same = (lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg", lfw / "Aaron_Peirsol" / "Aaron_Peirsol_0002.jpg")
    other = (same[0], lfw / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg")
    t = thresholds_for(embedder.version).verify
    for (a, b), verdict in ((same, "same person"), (other, "different people")):
        assert verify.main([str(a), str(b)]) == 0
        out = capsys.readouterr().out
        assert out.rstrip().endswith(f"threshold {t:.4f}: {verdict}"), out
        x, _ = embed_images([a, b], embedder)
        assert f"distance {np.linalg.norm(x[0] - x[1]):.4f}" in out
    assert verify.main([str(same[0]), str(lfw / "missing.jpg")]) == 2
    assert "not found" in capsys.readouterr().err
