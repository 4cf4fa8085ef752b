"""Photo bytes -> RGB pixels in displayed orientation, safely.

Pillow reads JPEG, PNG, WebP, BMP, TIFF and GIF (first frame of animations); HEIC/HEIF
too when pillow-heif is installed (otherwise such photos fail with a message saying so).
The pixel count is checked from the header, before any pixel is decoded, against
``--max_pixels``: this guard replaces Pillow's process-wide MAX_IMAGE_PIXELS check
(disabled here so that one limit, the pipeline's, applies). Truncated files are errors,
not partially decoded images. `LoadPhotos` reads and decodes a batch of photos and cuts
it into lists bounded by pixel weight for inference.
"""
from __future__ import annotations

import io
from typing import Sequence

import apache_beam as beam
import numpy as np
from PIL import Image, ImageOps

from pipeline.inputs import read_photo
from pipeline.records import REUSED, DecodedPhoto, PhotoOutcome, PhotoRef, describe_error, failed_outcome

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # optional dependency: HEIC photos then become decode failures
    HEIF_SUPPORTED = False

Image.MAX_IMAGE_PIXELS = None  # replaced by decode_photo's max_pixels check

#: Batch weight unit: a photo weighs 1 per started 4 megapixels, so a batch holds
#: --batch_size small photos but only a few large ones (bounded memory).
WEIGHT_PIXELS = 4_000_000
STRIP_ROWS = 256
PREVIEW_SIDE = 512
PREVIEW_QUALITY = 85
#: ISO BMFF brands of HEIF/HEIC/AVIF files (bytes 8-12, after "ftyp").
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif"}


class DecodeError(ValueError):
    """A photo that cannot be turned into pixels; the message is the failure row's error."""


def decode_photo(data: bytes, max_pixels: int, max_detect_side: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Decode `data` into (image (H,W,3) uint8, detect_image (h,w,3) uint8, preview JPEG).

    The image is in displayed orientation (EXIF applied); detect_image is image scaled so
    its longest side is <= max_detect_side (image itself when already small enough).
    Raises DecodeError with a one-line reason.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if not HEIF_SUPPORTED and data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        raise DecodeError("HEIC/HEIF photo but pillow-heif is not installed (pip install pillow-heif)")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(f"{width}x{height} = {width * height} pixels exceeds --max_pixels={max_pixels} "
                          "(decompression-bomb guard)")
    if width < 1 or height < 1:
        raise DecodeError(f"invalid image size {width}x{height}")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"corrupt or truncated image data ({describe_error(exc)})") from None
    # Memory: a decoded W x H photo weighs 4 W H bytes in Pillow; the steps below never
    # hold more than that plus the 3 W H bytes of the array (no copy when upright).
    _display(im)
    rgb = to_rgb(im)
    del im
    small = rgb if max(rgb.size) <= max_detect_side else _fit(rgb, max_detect_side, Image.Resampling.BILINEAR)
    preview = small if max(small.size) <= PREVIEW_SIDE else _fit(small, PREVIEW_SIDE, Image.Resampling.BICUBIC)
    image = pixels(rgb)
    return image, (image if small is rgb else np.asarray(small)), encode_jpeg(preview, PREVIEW_QUALITY)


def pixels(im: Image.Image) -> np.ndarray:
    """(H,W,3) uint8 copy of an RGB image, made in strips of STRIP_ROWS rows:
    np.asarray(im) goes through im.tobytes(), which briefly holds two more full copies."""
    out = np.empty((im.height, im.width, 3), np.uint8)
    for top in range(0, im.height, STRIP_ROWS):
        out[top:top + STRIP_ROWS] = np.asarray(im.crop((0, top, im.width, min(top + STRIP_ROWS, im.height))))
    return out


def _display(im: Image.Image) -> None:
    """Rotate/flip `im` in place as its EXIF orientation says; unchanged when EXIF is unreadable."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        pass


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white, 16-bit is rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I") and values.max(initial=0) > 255 else 255.0
        if im.mode == "F":
            top = max(float(values.max(initial=0)), 1e-12) if values.max(initial=0) > 1 else 1.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _fit(im: Image.Image, side: int, resample: Image.Resampling) -> Image.Image:
    """`im` scaled down so that its longest side is `side` (aspect kept)."""
    scale = side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, resample, reducing_gap=3.0)


def encode_jpeg(im: Image.Image | np.ndarray, quality: int) -> bytes:
    """Baseline JPEG bytes of an RGB image (PIL image or (H,W,3) uint8)."""
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im, "RGB")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=quality)
    return out.getvalue()


def load_photo(ref: PhotoRef, max_file_bytes: int, max_pixels: int,
               max_detect_side: int) -> DecodedPhoto | PhotoOutcome:
    """Read and decode one photo, or its failed outcome (stage "read" or "decode"), or a
    REUSED outcome when its bytes hash to ref.reuse_sha256 (nothing decoded)."""
    read = read_photo(ref, max_file_bytes)
    if isinstance(read, PhotoOutcome):
        return read
    if read.sha256 == ref.reuse_sha256:
        return PhotoOutcome(ref.user_id, ref.photo_path, REUSED, read.sha256)
    try:
        image, detect, preview = decode_photo(read.data, max_pixels, max_detect_side)
    except Exception as exc:  # any decoder bug or malformed file must become a row
        message = str(exc) if isinstance(exc, DecodeError) else describe_error(exc)
        return failed_outcome(ref.user_id, ref.photo_path, "decode", message, sha256=read.sha256)
    return DecodedPhoto(ref.user_id, ref.photo_path, read.sha256, image, detect, preview)


def photo_weight(item: DecodedPhoto | PhotoOutcome) -> int:
    """Batch weight: 1 + one per WEIGHT_PIXELS of full-resolution pixels (failed: 1)."""
    if isinstance(item, PhotoOutcome):
        return 1
    return 1 + item.image.shape[0] * item.image.shape[1] // WEIGHT_PIXELS


class LoadPhotos(beam.DoFn):
    """A batch of PhotoRefs -> lists of DecodedPhoto (or failed or REUSED PhotoOutcome), each list
    weighing at most `batch_weight` (photo_weight) unless one photo alone weighs more.

    Lists are emitted as soon as they are full, so at most one list of decoded photos
    waits for inference at a time. Nothing is emitted from finish_bundle (DaskRunner
    drops such output).
    """

    def __init__(self, max_file_bytes: int, max_pixels: int, max_detect_side: int, batch_weight: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.max_pixels = max_pixels
        self.max_detect_side = max_detect_side
        self.batch_weight = batch_weight
        self.counters = {stage: beam.metrics.Metrics.counter("facegroup", f"failed_{stage}")
                         for stage in ("read", "decode")}
        self.loaded = beam.metrics.Metrics.counter("facegroup", "photos_loaded")
        self.reused = beam.metrics.Metrics.counter("facegroup", "photos_reused")

    def process(self, refs: Sequence[PhotoRef]):
        batch: list[DecodedPhoto | PhotoOutcome] = []
        weight = 0
        for ref in refs:
            item = load_photo(ref, self.max_file_bytes, self.max_pixels, self.max_detect_side)
            self.loaded.inc()
            if isinstance(item, PhotoOutcome) and item.status == REUSED:
                self.reused.inc()
            elif isinstance(item, PhotoOutcome):
                self.counters[item.stage].inc()
            if batch and weight + photo_weight(item) > self.batch_weight:
                yield batch
                batch, weight = [], 0
            batch.append(item)
            weight += photo_weight(item)
        if batch:
            yield batch
