"""Pictures people would rather see than read: a mask and boxes drawn over a scan."""
from __future__ import annotations

import cv2
import numpy as np

from coreseg.geometry import scan_to_display

COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (160, 255, 96), (255, 96, 255), (255, 255, 255)]
BOX_COLOUR = (255, 210, 0)
TRUTH_COLOUR = (0, 255, 0)


def resize(image: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    """Scale an image (or a mask, with `nearest`) by a factor."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return cv2.resize(image, size, interpolation=method)


def _outline(out: np.ndarray, mask: np.ndarray, colour, thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, colour, thickness)


def draw_overlay(image: np.ndarray, mask: np.ndarray | None = None, boxes=(), colour=COLOURS[0],
                 truth: np.ndarray | None = None, alpha: float = 0.4, scale: float = 1.0) -> np.ndarray:
    """uint8 RGB at `scale` × the image size: the mask tinted and outlined, the answer's boxes
    (original pixels), and optionally the ground-truth outline in green."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    out = resize(np.ascontiguousarray(image[..., :3]), scale).copy()
    thickness = max(1, round(max(out.shape[:2]) / 250))
    if mask is not None:
        m = resize(np.asarray(mask, dtype=np.uint8), scale, nearest=True).astype(bool)
        if m.any():
            out[m] = (out[m] * (1 - alpha) + np.array(colour, dtype=np.float32) * alpha).astype(np.uint8)
            _outline(out, m, colour, thickness)
    if truth is not None and truth.any():
        _outline(out, resize(truth.astype(np.uint8), scale, nearest=True), TRUTH_COLOUR, thickness)
    for x1, y1, x2, y2 in boxes or ():
        (dx1, dy1), (dx2, dy2) = scan_to_display(x1, y1, scale), scan_to_display(x2, y2, scale)
        cv2.rectangle(out, (dx1, dy1), (dx2 - 1, dy2 - 1), BOX_COLOUR, thickness)  # exclusive ends
    return out
