"""Checks and conversions every write goes through before it opens a transaction (no database access here)."""
from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from annotation.db import FeedbackError

_IDENTIFIER_KEYS = ("patient", "birth", "accession", "institution", "physician", "operator", "referring",
                    "instanceuid", "studyid", "filename", "filepath", "path", "station", "address", "ipaddress",
                    "deviceserial", "otherpatient", "ethnic")


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, tuples, paths, dates."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (Path, date, datetime)):
        return str(value)
    return value


def aware(moment: datetime) -> datetime:
    """A naive datetime is read as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def deidentify(meta: dict) -> dict:
    """Drop any key that names a person, a place, an accession or a file (defence in depth behind scan_io)."""
    clean = {}
    for key, value in meta.items():
        flat = str(key).lower().replace("_", "").replace(" ", "").replace("-", "")
        if any(word in flat for word in _IDENTIFIER_KEYS):
            continue
        clean[str(key)] = deidentify(value) if isinstance(value, dict) else value
    return clean


def as_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise FeedbackError(f"{what} must be an integer, got {value!r}")
    return int(value)


def as_id(value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return as_int(value, what)


def check_mask(mask: Any, height: int, width: int, what: str) -> np.ndarray:
    """A bool H×W mask, or a clear error: wrong size, wrong dimensionality, values other than 0/1 (or 0/255)."""
    if mask is None:
        raise FeedbackError(f"{what} is missing")
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise FeedbackError(f"{what} must be a 2-D height × width array, got shape {array.shape}")
    if array.shape != (height, width):
        raise FeedbackError(f"{what} is {array.shape[0]}×{array.shape[1]} (height × width) but the scan is "
                            f"{height}×{width}; masks must match the image exactly (nothing is resized)")
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise FeedbackError(f"{what} must be boolean or integer 0/1 (or 0/255), got dtype {array.dtype}")
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}):
        raise FeedbackError(f"{what} holds values {values[:6].tolist()}…; a mask holds only 0/1 (or 0/255)")
    return array > 0


def payload_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
