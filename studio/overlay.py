"""Drawing over a scan (masks, boxes, clicks) and reading brush strokes back as a mask edit.

Everything here is numpy in, numpy out, at the scan's own height × width: the corrected mask is never
resized away from the scan (an editor that hands back another size is mapped back with nearest neighbours).
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from coreseg.geometry import (MAX_DISPLAY_SIDE, MIN_DISPLAY_SIDE, display_scale,  # noqa: F401  (re-exported)
                              display_to_scan, scan_to_display)
from coreseg.overlay import draw_overlay

MASK_COLOUR = (0, 190, 255)      # the mask being corrected
POSITIVE = (40, 220, 60)
NEGATIVE = (255, 50, 50)
DRAWN_BOX = (255, 120, 0)        # a box the annotator drew
ADD_STROKE = "#00ff00"           # brush colours in the editor: green adds to the mask, magenta removes
REMOVE_STROKE = "#ff00ff"


def draw(display: np.ndarray, mask: np.ndarray | None = None, *, boxes=(), clicks=(), box=None, corner=None,
         colour=MASK_COLOUR, alpha: float = 0.35, scale: float | None = None) -> np.ndarray:
    """uint8 RGB: the scan with the mask tinted and outlined, answer boxes, clicks (green +, red −) and a
    drawn box; shown at `scale` (default: `display_scale`)."""
    height, width = np.asarray(display).shape[:2]
    scale = display_scale(height, width) if scale is None else scale
    out = draw_overlay(display, mask, boxes, colour=colour, alpha=alpha, scale=scale)
    thickness = max(1, round(max(out.shape[:2]) / 250))

    def pt(x, y):
        return scan_to_display(x, y, scale)

    if box is not None:
        x1, y1, x2, y2 = box
        cv2.rectangle(out, pt(x1, y1), pt(x2 - 1, y2 - 1), DRAWN_BOX, thickness + 1)
    radius = max(3, round(max(out.shape[:2]) / 90))
    for x, y, label in clicks or ():
        c = pt(x, y)
        cv2.circle(out, c, radius, POSITIVE if label else NEGATIVE, -1)
        cv2.circle(out, c, radius, (255, 255, 255), max(1, thickness // 2))
        arm = max(1, radius // 2)
        cv2.line(out, (c[0] - arm, c[1]), (c[0] + arm, c[1]), (255, 255, 255), 1)
        if label:
            cv2.line(out, (c[0], c[1] - arm), (c[0], c[1] + arm), (255, 255, 255), 1)
    if corner is not None:
        cv2.drawMarker(out, pt(*corner), DRAWN_BOX, cv2.MARKER_CROSS, radius * 3, thickness + 1)
    return out


def to_scan_xy(x: float, y: float, scale: float, height: int, width: int) -> tuple[int, int]:
    """A point on the shown image → scan pixels (clipped inside); the rule is `coreseg.geometry`'s."""
    return display_to_scan(x, y, scale, height, width)


def _hex_rgb(colour: str) -> np.ndarray:
    colour = colour.lstrip("#")
    return np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.int32)


def strokes_to_edit(layer: np.ndarray | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A brush layer (RGBA; any size, e.g. an editor's canvas) → (add, remove) bool masks at height × width.

    Painted pixels are those with alpha > 0; each is an addition or a removal by which brush colour it is
    nearer to (anti-aliased edges included). The layer is mapped back to the scan with nearest neighbours.
    """
    empty = np.zeros((height, width), dtype=bool)
    if layer is None:
        return empty, empty.copy()
    layer = np.asarray(layer)
    if layer.ndim == 2:
        painted, rgb = layer > 0, np.zeros(layer.shape + (3,), np.int32)
    elif layer.shape[2] == 4:
        painted, rgb = layer[..., 3] > 0, layer[..., :3].astype(np.int32)
    else:  # no alpha: anything not black is paint
        rgb = layer[..., :3].astype(np.int32)
        painted = rgb.sum(axis=2) > 0
    if not painted.any():
        return empty, empty.copy()
    d_add = np.abs(rgb - _hex_rgb(ADD_STROKE)).sum(axis=2)
    d_remove = np.abs(rgb - _hex_rgb(REMOVE_STROKE)).sum(axis=2)
    add = painted & (d_add <= d_remove)
    remove = painted & ~add
    if add.shape != (height, width):
        add = cv2.resize(add.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        remove = cv2.resize(remove.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return add, remove


def count_strokes(add: np.ndarray, remove: np.ndarray) -> int:
    """Connected painted regions (an estimate of how many strokes were drawn)."""
    n = 0
    for part in (add, remove):
        if part.any():
            n += cv2.connectedComponents(part.astype(np.uint8), connectivity=8)[0] - 1
    return n


def mask_to_png(mask: np.ndarray) -> bytes:
    """Bool H×W → 8-bit PNG of 0/255 (what `/refine` returns and `/submit` reads)."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def read_mask_image(source, height: int, width: int) -> np.ndarray:
    """A mask image file (PNG; any nonzero pixel is inside) → bool H×W; a mask of another size is refused."""
    with Image.open(source) as img:
        array = np.asarray(img.convert("L") if img.mode not in ("L", "1", "I", "I;16") else img)
    if array.shape[:2] != (height, width):
        raise ValueError(f"the mask is {array.shape[0]}×{array.shape[1]} (height × width) but the scan is "
                         f"{height}×{width}; send a mask of exactly the scan's size")
    return array > 0
