"""Scan intake: the single door through which every scan enters the product.

``read_scan`` turns an uploaded PNG/JPEG/TIFF/BMP, DICOM or NIfTI file into a :class:`Scan`:
the original pixel values of one 2D slice/frame, a uint8 RGB rendering for display and the
model, and a small JSON-serialisable ``meta`` dict built from a whitelist.

De-identification happens here: the format is detected from the content, the original file
name is only used to read the extension and never appears in messages or meta, and no DICOM
patient/study/series identifiers, dates, UIDs, private tags or EXIF data are kept.
The readers live beside it (`coreseg.scan_dicom`, `coreseg.scan_nifti`; shared parts in
`coreseg.scan_core`); this module reads PNG/JPEG/TIFF/BMP itself and is the only one callers import.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from coreseg.scan_core import (CT_WINDOWS, FILE_WINDOW, MAX_BYTES, PERCENTILES, CorruptFileError,
                               NoPixelDataError, Scan, ScanError, TooLargeError, UnsupportedFormatError, build,
                               check_bytes, check_pixels, from_png_bytes, pick, scan_identity, to_png_bytes,
                               window_spec, windows_for)
from coreseg.scan_dicom import dicom_info, is_raw_dicom, open_dicom, read_dicom
from coreseg.scan_nifti import GZIP_MAGIC, nifti_image, nifti_info, nifti_version, read_nifti, write_nifti_mask

__all__ = ["CT_WINDOWS", "FILE_WINDOW", "MAX_BYTES", "PERCENTILES", "CorruptFileError", "NoPixelDataError", "Scan",
           "ScanError", "TooLargeError", "UnsupportedFormatError", "from_png_bytes", "read_scan", "scan_identity",
           "scan_info", "to_png_bytes", "write_nifti_mask"]

Image.init()  # register all Pillow plugins so formats=_PIL_OPEN can name TIFF

_PIL_OPEN = ["PNG", "JPEG", "TIFF", "BMP"]  # Pillow plugins we accept (JPEG also yields MPO)
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
_EXT_KINDS = {
    ".dcm": "DICOM", ".dicom": "DICOM", ".ima": "DICOM",
    ".nii": "NIfTI", ".nii.gz": "NIfTI",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}  # fmt: skip
_SUPPORTED = "PNG, JPEG, TIFF, BMP, DICOM (.dcm) or NIfTI (.nii, .nii.gz)"


# ----------------------------------------------------------------------------- public API


def read_scan(
    source: str | os.PathLike | bytes,
    *,
    filename: str | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
    axis: int = 2,
    window: str | tuple[float, float] | None = None,
    max_pixels: int = 40_000_000,
    max_bytes: int = MAX_BYTES,
) -> Scan:
    """Read one 2D image from a path or bytes (``filename`` only hints the extension).

    frame: DICOM frame (default middle), NIfTI 4D volume (default 0) or image page (default 0).
    slice_index/axis: NIfTI slice (default middle) along RAS axis 0 sagittal, 1 coronal, 2 axial.
    window: a CT_WINDOWS name, "percentile", "file" (a DICOM's own window) or (level, width); default the
        DICOM's own window (Window Center/Width or VOI LUT) when it has one, else soft_tissue for CT,
        percentile for other DICOM/NIfTI and 16-bit/float images, none for 8-bit images.

    meta keys: source_format, modality, height, width, bit_depth, spacing ([row_mm, col_mm] or
    None), window, frame, n_frames, photometric; DICOM adds body_part, display_inverted; NIfTI adds
    slice, n_slices, axis, affine, volume_shape, canonical_shape, reorient, rot90.
    """
    data, ext = _load(source, filename, max_bytes)
    kind = _sniff(data, ext)
    if kind == "dicom":
        return read_dicom(data, frame, window, max_pixels)
    if kind == "nifti":
        return read_nifti(nifti_image(data, max_bytes), frame, slice_index, axis, window, max_pixels)
    return _read_image(data, frame, window, max_pixels)


def scan_info(source: str | os.PathLike | bytes, filename: str | None = None, *, max_bytes: int = MAX_BYTES) -> dict:
    """Cheap summary for UI controls (no pixel decoding, no identifiers).

    ``max_bytes`` bounds the file and what a .nii.gz unpacks to, as for ``read_scan`` (pass the app's limit).
    Keys: source_format, modality, n_frames, default_frame, windows (names accepted by
    ``read_scan``), default_window; 2D formats add height, width; NIfTI adds volume_shape,
    n_slices (per canonical axis), default_axis, default_slice (per axis).
    """
    data, ext = _load(source, filename, max_bytes)
    kind = _sniff(data, ext)
    if kind == "dicom":
        return dicom_info(open_dicom(data))
    if kind == "nifti":
        return nifti_info(nifti_image(data, max_bytes))
    return _image_info(_open_image(data))


# ----------------------------------------------------------------------------- input and detection


def _load(source, filename: str | None, max_bytes: int) -> tuple[bytes, str]:
    """Return the file's bytes and its lower-case extension, enforcing max_bytes before reading."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), filename or ""
    else:
        path = os.fspath(source)
        name = filename or path
        try:
            size = os.path.getsize(path)
            check_bytes(size, max_bytes)
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            raise ScanError("The uploaded file could not be read.") from None  # the path may hold a name
    check_bytes(len(data), max_bytes)
    name = os.path.basename(str(name)).lower()
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    return data, ext


def _sniff(data: bytes, ext: str) -> str:
    """Detect 'dicom', 'nifti' or 'image' from the content; the extension only breaks ties."""
    if not data:
        raise CorruptFileError("The uploaded file is empty.")
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:2] == GZIP_MAGIC or nifti_version(data):
        return "nifti"  # a gzip that holds no NIfTI is refused by _nifti_image
    if _open_image(data, strict=False) is not None:
        return "image"
    kind = _EXT_KINDS.get(ext)
    if kind == "DICOM" and is_raw_dicom(data):
        return "dicom"
    if kind is None:
        raise UnsupportedFormatError(f"The uploaded file is not a supported scan; upload {_SUPPORTED}.")
    why = {"DICOM": "no DICM header", "NIfTI": "no NIfTI header"}.get(kind, "it is damaged or truncated")
    raise CorruptFileError(f"The uploaded file is not a readable {kind} file ({why}).")


# ----------------------------------------------------------------------------- PNG / JPEG / TIFF / BMP


def _open_image(data: bytes, strict: bool = True) -> Image.Image | None:
    """Open (without decoding) a PNG/JPEG/TIFF/BMP; bomb-sized headers raise TooLargeError.

    strict=False returns None instead of raising when Pillow does not recognise the data.
    """
    try:
        return Image.open(io.BytesIO(data), formats=_PIL_OPEN)
    except Image.DecompressionBombError as e:
        count = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(count.group(1)):,} pixels" if count else "too many pixels"
        raise TooLargeError(f"The uploaded image has {size}; it is too large to open safely.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error):
        if strict:
            raise CorruptFileError("The uploaded image is damaged and could not be read.") from None
        return None


def _read_image(data: bytes, frame, window, max_pixels: int) -> Scan:
    """Read a Pillow-supported image: size-check the header, then decode one page; EXIF is dropped."""
    img = _open_image(data)
    source_format = _PIL_FORMATS[img.format]
    n_frames = getattr(img, "n_frames", 1)
    frame = pick(frame, n_frames, 0, "frame")
    try:
        img.seek(frame)
        check_pixels(img.width, img.height, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)  # upright as the camera meant; then only pixels are kept
        pixels = _image_pixels(img)
    except ScanError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error):
        raise CorruptFileError("The uploaded image is damaged or truncated.") from None
    bits = 1 if img.mode == "1" else pixels.dtype.itemsize * 8
    return build(pixels, window_spec(window, None), source_format=source_format,
                  bit_depth=bits, frame=frame, n_frames=n_frames)


def _image_info(img: Image.Image) -> dict:
    """scan_info for a Pillow image (header only)."""
    eight_bit = not (img.mode.startswith("I") or img.mode == "F")
    return {"source_format": _PIL_FORMATS[img.format], "modality": "OT", "height": img.height,
            "width": img.width, "n_frames": getattr(img, "n_frames", 1), "default_frame": 0,
            **windows_for("8bit" if eight_bit else "grey")}


def _image_pixels(img: Image.Image) -> np.ndarray:
    """Pillow image → grey uint8/uint16/int32/float32 or uint8 RGB; alpha is composited on black."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":
        a = np.asarray(img)
        return a.astype(np.uint16) if a.size and 0 <= a.min() and a.max() <= 65535 else a
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"))
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in img.info):
        grey = mode in ("LA", "La")
        a = np.asarray(img.convert("LA" if grey else "RGBA")).astype(np.uint16)
        out = ((a[..., :-1] * a[..., -1:] + 127) // 255).astype(np.uint8)
        return out[..., 0] if grey else out
    return np.asarray(img.convert("RGB"))
