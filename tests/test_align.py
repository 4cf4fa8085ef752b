"""Alignment geometry: landmarks must land on the template, boxes on the chip border."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from models.align import AlignSpec, align_faces, box_transform, similarity_transform

TEMPLATE = np.array([[51.0, 60.0], [99.0, 60.0], [75.0, 88.0], [56.0, 113.0], [94.0, 113.0]])
SPEC = AlignSpec("landmarks", 150, tuple(map(tuple, TEMPLATE)))


def _blob_image(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """(H,W,3) uint8 image with one Gaussian blob per point, each in its own channel mix."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = np.zeros(shape + (3,))
    for x, y in points:
        img[..., 0] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def _centroids(chip: np.ndarray, near: np.ndarray, radius: int = 8) -> np.ndarray:
    """Intensity centroid of the blob around each expected point in a chip (S,S,3)."""
    out = []
    for x, y in near:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        win = chip[y0:y0 + 2 * radius + 1, x0:x0 + 2 * radius + 1, 0].astype(float)
        win = np.clip(win - 0.2 * win.max(), 0, None)
        yy, xx = np.mgrid[0:win.shape[0], 0:win.shape[1]]
        out.append([(xx * win).sum() / win.sum() + x0, (yy * win).sum() / win.sum() + y0])
    return np.array(out)


@pytest.mark.parametrize("angle,scale,shift", [(0.0, 1.0, (0, 0)), (25.0, 1.6, (40, -10)),
                                               (-40.0, 0.7, (-15, 30)), (10.0, 3.5, (0, 0))])
def test_landmarks_land_on_template(angle: float, scale: float, shift: tuple[int, int]) -> None:
    """A face rotated, scaled and moved in a photo comes out with its landmarks on the template."""
    theta = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = np.array([300.0, 260.0]) + shift
    points = (TEMPLATE - TEMPLATE.mean(0)) @ rot.T + centre
    image = _blob_image(points, (560, 640), sigma=2.5 * scale)
    faces = SimpleNamespace(boxes=np.zeros((1, 4)), landmarks=points[None].astype(np.float32))
    chip = align_faces(image, faces, SPEC)[0]
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    assert np.abs(_centroids(chip, TEMPLATE) - TEMPLATE).max() < 1.0


def test_similarity_transform_is_exact_on_similar_points() -> None:
    """Least squares recovers a known similarity (incl. mirrored order-free rotation) exactly."""
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(4, 5, 2))
    m = similarity_transform(src, TEMPLATE)
    assert m.shape == (4, 2, 3)
    back = similarity_transform(np.einsum("nij,npj->npi", m[:, :, :2], src) + m[:, None, :, 2], TEMPLATE)
    assert np.allclose(back[:, :, :2], np.eye(2)[None], atol=1e-9)


def test_box_mode_maps_box_plus_margin_to_chip() -> None:
    """FaceNet crop: the box grown by the margin fills the chip exactly."""
    boxes = np.array([[10.0, 20.0, 110.0, 140.0]])
    m = box_transform(boxes, 160, 32)[0]
    grown = 32 * np.array([100.0, 120.0]) / (160 - 32) / 2
    corners = np.array([[10 - grown[0], 20 - grown[1]], [110 + grown[0], 140 + grown[1]]])
    mapped = corners @ m[:, :2].T + m[:, 2]
    assert np.allclose(mapped, [[0, 0], [160, 160]])


def test_empty_and_bad_specs() -> None:
    """No faces gives an empty batch; a landmark spec without a template is refused."""
    faces = SimpleNamespace(boxes=np.zeros((0, 4)), landmarks=np.zeros((0, 5, 2)))
    assert align_faces(np.zeros((50, 50, 3), np.uint8), faces, SPEC).shape == (0, 150, 150, 3)
    with pytest.raises(ValueError, match="template"):
        AlignSpec("landmarks", 150)
    with pytest.raises(ValueError, match="mode"):
        AlignSpec("eyes", 150)
