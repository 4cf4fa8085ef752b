"""The README's code that reads the output tables, run as written against a real output.

Why: the output is only useful if common tools read each table folder as one table, and
a README example that fails (as `pyarrow.parquet.read_table("out/faces")` once did, the
user_id column being in both the files and the folder names) is worse than none. The
README's block is taken from README.md itself, so the two cannot drift apart, and run
in a folder whose `out/` is a pipeline output of two users with awkward ids: "007" (which
type-guessing readers would turn into the number 7) and "Zoë B" (percent-encoded in its
folder name). Every tool must give every row of every table, with user_id as text.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from models.embedders import DEFAULT_EMBEDDER, embedding_dim
from pipeline import schemas
from pipeline.images import IMAGES
from pipeline.run import run
from pipeline.tables import open_table
from pipeline.user_tables import TABLES
from tests.conftest import REPO, lfw_image

USERS = {"007": [("Colin_Powell", 1), ("Colin_Powell", 2), ("Tony_Blair", 1)],
         "Zoë B": [("Tony_Blair", 2), ("Jean_Chretien", 1)]}
MARKER = "run by tests/test_output_readers.py"
READERS = ("dataset", "pyarrow", "pandas", "duckdb", "polars")
COLUMNS = {"photos": schemas.PHOTOS, "faces": schemas.faces_schema(embedding_dim(DEFAULT_EMBEDDER)), "clusters": schemas.CLUSTERS,
           "failures": schemas.FAILURES, "people": schemas.PEOPLE, IMAGES: schemas.IMAGES}


def readme_block() -> str:
    """The README's ```python block that carries MARKER."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    found = [b for b in blocks if MARKER in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks marked {MARKER!r}"
    return found[0]


@pytest.fixture(scope="module")
def output(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `out/`, the pipeline's output for USERS (and one broken photo)."""
    base = tmp_path_factory.mktemp("readers")
    for user, photos in USERS.items():
        folder = base / "library" / user
        folder.mkdir(parents=True)
        for name, index in photos:
            shutil.copyfile(lfw_image(lfw, name, index), folder / f"{name}_{index}.jpg")
    (base / "library" / "007" / "broken.jpg").write_bytes(b"not a photo")
    run(["--input", str(base / "library"), "--output", str(base / "out"), "--runner", "DirectRunner",
         "--direct_num_workers", "1"])
    return base


def rows(table, columns: list[str]) -> list[tuple]:
    """Sorted rows of `columns` of a pyarrow, pandas or Polars table (user "007" read as 7 differs)."""
    if hasattr(table, "to_pylist"):
        records = table.to_pylist()
    elif hasattr(table, "to_dicts"):
        records = table.to_dicts()
    else:
        records = table.to_dict("records")
    return sorted(tuple(r[c] for c in columns) for r in records)


@pytest.mark.parametrize("table", TABLES + (IMAGES,))
def test_readme_readers_give_every_row_of_each_table(output: Path, table: str, monkeypatch) -> None:
    monkeypatch.chdir(output)
    code = readme_block().replace("out/faces", f"out/{table}")
    found: dict = {}
    exec(compile(code, "README.md", "exec"), found)
    expected = open_table(Path("out") / table, COLUMNS[table]).to_table()
    assert sorted(set(expected.column("user_id").to_pylist())) <= sorted(USERS)
    key = [c for c in ("user_id", "photo_path", "face_key", "person_id", "photo_sha256") if c in expected.column_names]
    truth = rows(expected, key)
    assert truth or table in ("failures", "people"), f"{table} is empty: nothing was compared"
    for reader in READERS:
        result = found[f"faces_{reader}"]
        names = list(result.columns) if not hasattr(result, "column_names") else result.column_names
        assert sorted(names) == sorted(COLUMNS[table].names), f"{reader} read {table} as {names}"
        assert rows(result, key) == truth, f"{reader} read other rows (or user ids) of {table}"
    if table == "photos":
        assert sorted(set(expected.column("user_id").to_pylist())) == sorted(USERS)
    if table == "failures":
        assert truth == [("007", "007/broken.jpg")]


def test_files_hold_no_user_id_and_keep_their_metadata(output: Path) -> None:
    out = output / "out"
    for table in TABLES + (IMAGES,):
        for path in (out / table).glob("user_id=*/*.parquet"):
            assert "user_id" not in pq.read_schema(path).names, path
    faces = pq.read_schema(next((out / "faces").glob("user_id=*/part-0.parquet")))
    photos = pq.read_schema(next((out / "photos").glob("user_id=*/part-0.parquet")))
    assert faces.metadata[schemas.SETTINGS_KEY] == photos.metadata[schemas.SETTINGS_KEY]
    assert pq.read_table(out / "faces").num_rows == open_table(out / "faces").count_rows()  # the call
