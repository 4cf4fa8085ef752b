"""Symbolic links never carry a photo across a user's folder (--follow_links).

Why: in a service where each user uploads a folder, a link in bob's folder to alice's
photo would put alice's face in bob's tables and report, and a link to any other file
would pull in whatever the pipeline's account can read. By default a link is followed
only when it leads inside the same user's folder; `--follow_links anywhere` restores
following for single-user set-ups. The same rule holds for --known_people folders.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from models.embedders import get_embedder
from models.mtcnn import MTCNN
from pipeline.known_people import load_known_people
from pipeline.links import FOLLOW_ANYWHERE
from pipeline.run import run
from pipeline.users import user_folder
from tests.conftest import lfw_image

LEAVES = "link leaves the user's folder; not followed"
#: bob's links, and what each must become by default and with --follow_links anywhere.
LINKS = {
    "bob/to-alice.jpg": ("../alice/a1.jpg", LEAVES, "faces"),
    "bob/to-outside.jpg": ("{outside}", LEAVES, "faces"),
    "bob/through-linked-folder.jpg": ("alice-folder/a1.jpg", LEAVES, "faces"),
    "bob/album/inside.jpg": ("../b1.jpg", None, "faces"),
}


def library(lfw: Path, base: Path) -> Path:
    """alice (one photo), bob (one photo and the LINKS), a photo outside the root, and the
    root reached through a link of its own (links inside a user's folder still resolve)."""
    root = base / "library"
    for rel, (name, index) in {"alice/a1.jpg": ("Colin_Powell", 1), "bob/b1.jpg": ("Tony_Blair", 1)}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lfw_image(lfw, name, index), root / rel)
    shutil.copyfile(lfw_image(lfw, "Hugo_Chavez", 1), base / "outside.jpg")
    os.symlink("../alice", root / "bob" / "alice-folder")  # a link to a folder: skipped, not followed
    (root / "bob" / "album").mkdir()
    for rel, (target, _, _) in LINKS.items():
        os.symlink(target.format(outside=base / "outside.jpg"), root / rel)
    os.symlink("library", base / "library-alias")
    return base / "library-alias"


def rows(out: Path, table: str, user: str) -> dict[str, dict]:
    found = pq.read_table(out / table / user_folder(user) / "part-0.parquet", partitioning=None).to_pylist()
    return {r["photo_path"]: r for r in found} if table != "faces" else {r["face_key"]: r for r in found}


@pytest.fixture(scope="module")
def runs(lfw: Path, tmp_path_factory: pytest.TempPathFactory):
    """{follow_links: (output, summary)} of a run with the default and with 'anywhere'."""
    base = tmp_path_factory.mktemp("links")
    root = library(lfw, base)
    found = {}
    for follow in ("user", FOLLOW_ANYWHERE):
        extra = [] if follow == "user" else ["--follow_links", follow]
        out = base / f"out-{follow}"
        found[follow] = out, run(["--input", str(root), "--output", str(out), *extra])
    return found


def test_links_leaving_the_users_folder_are_read_failures(runs):
    out, summary = runs["user"]
    photos, failures = rows(out, "photos", "bob"), rows(out, "failures", "bob")
    for path, (_, error, _) in LINKS.items():
        if error:
            assert photos[path]["status"] == "failed" and photos[path]["photo_sha256"] is None, path
            assert (failures[path]["stage"], failures[path]["error"]) == ("read", error)
        else:
            assert photos[path]["status"] == "faces" and path not in failures
    assert photos["bob/album/inside.jpg"]["photo_sha256"] == photos["bob/b1.jpg"]["photo_sha256"]
    alice_sha = rows(out, "photos", "alice")["alice/a1.jpg"]["photo_sha256"]
    assert alice_sha not in {f["photo_sha256"] for f in rows(out, "faces", "bob").values()}
    assert summary.failed()["read"] == 3
    assert {(s["path"], s["reason"]) for s in summary.skipped["examples"]} == {
        ("bob/alice-folder", "symbolic link to a folder (not followed)")}


def test_follow_links_anywhere_reads_every_link(runs):
    out, summary = runs[FOLLOW_ANYWHERE]
    photos = rows(out, "photos", "bob")
    for path, (_, _, status) in LINKS.items():
        assert photos[path]["status"] == status, path
    alice_sha = rows(out, "photos", "alice")["alice/a1.jpg"]["photo_sha256"]
    assert photos["bob/to-alice.jpg"]["photo_sha256"] == photos["bob/through-linked-folder.jpg"]["photo_sha256"] \
        == alice_sha
    assert sum(summary.failed().values()) == 0


@pytest.fixture(scope="module")
def models():
    return MTCNN(), get_embedder("dlib-resnet")


def test_known_people_links_obey_the_same_rule(lfw, tmp_path, models):
    """Per-user layout: alice's link to bob's reference photo is skipped, her link inside
    her folder is read; shared layout: a link out of the folder is skipped. 'anywhere'
    reads them all."""
    per_user, shared = tmp_path / "per_user", tmp_path / "shared"
    for rel, (name, index) in {"alice/Tony/t.jpg": ("Tony_Blair", 2), "bob/Colin/c.jpg": ("Colin_Powell", 2)}.items():
        (per_user / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lfw_image(lfw, name, index), per_user / rel)
    (per_user / "alice" / "Colin").mkdir()
    os.symlink("../../bob/Colin/c.jpg", per_user / "alice" / "Colin" / "c.jpg")
    os.symlink("t.jpg", per_user / "alice" / "Tony" / "t2.jpg")
    (shared / "Colin").mkdir(parents=True)
    os.symlink(per_user / "bob" / "Colin" / "c.jpg", shared / "Colin" / "c.jpg")
    (shared / "Tony").mkdir()
    shutil.copyfile(lfw_image(lfw, "Tony_Blair", 2), shared / "Tony" / "t.jpg")
    detector, embedder = models

    known = load_known_people(per_user, detector, embedder)
    assert known.skipped == [("alice/Colin/c.jpg", LEAVES)]
    assert sorted(zip(known.user_ids, known.names)) == [("alice", "Tony"), ("alice", "Tony"), ("bob", "Colin")]
    known = load_known_people(shared, detector, embedder)
    assert known.skipped == [("Colin/c.jpg", "link leaves the --known_people folder; not followed")]
    for folder, faces in ((per_user, 4), (shared, 2)):
        known = load_known_people(folder, detector, embedder, follow_links=FOLLOW_ANYWHERE)
        assert known.skipped == [] and len(known.names) == faces
