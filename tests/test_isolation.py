"""Users never mix, hostile user folder names stay harmless, nothing is written outside --output.

Why: photo libraries are private. The same person in two users' libraries must stay two
separate people, in the tables and in the report; a user folder named to escape its
folder, hide, or inject markup must be refused or safely encoded; and a run must touch
nothing but its --output folder (its temporary files included).
"""
from __future__ import annotations

import html
import html.parser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pyarrow.dataset as ds
import pytest

from models.weights import cache_root
from pipeline.report import digest
from pipeline.tables import open_table
from pipeline.user_tables import TABLES
from pipeline.users import user_folder
from tests.conftest import REPO, lfw_image

SHARED = "Colin_Powell"  # in both alice's and bob's libraries, the same photo files
PHOTOS = {
    "alice": [(f"alice/shared-{i}.jpg", SHARED, i) for i in (1, 2, 3)]
             + [(f"alice/alice-only-{i}.jpg", "Tony_Blair", i) for i in (1, 2, 3)],
    "bob": [(f"bob/shared-{i}.jpg", SHARED, i) for i in (1, 2, 3, 4)]
           + [(f"bob/bob-only-{i}.jpg", "Donald_Rumsfeld", i) for i in (1, 2, 3)],
    "<img src=x onerror=alert(1)>": [("<img src=x onerror=alert(1)>/a.jpg", "Gerhard_Schroeder", 1),
                                     ("<img src=x onerror=alert(1)>/b.jpg", "Gerhard_Schroeder", 2)],
    "user_id=evil": [("user_id=evil/a.jpg", "Ariel_Sharon", 1)],
    "%2e%2e": [("%2e%2e/a.jpg", "Hugo_Chavez", 1)],  # percent-encoded "..": must stay a plain name
}
LONG = "é" * 70  # 140 bytes on disk, 420 characters percent-encoded
SKIPPED = {
    ".hidden/a.jpg": "hidden folder (user id starts with '.')",
    "a\\b/a.jpg": "user id contains a path separator",
    f"{LONG}/a.jpg": "user id longer than 200 characters once percent-encoded",
    "new\\nline/a.jpg": "user id contains control, format or undecodable characters",
    "alias": "symbolic link to a folder (not followed)",
    "README.txt": "not inside a user folder",
}


def tree(root: Path) -> dict[str, tuple[int, int] | str]:
    """Every entry under root: (size, mtime in ns) for files, 'link -> target', 'dir'."""
    found: dict[str, tuple[int, int] | str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                st = path.stat()
                found[rel] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def isolated(lfw: Path, tmp_path_factory: pytest.TempPathFactory):
    """(root, library tree before, root tree before, after) of one run in a subprocess
    whose temporary folder and home are inside root."""
    root = tmp_path_factory.mktemp("isolation")
    library = root / "library"
    for user, photos in PHOTOS.items():
        for path, name, index in photos:
            (library / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lfw_image(lfw, name, index), library / path)
    for path in SKIPPED:
        if path not in ("alias", "README.txt"):
            (library / path.replace("\\n", "\n")).parent.mkdir(parents=True)
            shutil.copyfile(lfw_image(lfw, "Jean_Chretien", 1), library / path.replace("\\n", "\n"))
    os.symlink("bob", library / "alias")
    (library / "README.txt").write_text("not a photo\n")
    for extra in ("tmp", "home"):
        (root / extra).mkdir()
    before = tree(root)
    # the weights cache stays where setup put FaceNet's file (it holds no photo data)
    env = dict(os.environ, TMPDIR=str(root / "tmp"), HOME=str(root / "home"),
               FACEGROUP_CACHE=str(cache_root()))
    done = subprocess.run([sys.executable, "-m", "pipeline", "--input", str(library), "--output",
                           str(root / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, before, tree(root), done.stdout


def test_nothing_is_written_outside_the_output_folder(isolated):
    root, before, after, _ = isolated
    outside = {p: v for p, v in after.items() if not p.startswith("out/") and p != "out"}
    assert outside == before  # library untouched, temp and home folders left empty, nothing else
    out = (root / "out").resolve()
    for path in (root / "out").rglob("*"):
        assert not path.is_symlink() and out in path.resolve().parents, path


def test_hostile_user_folders_are_refused_or_safely_encoded(isolated):
    root, _, _, stdout = isolated
    summary = json.loads((root / "out" / "summary.json").read_text(encoding="utf-8"))
    assert sorted(u["user_id"] for u in summary["users"]) == sorted(PHOTOS)
    skipped = {s["path"]: s["reason"] for s in summary["skipped"]["examples"]}
    assert skipped == SKIPPED
    for table in TABLES:
        assert sorted(os.listdir(root / "out" / table)) == sorted(user_folder(u) for u in PHOTOS)
    assert (root / "out" / "photos" / "user_id=%252e%252e").is_dir()
    assert "skipped 6 entries" in stdout


def read(root: Path, table: str, user: str) -> list[dict]:
    """One user's rows, user_id decoded from the Hive folder name (hostile ids included)."""
    return open_table(root / "out" / table).to_table(filter=ds.field("user_id") == user).to_pylist()


def test_the_same_person_in_two_libraries_stays_two_people(isolated):
    root = isolated[0]
    for user in PHOTOS:
        faces, clusters = read(root, "faces", user), read(root, "clusters", user)
        assert {f["user_id"] for f in faces} == {c["user_id"] for c in clusters} == {user}
        assert sorted(c["face_key"] for c in clusters) == sorted(f["face_key"] for f in faces)
        assert {f["photo_path"].split("/")[0] for f in faces} == {user}
    # identical photo files: the same face keys, but each user's own rows and own person
    alice = {f["face_key"] for f in read(root, "faces", "alice")}
    bob = {f["face_key"] for f in read(root, "faces", "bob")}
    assert len(alice & bob) >= 3


class Links(html.parser.HTMLParser):
    """Every href and src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [v for k, v in attrs if k in ("href", "src") and v]


def test_report_pages_never_cross_users(isolated):
    root = isolated[0]
    report = root / "out" / "report"
    for user in PHOTOS:
        folder = report / f"u-{digest(user, 16)}"
        others = [u for u in PHOTOS if u != user]
        pages = list(folder.rglob("*.html"))
        assert pages
        for page in pages:
            text = page.read_text(encoding="utf-8")
            parser = Links()
            parser.feed(text)
            for target in parser.targets:
                resolved = (page.parent / unquote(target.split("#")[0])).resolve()
                assert report.resolve() in resolved.parents, (page, target)
                assert folder.resolve() in resolved.parents or resolved.parent == report.resolve() or \
                    resolved.parent.name == "assets", (page, target)
            for other in others:  # no other user's photo path, raw or escaped
                assert f"{other}/" not in text and f"{html.escape(other)}/" not in text, (page, other)
            assert "<img src=x" not in text
        thumbs = {p.name for p in (folder / "faces").iterdir()}
        assert thumbs == {f"{digest(f['face_key'])}.jpg" for f in read(root, "faces", user)}
