"""Face alignment: map detected faces onto an embedder's canonical chip.

Two modes, both expressed as one 2x3 affine matrix per face, which `warp_faces` samples
bilinearly (from an average-pooled copy where a face shrinks by 2x or more):

- ``landmarks``: least-squares similarity transform (rotation, uniform scale,
  translation) from the 5 MTCNN landmarks to the embedder's template;
- ``box``: FaceNet's original crop, the detection box grown by a margin and resized (the
  margin in chip pixels as facenet-pytorch counts it, or in photo pixels as davidsandberg's
  align_dataset_mtcnn.py does, ``margin_space="photo"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F


class HasFaces(Protocol):
    """Anything carrying per-face boxes (n,4) and landmarks (n,5,2), e.g. MTCNN Detections."""

    boxes: np.ndarray
    landmarks: np.ndarray


@dataclass(frozen=True)
class AlignSpec:
    """How to cut an embedder's input chip out of a photo.

    template: (5,2) landmark positions in output-chip pixels (left eye, right eye, nose,
    left mouth corner, right mouth corner); weights: (5,) least-squares weight per point;
    margin: for ``box`` mode, pixels added around the box: of the output chip
    (``margin_space="chip"``, facenet-pytorch's ``margin``) or of the photo, half on each
    side (``"photo"``, davidsandberg's, which his published models were trained with).
    """

    mode: str
    size: int
    template: tuple[tuple[float, float], ...] = ()
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    margin: float = 0.0
    margin_space: str = "chip"
    tag: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.mode not in ("landmarks", "box"):
            raise ValueError(f"alignment mode must be 'landmarks' or 'box', got {self.mode!r}")
        if self.margin_space not in ("chip", "photo"):
            raise ValueError(f"margin_space must be 'chip' or 'photo', got {self.margin_space!r}")
        if self.mode == "landmarks" and np.asarray(self.template).shape != (5, 2):
            raise ValueError("landmark alignment needs a (5,2) template")

    @property
    def name(self) -> str:
        """Short identifier recorded with embeddings (part of the embedder version)."""
        return self.tag or f"{self.mode}{self.size}"


def similarity_transform(src: np.ndarray, dst: np.ndarray,
                         weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity transforms mapping `src` points onto `dst`.

    src: (N,P,2) points per face; dst: (P,2) template; weights: (P,) or None.
    Returns (N,2,3) float64 matrices M with dst ~= M[:, :, :2] @ p + M[:, :, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(src.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    src_mean = np.einsum("p,npc->nc", w, src)
    dst_mean = w @ dst
    s = src - src_mean[:, None, :]
    d = dst - dst_mean
    norm = np.einsum("p,npc,npc->n", w, s, s)
    a = np.einsum("p,npc,pc->n", w, s, d) / norm
    b = (np.einsum("p,np,p->n", w, s[..., 0], d[:, 1])
         - np.einsum("p,np,p->n", w, s[..., 1], d[:, 0])) / norm
    rot = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], 1)  # (N,2,2)
    t = dst_mean[None, :] - np.einsum("nij,nj->ni", rot, src_mean)
    return np.concatenate([rot, t[:, :, None]], axis=2)


def box_transform(boxes: np.ndarray, size: int, margin: float, margin_space: str = "chip") -> np.ndarray:
    """Axis-aligned transforms for FaceNet's crop: box + margin resized to size x size.

    boxes: (N,4) x1,y1,x2,y2. A margin in chip pixels (facenet-pytorch) grows the box by
    margin * box_side / (size - margin); in photo pixels (davidsandberg), by margin.
    Returns (N,2,3).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    grow_w, grow_h = ((margin, margin) if margin_space == "photo"
                      else (margin * w / (size - margin), margin * h / (size - margin)))
    x1 = boxes[:, 0] - grow_w / 2
    y1 = boxes[:, 1] - grow_h / 2
    sx = size / (w + grow_w)
    sy = size / (h + grow_h)
    m = np.zeros((len(boxes), 2, 3))
    m[:, 0, 0], m[:, 0, 2] = sx, -sx * x1
    m[:, 1, 1], m[:, 1, 2] = sy, -sy * y1
    return m


def face_transforms(faces: HasFaces, spec: AlignSpec) -> np.ndarray:
    """(n,2,3) photo-to-chip transforms of every face, by the spec's mode."""
    if spec.mode == "box":
        return box_transform(faces.boxes, spec.size, spec.margin, spec.margin_space)
    return similarity_transform(faces.landmarks, np.asarray(spec.template), np.asarray(spec.weights))


def warp_faces(image: np.ndarray, transforms: np.ndarray, size: int) -> np.ndarray:
    """Cut size x size chips out of one photo, one per transform, bilinearly.

    image: (H,W,3) uint8; transforms: (n,2,3) photo-to-chip. Faces that shrink by 2x or
    more are sampled from an average-pooled copy of the photo to avoid aliasing. Only
    the part of the photo a chip samples (plus one pixel) is converted to float and
    pooled, so memory stays proportional to the face, not to the photo: a 100-megapixel
    photo would need 1.2 GB as float32. Returns (n,size,size,3) uint8; areas outside the
    photo are black.
    """
    n = len(transforms)
    out = np.zeros((n, size, size, 3), dtype=np.uint8)
    height, width = image.shape[:2]
    scale = np.sqrt(np.abs(np.linalg.det(transforms[:, :, :2])))  # chip px per photo px
    factors = np.maximum(1, np.floor(1.0 / np.maximum(scale, 1e-6))).astype(int)
    for i, factor in enumerate(factors.tolist()):
        xy = _chip_pixel_centres(transforms[i], size) / factor  # in pooled-photo pixels
        pooled = np.array([-(-width // factor), -(-height // factor)])  # ceil: partial blocks kept
        lo = np.clip(np.floor(xy.min(axis=(0, 1))).astype(int) - 1, 0, pooled)
        hi = np.clip(np.ceil(xy.max(axis=(0, 1))).astype(int) + 2, 0, pooled)
        if (hi <= lo).any():
            continue  # the chip lies wholly outside the photo
        # Blocks start at multiples of factor, so pooling the crop gives exactly the
        # pooled photo's pixels lo..hi; samples beyond the crop are beyond the photo.
        crop = image[lo[1] * factor:min(hi[1] * factor, height), lo[0] * factor:min(hi[0] * factor, width)]
        src = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
        if factor > 1:
            src = F.avg_pool2d(src, factor, ceil_mode=True)
        # pixel centre k sits at normalised ((k + 0.5) / dim) * 2 - 1 with align_corners=False
        grid = (xy - lo + 0.5) / (hi - lo) * 2 - 1
        chip = F.grid_sample(src, torch.from_numpy(grid.astype(np.float32))[None], mode="bilinear",
                             padding_mode="zeros", align_corners=False)
        out[i] = chip[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def _chip_pixel_centres(transform: np.ndarray, size: int) -> np.ndarray:
    """Photo coordinates (size,size,2) x,y of each chip pixel centre, for one (2,3)
    photo-to-chip transform."""
    inv = np.linalg.inv(np.vstack([transform, [0.0, 0.0, 1.0]]))[:2]
    coords = np.arange(size, dtype=np.float64)
    u, v = np.meshgrid(coords, coords)
    chip = np.stack([u, v, np.ones_like(u)], -1)  # (S,S,3) chip pixel centres
    return np.einsum("ij,abj->abi", inv, chip)


def align_faces(image: np.ndarray, faces: HasFaces, spec: AlignSpec) -> np.ndarray:
    """Aligned chips (n,size,size,3) uint8 of every face of one photo (H,W,3) uint8."""
    return warp_faces(image, face_transforms(faces, spec), spec.size)
