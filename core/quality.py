"""How recognisable a detected face is, from the photo alone (numpy only, no Beam).

Faces nobody can recognise (a few pixels wide, blurred, near-black, cut by the frame,
seen from the side) embed to noise that lands next to some stranger, so clustering must
never let them start or join a person: they stay "other faces". Each measure is a
property of the face in the photo, independent of the embedder:

  size      face scale in original pixels: the larger of the eye distance and the
            eye-to-mouth distance (stays put when the head turns);
  blur      high-frequency energy left in a 32 x 32 grey sampling of the face: variance
            of its Laplacian over its own variance (contrast-free). 32 cells span the
            face as a ~40 px face does, and LFW faces shrunk to ~40 px still cluster at
            BCubed F 0.98, so a face counts as blurred only when it lacks detail at the
            resolution the embedder is known to cope with;
  dark      exposure: mean grey level of the face (0-255);
  flat      contrast: grey standard deviation over the face;
  cut       share of the inner face (a square of 1.4 face scales around the eyes and
            mouth: brows to chin) outside the photo; tight crops that lose only hair pass;
  profile   yaw: the nose's offset from the eyes' midpoint along the eye line, over the
            eye distance (0 frontal, ~0.5 and more for a profile);
  low_score the detector's own confidence.

Each measure maps linearly onto [0, 1] between a `bad` value (0) and a `good` value (1);
the face's quality is the lowest of them, and its reason is the measure that set it.
Faces below GATE are low quality. Why each bound is what it is: see BOUNDS.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: Grey cells across the face for the blur, exposure and contrast measures.
CELLS = 32
#: Side of the face's square for the grey cells, in face scales (the whole head).
SQUARE = 2.2
#: Side of the inner face's square for `cut`, in face scales (brows to chin).
INNER = 1.4
#: Quality below which a face never starts or joins a person (the midpoint of every bound pair).
GATE = 0.5


@dataclass(frozen=True)
class Bound:
    """A measure's values that map to quality 0 (bad) and 1 (good), and why."""

    bad: float
    good: float
    why: str


#: measure -> bounds. Measures where lower is better have bad > good.
BOUNDS: dict[str, Bound] = {
    "small": Bound(10.0, 18.0, "face scale in px. LFW faces shrunk to ~40 px boxes (scale 16-24, 5th "
                               "percentile 16.4) still cluster at B3 F 0.98: sizes measured to work get "
                               "quality 0.8 and more; a ~20 px face in a large photo (what peers refuse: "
                               "PhotoPrism < 50 px) has scale 9-12.5; the gate falls at 14, a ~28 px box"),
    "blurred": Bound(0.001, 0.007, "Laplacian energy ratio on 32 x 32 cells: 5th percentile of clean dev faces "
                                   "0.028 (LFW, pins50dev, LFW at ~40 px alike), heavily blurred ones 0.0001-"
                                   "0.0004; the gate (0.004) sits at their geometric midpoint"),
    "dark": Bound(15.0, 35.0, "mean grey level: clean dev faces 70 and more (5th percentile), a few dark-skinned "
                              "faces in low light near 30; near-black faces ~5; gate at 25"),
    "flat": Bound(6.0, 14.0, "grey standard deviation: clean dev faces 27 and more (5th percentile); gate "
                             "at 10, a face with almost no contrast"),
    "cut": Bound(0.35, 0.05, "share of the inner face outside the photo: clean faces 0 (pins50dev's tight "
                             "crops included), faces cut by the frame mostly 0.3 and more; gate at 0.2, where "
                             "a brow or the chin is gone"),
    "profile": Bound(1.0, 0.6, "yaw proxy: clean dev faces up to 0.29 (LFW) / 0.44 (pins50dev) at the 95th "
                               "percentile, a few recognisable ones at 0.72; gate at 0.8, where one eye is "
                               "hidden and its landmark a guess"),
    "low_score": Bound(0.86, 0.94, "MTCNN score: it does not separate on dev data (clean faces down to 0.91, "
                                   "heavily blurred ones the detector still finds 0.95 median, caught by "
                                   "`blurred`); gate at 0.90, the pipeline's default --min_det_score, so it "
                                   "only acts when that is lowered (ente: bad below 0.8)"),
}


#: Identifies the quality computation and its bounds: recorded with the inference settings,
#: so an incremental run recomputes stored qualities when either changes (pipeline.reuse).
QUALITY_VERSION = "q1-" + hashlib.sha256(repr((CELLS, SQUARE, INNER, GATE, [(k, b.bad, b.good) for k, b in BOUNDS.items()]))
                                         .encode()).hexdigest()[:8]


def face_measures(image: np.ndarray, landmarks: np.ndarray, det_score: float) -> dict[str, float]:
    """Raw measures (BOUNDS' keys) of one face.

    image: (H,W,3) uint8 RGB (the full-resolution photo); landmarks (5,2) (eyes, nose,
    mouth corners) in its pixels: they place the face more tightly than MTCNN's box.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes, nose, mouth = (lm[0] + lm[1]) / 2, lm[2], (lm[3] + lm[4]) / 2
    eye_axis = lm[1] - lm[0]
    iod = float(np.linalg.norm(eye_axis))
    scale = max(iod, float(np.linalg.norm(mouth - eyes)), 1e-6)
    yaw = abs(float(np.dot(nose - eyes, eye_axis / max(iod, 1e-6)))) / max(iod, 0.25 * scale)
    centre = (eyes + mouth) / 2
    side = SQUARE * scale
    cells, inside = _grey_cells(image, centre - side / 2, side)
    inner = INNER * scale
    lo, hi = centre - inner / 2, centre + inner / 2
    visible = np.prod(np.clip(np.minimum(hi, image.shape[1::-1]) - np.maximum(lo, 0), 0, None)) / inner ** 2
    values = cells[inside]
    if len(values) < 4:
        grey_mean = contrast = blur = 0.0
    else:
        grey_mean, contrast = float(values.mean()), float(values.std())
        blur = _laplacian_ratio(cells, inside)
    return {"small": scale, "blurred": blur, "dark": grey_mean, "flat": contrast,
            "cut": max(0.0, 1.0 - float(visible)), "profile": yaw, "low_score": float(det_score)}


def quality_of(measures: dict[str, float]) -> tuple[float, str | None]:
    """(quality in [0,1], reason or None): the lowest per-measure quality and, when it is
    below GATE, the measure that set it."""
    per = {name: float(np.clip((measures[name] - b.bad) / (b.good - b.bad), 0.0, 1.0))
           for name, b in BOUNDS.items()}
    reason = min(per, key=per.get)  # first of BOUNDS' order on ties
    return per[reason], (reason if per[reason] < GATE else None)


def face_quality(image: np.ndarray, landmarks: np.ndarray, det_score: float) -> tuple[float, str | None]:
    """(quality, reason or None) of one face; arguments as `face_measures`."""
    return quality_of(face_measures(image, landmarks, det_score))


def _grey_cells(image: np.ndarray, corner: np.ndarray, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean grey level of CELLS x CELLS square cells tiling the square at corner (x, y) of
    `side` px (area averages, so large faces do not alias; a cell smaller than a pixel
    takes the pixel under it), and which cells have their centre inside the photo:
    ((CELLS,CELLS) float64, (CELLS,CELLS) bool). Only the square's pixels are read,
    subsampled to at most ~4 per cell side."""
    height, width = image.shape[:2]
    edges = np.asarray(corner, np.float64)[:, None] + side * np.arange(CELLS + 1) / CELLS  # rows: x, y
    centres = (edges[:, :-1] + edges[:, 1:]) / 2
    inside = (((centres[1] >= 0) & (centres[1] < height))[:, None]
              & ((centres[0] >= 0) & (centres[0] < width))[None, :])
    step = max(1, int(side / CELLS / 4))
    x0, x1 = (int(np.clip(v, 0, width)) for v in (np.floor(edges[0, 0]), np.ceil(edges[0, -1])))
    y0, y1 = (int(np.clip(v, 0, height)) for v in (np.floor(edges[1, 0]), np.ceil(edges[1, -1])))
    crop = image[y0:y1:step, x0:x1:step].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    integral = np.zeros((crop.shape[0] + 1, crop.shape[1] + 1))
    integral[1:, 1:] = crop.cumsum(0).cumsum(1)

    def spans(e: np.ndarray, origin: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each cell in subsampled crop pixels, at least one pixel wide."""
        lo = np.floor((e[:-1] - origin) / step).astype(int)
        hi = np.maximum(np.round((e[1:] - origin) / step).astype(int), lo + 1)
        return np.clip(lo, 0, n), np.clip(hi, 0, n)

    (xl, xh), (yl, yh) = spans(edges[0], x0, crop.shape[1]), spans(edges[1], y0, crop.shape[0])
    sums = (integral[yh[:, None], xh[None, :]] - integral[yl[:, None], xh[None, :]]
            - integral[yh[:, None], xl[None, :]] + integral[yl[:, None], xl[None, :]])
    area = (yh - yl)[:, None] * (xh - xl)[None, :]
    inside &= area > 0
    return np.where(inside, sums / np.maximum(area, 1), 0.0), inside


def _laplacian_ratio(cells: np.ndarray, inside: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the variance of the cells, on cells whose
    neighbours are all inside the photo (0 when there are too few)."""
    lap = (4 * cells[1:-1, 1:-1] - cells[:-2, 1:-1] - cells[2:, 1:-1] - cells[1:-1, :-2] - cells[1:-1, 2:])
    ok = inside[1:-1, 1:-1] & inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    if ok.sum() < 16:
        return 0.0
    spread = float(cells[inside].var())
    return float(lap[ok].var()) / (16.0 * spread) if spread > 1e-9 else 0.0
