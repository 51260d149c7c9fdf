"""TEMPORARY stand-in for coreseg.scan_io's PNG helpers (removed once scan_io lands)."""
from __future__ import annotations

import cv2
import numpy as np


def to_png_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"cannot encode {array.dtype} {array.shape} as PNG")
    return data.tobytes()


def from_png_bytes(data: bytes) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ValueError("not a PNG")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array
