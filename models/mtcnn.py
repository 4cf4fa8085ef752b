"""MTCNN face detection (P-Net -> R-Net -> O-Net) over batches of differently sized photos.

Follows the numerics of facenet-pytorch 2.6.0's ``detect_face`` (same weights, image
pyramid, area resampling, thresholds, box arithmetic and NMS rules) but is organised for
throughput:

* Area resampling -- every pyramid level and every R-/O-Net crop -- is read off one
  integral image per photo. The bins are those of ``adaptive_avg_pool2d`` (which is what
  ``interpolate(mode="area")`` runs), so values match it to float rounding, while a level
  costs O(its own size) instead of a pass over the whole photo, and the crops of all boxes
  of all photos are a single gather (no per-box loop).
* A pyramid level of several photos runs through P-Net as one zero-padded batch. The
  conv1 activations beyond each photo are set to -inf before the ceil-mode max pool, so
  every output inside a photo equals that of the photo run alone, and outputs outside it
  are discarded. Photos are packed into batches that bound the padding wasted.
* CPU layouts chosen by measurement: ceil-mode max pools as strided maxima (same values,
  2-8x faster than torch's kernels), all three nets channels-last (pyramid levels are
  written in that layout), P-Net's two 1x1 heads as one matmul, and network calls sized
  so that activations stay in cache: many small levels per call, a big level in bands
  of rows (whole 1280x960-photo levels spill out of cache).
* NMS is the vectorised greedy NMS of ``models.box_ops``.

Where facenet-pytorch crops a box sticking out of the photo it clips the box to the photo
and stretches what is left to 24x24 / 48x48 (it does not zero-pad); this module does the
same so that scores match.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.box_ops import batched_nms
from models.weights import resolve

# Input pixels per network call: on CPU, batches whose activations stay in cache run ~2x
# faster than big ones; a GPU wants big batches.
_BATCH_PIXELS_CPU = 1 << 17
_BATCH_PIXELS_GPU = 1 << 24
_PAD_SLACK = 1.25  # a padded P-Net batch may cost this much more than its photos...
_PAD_ALLOWANCE = 128 * 128  # ...plus this many pixels per photo (tiny levels always batch)
_SCALE = 0.0078125  # MTCNN input scaling: (pixel - 127.5) * _SCALE


@dataclass
class Detections:
    """Faces found in one photo, highest score first, in that photo's pixel coordinates.

    boxes (n,4) float32 x1,y1,x2,y2; scores (n,) float32; landmarks (n,5,2) float32 (x,y)
    of left eye, right eye, nose, left and right mouth corner (as seen in the image).
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _max_pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """max_pool2d(x, kernel, stride=2, ceil_mode=True) of x (N,C,H,W), kernel 2 or 3, as
    strided maxima: same values, 2-8x faster on CPU than torch's kernels, NCHW or
    channels-last (kept). A last window hanging over the edge takes the rows it has."""
    layout = (torch.channels_last if not x.is_contiguous()
              and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
    for dim in (2, 3):
        n = x.shape[dim]
        out_n = (n - kernel + 1) // 2 + 1
        shape = list(x.shape)
        shape[dim] = out_n
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
        full = min(n // 2, out_n)  # windows that have their second element
        torch.maximum(_taps(x, dim, 0, full), _taps(x, dim, 1, full),
                      out=out.narrow(dim, 0, full))
        if full < out_n:
            out.narrow(dim, full, 1).copy_(x.narrow(dim, n - 1, 1))
        if kernel == 3:
            third = (n - 1) // 2  # windows that have their third element
            head = out.narrow(dim, 0, third)
            torch.maximum(head, _taps(x, dim, 2, third), out=head)
        x = out
    return x


def _taps(x: torch.Tensor, dim: int, offset: int, count: int) -> torch.Tensor:
    """Element `offset` of each of the first `count` stride-2 windows of x along dim."""
    index = [slice(None)] * x.ndim
    index[dim] = slice(offset, offset + 2 * count - 1, 2)
    return x[tuple(index)]


class PNet(nn.Module):
    """Proposal net: fully convolutional, a 12x12 window every 2 pixels.

    State-dict keys as facenet-pytorch's pnet.pt.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        self.register_buffer("head_weight", torch.empty(5, 32), persistent=False)
        self.register_buffer("head_bias", torch.empty(5), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.merge_heads())
        self.merge_heads()

    @torch.no_grad()
    def merge_heads(self) -> None:
        """Both 1x1 heads as one (5,32) layer, its first row the face logit minus the
        non-face logit (a softmax over two logits is the sigmoid of their difference).
        Buffers: refreshed whenever a state dict is loaded, moved by .to()."""
        self.head_weight.copy_(torch.cat([self.conv4_1.weight[1:] - self.conv4_1.weight[:1],
                                          self.conv4_2.weight]).flatten(1))
        self.head_bias.copy_(torch.cat([self.conv4_1.bias[1:] - self.conv4_1.bias[:1],
                                        self.conv4_2.bias]))

    def forward(self, x: torch.Tensor, sizes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,3,H,W) normalised pixels -> (box regression (B,4,h,w), face prob (B,h,w)).

        sizes (B,2) long: valid height, width of each zero-padded photo in x; outputs are
        then exact for each photo's own region, h = ceil((H-2)/2) - 4 likewise for w.
        """
        x = self.prelu1(self.conv1(x.contiguous(memory_format=torch.channels_last)))
        if sizes is not None:
            rows = torch.arange(x.shape[2], device=x.device) >= (sizes[:, :1] - 2)
            cols = torch.arange(x.shape[3], device=x.device) >= (sizes[:, 1:] - 2)
            x.masked_fill_(rows[:, None, :, None] | cols[:, None, None, :], float("-inf"))
        # Channels-last throughout (the pyramid levels are written that way): on CPU conv1
        # runs ~3x, conv2 2.5x and conv3 1.2x faster than NCHW; the pool keeps the layout.
        x = _max_pool(x, 2)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        # The merged heads as one matmul over the (pixels, 32) channels-last features, out
        # (pixels, 5): torch's conv2d has no fast path for 1x1 convs this narrow.
        features = x.permute(0, 2, 3, 1)
        out = torch.addmm(self.head_bias, features.reshape(-1, x.shape[1]), self.head_weight.t())
        out = out.view(*features.shape[:3], 5)
        return out[..., 1:].permute(0, 3, 1, 2), torch.sigmoid(out[..., 0])


class RNet(nn.Module):
    """Refine net on 24x24 crops. State-dict keys as facenet-pytorch's rnet.pt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N,3,24,24) normalised -> (box regression (N,4), face prob (N,)).

        Runs channels-last: ~25% faster on CPU than NCHW for these layer sizes."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = _max_pool(self.prelu1(self.conv1(x)), 3)
        x = _max_pool(self.prelu2(self.conv2(x)), 3)
        x = self.prelu3(self.conv3(x))
        # The dense weights expect (W,H,C) flattening (Caffe heritage).
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output net on 48x48 crops. State-dict keys as facenet-pytorch's onet.pt."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N,3,48,48) normalised -> (box regression (N,4), landmarks (N,10) as
        x0..x4,y0..y4 relative to the box, face prob (N,)). Runs channels-last."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = _max_pool(self.prelu1(self.conv1(x)), 3)
        x = _max_pool(self.prelu2(self.conv2(x)), 3)
        x = _max_pool(self.prelu3(self.conv3(x)), 2)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def _bins(length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end (exclusive) of adaptive_avg_pool's `out` bins over `length` pixels.

    length: (...) long -> two (..., out) long tensors, offsets from the region start.
    """
    a = torch.arange(out, device=length.device)
    length = length[..., None]
    return (a * length) // out, ((a + 1) * length + out - 1) // out


@functools.lru_cache(maxsize=512)
def _level_plan(height: int, width: int, out_h: int, out_w: int, device: torch.device
                ) -> tuple[torch.Tensor, ...]:
    """How `_IntegralImages.level` resamples a height x width photo to out_h x out_w:
    table rows y0, y1 (out_h,) of each row bin, flat (x * 3 + channel) table columns
    x0, x1 (1, out_w*3) of each column bin, and the scale (out_h,out_w,1) turning bin
    sums into MTCNN input. Cached: batches repeat photo sizes."""
    y0, y1 = _bins(torch.tensor(height, device=device), out_h)
    x0, x1 = _bins(torch.tensor(width, device=device), out_w)
    channel = torch.arange(3, device=device)
    flat0, flat1 = ((x[:, None] * 3 + channel).reshape(1, -1) for x in (x0, x1))
    scale = _SCALE / ((y1 - y0)[:, None, None] * (x1 - x0)[None, :, None]).to(torch.float32)
    return y0, y1, flat0, flat1, scale


class _IntegralImages:
    """Summed-area tables of a batch of photos, flattened into one (rows, 3) table.

    Entry (y, x) of photo i, at row offsets[i] + y * (W_i + 1) + x, is the sum of that
    photo's pixels [0, y) x [0, x) per channel. int32 while exact, else int64.
    """

    def __init__(self, images: Sequence[np.ndarray], device: torch.device) -> None:
        self.sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        rows = [(h + 1) * (w + 1) for h, w in self.sizes]
        exact32 = max(h * w for h, w in self.sizes) * 255 < 2 ** 31
        dtype = torch.int32 if exact32 else torch.int64
        self.table = torch.empty(sum(rows), 3, dtype=dtype, device=device)
        self.offsets = torch.tensor(np.cumsum([0] + rows[:-1]), device=device)
        self.heights = torch.tensor([h for h, _ in self.sizes], device=device)
        self.widths = torch.tensor([w for _, w in self.sizes], device=device)
        for image, offset, n in zip(images, self.offsets.tolist(), rows):
            self._fill(self.table[offset:offset + n].view(image.shape[0] + 1, -1, 3), image)

    @staticmethod
    def _fill(table: torch.Tensor, image: np.ndarray) -> None:
        """Write the integral image of image (H,W,3) uint8 into table (H+1,W+1,3)."""
        pixels = torch.from_numpy(np.require(image, requirements="CW")).to(table.device)
        table[0].zero_()
        table[:, 0].zero_()
        torch.cumsum(pixels, dim=1, dtype=table.dtype, out=table[1:, 1:])
        if table.device.type == "cpu":
            # A loop of contiguous row additions: ~10x faster than torch/numpy's column scans.
            rows = table.numpy()
            for y in range(2, rows.shape[0]):
                np.add(rows[y - 1], rows[y], out=rows[y])
        else:
            table[1:] = torch.cumsum(table[1:], dim=0)

    def level(self, index: int, out: torch.Tensor) -> None:
        """Write photo `index` area-resampled to the size of out (3,h,w) float32, in
        MTCNN's input scaling (pixel - 127.5) / 128, into out."""
        h, w = self.sizes[index]
        offset = int(self.offsets[index])
        table = self.table[offset:offset + (h + 1) * (w + 1)].view(h + 1, (w + 1) * 3)
        y0, y1, x0, x1, scale = _level_plan(h, w, out.shape[1], out.shape[2], table.device)
        strip = table.index_select(0, y1).sub_(table.index_select(0, y0))
        # gather, not index_select: ~2.5x faster for these 3-element column picks.
        rows = strip.shape[0]
        sums = torch.gather(strip, 1, x1.expand(rows, -1)).sub_(
            torch.gather(strip, 1, x0.expand(rows, -1)))
        torch.mul(sums.view(rows, -1, 3), scale, out=out.permute(1, 2, 0))
        out.sub_(127.5 * _SCALE)

    def crops(self, image: torch.Tensor, window: torch.Tensor, size: int) -> torch.Tensor:
        """Area-resampled crops (N,3,size,size) float32 channels-last, in MTCNN's input
        scaling, of windows (N,4) long x0,y0,x1,y1 (pixels [x0,x1) x [y0,y1), non-empty,
        inside the photo) of photos image (N,). One gather of the 4 table corners of
        every bin of every crop."""
        x0, y0, x1, y1 = window.unbind(1)
        ys, ye = _bins(y1 - y0, size)
        xs, xe = _bins(x1 - x0, size)
        stride = (self.widths[image] + 1)[:, None, None]
        rows = (torch.stack([ys, ye], 1) + y0[:, None, None]) * stride
        rows += self.offsets[image][:, None, None]
        cols = torch.stack([xs, xe], 1) + x0[:, None, None]
        index = rows[:, :, None, :, None] + cols[:, None, :, None, :]  # (N,2,2,S,S)
        corners = self.table.index_select(0, index.flatten()).view(*index.shape, 3)
        strips = corners[:, 1] - corners[:, 0]  # rows [ys, ye) at xs and at xe
        sums = strips[:, 1] - strips[:, 0]
        scale = _SCALE / ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).to(torch.float32)
        out = torch.empty(len(window), 3, size, size, device=window.device,
                          memory_format=torch.channels_last)
        torch.mul(sums, scale[..., None], out=out.permute(0, 2, 3, 1))
        return out.sub_(127.5 * _SCALE)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N,4) grown to squares on the longer side about their centre (rerec)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """R-/O-Net box regression (bbreg): offsets reg (N,4) in units of inclusive size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                        boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], dim=1)


def _windows(boxes: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop windows (N,4) long x0,y0,x1,y1 of boxes (N,4) clipped to their photos, and
    which are non-empty (N,) bool -- facenet-pytorch's pad(): truncate, clip to [1, size],
    then take pixels [x-1, ex) x [y-1, ey)."""
    t = boxes.trunc().long()
    x0 = t[:, 0].clamp(min=1) - 1
    y0 = t[:, 1].clamp(min=1) - 1
    x1 = torch.minimum(t[:, 2], widths)
    y1 = torch.minimum(t[:, 3], heights)
    return torch.stack([x0, y0, x1, y1], dim=1), (x1 > x0) & (y1 > y0)


def _pack(shapes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Split photos (their level shapes (h,w)) into P-Net batches that waste little padding.

    Greedy over photos sorted by orientation then area: a photo joins the current batch
    while the padded batch stays within _PAD_SLACK x its pixels + _PAD_ALLOWANCE per photo
    and within `budget` pixels. Returns lists of indices into shapes.
    """
    order = sorted(range(len(shapes)), reverse=True,
                   key=lambda i: (shapes[i][0] >= shapes[i][1], shapes[i][0] * shapes[i][1]))
    batches: list[list[int]] = []
    height = width = real = 0
    for i in order:
        h, w = shapes[i]
        if batches:
            n = len(batches[-1]) + 1
            padded = max(height, h) * max(width, w) * n
            if padded <= min(_PAD_SLACK * (real + h * w) + _PAD_ALLOWANCE * n, budget):
                batches[-1].append(i)
                height, width, real = max(height, h), max(width, w), real + h * w
                continue
        batches.append([i])
        height, width, real = h, w, h * w
    return batches


def _load(net: nn.Module, name: str, device: torch.device) -> nn.Module:
    """net with the pretrained weights of model `name`, in eval mode on device."""
    net.load_state_dict(torch.load(resolve(name), map_location="cpu", weights_only=True))
    return net.to(device).eval()


def _check_image(image: object, index: int) -> np.ndarray:
    """The image if it is an HxWx3 uint8 array, else a ValueError naming it."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        desc = (f"array of shape {image.shape} and dtype {image.dtype}"
                if isinstance(image, np.ndarray) else type(image).__name__)
        raise ValueError(f"images[{index}] must be an HxWx3 uint8 RGB array, got {desc}")
    return image


class MTCNN:
    """The MTCNN cascade with facenet-pytorch's pretrained weights.

    min_face_size: smallest face side (px) searched for; thresholds: P-, R-, O-Net face
    probability cut-offs; factor: scale step of the image pyramid; device: where the nets run.
    """

    def __init__(self, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 device: str | torch.device = "cpu") -> None:
        if not min_face_size > 0:
            raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
        if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be three probabilities, got {thresholds}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.device = torch.device(device)
        self._batch_pixels = (_BATCH_PIXELS_CPU if self.device.type == "cpu"
                              else _BATCH_PIXELS_GPU)
        self.pnet = _load(PNet(), "mtcnn-pnet", self.device)
        self.rnet = _load(RNet(), "mtcnn-rnet", self.device)
        self.onet = _load(ONet(), "mtcnn-onet", self.device)

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each photo; images: HxWx3 uint8 RGB arrays, sizes may differ.

        Returns one Detections per photo (possibly empty), in that photo's pixels.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise ValueError("images must be a sequence of HxWx3 arrays; wrap one image in a list")
        images = [_check_image(image, k) for k, image in enumerate(images)]
        if not images:
            return []
        integral = _IntegralImages(images, self.device)
        boxes, owner = self._propose(integral)
        boxes, owner = self._refine(integral, boxes, owner)
        boxes, scores, landmarks, owner = self._finish(integral, boxes, owner)
        return _split(len(images), owner, boxes, scores, landmarks)

    def _scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales of a photo: the first maps min_face_size to P-Net's 12 px."""
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _propose(self, integral: _IntegralImages) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net over every pyramid level; returns squared boxes (N,4), photo (N,)."""
        device = self.device
        scales = [self._scales(h, w) for h, w in integral.sizes]
        n_levels = max(len(s) for s in scales)
        found: list[tuple[torch.Tensor, ...]] = []
        for level in range(n_levels):
            members = [i for i, s in enumerate(scales) if level < len(s)]
            shapes = [(int(integral.sizes[i][0] * scales[i][level] + 1),
                       int(integral.sizes[i][1] * scales[i][level] + 1)) for i in members]
            for batch in _pack(shapes, self._batch_pixels):
                photos = [members[k] for k in batch]
                sizes = torch.tensor([shapes[k] for k in batch], device=device)
                height, width = (int(v) for v in sizes.max(dim=0).values)
                padded = bool((sizes != sizes.new_tensor([height, width])).any())
                x = torch.empty(len(photos), 3, height, width, device=device,
                                memory_format=torch.channels_last)
                if padded:
                    x.zero_()
                for slot, (i, (h, w)) in enumerate(zip(photos, sizes.tolist())):
                    integral.level(i, x[slot, :, :h, :w])
                reg, prob = self._pnet(x, sizes if padded else None)
                hit = prob >= self.thresholds[0]
                if padded:  # keep each photo's own P-Net output extent
                    out_sizes = (sizes - 1) // 2 - 4
                    hit &= (torch.arange(prob.shape[1], device=device)
                            < out_sizes[:, :1])[:, :, None]
                    hit &= (torch.arange(prob.shape[2], device=device)
                            < out_sizes[:, 1:])[:, None, :]
                slot, y, x_ = hit.nonzero().unbind(1)
                scale = torch.tensor([scales[i][level] for i in photos], device=device,
                                     dtype=torch.float32)[slot]
                cell = torch.stack([x_, y], dim=1).to(torch.float32)
                corner1 = ((2 * cell + 1) / scale[:, None]).floor()
                corner2 = ((2 * cell + 12) / scale[:, None]).floor()
                photo = torch.tensor(photos, device=device)[slot]
                found.append((torch.cat([corner1, corner2], dim=1), prob[slot, y, x_],
                              reg[slot, :, y, x_], photo, photo * n_levels + level))
        if not found:  # every photo is smaller than 12 px at the first scale
            return (torch.zeros(0, 4, device=device),
                    torch.zeros(0, dtype=torch.long, device=device))
        boxes, score, reg, photo, group = (torch.cat(t) for t in zip(*found))
        keep = batched_nms(boxes, score, group, 0.5)  # within each photo and scale
        keep = keep[batched_nms(boxes[keep], score[keep], photo[keep], 0.7)]  # across scales
        boxes, reg, photo = boxes[keep], reg[keep], photo[keep]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + reg[:, 0] * w, boxes[:, 1] + reg[:, 1] * h,
                             boxes[:, 2] + reg[:, 2] * w, boxes[:, 3] + reg[:, 3] * h], dim=1)
        return _square(boxes), photo

    def _pnet(self, x: torch.Tensor, sizes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over a level batch x (B,3,H,W); one photo bigger than the batch budget
        runs as bands of rows overlapping by P-Net's 10-row reach beyond its stride (even
        starts), so activations stay in cache; the bands' outputs tile the photo's exactly."""
        height, width = x.shape[2], x.shape[3]
        if sizes is not None or len(x) > 1 or height * width <= self._batch_pixels:
            return self.pnet(x, sizes)
        rows = max(32, self._batch_pixels // width) // 2 * 2
        regs, probs = [], []
        start = 0
        while True:
            stop = min(start + rows, height)
            reg, prob = self.pnet(x[:, :, start:stop])
            regs.append(reg)
            probs.append(prob)
            if stop == height:
                return torch.cat(regs, dim=2), torch.cat(probs, dim=1)
            start = stop - 10

    def _score(self, net: nn.Module, integral: _IntegralImages, boxes: torch.Tensor,
               photo: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """net over the size x size crops of boxes (N,4) of photos (N,).

        Returns which boxes had a non-empty crop window (N,) bool, and net's outputs for
        those. Crops are cut and scored a chunk at a time, within the batch pixel budget,
        so that crops and activations stay in cache.
        """
        window, ok = _windows(boxes, integral.heights[photo], integral.widths[photo])
        window, photo = window[ok], photo[ok]
        n_chunks = max(1, -(-len(window) * size * size // self._batch_pixels))
        chunk = max(1, -(-len(window) // n_chunks))  # equal chunks: no small remainder
        outs = [net(integral.crops(photo[i:i + chunk], window[i:i + chunk], size))
                for i in range(0, max(len(window), 1), chunk)]
        return ok, tuple(torch.cat(parts) for parts in zip(*outs))

    def _refine(self, integral: _IntegralImages, boxes: torch.Tensor, photo: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net rescoring and regression; returns squared boxes (N,4), photo (N,)."""
        ok, (reg, score) = self._score(self.rnet, integral, boxes, photo, 24)
        boxes, photo = boxes[ok], photo[ok]
        passed = score > self.thresholds[1]
        boxes, score, reg, photo = boxes[passed], score[passed], reg[passed], photo[passed]
        keep = batched_nms(boxes, score, photo, 0.7)
        return _square(_regress(boxes[keep], reg[keep])), photo[keep]

    def _finish(self, integral: _IntegralImages, boxes: torch.Tensor, photo: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        """Stage 3: O-Net scores, regression and landmarks, then 'min' NMS per photo.

        Returns boxes (N,4), scores (N,), landmarks (N,5,2), photo (N,).
        """
        ok, (reg, points, score) = self._score(self.onet, integral, boxes, photo, 48)
        boxes, photo = boxes[ok], photo[ok]
        passed = score > self.thresholds[2]
        boxes, score, reg, photo = boxes[passed], score[passed], reg[passed], photo[passed]
        points = points[passed]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        landmarks = torch.stack([w * points[:, :5] + boxes[:, :1] - 1,
                                 h * points[:, 5:] + boxes[:, 1:2] - 1], dim=2)
        boxes = _regress(boxes, reg)
        keep = batched_nms(boxes, score, photo, 0.7, mode="min", pixel_offset=1.0)
        return boxes[keep], score[keep], landmarks[keep], photo[keep]


def _split(n_photos: int, photo: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor,
           landmarks: torch.Tensor) -> list[Detections]:
    """Per-photo Detections from the flat (N,...) results and photo index (N,)."""
    order = torch.sort(photo, stable=True).indices
    counts = torch.bincount(photo, minlength=n_photos).tolist()
    parts = [t[order].float().cpu().numpy() for t in (boxes, scores, landmarks)]
    out, start = [], 0
    for count in counts:
        stop = start + count
        out.append(Detections(boxes=parts[0][start:stop].reshape(-1, 4),
                              scores=parts[1][start:stop].reshape(-1),
                              landmarks=parts[2][start:stop].reshape(-1, 5, 2)))
        start = stop
    return out
