"""Scan intake: the single door through which every scan enters the product.

``read_scan`` turns an uploaded PNG/JPEG/TIFF/BMP, DICOM or NIfTI file into a :class:`Scan`:
the original pixel values of one 2D slice/frame, a uint8 RGB rendering for display and the
model, and a small JSON-serialisable ``meta`` dict built from a whitelist.

De-identification happens here: the format is detected from the content, the original file
name is only used to read the extension and never appears in messages or meta, and no DICOM
patient/study/series identifiers, dates, UIDs, private tags or EXIF data are kept.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import struct
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pydicom
import pydicom.config
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

Image.init()  # register all Pillow plugins so formats=_PIL_OPEN can name TIFF
# DICOM validation warnings quote header values (names, dates); keep them out of the logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


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
MAX_BYTES = 512 * 1024 * 1024  # default upload limit (also for gunzipped NIfTI)
PERCENTILES = (0.5, 99.5)  # display clip for MR, 16-bit/float images and NIfTI

_PIL_OPEN = ["PNG", "JPEG", "TIFF", "BMP"]  # Pillow plugins we accept (JPEG also yields MPO)
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff", "BMP": "bmp"}
_EXT_KINDS = {
    ".dcm": "DICOM", ".dicom": "DICOM", ".ima": "DICOM",
    ".nii": "NIfTI", ".nii.gz": "NIfTI",
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}  # fmt: skip
_SUPPORTED = "PNG, JPEG, TIFF, BMP, DICOM (.dcm) or NIfTI (.nii, .nii.gz)"
_GZIP_MAGIC = b"\x1f\x8b"
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CS = re.compile(r"[A-Z0-9 _]{1,16}")  # DICOM code string: no free text slips through
_RAS = np.array([[0, 1], [1, 1], [2, 1]], float)  # nibabel orientation of a canonical (RAS) array


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
        """sha256 over dtype, shape and C-order pixel bytes: the storage key."""
        a = np.ascontiguousarray(self.pixels)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()


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
    window: a CT_WINDOWS name, "percentile", or (level, width); default soft_tissue for CT,
        percentile for other DICOM/NIfTI and 16-bit/float images, none for 8-bit images.

    meta keys: source_format, modality, height, width, bit_depth, spacing ([row_mm, col_mm] or
    None), window, frame, n_frames, photometric; DICOM adds body_part, display_inverted; NIfTI adds
    slice, n_slices, axis, affine, volume_shape, canonical_shape, reorient, rot90.
    """
    data, ext = _load(source, filename, max_bytes)
    kind = _sniff(data, ext)
    if kind == "dicom":
        return _read_dicom(data, frame, window, max_pixels)
    if kind == "nifti":
        return _read_nifti(_nifti_image(data, max_bytes), frame, slice_index, axis, window, max_pixels)
    return _read_image(data, frame, window, max_pixels)


def scan_info(source: str | os.PathLike | bytes, filename: str | None = None) -> dict:
    """Cheap summary for UI controls (no pixel decoding, no identifiers).

    Keys: source_format, modality, n_frames, default_frame, windows (names accepted by
    ``read_scan``), default_window; 2D formats add height, width; NIfTI adds volume_shape,
    n_slices (per canonical axis), default_axis, default_slice (per axis).
    """
    data, ext = _load(source, filename, MAX_BYTES)
    kind = _sniff(data, ext)
    if kind == "dicom":
        return _dicom_info(_open_dicom(data))
    if kind == "nifti":
        return _nifti_info(_nifti_image(data, MAX_BYTES))
    return _image_info(_open_image(data))


def write_nifti_mask(mask: np.ndarray, meta: dict, path: str | os.PathLike) -> None:
    """Write a 2D mask (as shown by ``read_scan``) into a uint8 label volume with the source geometry.

    The volume has the source's spatial shape (the 3D part of a 4D source) and affine; the mask is
    placed at meta's slice/axis after undoing the display rotation and the RAS reorientation.
    ``path`` must end in .nii or .nii.gz.
    """
    if meta.get("source_format") != "nifti":
        raise ScanError("A mask can only be written back into a NIfTI volume; this scan is not NIfTI.")
    m = _mask_uint8(mask)
    if m.shape != (meta["height"], meta["width"]):
        raise ValueError(f"mask shape {m.shape} does not match the slice ({meta['height']}, {meta['width']})")
    canonical = np.zeros(meta["canonical_shape"], np.uint8)
    index = [slice(None)] * 3
    index[meta["axis"]] = meta["slice"]
    canonical[tuple(index)] = np.rot90(m, -meta["rot90"])
    to_source = nib.orientations.ornt_transform(_RAS, np.asarray(meta["reorient"], float))
    volume = nib.orientations.apply_orientation(canonical, to_source)
    volume = np.ascontiguousarray(volume).reshape(_spatial_shape(meta["volume_shape"]))
    img = nib.Nifti1Image(volume, np.asarray(meta["affine"], float))
    img.set_data_dtype(np.uint8)
    img.header.set_intent("label")
    nib.save(img, os.fspath(path))


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
            _check_bytes(size, max_bytes)
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            raise ScanError("The uploaded file could not be read.") from None  # the path may hold a name
    _check_bytes(len(data), max_bytes)
    name = os.path.basename(str(name)).lower()
    ext = ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]
    return data, ext


def _sniff(data: bytes, ext: str) -> str:
    """Detect 'dicom', 'nifti' or 'image' from the content; the extension only breaks ties."""
    if not data:
        raise CorruptFileError("The uploaded file is empty.")
    if data[128:132] == b"DICM":
        return "dicom"
    if data[:2] == _GZIP_MAGIC or _nifti_version(data):
        return "nifti"  # a gzip that holds no NIfTI is refused by _nifti_image
    if _open_image(data, strict=False) is not None:
        return "image"
    kind = _EXT_KINDS.get(ext)
    if kind == "DICOM" and _is_raw_dicom(data):
        return "dicom"
    if kind is None:
        raise UnsupportedFormatError(f"The uploaded file is not a supported scan; upload {_SUPPORTED}.")
    why = {"DICOM": "no DICM header", "NIfTI": "no NIfTI header"}.get(kind, "it is damaged or truncated")
    raise CorruptFileError(f"The uploaded file is not a readable {kind} file ({why}).")


def _is_raw_dicom(data: bytes) -> bool:
    """Accept a DICOM dataset without preamble only if it parses to a real header (SOP class or image size)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # any parse failure means "not DICOM"
        return False


# ----------------------------------------------------------------------------- shared helpers


def _size_text(n: int) -> str:
    return f"{n / 2**20:,.1f} MB" if n >= 2**20 else f"{n:,} bytes"


def _check_bytes(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLargeError(f"The uploaded file is {_size_text(size)}; the limit is {_size_text(max_bytes)}.")


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLargeError(
            f"The uploaded image is {width} × {height} pixels; the limit is {max_pixels:,} pixels."
        )


def _pick(index: int | None, count: int, default: int, what: str) -> int:
    """Validate a frame/slice index against count; None means default."""
    if index is None:
        return default
    index = int(index)
    if not 0 <= index < count:
        raise ScanError(
            f"{what.capitalize()} {index} is out of range; this scan has {count} {what}s (0–{count - 1})."
        )
    return index


def _window_spec(window, default) -> dict | None:
    """Turn a window choice (preset name, 'percentile', (level, width) or None) into meta form."""
    window = default if window is None else window
    if window is None:
        return None
    if isinstance(window, str):
        if window == "percentile":
            return {"name": "percentile"}
        if window not in CT_WINDOWS:
            raise ScanError(f"Unknown window '{window}'; choose one of {', '.join(CT_WINDOWS)} or percentile.")
        level, width = CT_WINDOWS[window]
        return {"name": window, "level": float(level), "width": float(width)}
    level, width = (float(v) for v in window)
    if not width > 0:
        raise ScanError("The window width must be positive.")
    return {"name": "custom", "level": level, "width": width}


def _windows_for(kind: str) -> dict:
    """Window names the UI should offer for a kind of image, and the default."""
    if kind == "CT":
        return {"windows": [*CT_WINDOWS, "percentile"], "default_window": "soft_tissue"}
    if kind == "volume":  # NIfTI has no modality; CT volumes are common
        return {"windows": ["percentile", *CT_WINDOWS], "default_window": "percentile"}
    if kind == "grey":
        return {"windows": ["percentile"], "default_window": "percentile"}
    return {"windows": [], "default_window": None}  # 8-bit and colour images are shown as they are


def _render(pixels: np.ndarray, window: dict | None) -> tuple[np.ndarray, dict | None]:
    """Map pixel values to uint8 RGB through window (percentile bounds are computed here).

    No window shows uint8 pixels as they are; other dtypes then get the percentile window.
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
        else:
            low, high = window["level"] - window["width"] / 2, window["level"] + window["width"] / 2
        scaled = (pixels.astype(np.float32) - low) * np.float32(255.0 / max(high - low, 1e-6))
        grey = np.rint(np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255)).astype(np.uint8)
    rgb = grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb), window


def _build(pixels: np.ndarray, window: dict | None, *, invert: bool = False, **meta) -> Scan:
    """Finish a reader: own native-endian C-order pixels, the display image, and uniform meta keys."""
    pixels = np.array(pixels, dtype=pixels.dtype.newbyteorder("="), order="C")
    display, window = _render(pixels, window)
    if invert:
        display = 255 - display
    base = {
        "source_format": None, "modality": "OT", "height": int(pixels.shape[0]), "width": int(pixels.shape[1]),
        "bit_depth": pixels.dtype.itemsize * 8, "spacing": None, "window": window, "frame": 0, "n_frames": 1,
        "photometric": "RGB" if pixels.ndim == 3 else "MONOCHROME2",
    }  # fmt: skip
    return Scan(pixels, display, {**base, **meta})


def _mask_uint8(mask: np.ndarray) -> np.ndarray:
    """A 2D bool/integer label mask as uint8 (values must fit 0–255)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if m.dtype != bool and m.size and (m.min() < 0 or m.max() > 255 or not np.array_equal(m, np.round(m))):
        raise ValueError("mask values must be integers in 0–255")
    return m.astype(np.uint8)


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
    frame = _pick(frame, n_frames, 0, "frame")
    try:
        img.seek(frame)
        _check_pixels(img.width, img.height, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)  # upright as the camera meant; then only pixels are kept
        pixels = _image_pixels(img)
    except ScanError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error):
        raise CorruptFileError("The uploaded image is damaged or truncated.") from None
    bits = 1 if img.mode == "1" else pixels.dtype.itemsize * 8
    return _build(pixels, _window_spec(window, None), source_format=source_format,
                  bit_depth=bits, frame=frame, n_frames=n_frames)


def _image_info(img: Image.Image) -> dict:
    """scan_info for a Pillow image (header only)."""
    eight_bit = not (img.mode.startswith("I") or img.mode == "F")
    return {"source_format": _PIL_FORMATS[img.format], "modality": "OT", "height": img.height,
            "width": img.width, "n_frames": getattr(img, "n_frames", 1), "default_frame": 0,
            **_windows_for("8bit" if eight_bit else "grey")}


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


# ----------------------------------------------------------------------------- DICOM


def _open_dicom(data: bytes) -> pydicom.Dataset:
    """Parse a DICOM dataset (pixels stay encoded) and refuse objects that are not images."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
        sop_class = str(ds.get("SOPClassUID") or _file_meta(ds, "MediaStorageSOPClassUID") or "")
    except Exception:  # pydicom raises many types on damaged headers
        raise CorruptFileError("The uploaded DICOM file is damaged and could not be read.") from None
    if ds.get("Modality") == "SEG" or sop_class == _SEG_SOP_CLASS:
        raise UnsupportedFormatError(
            "DICOM-SEG holds a segmentation, not an image; upload the image series it refers to."
        )
    if sop_class == _DICOMDIR_SOP_CLASS:
        raise UnsupportedFormatError(
            "The uploaded file is a DICOMDIR (a disc index); upload one of the images it lists."
        )
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise NoPixelDataError("The uploaded DICOM file holds no image (no pixel data); it may be a report or plan.")
    return ds


def _file_meta(ds: pydicom.Dataset, keyword: str):
    """A File Meta Information value (group 0002), None when absent."""
    file_meta = getattr(ds, "file_meta", None)
    return file_meta.get(keyword) if file_meta is not None else None


def _n_frames(ds: pydicom.Dataset) -> int:
    return max(int(ds.get("NumberOfFrames") or 1), 1)


def _code_string(value) -> str | None:
    """A DICOM code string (Modality, BodyPartExamined) if it looks like one; never free text."""
    text = str(value or "").strip().upper()
    return text if _CS.fullmatch(text) else None


def _dicom_value(ds: pydicom.Dataset, keyword: str, frame: int):
    """An attribute from the top level, else the frame's or the shared functional groups (enhanced DICOM)."""
    if keyword in ds:
        return ds[keyword].value
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups) or []
        if index < len(items):
            for element in items[index]:
                if element.VR == "SQ" and element.value and keyword in element.value[0]:
                    return element.value[0][keyword].value
    return None


def _rescale(arr: np.ndarray, ds: pydicom.Dataset, frame: int) -> np.ndarray:
    """Stored values → modality values (HU for CT); integral results keep an integer dtype."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(arr, ds)
    slope = float(_dicom_value(ds, "RescaleSlope", frame) or 1.0)
    intercept = float(_dicom_value(ds, "RescaleIntercept", frame) or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return arr
    out = arr.astype(np.float64) * slope + intercept
    if slope.is_integer() and intercept.is_integer() and out.size:
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= out.min() and out.max() <= info.max:
                return out.astype(dtype)
    return out.astype(np.float32)


def _dicom_info(ds: pydicom.Dataset) -> dict:
    """scan_info for a parsed DICOM dataset (pixels not decoded)."""
    n_frames, modality = _n_frames(ds), _code_string(ds.get("Modality")) or "OT"
    colour = int(ds.get("SamplesPerPixel") or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    kind = "colour" if colour else "CT" if modality == "CT" else "grey"
    return {"source_format": "dicom", "modality": modality, "height": int(ds.get("Rows") or 0),
            "width": int(ds.get("Columns") or 0), "n_frames": n_frames, "default_frame": n_frames // 2,
            **_windows_for(kind)}


def _read_dicom(data: bytes, frame, window, max_pixels: int) -> Scan:
    """Decode one DICOM frame: rescale to modality values, colour to RGB, window for display."""
    ds = _open_dicom(data)
    _check_pixels(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0), max_pixels)
    n_frames = _n_frames(ds)
    frame = _pick(frame, n_frames, n_frames // 2, "frame")
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip()
    try:
        arr = pixel_array(ds, index=frame)  # YBR is converted to RGB by pydicom
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
            arr = (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else arr  # 16-bit LUT entries
    except Exception:  # decoder plugins raise many types
        name = getattr(_file_meta(ds, "TransferSyntaxUID"), "name", "unknown")
        raise CorruptFileError(
            f"The uploaded DICOM image could not be decoded (transfer syntax: {name}); "
            "it may be damaged or use an unsupported compression."
        ) from None
    colour = arr.ndim == 3
    arr = arr if colour else _rescale(arr, ds, frame)
    modality = _code_string(ds.get("Modality")) or "OT"
    default = None if colour else "soft_tissue" if modality == "CT" else "percentile"
    spacing = _dicom_value(ds, "PixelSpacing", frame) or _dicom_value(ds, "ImagerPixelSpacing", frame)
    return _build(
        arr, _window_spec(window, default), invert=photometric == "MONOCHROME1",
        source_format="dicom", modality=modality, body_part=_code_string(ds.get("BodyPartExamined")),
        bit_depth=int(ds.get("BitsStored") or arr.dtype.itemsize * 8),
        spacing=[float(v) for v in spacing] if spacing and len(spacing) == 2 else None,
        frame=frame, n_frames=n_frames, photometric="RGB" if colour else photometric,
        display_inverted=photometric == "MONOCHROME1",
    )  # fmt: skip


# ----------------------------------------------------------------------------- NIfTI


def _nifti_version(data: bytes) -> int:
    """1 or 2 when data starts with a single-file NIfTI header (either byte order), else 0."""
    if len(data) < 348:
        return 0
    sizes = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    if 348 in sizes and data[344:347] == b"n+1":
        return 1
    if 540 in sizes and data[4:7] == b"n+2":
        return 2
    return 0


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress at most max_bytes (a gzip bomb stops there with TooLargeError)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            out = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error):
        raise CorruptFileError("The uploaded file is a damaged gzip archive.") from None
    if len(out) > max_bytes:
        raise TooLargeError(f"The uploaded file unpacks to more than {_size_text(max_bytes)}, the limit.")
    return out


def _nifti_image(data: bytes, max_bytes: int) -> nib.Nifti1Image:
    """A lazily loaded NIfTI-1/2 image from .nii or .nii.gz bytes."""
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, max_bytes)
    version = _nifti_version(data)
    if not version:
        raise UnsupportedFormatError(f"The uploaded compressed file holds no NIfTI image; upload {_SUPPORTED}.")
    try:
        img = (nib.Nifti1Image if version == 1 else nib.Nifti2Image).from_bytes(data)
    except Exception:  # nibabel raises many types on damaged headers
        raise CorruptFileError("The uploaded NIfTI file is damaged and could not be read.") from None
    if not 2 <= len(img.shape) <= 4:
        raise UnsupportedFormatError(
            f"The uploaded NIfTI image has {len(img.shape)} dimensions; 2D, 3D and 4D images are supported."
        )
    dtype = img.get_data_dtype()
    if dtype.names or dtype.kind not in "uif":
        raise UnsupportedFormatError(f"The uploaded NIfTI image has {dtype} voxels; only real numbers are supported.")
    return img


def _spatial_shape(shape) -> tuple[int, ...]:
    """The spatial part of a NIfTI shape: the first three dims (two for a 2D image)."""
    return tuple(int(n) for n in shape[:3])


def _nifti_geometry(img: nib.Nifti1Image) -> dict:
    """How the source volume maps to canonical RAS: orientation, shapes and affines."""
    spatial = _spatial_shape(img.shape)
    spatial3 = spatial + (1,) * (3 - len(spatial))
    ornt = nib.io_orientation(img.affine)
    if np.isnan(ornt).any():  # degenerate affine: keep the array as stored
        ornt = _RAS.copy()
    canonical_shape = [0, 0, 0]
    for source_axis, (target_axis, _) in enumerate(ornt):
        canonical_shape[int(target_axis)] = spatial3[source_axis]
    canonical_affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, spatial3)
    return {
        "volume_shape": [int(n) for n in img.shape], "spatial3": spatial3, "reorient": ornt,
        "canonical_shape": canonical_shape, "zooms": np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0)),
        "n_frames": int(img.shape[3]) if len(img.shape) == 4 else 1,
    }  # fmt: skip


def _nifti_info(img: nib.Nifti1Image) -> dict:
    """scan_info for a NIfTI image (header only)."""
    geo = _nifti_geometry(img)
    n_slices = list(geo["canonical_shape"])
    return {"source_format": "nifti", "modality": "OT", "volume_shape": geo["volume_shape"],
            "n_frames": geo["n_frames"], "default_frame": 0, "n_slices": n_slices, "default_axis": 2,
            "default_slice": [n // 2 for n in n_slices], **_windows_for("volume")}


def _read_nifti(img: nib.Nifti1Image, frame, slice_index, axis: int, window, max_pixels: int) -> Scan:
    """Reorient to RAS, take one slice along axis and rotate it upright (recorded for write-back)."""
    if axis not in (0, 1, 2):
        raise ScanError("The slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial).")
    geo = _nifti_geometry(img)
    frame = _pick(frame, geo["n_frames"], 0, "frame")
    n_slices = geo["canonical_shape"][axis]
    slice_index = _pick(slice_index, n_slices, n_slices // 2, "slice")
    a, b = (i for i in range(3) if i != axis)  # slice array is [a, b]; after rot90 rows ~ b, cols ~ a
    _check_pixels(geo["canonical_shape"][a], geo["canonical_shape"][b], max_pixels)
    try:
        volume = np.asanyarray(img.dataobj[..., frame] if img.ndim == 4 else img.dataobj)
    except Exception:  # truncated or damaged voxel data
        raise CorruptFileError("The uploaded NIfTI file is damaged or truncated.") from None
    canonical = nib.orientations.apply_orientation(volume.reshape(geo["spatial3"]), geo["reorient"])
    pixels = np.rot90(np.take(canonical, slice_index, axis=axis))
    if pixels.dtype == np.float64:
        pixels = pixels.astype(np.float32)
    zooms = geo["zooms"]
    return _build(
        pixels, _window_spec(window, "percentile"), source_format="nifti",
        bit_depth=img.get_data_dtype().itemsize * 8, spacing=[float(zooms[b]), float(zooms[a])],
        frame=frame, n_frames=geo["n_frames"], slice=slice_index, n_slices=n_slices, axis=axis,
        affine=img.affine.tolist(), volume_shape=geo["volume_shape"], canonical_shape=geo["canonical_shape"],
        reorient=geo["reorient"].astype(int).tolist(), rot90=1,
    )  # fmt: skip
