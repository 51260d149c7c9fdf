"""DICOM intake: one frame, rescaled to modality values (HU for CT), colour to RGB, shown through the file's own
display window (Window Center/Width or a VOI LUT, applied by pydicom's `apply_voi_lut`) when it has one, else
a CT preset or the percentile window. Only whitelisted, code-string values reach the meta.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pydicom
import pydicom.config
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from coreseg.scan_core import (FILE_WINDOW, CorruptFileError, NoPixelDataError, Scan, UnsupportedFormatError,
                               build, check_pixels, pick, window_spec, windows_for)

# DICOM validation warnings quote header values (names, dates); keep them out of the logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CS = re.compile(r"[A-Z0-9 _]{1,16}")  # DICOM code string: no free text slips through


def is_raw_dicom(data: bytes) -> bool:
    """Accept a DICOM dataset without preamble only if it parses to a real header (SOP class or image size)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # any parse failure means "not DICOM"
        return False


def open_dicom(data: bytes) -> pydicom.Dataset:
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


def _first(value) -> float | None:
    """The first of a multi-valued DS (Window Center/Width may list several views), None when unusable."""
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _has_voi(ds: pydicom.Dataset) -> bool:
    """A usable top-level VOI LUT or Window Center/Width (what `apply_voi_lut` applies)."""
    lut = (ds.get("VOILUTSequence") or [None])[0]
    if lut is not None and lut.get("LUTDescriptor") is not None and lut.get("LUTData") is not None:
        return True
    width = _first(ds.get("WindowWidth"))
    return _first(ds.get("WindowCenter")) is not None and width is not None and width >= 1


def _own_window(ds: pydicom.Dataset, values: np.ndarray, frame: int):
    """The file's own window as (meta window, None or (VOI output, its low, its high)), None when it has none.

    A top-level VOI LUT or Window Center/Width goes through `apply_voi_lut` (LINEAR, LINEAR_EXACT, SIGMOID or
    the LUT), its output range mapped to 0–255; an enhanced file's per-frame window is applied as a level/width.
    """
    if _has_voi(ds):
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                shown = apply_voi_lut(values, ds, index=0)
                lut = (ds.get("VOILUTSequence") or [None])[0]
                if lut is not None and lut.get("LUTData") is not None:
                    entries, first = int(lut.LUTDescriptor[0]) or 65536, int(lut.LUTDescriptor[1])
                    every = apply_voi_lut(np.arange(first, first + entries), ds, index=0)  # the LUT's outputs
                    low, high = float(np.min(every)), float(np.max(every))
                    spec = {"name": FILE_WINDOW, "voi_lut": True}
                else:
                    low, high = (float(v) for v in apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0))
                    spec = {"name": FILE_WINDOW, "level": _first(ds.WindowCenter), "width": _first(ds.WindowWidth),
                            "function": str(ds.get("VOILUTFunction") or "LINEAR").upper()}
        except (ValueError, TypeError, AttributeError, IndexError):  # an inconsistent VOI module: not usable
            return None
        if not np.isfinite([low, high]).all() or high <= low:
            return None
        return spec, (np.asarray(shown, dtype=np.float64), low, high)
    center, width = (_first(_dicom_value(ds, k, frame)) for k in ("WindowCenter", "WindowWidth"))
    if center is None or width is None or not width > 0:
        return None
    return {"name": FILE_WINDOW, "level": center, "width": width}, None


def dicom_info(ds: pydicom.Dataset) -> dict:
    """scan_info for a parsed DICOM dataset (pixels not decoded)."""
    n_frames, modality = _n_frames(ds), _code_string(ds.get("Modality")) or "OT"
    colour = int(ds.get("SamplesPerPixel") or 1) > 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    kind = "colour" if colour else "CT" if modality == "CT" else "grey"
    frame = n_frames // 2
    own = not colour and (_has_voi(ds) or None not in (_first(_dicom_value(ds, "WindowCenter", frame)),
                                                       _first(_dicom_value(ds, "WindowWidth", frame))))
    return {"source_format": "dicom", "modality": modality, "height": int(ds.get("Rows") or 0),
            "width": int(ds.get("Columns") or 0), "n_frames": n_frames, "default_frame": frame,
            **windows_for(kind, own=own)}


def read_dicom(data: bytes, frame, window, max_pixels: int) -> Scan:
    """Decode one DICOM frame: rescale to modality values, colour to RGB, window for display."""
    ds = open_dicom(data)
    check_pixels(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0), max_pixels)
    n_frames = _n_frames(ds)
    frame = pick(frame, n_frames, n_frames // 2, "frame")
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
    own = None if colour else _own_window(ds, arr, frame)
    shown = None
    if own is not None and window in (None, FILE_WINDOW):
        spec, shown = own
    else:
        default = None if colour else "soft_tissue" if modality == "CT" else "percentile"
        spec = window_spec(window, default)
    spacing = _dicom_value(ds, "PixelSpacing", frame) or _dicom_value(ds, "ImagerPixelSpacing", frame)
    return build(
        arr, spec, invert=photometric == "MONOCHROME1", shown=shown,
        source_format="dicom", modality=modality, body_part=_code_string(ds.get("BodyPartExamined")),
        bit_depth=int(ds.get("BitsStored") or arr.dtype.itemsize * 8),
        spacing=[float(v) for v in spacing] if spacing and len(spacing) == 2 else None,
        frame=frame, n_frames=n_frames, photometric="RGB" if colour else photometric,
        display_inverted=photometric == "MONOCHROME1",
    )  # fmt: skip
