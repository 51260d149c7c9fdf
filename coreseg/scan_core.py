"""What every scan reader shares: the typed errors, the `Scan` value and its identity, size checks, window
choices and the rendering of pixel values to the uint8 RGB display image. The readers are
`coreseg.scan_dicom`, `coreseg.scan_nifti` and `coreseg.scan_io` (the door, with PNG/JPEG/TIFF/BMP).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from coreseg.config import AppConfig


class ScanError(ValueError):
    """Bad input with a message a person understands (``str(e)`` is shown in the UI)."""


class UnsupportedFormatError(ScanError):
    """The file is readable but holds something this app does not take as a scan."""


class CorruptFileError(ScanError):
    """The file is empty, truncated, damaged, or not what its name says."""


class TooLargeError(ScanError):
    """The file or image is over the size limits (protects memory; decompression bombs)."""


class NoPixelDataError(ScanError):
    """A DICOM object without an image (report, structure set, ...)."""


# CT display windows as (level, width) in HU; lower/upper bounds are level -/+ width / 2.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40, 80),  # [0, 80]
    "soft_tissue": (50, 400),  # [-150, 250], also abdomen
    "liver": (102.5, 255),  # [-25, 230]
    "lung": (0, 2000),  # [-1000, 1000]
    "bone": (400, 1800),  # [-500, 1300]
}
FILE_WINDOW = "file"  # the DICOM file's own window (Window Center/Width or VOI LUT): its default when it has one
MAX_BYTES = AppConfig.max_upload_bytes  # default limit on a file and on what a .nii.gz unpacks to (the app's)
PERCENTILES = (0.5, 99.5)  # display clip for MR, 16-bit/float images and NIfTI


def scan_identity(pixels: np.ndarray, display: np.ndarray | None, meta: dict) -> str:
    """sha256 over the pixels (dtype, shape, bytes), the display image and the meta: the storage key.

    Two uploads share a key only when everything stored about them is the same, so a DICOM whose pixels
    equal an earlier PNG's is a scan of its own, with its own meta and display image."""
    h = hashlib.sha256()
    for array in (pixels, display):
        if array is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(array)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    plain = json.dumps(meta, sort_keys=True, separators=(",", ":"), default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    h.update(plain.encode())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Scan:
    """One 2D slice/frame of an uploaded scan.

    pixels: original values (CT in HU after rescale), grey HxW or colour HxWx3, native byte order.
    display: uint8 HxWx3 RGB rendering (windowed) for showing and for the model.
    meta: JSON-serialisable description without identifiers (see ``read_scan``).
    """

    pixels: np.ndarray
    display: np.ndarray
    meta: dict

    @property
    def content_hash(self) -> str:
        """`scan_identity` of pixels, display and meta: the storage key."""
        return scan_identity(self.pixels, self.display, self.meta)


def to_png_bytes(array: np.ndarray) -> bytes:
    """Encode uint8/uint16 grey (HxW) or uint8 RGB (HxWx3) losslessly as PNG.

    bool arrays (masks) are stored as uint8 0/1, so they come back from ``from_png_bytes`` as uint8.
    """
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    grey = a.ndim == 2 and a.dtype in (np.uint8, np.uint16)
    rgb = a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8
    if not (grey or rgb):
        raise ValueError(f"to_png_bytes takes uint8/uint16 grey or uint8 RGB, got {a.dtype} {a.shape}")
    img = Image.fromarray(np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="))))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def from_png_bytes(data: bytes) -> np.ndarray:
    """Decode PNG bytes written by ``to_png_bytes`` to uint8/uint16 grey or uint8 RGB."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        if img.mode.startswith("I"):
            return np.array(img).astype(np.uint16)
        return np.array(img if img.mode in ("L", "RGB") else img.convert("RGB"))


# ----------------------------------------------------------------------------- size checks and choices


def size_text(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def check_bytes(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLargeError(f"The uploaded file is {size_text(size)}; the limit is {size_text(max_bytes)}.")


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLargeError(
            f"The uploaded image is {width} × {height} pixels; the limit is {max_pixels:,} pixels."
        )


def pick(index: int | None, count: int, default: int, what: str) -> int:
    """Validate a frame/slice index against count; None means default."""
    if index is None:
        return default
    index = int(index)
    if not 0 <= index < count:
        raise ScanError(
            f"{what.capitalize()} {index} is out of range; this scan has {count} {what}s (0–{count - 1})."
        )
    return index


def window_spec(window, default) -> dict | None:
    """Turn a window choice (preset name, 'percentile', (level, width) or None) into meta form."""
    window = default if window is None else window
    if window is None:
        return None
    if isinstance(window, str):
        if window == "percentile":
            return {"name": "percentile"}
        if window == FILE_WINDOW:
            raise ScanError("This scan has no display window of its own; choose a preset or percentile.")
        if window not in CT_WINDOWS:
            raise ScanError(f"Unknown window '{window}'; choose one of {', '.join(CT_WINDOWS)} or percentile.")
        level, width = CT_WINDOWS[window]
        return {"name": window, "level": float(level), "width": float(width)}
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ScanError("The window width must be positive.")
    return {"name": "custom", "level": level, "width": width}


def windows_for(kind: str, own: bool = False) -> dict:
    """Window names the UI should offer for a kind of image, and the default (the file's own when `own`)."""
    if kind == "CT":
        out = {"windows": [*CT_WINDOWS, "percentile"], "default_window": "soft_tissue"}
    elif kind == "volume":  # NIfTI has no modality; CT volumes are common
        out = {"windows": ["percentile", *CT_WINDOWS], "default_window": "percentile"}
    elif kind == "grey":
        out = {"windows": ["percentile"], "default_window": "percentile"}
    else:
        return {"windows": [], "default_window": None}  # 8-bit and colour images are shown as they are
    if own:
        out = {"windows": [FILE_WINDOW, *out["windows"]], "default_window": FILE_WINDOW}
    return out


# ----------------------------------------------------------------------------- rendering


def render(pixels: np.ndarray, window: dict | None) -> tuple[np.ndarray, dict | None]:
    """Map pixel values to uint8 RGB through window (percentile bounds are computed here).

    A window gives `level`/`width` or `low`/`high`. No window shows uint8 pixels as they are; other dtypes then
    get the percentile window.
    """
    if window is None and pixels.dtype != np.uint8:
        window = {"name": "percentile"}
    if window is None:
        grey = pixels
    else:
        if window["name"] == "percentile":
            values = pixels[np.isfinite(pixels)] if pixels.dtype.kind == "f" else pixels
            low, high = (float(v) for v in np.percentile(values, PERCENTILES)) if values.size else (0.0, 1.0)
            window = {"name": "percentile", "low": low, "high": high}
        elif "level" in window:
            low, high = window["level"] - window["width"] / 2, window["level"] + window["width"] / 2
        else:
            low, high = window["low"], window["high"]
        scaled = (pixels.astype(np.float32) - low) * np.float32(255.0 / max(high - low, 1e-6))
        grey = np.rint(np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255)).astype(np.uint8)
    rgb = grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb), window


def build(pixels: np.ndarray, window: dict | None, *, invert: bool = False,
          shown: tuple[np.ndarray, float, float] | None = None, **meta) -> Scan:
    """Finish a reader: own native-endian C-order pixels, the display image, and uniform meta keys.

    `shown` = (values, low, high) is what goes to the display, low → 0 and high → 255, when that is not the
    pixels through `window` (a VOI LUT's output); `window` then only describes it in the meta."""
    pixels = np.array(pixels, dtype=pixels.dtype.newbyteorder("="), order="C")
    if shown is None:
        display, window = render(pixels, window)
    else:
        values, low, high = shown
        display, _ = render(values, {"name": "output", "low": low, "high": high})
    if invert:
        display = 255 - display
    base = {
        "source_format": None, "modality": "OT", "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
        "bit_depth": pixels.dtype.itemsize * 8, "spacing": None, "window": window, "frame": 0, "n_frames": 1,
        "photometric": "RGB" if pixels.ndim == 3 else "MONOCHROME2",
    }  # fmt: skip
    return Scan(pixels, display, {**base, **meta})
