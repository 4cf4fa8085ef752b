"""The pipeline's parts on real LFW photos: user ids, decoding, batched inference with
per-photo failures, idempotent per-user writing, and a manifest-driven run.

Why: each of these is a promise the end-to-end test cannot isolate: a photo that breaks
detection must fail alone; a re-written user must not gain duplicates; user ids must
map to safe folder names and back; faces are found at detection resolution but boxes
and chips come from full-resolution pixels.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.embedders import get_embedder
from models.mtcnn import MTCNN
from pipeline import schemas
from pipeline.decode import DecodeError, decode_photo
from pipeline.finish import remove_stale
from pipeline.inference import EmbedderInfo, FaceModels, InferenceSettings, process_batch
from pipeline.outputs import WriteUserTables
from pipeline.records import DecodedPhoto, PhotoOutcome
from pipeline.run import run
from pipeline.tables import file_table, open_table
from pipeline.user_tables import TABLES, ClusterUsers, UserStats, clusters_table, face_embeddings, faces_table
from pipeline.users import user_folder, user_id_problem
from tests.conftest import lfw_image


def jpeg(image: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def test_user_ids_become_safe_folders_that_read_back(tmp_path):
    for bad in ("", ".", "..", ".Trash", "a/b", "a\\b", "line\nbreak", "bad\udcffbyte", "x" * 300):
        assert user_id_problem(bad), repr(bad)
    user = "Zoë O'Neil/%"[:-2] + "%"  # spaces, quotes, non-Latin and a literal percent sign
    assert user_id_problem(user) is None
    folder = user_folder(user)
    assert folder == "user_id=Zo%C3%AB%20O%27Neil%25"
    path = tmp_path / "t" / folder / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"n": [1]}), path)
    assert ds.dataset(tmp_path / "t", partitioning="hive").to_table().column("user_id").to_pylist() == [user]


def test_files_leave_user_id_to_the_folder_and_old_files_still_read(tmp_path):
    metadata = {schemas.SETTINGS_KEY: b"{}"}
    table = pa.table({"user_id": ["007"], "n": [1]}).replace_schema_metadata(metadata)
    stored = file_table(table)
    assert stored.column_names == ["n"] and stored.schema.metadata == metadata
    for user, rows in (("007", stored), ("0.5", table)):  # new layout, old layout (user_id in the file)
        path = tmp_path / "t" / user_folder(user) / "part-0.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(rows, path)
    schema = pa.schema([("user_id", pa.string()), ("n", pa.int64())])
    read = open_table(tmp_path / "t", schema).to_table().sort_by("user_id")
    assert read.column("user_id").to_pylist() == ["0.5", "007"]  # text, not the numbers a guess makes
    only = open_table(tmp_path / "t").to_table(filter=ds.field("user_id") == "007")
    assert only.column("user_id").to_pylist() == ["007"] and only.column("n").to_pylist() == [1]


def test_decode_orientation_guard_and_detection_copy(lfw):
    photo = Image.open(lfw_image(lfw, "Aaron_Eckhart", 1)).crop((0, 0, 250, 200))
    exif = photo.getexif()
    exif[0x0112] = 6  # stored rotated: displayed after a 90 degree turn
    image, detect, preview = decode_photo(jpeg(photo, exif=exif), 10**8, 1600)
    assert image.shape == (250, 200, 3) and detect is image
    assert Image.open(io.BytesIO(preview)).size == (200, 250)
    big = Image.open(lfw_image(lfw, "Aaron_Eckhart", 1)).resize((3000, 3000))
    image, detect, preview = decode_photo(jpeg(big), 10**8, 1600)
    assert image.shape == (3000, 3000, 3) and detect.shape == (1600, 1600, 3)
    assert max(Image.open(io.BytesIO(preview)).size) == 512
    with pytest.raises(DecodeError, match=r"3000x3000 = 9000000 pixels exceeds --max_pixels=1000000"):
        decode_photo(jpeg(big), 10**6, 1600)
    with pytest.raises(DecodeError, match="truncated"):
        decode_photo(jpeg(big)[:20000], 10**8, 1600)
    grey16 = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(grey16, "PNG")
    assert decode_photo(grey16.getvalue(), 10**8, 1600)[0].min() == 255


@pytest.fixture(scope="module")
def models() -> FaceModels:
    return FaceModels(MTCNN(), get_embedder("dlib-resnet"))


def decoded(data: bytes, path: str, max_detect_side: int = 1600) -> DecodedPhoto:
    image, detect, preview = decode_photo(data, 10**8, max_detect_side)
    return DecodedPhoto("u", path, path, image, detect, preview)


def test_batch_aligns_from_full_resolution_and_isolates_failures(lfw, models):
    small = Image.open(lfw_image(lfw, "Colin_Powell", 1))
    large = small.resize((1000, 1000), Image.Resampling.BICUBIC)
    broken = DecodedPhoto("u", "broken", "x", np.zeros((50, 50, 3), np.float32), np.zeros((50, 50, 3), np.float32), b"")
    batch = [decoded(jpeg(small), "small"), broken, decoded(jpeg(large), "large", max_detect_side=400)]
    assert batch[2].detect_image.shape == (400, 400, 3)
    small_out, broken_out, large_out = process_batch(batch, models, 0.9)
    assert (broken_out.status, broken_out.stage) == ("failed", "detect")
    assert "uint8" in broken_out.error and "\n" not in broken_out.error
    assert small_out.status == large_out.status == "faces"
    # the main face: same place in full-resolution pixels (x4, within 6% of the face size:
    # detected at 400 px instead of 250 px), nearly the same embedding
    a, b = small_out.faces[0], large_out.faces[0]
    side = 4 * (a.box[2] - a.box[0])
    assert np.abs(b.box - 4 * a.box).max() < 0.06 * side
    assert np.abs(b.landmarks - 4 * a.landmarks).max() < 0.06 * side
    assert np.linalg.norm(a.embedding - b.embedding) < 0.12
    assert [f.det_score for f in small_out.faces] == sorted((f.det_score for f in small_out.faces), reverse=True)


def outcome(user: str, path: str, sha: str, n_faces: int, dim: int = 4) -> PhotoOutcome:
    from pipeline.records import Face

    rng = np.random.default_rng(len(path))
    faces = [Face(np.float32([1, 2, 30, 40]), np.zeros((5, 2), np.float32), 0.99,
                  (v := rng.normal(size=dim).astype(np.float32)) / np.linalg.norm(v), b"jpeg")
             for _ in range(n_faces)]
    return PhotoOutcome(user, path, "faces" if n_faces else "no_face", sha, 50, 60, b"p", faces)


def test_mixed_embedders_are_never_clustered_together():
    info = EmbedderInfo("dlib-resnet", "v1", 4)
    one = faces_table("u", [outcome("u", "a.jpg", "aa", 2)], info)
    other = faces_table("u", [outcome("u", "b.jpg", "bb", 1)], EmbedderInfo("facenet", "v9", 4))
    with pytest.raises(ValueError, match="refusing to cluster faces of user u .*dlib-resnet v1, facenet v9"):
        both = pa.concat_tables([one, other])
        clusters_table(both, face_embeddings(both), "agglomerative")


def test_rewriting_a_user_is_idempotent_and_the_last_step_removes_stale_users(tmp_path):
    out = str(tmp_path / "out")
    info = EmbedderInfo("dlib-resnet", "v1", 4)
    outcomes = [outcome("bob", "bob/b.jpg", "s2", 2), outcome("bob", "bob/a.jpg", "s1", 1),
                outcome("bob", "bob/copy of a.jpg", "s1", 1), outcome("bob", "bob/c.jpg", "s3", 0)]
    cluster = ClusterUsers(InferenceSettings(info, 20, 0.9, 1600), "agglomerative")
    writer = WriteUserTables(out)

    def write(items: list[PhotoOutcome]) -> list[UserStats]:
        return [written.stats for user in cluster.process((1, items)) for written in writer.process(user)]

    first = write(outcomes)
    files = {t: (tmp_path / "out" / t / "user_id=bob" / "part-0.parquet") for t in TABLES}
    before = {t: f.read_bytes() for t, f in files.items()}
    (tmp_path / "out/faces/user_id=gone").mkdir(parents=True)
    (tmp_path / "out/faces/user_id=gone/part-0.parquet").write_bytes(before["faces"])
    (tmp_path / "out/faces/user_id=bob/.part-0.parquet.dead.tmp").write_bytes(b"killed attempt")
    second = write(list(reversed(outcomes)))  # a retried bundle, other order
    assert first == second and {t: f.read_bytes() for t, f in files.items()} == before
    faces = pq.read_table(files["faces"])
    assert faces.column("face_key").to_pylist() == ["s1:0", "s2:0", "s2:1"]
    assert faces.schema.equals(file_table(schemas.faces_schema(4).empty_table()).schema, check_metadata=False)
    assert first[0].photos == 4 and first[0].with_faces == 3 and first[0].same_photo_paths == 1
    remove_stale(out, ["bob"])
    assert not (tmp_path / "out/faces/user_id=gone").exists()
    assert sorted(os.listdir(tmp_path / "out/faces/user_id=bob")) == ["part-0.parquet"]


def test_manifest_run_reports_unreadable_and_invalid_rows(lfw, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.jpg").write_bytes(lfw_image(lfw, "Colin_Powell", 2).read_bytes())
    manifest = photos / "manifest.csv"
    manifest.write_text("user_id,path\ncarol,one.jpg\ncarol,missing.jpg\n../evil,one.jpg\n", encoding="utf-8")
    summary = run(["--input", str(manifest), "--output", str(tmp_path / "out")])
    assert summary.photos == 2 and summary.failed()["read"] == 1 and summary.total("with_faces") == 1
    assert summary.skipped["count"] == 1 and summary.skipped["reasons"] == {
        "user id contains a path separator": 1}
    failures = pq.read_table(tmp_path / "out/failures/user_id=carol/part-0.parquet").to_pylist()
    assert [(f["photo_path"], f["stage"]) for f in failures] == [("missing.jpg", "read")]
    assert str(tmp_path) not in failures[0]["error"] and "missing.jpg" in failures[0]["error"]


@pytest.mark.parametrize("name", ["ensemble", "dlib-resnet", "facenet-msceleb", "facenet-casia"])
def test_launcher_knows_the_version_without_loading_the_networks(name):
    """The launcher writes every output with the version and dimension the workers will
    load (they refuse another): the description from the weights files must match."""
    from pipeline.inference import embedder_info, launcher_embedder, launcher_embedder_info

    assert launcher_embedder_info(name, None) == embedder_info(launcher_embedder(name, None))
