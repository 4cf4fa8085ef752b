"""Face quality on real photos: clean LFW and pins50dev faces pass the gate, and faces made
unrecognisable (bench/junk.py) that the detector still finds fall below it, for the
reason they were made so.

Why: an unrecognisable face that joins a person puts a stranger in someone's album; a
recognisable face kept out loses it from its album.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.cluster_eval import lfw_identities
from bench.face_quality import detect_with_scores, qualities
from bench.junk import junk_path
from core.quality import GATE, face_measures, quality_of

#: kind of junk -> reasons that may explain it (a cut face may also lose its sharpness).
REASONS = {"blur": {"blurred", "flat"}, "dark": {"dark", "flat"}, "cut": {"cut", "profile", "blurred", "small"},
           "tiny": {"small", "blurred"}}
#: kind of junk -> share of the faces found that must fall below the gate. Cutting 35-55%
#: of the box off one side sometimes takes only forehead and hair (or the detector finds
#: another, whole face of the photo): those faces stay recognisable (measured on the
#: junk-mixed suites: none of them joins a wrong person).
BELOW_GATE = {"blur": 1.0, "dark": 1.0, "cut": 0.75, "tiny": 1.0}


@pytest.fixture(scope="module")
def photos(lfw: Path) -> dict[str, tuple[Path, list[Path]]]:
    """dataset -> (root, 40 photos of different people), LFW and pins50dev."""
    out = {}
    for name, root in (("lfw", lfw), ("pins", lfw.parent / "pins50dev")):
        ids = lfw_identities(root)
        out[name] = (root, [ids[n][0] for n in sorted(ids)[::max(1, len(ids) // 40)][:40]])
    return out


@pytest.mark.parametrize("dataset", ["lfw", "pins"])
def test_clean_faces_pass_the_gate(photos, dataset):
    _, paths = photos[dataset]
    detected, _, quality, reason = qualities(paths)
    assert detected.mean() >= 0.95
    assert np.mean(quality[detected] >= GATE) >= 0.95, list(zip(quality[detected], reason[detected]))


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_unrecognisable_faces_fall_below_the_gate_for_their_reason(photos, kind):
    """Every junk face is either missed by the detector (then the pipeline has no face) or
    below the gate."""
    for root, paths in photos.values():
        boxes = detect_with_scores(paths)
        junk = [junk_path(p, root, kind, b["box"]) for p, b in zip(paths, boxes) if b["detected"]]
        detected, _, quality, reason = qualities(junk)
        low = quality[detected] < GATE
        if low.size:  # (the detector misses every near-black face)
            assert low.mean() >= BELOW_GATE[kind], list(zip(quality[detected], reason[detected]))
        assert set(reason[detected][low]) <= REASONS[kind], set(reason[detected])


def test_measures_of_a_face_cut_by_the_frame():
    """A synthetic face: landmarks of a frontal face 60 px across, half of its square outside."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    landmarks = np.float32([[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]])
    inside = face_measures(image, landmarks, 0.99)
    assert inside["cut"] == 0.0 and inside["small"] == pytest.approx(40.0)
    assert inside["profile"] == pytest.approx(0.0) and inside["low_score"] == pytest.approx(0.99)
    cut = face_measures(image, landmarks - np.float32([100, 0]), 0.99)
    assert cut["cut"] == pytest.approx(0.5, abs=0.05)
    q, why = quality_of(cut)
    assert q < GATE and why == "cut"
    assert quality_of(inside) == (1.0, None)
