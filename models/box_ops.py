"""Non-maximum suppression in plain torch (torchvision is not available here).

Greedy NMS is sequential by nature; instead of a per-box Python loop this module finds
the overlapping pairs with a sweep along x (boxes sorted by group, then x1, so the boxes
that can overlap a box follow it in a contiguous run), and then solves the greedy
recurrence "a box is kept iff no kept, higher-scored box overlaps it" by fixed-point
iteration over the pair list. Iteration t settles every box whose chain of higher-scored
overlapping boxes is shorter than t, so the result is exactly greedy NMS; in practice it
takes a handful of vectorised steps. Work is O(N log N + pairs whose x-ranges meet).
"""
from __future__ import annotations

import torch

MODES = ("union", "min")
_BLOCK = 1 << 22  # candidate pairs examined per chunk (bounds memory)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, mode: str = "union",
        pixel_offset: float = 0.0) -> torch.Tensor:
    """Indices of the boxes greedy NMS keeps, highest score first.

    boxes: (N,4) float x1,y1,x2,y2; scores: (N,). A box is dropped when its overlap with a
    kept, higher-scored box is > `iou`; overlap is intersection / union ("union", as
    torchvision) or intersection / smaller area ("min", as the original MTCNN code).
    `pixel_offset` is added to widths and heights: 1 gives the inclusive-pixel areas of the
    original MTCNN code, 0 the continuous areas of torchvision. Returns LongTensor (K,).
    """
    groups = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    return batched_nms(boxes, scores, groups, iou, mode, pixel_offset)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou: float,
                mode: str = "union", pixel_offset: float = 0.0) -> torch.Tensor:
    """NMS run independently within each group (e.g. per image); see `nms`.

    groups: (N,) integer group id per box. Returns LongTensor (K,) of kept indices into
    `boxes`, sorted by decreasing score (ties keep input order).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1] \
            or groups.shape != boxes.shape[:1]:
        raise ValueError(f"boxes must be (N,4) with scores and groups (N,); got "
                         f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(groups.shape)}")
    n = boxes.shape[0]
    device = boxes.device
    order = torch.sort(scores, descending=True, stable=True).indices
    if n < 2:
        return order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=device)
    src, dst = _overlapping_pairs(boxes, groups, rank, iou, mode, pixel_offset)
    keep = torch.ones(n, dtype=torch.bool, device=device)
    for _ in range(n):
        suppressed = torch.zeros(n, dtype=torch.bool, device=device)
        suppressed[dst[keep[src]]] = True
        if torch.equal(~suppressed, keep):
            break
        keep = ~suppressed
    return order[keep[order]]


def _overlapping_pairs(boxes: torch.Tensor, groups: torch.Tensor, rank: torch.Tensor,
                       iou: float, mode: str, pixel_offset: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs of the same group with overlap > iou, as (higher-ranked, lower-ranked).

    boxes (N,4), groups (N,) non-negative, rank (N,) position in score order. Returns two
    LongTensors (E,).
    """
    n = boxes.shape[0]
    device = boxes.device
    x1, x2 = boxes[:, 0].double(), boxes[:, 2].double()
    left = x1.min()
    # Sort key: group bands wider than any box's reach, so runs never cross groups.
    band = float(x2.max() - left) + abs(pixel_offset) + 2.0
    key, perm = torch.sort(groups.double() * band + (x1 - left), stable=True)
    # The boxes that can overlap box perm[i] (x1 <= its x2 + offset) follow it up to hi[i].
    hi = torch.searchsorted(key, key + (x2 - x1)[perm] + (pixel_offset + 1.0), right=True)
    counts = (hi - torch.arange(1, n + 1, device=device)).clamp_(min=0)
    ends = torch.cumsum(counts, 0)
    area = (boxes[:, 2] - boxes[:, 0] + pixel_offset) * (boxes[:, 3] - boxes[:, 1] + pixel_offset)
    src, dst = [], []
    start = 0
    while start < n:  # chunks of about _BLOCK candidate pairs
        budget = (ends[start - 1] if start else 0) + _BLOCK
        stop = min(n, max(start + 1, int(torch.searchsorted(ends, budget, right=True))))
        c = counts[start:stop]
        i = torch.repeat_interleave(torch.arange(start, stop, device=device), c)
        first = torch.cumsum(c, 0) - c  # where row i's pairs start in this chunk
        j = i + 1 + torch.arange(i.shape[0], device=device) - torch.repeat_interleave(first, c)
        a, b = perm[i], perm[j]
        box_a, box_b = boxes[a], boxes[b]
        wh = (torch.minimum(box_a[:, 2:], box_b[:, 2:]) - torch.maximum(box_a[:, :2], box_b[:, :2])
              + pixel_offset).clamp_(min=0)
        inter = wh[:, 0] * wh[:, 1]
        area_a, area_b = area[a], area[b]
        if mode == "union":
            overlap = inter / (area_a + area_b - inter)
        else:
            overlap = inter / torch.minimum(area_a, area_b)
        hit = overlap > iou
        a, b = a[hit], b[hit]
        swap = rank[a] > rank[b]
        src.append(torch.where(swap, b, a))
        dst.append(torch.where(swap, a, b))
        start = stop
    return torch.cat(src), torch.cat(dst)
