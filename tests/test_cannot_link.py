"""No person ever holds two faces of one photo, in a fresh run and in an incremental one.

Why: siblings and twins photographed together are the people users look at most; two
faces of one picture are never one person. The library has photos showing the same man
twice (two of his LFW photos side by side): without the constraint both faces join his
person, so these tests can fail.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import lfw_image
from tests.test_incremental import ARGS, read

PERSON = "Tony_Blair"


def side_by_side(lfw: Path, a: int, b: int, target: Path) -> None:
    """One photo holding two LFW photos of PERSON next to each other."""
    left, right = (np.asarray(Image.open(lfw_image(lfw, PERSON, i)).convert("RGB")) for i in (a, b))
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(target, quality=95)


def copy(lfw: Path, index: int, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lfw_image(lfw, PERSON, index).read_bytes())


def people_per_photo(out: Path, user: str) -> tuple[Counter, int]:
    """(count of faces per (person, photo) for clustered faces, number of people)."""
    clusters = read(out, "clusters", user).to_pylist()
    person = [(c["person_id"], c["photo_sha256"]) for c in clusters if c["person_id"] >= 0]
    return Counter(person), len({p for p, _ in person})


@pytest.fixture(scope="module")
def runs(lfw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run 1 on 4 single photos and one photo of him twice; run 2 (incremental, same
    output) after adding another such photo and a single one."""
    from pipeline.run import run

    base = tmp_path_factory.mktemp("cannot_link")
    library, out = base / "library", base / "out"
    for i in range(1, 5):
        copy(lfw, i, library / "u" / f"single{i}.jpg")
    side_by_side(lfw, 5, 6, library / "u" / "twice1.jpg")
    run(["--input", str(library), "--output", str(out)] + ARGS)
    first = people_per_photo(out, "u")
    side_by_side(lfw, 7, 8, library / "u" / "twice2.jpg")
    copy(lfw, 9, library / "u" / "single9.jpg")
    run(["--input", str(library), "--output", str(out)] + ARGS)
    return {"first": first, "second": people_per_photo(out, "u"),
            "faces": read(out, "faces", "u").num_rows}


def test_fresh_run_never_puts_two_faces_of_a_photo_in_one_person(runs):
    counts, n_people = runs["first"]
    assert n_people >= 1 and sum(counts.values()) >= 5  # the singles and one face of the pair
    assert max(counts.values()) == 1, counts


def test_incremental_run_never_puts_two_faces_of_a_photo_in_one_person(runs):
    counts, n_people = runs["second"]
    assert runs["faces"] == 9  # 5 singles + 2 photos of two faces each, all detected
    assert n_people >= 1 and sum(counts.values()) >= 7
    assert max(counts.values()) == 1, counts
