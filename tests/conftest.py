"""Shared fixtures: the real LFW data beside the checkout (never skipped when missing)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("FACEGROUP_LFW", REPO.parent / "shared" / "data" / "lfw"))


@pytest.fixture(scope="session")
def lfw() -> Path:
    """Root of LFW (`<name>/<name>_NNNN.jpg`); a missing dataset is an error, not a skip."""
    if not (LFW / "pairs.txt").is_file():
        raise FileNotFoundError(f"LFW not found at {LFW}: tests need ../shared/data/lfw")
    return LFW


def lfw_image(root: Path, name: str, index: int) -> Path:
    """Path of the index-th (1-based) photo of an LFW identity."""
    return root / name / f"{name}_{index:04d}.jpg"
