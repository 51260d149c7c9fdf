"""Lossless byte forms of what the store keeps: scan pixels, masks, token ids and log-probabilities.

Masks are single-channel 8-bit PNGs holding 0 and 255 (viewable as they are; read back as `> 0`), so the
PNG bytes in the database are also the exported mask files, bit for bit. Scan pixels keep their dtype:
PNG (through `coreseg.scan_io`) for uint8/uint16 grey and uint8 RGB, zlib-compressed `.npy` for anything else
(int16 CT in Hounsfield units, float MR, uint16 colour).
"""
from __future__ import annotations

import io
import zlib

import numpy as np

from coreseg.scan_io import from_png_bytes, to_png_bytes

PNG_DTYPES = (np.uint8, np.uint16)


def encode_mask(mask: np.ndarray) -> bytes:
    """A bool (or 0/1) H×W mask → PNG bytes of 0/255."""
    return to_png_bytes(np.where(np.asarray(mask, dtype=bool), np.uint8(255), np.uint8(0)))


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes → bool H×W."""
    array = from_png_bytes(data)
    if array.ndim == 3:
        array = array[..., 0]
    return array > 0


def encode_pixels(pixels: np.ndarray) -> tuple[str, bytes]:
    """(codec, bytes) for a scan's pixels, lossless in the original dtype."""
    pixels = np.asarray(pixels)
    if pixels.dtype in PNG_DTYPES:
        try:
            data = to_png_bytes(pixels)
        except ValueError:  # a layout PNG (as scan_io writes it) does not take
            data = None
        if data is not None:
            back = from_png_bytes(data)
            if back.dtype == pixels.dtype and back.shape == pixels.shape and np.array_equal(back, pixels):
                return "png", data
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return "npy-zlib", zlib.compress(buffer.getvalue(), 6)


def decode_pixels(codec: str, data: bytes) -> np.ndarray:
    if codec == "png":
        return from_png_bytes(data)
    if codec == "npy-zlib":
        return np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)
    raise ValueError(f"unknown pixel codec {codec!r}")


def pack_ints(values) -> bytes:
    return np.asarray(list(values), dtype="<i8").tobytes()


def pack_floats(values) -> bytes:
    return np.asarray(list(values), dtype="<f8").tobytes()


def unpack_ints(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i8").tolist()


def unpack_floats(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f8").tolist()
