"""Unrecognisable copies of face photos, for the junk-mixed clustering suites (issue 14).

Four ways a real library's faces become unrecognisable, each applied to one photo with
the face box MTCNN finds in its clean version (box width w):
  blur  Gaussian blur of radius 0.15 w (eyes, nose and mouth melt into one blob);
  dark  pixels scaled to 4% with sensor-like noise (an unlit room);
  cut   the photo cropped through the face, 35-55% of the box removed from one side;
  tiny  the photo shrunk so the face is 18-24 px wide, pasted into a 1280 x 960 photo of
        smooth random background (a face in the far back of a large photo).
Copies are made once, deterministically (seeded by the file's path inside its dataset),
into a cache outside the repository; the dataset is only read.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bench.lfw_degrade import CACHE

KINDS = ("blur", "dark", "cut", "tiny")
#: Size of the large photo a tiny face is pasted into.
LARGE = (1280, 960)


def _rng(relpath: str, kind: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{kind}:{relpath}".encode()).digest()[:8], "little"))


def make_junk(image: Image.Image, box: np.ndarray, kind: str, rng: np.random.Generator) -> Image.Image:
    """The `kind` unrecognisable copy of `image` (RGB) whose face box is box (4,) x1,y1,x2,y2."""
    rgb = image.convert("RGB")
    w = float(box[2] - box[0])
    if kind == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(radius=0.15 * w))
    if kind == "dark":
        pixels = np.asarray(rgb, np.float64) * 0.04 + rng.normal(0, 1.5, (rgb.height, rgb.width, 1))
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if kind == "cut":
        cut = rng.uniform(0.35, 0.55)
        x1, y1, x2, y2 = (float(v) for v in box)
        side = int(rng.integers(4))
        left, top, right, bottom = 0.0, 0.0, float(rgb.width), float(rgb.height)
        if side == 0:
            left = x1 + cut * (x2 - x1)
        elif side == 1:
            right = x2 - cut * (x2 - x1)
        elif side == 2:
            top = y1 + cut * (y2 - y1)
        else:
            bottom = y2 - cut * (y2 - y1)
        return rgb.crop((round(left), round(top), round(right), round(bottom)))
    if kind == "tiny":
        scale = rng.uniform(18, 24) / w
        small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                           Image.Resampling.LANCZOS, reducing_gap=3.0)
        noise = rng.normal(128, 40, (LARGE[1] // 64 + 1, LARGE[0] // 64 + 1, 3)).clip(0, 255).astype(np.uint8)
        canvas = Image.fromarray(noise).resize(LARGE, Image.Resampling.BICUBIC)
        x = int(rng.integers(LARGE[0] // 4, 3 * LARGE[0] // 4 - small.width))
        y = int(rng.integers(LARGE[1] // 4, 3 * LARGE[1] // 4 - small.height))
        canvas.paste(small, (x, y))
        return canvas
    raise ValueError(f"unknown junk kind {kind!r}; choose from {', '.join(KINDS)}")


def junk_path(path: Path, root: Path, kind: str, box: np.ndarray, cache_dir: Path = CACHE / "junk") -> Path:
    """Path of the `kind` copy of `path` (an image under `root`, face box `box`), written on first use."""
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    target = cache_dir / root.name / kind / Path(rel).with_suffix(".jpg")
    if not target.is_file():
        with Image.open(path) as image:
            junk = make_junk(image, box, kind, _rng(rel, kind))
        out = io.BytesIO()
        junk.save(out, format="JPEG", quality=90)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(out.getvalue())
        tmp.replace(target)
    return target
