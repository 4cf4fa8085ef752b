"""Degraded copies of LFW images, to test that clustering defaults transfer to worse photos.

Mirrors the image-quality study of the FaceNet paper: faces of about 40, 60 and 80 pixels
(the whole image is shrunk so its face has that width; the detector and aligner then work
at that resolution, as for a small face in a real photo) and JPEG quality 20 and 50.
Copies are generated once, deterministically (the size jitter is seeded by the file
name), into a cache outside the repository; the source tree is only read.

    python bench/lfw_degrade.py --variant px40 Aaron_Peirsol/Aaron_Peirsol_0001.jpg
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.lfw import LFW  # noqa: E402

CACHE = Path(os.environ.get("FACEGROUP_CACHE", Path.home() / ".cache" / "facegroup")) / "degraded"
#: Median MTCNN box width (px) of the labelled face in a 250 x 250 LFW image (measured on every 400th image).
LFW_FACE_PX = 94.0
#: variant -> ("px", target face width) or ("jpeg", quality).
VARIANTS: dict[str, tuple[str, int]] = {
    "px40": ("px", 40), "px60": ("px", 60), "px80": ("px", 80),
    "jpeg20": ("jpeg", 20), "jpeg50": ("jpeg", 50),
}
#: Relative spread of the face width around its target (real small faces vary too).
SIZE_JITTER = 0.1


def _seed(relpath: str) -> int:
    """Seed from the image's path inside LFW, so each file is degraded the same way always."""
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "little")


def degrade(image: Image.Image, variant: str, seed: int) -> bytes:
    """Encoded bytes (PNG for resolution variants, JPEG otherwise) of the degraded image."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown degradation variant {variant!r}; choose from {', '.join(VARIANTS)}")
    kind, value = VARIANTS[variant]
    out = io.BytesIO()
    if kind == "jpeg":
        image.convert("RGB").save(out, format="JPEG", quality=value)
    else:
        jitter = np.random.default_rng(seed).uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
        scale = value * jitter / LFW_FACE_PX
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image.convert("RGB").resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).save(out, format="PNG")
    return out.getvalue()


def degraded_path(path: Path, variant: str, root: Path = LFW, cache_dir: Path = CACHE, create: bool = True) -> Path:
    """Path of `path`'s degraded copy (an image under `root`), written on first use
    (unless not `create`: then the path, whether the copy exists or not)."""
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    suffix = ".png" if VARIANTS.get(variant, ("",))[0] == "px" else ".jpg"
    target = cache_dir / variant / Path(rel).with_suffix(suffix)
    if create and not target.is_file():
        with Image.open(path) as image:
            data = degrade(image, variant, _seed(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--lfw", type=Path, default=LFW, help="LFW root")
    parser.add_argument("images", nargs="+", help="image paths relative to the LFW root")
    args = parser.parse_args(argv)
    for rel in args.images:
        source = args.lfw / rel
        if not source.is_file():
            raise FileNotFoundError(f"no image {source}")
        print(degraded_path(source, args.variant, args.lfw))


if __name__ == "__main__":
    main()
