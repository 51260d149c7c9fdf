"""Pictures people would rather see than read: a mask and boxes drawn over a scan."""
from __future__ import annotations

import cv2
import numpy as np

COLOURS = [(255, 64, 64), (64, 200, 255), (255, 200, 0), (160, 255, 96), (255, 96, 255), (255, 255, 255)]


def draw_overlay(image: np.ndarray, mask: np.ndarray | None = None, boxes=(), colour=(255, 64, 64),
                 truth: np.ndarray | None = None, alpha: float = 0.4) -> np.ndarray:
    """uint8 RGB: the mask tinted with its outline, boxes as rectangles, and (optionally) the
    ground-truth outline in green."""
    out = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3]).copy()
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    thickness = max(1, round(max(out.shape[:2]) / 300))
    if mask is not None and mask.any():
        m = mask.astype(bool)
        out[m] = (out[m] * (1 - alpha) + np.array(colour) * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    if truth is not None and truth.any():
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (0, 255, 0), thickness)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (255, 255, 0), thickness)
    return out
