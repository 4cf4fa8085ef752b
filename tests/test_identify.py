"""Naming clusters from known people, search by face and verification, on real LFW photos.

Why: these are the user-facing identification features; each must give the right answer
on real faces through the real detector + aligner + embedder. Identities come from View-2
and are not in pairsDevTrain.txt, on which the thresholds were derived.
Library embeddings go through bench/lfw_embed's cache; query and reference photos go
through the code under test (detector included).
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bench.cluster_eval import lfw_identities, pair_names
from bench.identify_lfw import verify_sample
from bench.lfw_embed import embed_images
from models.embedders import get_embedder
from models.weights import file_sha256
from models.mtcnn import MTCNN, Detections, centre_face
from pipeline import schemas, search, verify
from pipeline.cluster import cluster_faces
from pipeline.decode import encode_jpeg
from pipeline.known_people import PEOPLE, load_known_people, people_table, reference_photos
from pipeline.photo_faces import photo_faces
from pipeline.thresholds import thresholds_for
from pipeline.users import user_folder


@pytest.fixture(scope="module")
def embedder():
    return get_embedder("dlib-resnet")


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


def link_folder(root: Path, people: dict[str, list[Path]]) -> Path:
    """A known-people folder root/<name>/<photo> of symlinks to LFW photos."""
    for name, photos in people.items():
        (root / name).mkdir(parents=True)
        for p in photos:
            (root / name / p.name).symlink_to(p)
    return root


# --- naming clusters --------------------------------------------------------------------

@pytest.fixture(scope="module")
def library(pool, embedder):
    """A user library: 8 people with 5 photos each and 20 people seen once (their other
    photos are kept out, for use as references). Returns (identities (N,), embeddings, clusters)."""
    multi = pick(pool, 8, 8, seed=1)
    single = pick(pool, 3, 20, seed=2, exclude=set(multi))
    paths = [p for n in multi for p in pool[n][:5]] + [pool[n][0] for n in single]
    identities = np.array([n for n in multi for _ in range(5)] + single)
    x, _ = embed_images(paths, embedder)
    return multi, single, identities, x, cluster_faces(x)


def named_clusters(library, known_dir: Path, detector, embedder) -> tuple[pa.Table, dict[int, str]]:
    """people/ rows of the library named from known_dir, and each cluster's true identity."""
    *_, identities, x, clusters = library
    known = load_known_people(known_dir, detector, embedder)
    assert known.skipped == []
    emb, names = known.for_user("u1")
    t = thresholds_for(embedder.version)
    table = people_table("u1", clusters.person_id, x, emb, names, t.name, t.margin)
    truth = {}
    for pid in np.unique(clusters.person_id[clusters.person_id >= 0]):
        members, counts = np.unique(identities[clusters.person_id == pid], return_counts=True)
        truth[int(pid)] = str(members[np.argmax(counts)])
    return table, truth


def test_known_people_name_exactly_their_clusters(library, pool, tmp_path, detector, embedder):
    multi = library[0]
    known = {n: pool[n][-2:] for n in multi[:3]}  # photos outside the library
    table, truth = named_clusters(library, link_folder(tmp_path / "known", known), detector, embedder)
    assert table.schema.equals(PEOPLE)
    rows = table.to_pylist()
    assert sorted(r["person_id"] for r in rows) == sorted(truth)
    for r in rows:
        expected = truth[r["person_id"]] if truth[r["person_id"]] in known else None
        assert r["name"] == expected, (r, truth[r["person_id"]])
        assert r["face_count"] == int((library[4].person_id == r["person_id"]).sum())
    assert {r["name"] for r in rows} - {None} == set(known)


def test_absent_or_ambiguous_people_name_nothing(library, pool, tmp_path, detector, embedder):
    multi, single = library[0], library[1]
    absent = pick(pool, 4, 3, seed=3, exclude=set(multi) | set(single))
    table, _ = named_clusters(library, link_folder(tmp_path / "absent", {n: pool[n][:2] for n in absent}),
                              detector, embedder)
    assert table.column("name").null_count == table.num_rows > 0
    assert all(d is not None for d in table.column("match_distance").to_pylist())
    # One person filed under two names: the two names are equally near, so neither is given.
    twice = {multi[0]: pool[multi[0]][-2:], multi[0] + " (again)": pool[multi[0]][-2:]}
    table, _ = named_clusters(library, link_folder(tmp_path / "twice", twice), detector, embedder)
    assert table.column("name").null_count == table.num_rows


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

def write_faces(path: Path, user: str, paths: list[Path], lfw: Path, x: np.ndarray, embedder,
                version: str | None = None) -> None:
    """A faces/ table (pipeline/schemas.py) of the given LFW photos and their embeddings.

    Box/landmarks are the whole 250x250 photo (the cache keeps only embeddings); the
    thumbnail is the photo's centre, as the pipeline's aligned chip would roughly show.
    """
    rows = []
    for p, e in zip(paths, x):
        sha = file_sha256(p)
        rows.append({"user_id": user, "photo_path": p.relative_to(lfw).as_posix(), "photo_sha256": sha,
                     "face_index": 0, "face_key": schemas.face_key(sha, 0), "box": [0.0, 0.0, 250.0, 250.0],
                     "landmarks": [0.0] * 10, "det_score": 1.0, "embedder": embedder.name,
                     "embedder_version": version or embedder.version, "embedding": e.tolist(),
                     "thumbnail": encode_jpeg(np.asarray(Image.open(p).convert("RGB"))[60:190, 60:190], 80)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.faces_schema(x.shape[1])), path)


@pytest.fixture(scope="module")
def search_library(pool, lfw, embedder, tmp_path_factory):
    """24 people with >= 5 photos (first photo held out as the query) and 60 people seen once."""
    people = pick(pool, 5, 24, seed=4)
    others = pick(pool, 1, 60, seed=5, exclude=set(people))
    paths = [p for n in people for p in pool[n][1:6]] + [pool[n][0] for n in others]
    x, _ = embed_images(paths, embedder)
    out = tmp_path_factory.mktemp("out")
    write_faces(search.faces_file(out, "u1"), "u1", paths, lfw, x, embedder)
    return out, people, paths


def query_embedding(photo: Path, detector, embedder) -> tuple[np.ndarray, int]:
    """(embedding, face index) of the labelled (centre) face of an LFW photo, through the
    search's query path."""
    faces = photo_faces(photo, detector, embedder)
    det = faces.detections
    i = search.query_face(faces, photo, centre_face(Detections(det.boxes, det.scores, det.landmarks), 250, 250))
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
    write_faces(search.faces_file(out, "u2"), "u2", paths, lfw, np.zeros((1, 128), np.float32), embedder,
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

def test_verify_agrees_with_lfw_labels(lfw, embedder):
    pairs = verify_sample(lfw)
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    x, _ = embed_images(paths, embedder)
    e = dict(zip(paths, x))
    t = thresholds_for(embedder.version).verify
    agree = [verify.same_person(float(np.linalg.norm(e[a] - e[b])), t) == same for a, b, same in pairs]
    assert len(pairs) == 500 and np.mean(agree) >= 0.99


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
