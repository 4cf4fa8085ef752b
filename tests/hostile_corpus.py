"""A hostile photo library, generated (nothing downloaded) from LFW photos and raw bytes.

Every kind of file a camera, phone, download or careless copy leaves in a library: broken
and fake images, decompression bombs, unusual pixel formats, rotated photos, tiny and huge
images, files that are no images, links that go nowhere or in circles, files that cannot
be read, hostile file names and the same photo twice. `build_corpus` writes it and says,
for every file, what the pipeline must make of it.
"""
from __future__ import annotations

import io
import os
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import lfw_image

USER = "mallory"
#: The person in every photo that must show a face.
PERSON = "Colin_Powell"
#: Box of the upright, cropped photo (250 x 200) that the EXIF-rotated copies must report.
UPRIGHT = "orientation/upright.jpg"
#: Photo whose face every pixel-format variant must reproduce.
REFERENCE = "modes/reference.png"
#: EXIF orientation -> Pillow transpose that turns the upright photo into the stored one
#: (the inverse of what the orientation tells a viewer to do).
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
ROOT_READS_EVERYTHING = os.geteuid() == 0  # chmod 000 does not stop root


@dataclass(frozen=True)
class Expected:
    """What the pipeline must write for one file: its status, and for failures the
    stage and a regular expression the one-line error must match."""

    status: str
    stage: str | None = None
    error: str | None = None


FACES = Expected("faces")
NO_FACE = Expected("no_face")


def failed(stage: str, error: str) -> Expected:
    return Expected("failed", stage, error)


def jpeg(im: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=95, **kwargs)
    return out.getvalue()


def png(im: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, "PNG", **kwargs)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, rows: bytes) -> bytes:
    """An RGB PNG written by hand (Pillow cannot write 16-bit RGB), `rows` being the
    filtered scanlines (a 0 filter byte before each row)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def png16(rgb: np.ndarray) -> bytes:
    """16-bit RGB PNG of rgb (H,W,3) uint8, each value v stored as 257 v (full range)."""
    wide = rgb.astype(">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in wide)
    return raw_png(rgb.shape[1], rgb.shape[0], 16, rows)


def bomb_png(side: int = 50000) -> bytes:
    """A 70-byte PNG whose header declares side x side pixels (a decompression bomb)."""
    return raw_png(side, side, 8, b"\x00\x00\x00\x00")


def palette_png(im: Image.Image) -> bytes:
    """Palette PNG of im with a transparent 20-pixel frame (palette index 255)."""
    pal = im.quantize(255)
    pixels = np.array(pal)
    pixels[:20], pixels[-20:], pixels[:, :20], pixels[:, -20:] = 255, 255, 255, 255
    out = Image.fromarray(pixels, "P")
    out.putpalette(pal.getpalette()[:255 * 3] + [0, 0, 0])
    return png(out, transparency=255)


def animated_gif(im: Image.Image) -> bytes:
    """Three-frame GIF: the photo first, then two frames of noise."""
    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 255, (im.height, im.width, 3), dtype=np.uint8)) for _ in range(2)]
    out = io.BytesIO()
    im.save(out, "GIF", save_all=True, append_images=noise, duration=100, loop=0)
    return out.getvalue()


def oriented_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """JPEG whose pixels are stored turned, with the EXIF orientation that turns them back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(upright.transpose(STORED_AS[orientation]), exif=exif)


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / USER / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_corpus(lfw: Path, root: Path) -> tuple[dict[str, Expected], dict[str, str]]:
    """Write the library under root/USER/; returns ({photo_path: Expected} for every file,
    {path of a link to a folder: skip reason})."""
    photo = Image.open(lfw_image(lfw, PERSON, 1)).convert("RGB")
    other = Image.open(lfw_image(lfw, PERSON, 2)).convert("RGB")
    reference = np.asarray(Image.open(io.BytesIO(jpeg(photo))))  # what a decoder sees of a JPEG
    upright = photo.crop((0, 25, 250, 225))  # 250 x 200: a rotation changes the shape
    out: dict[str, Expected] = {}

    def put(rel: str, data: bytes, expected: Expected) -> None:
        _write(root, rel, data)
        out[f"{USER}/{rel}"] = expected

    full = jpeg(photo)
    put("broken/truncated.jpg", full[:len(full) // 2], failed("decode", "truncated"))
    put("broken/empty.jpg", b"", failed("decode", r"empty file \(0 bytes\)"))
    put("broken/random.jpg", random.Random(5).randbytes(20000), failed("decode", "not a recognised image format"))
    put("broken/bomb.png", bomb_png(), failed("decode", r"50000x50000 = 2500000000 pixels exceeds --max_pixels"))

    put(REFERENCE, png(Image.fromarray(reference)), FACES)
    put("modes/16-bit.png", png16(reference), FACES)
    put("modes/cmyk.jpg", jpeg(Image.fromarray(reference).convert("CMYK")), FACES)
    put("modes/palette-transparent.png", palette_png(Image.fromarray(reference)), FACES)
    put("modes/animated.gif", animated_gif(Image.fromarray(reference)), FACES)
    put("modes/greyscale.jpg", jpeg(photo.convert("L")), FACES)
    put("modes/10x10.png", png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (10, 10, 3), np.uint8))),
        NO_FACE)

    put(UPRIGHT, jpeg(upright), FACES)
    for orientation in STORED_AS:
        put(f"orientation/exif-{orientation}.jpg", oriented_jpeg(upright, orientation), FACES)

    put("not-images/notes.txt", "shopping list: eggs\n".encode(), failed("decode", "not a recognised image format"))
    put("not-images/clip.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(4000), failed("decode", "not a recognised image format"))
    put("not-images/scan.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n",
        failed("decode", "not a recognised image format"))

    links = root / USER / "links"
    links.mkdir(parents=True)
    os.symlink("loop.jpg", links / "loop.jpg")
    out[f"{USER}/links/loop.jpg"] = failed("read", "Too many levels of symbolic links")
    os.symlink("b.jpg", links / "a.jpg")
    os.symlink("a.jpg", links / "b.jpg")
    out[f"{USER}/links/a.jpg"] = out[f"{USER}/links/b.jpg"] = failed("read", "Too many levels of symbolic links")
    os.symlink("..", links / "up")  # a folder loop: never followed, reported as skipped
    os.symlink("/nonexistent/photo.jpg", links / "dangling.jpg")
    out[f"{USER}/links/dangling.jpg"] = failed("read", r"^broken symbolic link \(its target does not exist\)$")
    os.symlink("../" + REFERENCE, links / "to-a-photo.jpg")
    out[f"{USER}/links/to-a-photo.jpg"] = FACES

    os.mkfifo(root / USER / "unreadable-fifo.jpg")
    out[f"{USER}/unreadable-fifo.jpg"] = failed("read", r"^not a regular file \(a FIFO\)$")
    put("unreadable-mode-000.jpg", jpeg(other), FACES if ROOT_READS_EVERYTHING else
        failed("read", "Permission denied"))
    os.chmod(root / USER / "unreadable-mode-000.jpg", 0)
    put("folder.jpg/inside.jpg", jpeg(other), FACES)

    for name in ("with spaces 'single' \"double\".jpg", "<img src=x onerror=alert(1)>.jpg",
                 "日本語 фото ñandú.jpg", "tab\tnew\nline.jpg"):
        put(f"names/{name}", jpeg(other), FACES)
    undecodable = os.fsdecode(b"names/latin-1 \xe9t\xe9.jpg")  # not UTF-8: stored with \xNN escapes
    _write(root, undecodable, jpeg(other))
    out[f"{USER}/names/latin-1 \\xe9t\\xe9.jpg"] = FACES

    put("same/original.jpg", full, FACES)
    put("same/copy of original.jpg", full, FACES)
    return out, {f"{USER}/links/up": "symbolic link to a folder (not followed)"}
