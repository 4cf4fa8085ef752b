"""The whole pipeline on DirectRunner, on a photo library built from real LFW photos.

Why: this is the product. Three users, each with 8-12 LFW people of 2-8 photos plus five
people seen once; one person (same photos) in two users' libraries; corrupt files, a
photo without a face, a photo stored twice and a file outside any user folder. The run
must account for every photo, write the documented schemas, never let a cluster cross
users, and group each user's faces into the LFW identities (pairwise F-measure >= 0.90).
"""
from __future__ import annotations

import html.parser
import io
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.faces import CENTRE, main_face
from models.embedders import DEFAULT_EMBEDDER, embedding_dim
from models.mtcnn import Detections
from pipeline import schemas
from pipeline.images import user_images
from pipeline.run import main, run
from pipeline.tables import open_table
from pipeline.users import user_folder
from tests.conftest import REPO

USERS = ("alice", "bob", "Zoë O'Neil")
MULTI_PEOPLE = (8, 9, 10)  # people with 2-8 photos per user, besides the shared one
SINGLE_PEOPLE = 5
SHARED_BY = ("alice", "bob")
CORRUPT = {"alice": "broken/truncated.jpg", "bob": "random.jpg", "Zoë O'Neil": "empty.jpg"}
NO_FACE = ("Zoë O'Neil", "holiday/landscape.jpg")
COPIED = "bob"  # one of bob's photos is stored a second time under another name
COPIED_FROM, COPIED_TO = "bob/2020/summer/IMG_0001.jpg", "bob/copies/IMG_0001 copy.jpg"
TABLE_SCHEMAS = {"photos": schemas.PHOTOS, "faces": schemas.faces_schema(embedding_dim(DEFAULT_EMBEDDER)),
                 "clusters": schemas.CLUSTERS, "failures": schemas.FAILURES, "people": schemas.PEOPLE}


def build_library(lfw: Path, root: Path, seed: int = 7) -> dict[str, dict[str, str | None]]:
    """Write the library under root; returns {user: {photo_path: LFW identity or None}}."""
    rng = random.Random(seed)
    people = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    counts = {name: len(list((lfw / name).glob("*.jpg"))) for name in people}
    multi = [n for n in people if 2 <= counts[n] <= 8]
    single = [n for n in people if counts[n] == 1]
    rng.shuffle(multi)
    rng.shuffle(single)
    shared = multi.pop()
    truth: dict[str, dict[str, str | None]] = {}
    for user, n_multi in zip(USERS, MULTI_PEOPLE):
        chosen = [multi.pop() for _ in range(n_multi)] + [single.pop() for _ in range(SINGLE_PEOPLE)]
        if user in SHARED_BY:
            chosen.append(shared)
        photos = [p for name in chosen for p in sorted((lfw / name).glob("*.jpg"))]
        rng.shuffle(photos)
        truth[user] = {}
        for i, src in enumerate(photos, 1):
            album = ("2019", "2020/summer", "")[i % 3]
            rel = "/".join(part for part in (user, album, f"IMG_{i:04d}.jpg") if part)
            _copy(src, root / rel)
            truth[user][rel] = src.parent.name
    _copy(root / COPIED_FROM, root / COPIED_TO)
    truth[COPIED][COPIED_TO] = truth[COPIED][COPIED_FROM]
    unused = lfw / multi[0] / f"{multi[0]}_0001.jpg"
    corrupt = {"alice": unused.read_bytes()[:3000], "bob": random.Random(1).randbytes(5000), USERS[2]: b""}
    for user, rel in CORRUPT.items():
        _write(root / user / rel, corrupt[user])
        truth[user][f"{user}/{rel}"] = None
    _write(root / NO_FACE[0] / NO_FACE[1], landscape())
    truth[NO_FACE[0]][f"{NO_FACE[0]}/{NO_FACE[1]}"] = None
    _write(root / "README.txt", b"not inside a user folder\n")
    return truth


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def landscape() -> bytes:
    """A 400x300 JPEG of sky, sun and hills: no face anywhere."""
    y, x = np.mgrid[0:300, 0:400].astype(np.float64)
    img = np.zeros((300, 400, 3))
    img[...] = np.stack([110 + 0.3 * y, 160 + 0.2 * y, 235 - 0.1 * y], -1)
    img[(x - 320) ** 2 + (y - 60) ** 2 < 30 ** 2] = (250, 230, 120)
    hills = 190 + 25 * np.sin(x / 45.0) + 10 * np.sin(x / 13.0)
    img[y > hills] = np.stack([40 + 0 * y, 120 + 0.2 * (y - 190), 50 + 0 * y], -1)[y > hills]
    out = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def result(lfw: Path, tmp_path_factory: pytest.TempPathFactory):
    """(truth, output folder, summary) of one pipeline run on the LFW library."""
    base = tmp_path_factory.mktemp("e2e")
    truth = build_library(lfw, base / "library")
    summary = run(["--input", str(base / "library"), "--output", str(base / "out"),
                   "--runner", "DirectRunner", "--direct_num_workers", "1", "--batch_size", "8"])
    return truth, base / "out", summary


def read(out: Path, table: str, user: str) -> pa.Table:
    """One user's rows of `table`, user_id taken from the Hive folder (as every reader does)."""
    return open_table(out / table).to_table(filter=ds.field("user_id") == user)


def test_schemas_are_the_documented_ones(result):
    _, out, _ = result
    for table, schema in TABLE_SCHEMAS.items():
        for user in USERS:
            found = pq.read_schema(out / table / user_folder(user) / "part-0.parquet")
            stored = schema.remove(schema.get_field_index("user_id"))  # the folder holds it
            assert found.equals(stored, check_metadata=False), f"{table}/{user}:\n{found}"
        read_back = open_table(out / table, schema).to_table()
        assert read_back.schema.equals(schema, check_metadata=False) and read_back.num_rows > 0, table
        assert set(read_back.column("user_id").to_pylist()) <= set(USERS), table
    assert set(open_table(out / "photos").to_table().column("user_id").to_pylist()) == set(USERS)
    assert not list(out.rglob("*.tmp")) and (out / "_SUCCESS").is_file()


def test_every_photo_accounted_for_once(result):
    truth, out, summary = result
    for user in USERS:
        photos = read(out, "photos", user).to_pylist()
        paths = [p["photo_path"] for p in photos]
        assert sorted(paths) == sorted(truth[user]), user
        status = {p["photo_path"]: p["status"] for p in photos}
        for path, identity in truth[user].items():
            if identity is not None:
                assert status[path] == "faces", path
        failures = read(out, "failures", user).to_pylist()
        corrupt = f"{user}/{CORRUPT[user]}"
        assert [(f["photo_path"], f["stage"]) for f in failures] == [(corrupt, "decode")]
        assert status[corrupt] == "failed" and "\n" not in failures[0]["error"]
    no_face = "/".join(NO_FACE)
    assert read(out, "photos", NO_FACE[0]).to_pydict()["status"][
        read(out, "photos", NO_FACE[0]).column("photo_path").to_pylist().index(no_face)] == "no_face"
    total = sum(len(t) for t in truth.values())
    assert summary.photos == summary.listed == total
    assert total == summary.total("with_faces") + summary.total("without_faces") + sum(summary.failed().values())
    assert summary.failed() == {"read": 0, "decode": 3, "detect": 0, "embed": 0}
    assert summary.total("without_faces") == 1
    assert summary.skipped["count"] == 1 and summary.skipped["examples"][0]["path"] == "README.txt"
    if summary.counters is not None:  # DirectRunner reports Beam counters
        assert summary.counters["photos_loaded"] == total
        assert summary.counters["failed_decode"] == 3


def test_faces_are_unique_and_in_original_pixels(result):
    _, out, _ = result
    for user in USERS:
        faces = read(out, "faces", user)
        keys = faces.column("face_key").to_pylist()
        assert len(keys) == len(set(keys)), user
        boxes = np.array(faces.column("box").to_pylist())
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes[:, [0, 1]] > -50).all() and (boxes[:, [2, 3]] < 300).all()  # 250x250 photos
        emb = np.array(faces.column("embedding").to_pylist())
        assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
        jpegs = user_images(str(out), user)
        first = (faces.column("photo_sha256")[0].as_py(), faces.column("face_index")[0].as_py())
        assert Image.open(io.BytesIO(jpegs[first])).size == (150, 150)  # the aligned chip
        assert Image.open(io.BytesIO(jpegs[first[0], None])).size == (250, 250)  # the photo's preview
    photos = {p["photo_path"]: p for p in read(out, "photos", COPIED).to_pylist()}
    original, copy = photos[COPIED_FROM], photos[COPIED_TO]
    assert original["photo_sha256"] == copy["photo_sha256"] and copy["status"] == "faces"
    stored = set(read(out, "faces", COPIED).column("photo_path").to_pylist())
    assert original["photo_path"] in stored and copy["photo_path"] not in stored


def test_clusters_never_span_users(result):
    truth, out, _ = result
    for user in USERS:
        clusters = read(out, "clusters", user)
        faces = read(out, "faces", user)
        assert set(clusters.column("user_id").to_pylist()) <= {user}
        assert sorted(clusters.column("face_key").to_pylist()) == sorted(faces.column("face_key").to_pylist())
        own_photos = set(read(out, "photos", user).column("photo_sha256").to_pylist())
        assert set(clusters.column("photo_sha256").to_pylist()) <= own_photos
    # The shared person's photos are in both libraries: each user has its own copy of the faces.
    a, b = (set(read(out, "faces", u).column("face_key").to_pylist()) for u in SHARED_BY)
    assert a & b


def test_people_match_lfw_identities(result):
    truth, out, _ = result
    tp = fp = fn = 0
    for user in USERS:
        faces = read(out, "faces", user).to_pylist()
        person = dict(zip(*read(out, "clusters", user).select(["face_key", "person_id"]).to_pydict().values()))
        by_sha = defaultdict(list)
        for f in faces:
            by_sha[f["photo_sha256"]].append(f)
        labels = {}
        for p in read(out, "photos", user).to_pylist():
            if p["status"] != "faces":
                continue
            found = sorted(by_sha[p["photo_sha256"]], key=lambda f: f["face_index"])
            det = Detections(boxes=np.array([f["box"] for f in found], np.float32),
                             scores=np.array([f["det_score"] for f in found], np.float32),
                             landmarks=np.array([f["landmarks"] for f in found], np.float32).reshape(-1, 5, 2))
            face = found[main_face(det, p["width"], p["height"], CENTRE)]
            pid = person[face["face_key"]]
            labels[p["photo_path"]] = pid if pid >= 0 else f"alone:{face['face_key']}"
        for x, y in combinations(sorted(labels), 2):
            same_truth = truth[user][x] == truth[user][y]
            same_cluster = labels[x] == labels[y]
            tp += same_truth and same_cluster
            fp += same_cluster and not same_truth
            fn += same_truth and not same_cluster
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    f_measure = 2 * precision * recall / (precision + recall)
    assert f_measure >= 0.90, f"pairwise precision {precision:.3f} recall {recall:.3f} F {f_measure:.3f}"


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((self._href, data))

    def handle_endtag(self, tag):
        if tag == "a":
            self._href = None


def test_report_links_every_user(result):
    _, out, summary = result
    index = out / "report" / "index.html"
    assert summary.report == str(index) and index.is_file()
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    linked = {text: href for href, text in parser.links}
    for user in USERS:
        assert user in linked, f"index does not link {user!r}"
        assert (index.parent / unquote(linked[user])).is_file()


def test_summary_is_printed_and_errors_are_one_line(result, capsys):
    _, _, summary = result
    text = summary.format()
    assert "failed by stage: read 0, decode 3, detect 0, embed 0" in text
    assert all(f"  {u}: " in text for u in USERS) and "photos/s" in text
    assert main(["--output", "/tmp/x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --input is required (a photo library folder or a manifest .csv/.parquet)"


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for option in ("--input", "--output", "--previous", "--device", "--embedder", "--embedder_weights", "--min_face_size",
                   "--min_det_score", "--max_detect_side", "--max_pixels", "--max_file_bytes", "--cluster",
                   "--batch_size", "--follow_links", "--force", "--lock_stale_minutes", "--verbose",
                   "Beam pipeline flag"):
        assert option in out
