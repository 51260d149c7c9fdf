"""The one rule that turns a mask into lesion parts and boxes, for training targets, answers,
exports and the findings checker alike (so the model is trained and judged on one convention).

A part is an 8-connected component covering at least `MIN_PART_FRACTION` of the image (and
`MIN_PART_PIXELS`): specks from JPEG masks or a stray brush stroke are not lesions. The largest part
always counts, so a non-empty mask has at least one box. Parts are ordered largest first; boxes are
`[x1, y1, x2, y2]` in the mask's own pixels with exclusive ends (see `coreseg.answer`).
"""
from __future__ import annotations

import cv2
import numpy as np

from coreseg.answer import Box

MIN_PART_FRACTION = 0.0005   # of the image area: 0.05 % (131 px of a 512 × 512 image)
MIN_PART_PIXELS = 4


def _components(mask: np.ndarray) -> tuple[np.ndarray | None, list[int], list[Box]]:
    """(component labels, the kept labels, their boxes), largest first."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D (H × W), got shape {mask.shape}")
    m8 = np.ascontiguousarray(mask.view(np.uint8) if mask.dtype == bool else (mask != 0).astype(np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m8, connectivity=8)
    if count <= 1:
        return None, [], []
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = [int(i) for i in np.argsort(-areas, kind="stable")]
    floor = max(MIN_PART_PIXELS, MIN_PART_FRACTION * mask.size)
    keep = [i + 1 for i in order if areas[i] >= floor] or [order[0] + 1]
    boxes = []
    for i in keep:
        x, y, w, h = (int(v) for v in stats[i, :4])
        boxes.append((x, y, x + w, y + h))
    return labels, keep, boxes


def lesion_parts(mask: np.ndarray) -> tuple[list[np.ndarray], list[Box]]:
    """The parts of a mask (bool arrays of its size) and their boxes, largest first."""
    labels, keep, boxes = _components(mask)
    return [labels == i for i in keep], boxes


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """The boxes of a mask's lesion parts, largest first (empty for an empty mask); builds no part masks."""
    return _components(mask)[2]
