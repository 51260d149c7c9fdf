"""Uploads and open scans: the private temporary folder, reading an upload exactly once, decoding it through
`coreseg.scan_io` into a session, other slices/frames/windows, and the lines the page shows about a scan.

Raw uploads (a DICOM may hold a patient's name) never outlive the request that reads them: the file is deleted
whatever happens next (bad options, a bad file, a model failure), and a folder left by a killed process is
emptied at the next start-up. Gradio names an upload by its content, so two people sending the same file at
once share one path: the bytes read by the first are kept in memory for a short while for the second.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from coreseg.config import ASSETS_DIR, AppConfig
from coreseg.scan_io import CT_WINDOWS, ScanError, read_scan, scan_info
from studio.inputs import StudioError, window_spec
from studio.session import Session

log = logging.getLogger("coreseg.studio")

EXAMPLES_DIR = ASSETS_DIR / "examples"
OWNER_FILE = ".owner"
RECENT_UPLOAD_S = 120.0          # how long a read upload's bytes serve a second reader of the same path
RECENT_UPLOAD_BYTES = 64 * 2**20


def private_temp_dir(config: AppConfig) -> Path:
    """A folder only this user can read, inside `config.temp_dir` (which may be a shared one such as /tmp):
    Gradio's uploads and outputs and the exports go there."""
    folder = Path(config.temp_dir).resolve() / "coreseg-private"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(folder: Path) -> int:
    """At start-up: delete everything a process that is gone left in the private folder (uploads, outputs,
    export zips), then mark the folder as this process's. A folder held by another live process is left alone.
    Returns how many files were deleted."""
    marker = folder / OWNER_FILE
    try:
        owner = int(marker.read_text().strip())
    except (OSError, ValueError):
        owner = None
    if owner is not None and owner != os.getpid() and _alive(owner):
        log.warning("the private temporary folder is in use by another running app; not cleaning it")
        return 0
    removed = 0
    if owner != os.getpid():
        for entry in folder.iterdir():
            if entry.name == OWNER_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                removed += sum(1 for p in entry.rglob("*") if p.is_file())
                shutil.rmtree(entry, ignore_errors=True)
            else:
                removed += 1
                entry.unlink(missing_ok=True)
    marker.write_text(str(os.getpid()))
    if removed:
        log.info("removed %d files left in the private temporary folder by an earlier run", removed)
    return removed


class UploadReader:
    """Reads uploads once and deletes them; keeps the bytes of recently read paths briefly (bounded) so that a
    second person who uploaded the same file at the same moment (same content-named path) still gets it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._recent: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        total = sum(len(b) for _, b in self._recent.values())
        while self._recent:
            key, (at, data) = next(iter(self._recent.items()))
            if now - at <= RECENT_UPLOAD_S and total <= RECENT_UPLOAD_BYTES:
                break
            total -= len(data)
            del self._recent[key]

    def read(self, path: str | os.PathLike, delete: bool = True) -> tuple[bytes, str]:
        """The upload's bytes and extension (never its name); the file is deleted (when `delete`) on every path."""
        path = Path(path)
        name = path.name.lower()
        ext = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
        key = str(path)
        try:
            with self._lock:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    self._prune(time.monotonic())
                    recent = self._recent.get(key)
                    if recent is None:
                        raise StudioError("The uploaded file could not be read; upload it again.") from None
                    return recent[1], ext
                if size > self.max_bytes:
                    raise StudioError(f"The file is {size / 2**20:,.1f} MB; the limit is "
                                      f"{self.max_bytes / 2**20:,.0f} MB.")
                try:
                    data = path.read_bytes()
                except OSError:
                    raise StudioError("The uploaded file could not be read; upload it again.") from None
                if delete and len(data) <= RECENT_UPLOAD_BYTES:
                    now = time.monotonic()
                    self._recent[key] = (now, data)
                    self._recent.move_to_end(key)
                    self._prune(now)
            return data, ext
        finally:
            if delete:
                discard_upload(path)


def discard_upload(path: str | os.PathLike | None) -> None:
    """Delete an upload from Gradio's private temporary folder (and its now empty folder); never raises."""
    if not path:
        return
    try:
        folder = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()).resolve()
        resolved = Path(path).resolve()
        if folder in resolved.parents:
            resolved.unlink(missing_ok=True)
            parent = resolved.parent
            if parent != folder and not any(parent.iterdir()):
                parent.rmdir()
    except OSError:
        pass


def decode(config: AppConfig, data: bytes, ext: str, frame=None, slice_index=None, axis=2, window=None):
    """Bytes → (Scan, scan_info) with the configured limits; every failure is a StudioError with scan_io's text."""
    name = f"upload{ext}"
    try:
        info = scan_info(data, filename=name)
        scan = read_scan(data, filename=name, frame=None if frame is None else int(frame),
                         slice_index=None if slice_index is None else int(slice_index), axis=int(axis or 0),
                         window=window, max_pixels=config.max_pixels, max_bytes=config.max_upload_bytes)
    except ScanError as exc:
        raise StudioError(str(exc)) from None
    except (TypeError, ValueError, OverflowError):
        raise StudioError("frame, slice and axis must be whole numbers") from None
    except MemoryError:
        raise StudioError("The scan is too large to open on this server.") from None
    return scan, info


def open_into(config: AppConfig, reader: UploadReader, session: Session, source, *, filename: str | None = None,
              delete_upload: bool = True, frame=None, slice_index=None, axis=2, window=None, level=None,
              width=None, keep_bytes: bool = True) -> Session:
    """Read an upload (path or bytes) into the session: de-identified slice, display image, controls info.
    `keep_bytes` keeps the file in memory for other slices/windows (the page); API sessions do not."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        ext = Path(filename or "").suffix.lower() if filename else ""
        if filename and filename.lower().endswith(".nii.gz"):
            ext = ".nii.gz"
        if len(data) > config.max_upload_bytes:
            raise StudioError(f"The file is {len(data) / 2**20:,.1f} MB; the limit is "
                              f"{config.max_upload_bytes / 2**20:,.0f} MB.")
    else:
        data, ext = reader.read(source, delete_upload)
    scan, info = decode(config, data, ext, frame, slice_index, axis, window_spec(window, level, width))
    session.clear()
    session.scan_bytes = data if keep_bytes else None
    session.scan_ext, session.scan, session.info = ext, scan, info
    return session


def reslice(config: AppConfig, session: Session, *, frame=None, slice_index=None, axis=2, window=None, level=None,
            width=None) -> Session:
    """Show another frame, slice, axis or window of the open scan (a new case: candidates are cleared)."""
    if session.scan_bytes is None:
        raise StudioError("Open a scan first.")
    scan, info = decode(config, session.scan_bytes, session.scan_ext, frame, slice_index, axis,
                        window_spec(window, level, width))
    session.new_case()
    session.scan, session.info = scan, info
    return session


def modality_of(session: Session) -> str:
    meta = getattr(session.scan, "meta", None) or {}
    return str(meta.get("modality") or "OT")


def suggested_questions(modality: str | None) -> list[str]:
    from coreseg.questions import suggested_questions as suggest

    return suggest(modality)


def window_choices(session: Session) -> list[str]:
    windows = list(session.info.get("windows") or [])
    return windows + (["custom"] if any(w in CT_WINDOWS or w == "percentile" for w in windows) else [])


def scan_summary(session: Session) -> str:
    """A line about the open scan for the page (no identifiers: only what scan_io's meta whitelists)."""
    if session.scan is None:
        return "No scan open."
    meta = session.scan.meta
    parts = [f"{(meta.get('source_format') or '').upper()}", f"modality {meta.get('modality')}",
             f"{meta['height']}×{meta['width']} px"]
    if meta.get("n_frames", 1) > 1:
        parts.append(f"frame {meta.get('frame')} of {meta['n_frames']}")
    if meta.get("n_slices"):
        count = meta["n_slices"]
        count = count[meta["axis"]] if isinstance(count, (list, tuple)) else count
        parts.append(f"slice {meta.get('slice')} of {count} (axis {meta['axis']})")
    window = meta.get("window")
    if window:
        if "level" in window:
            parts.append(f"window {window.get('name')} L {window['level']:g} W {window['width']:g}")
        else:
            parts.append(f"window {window.get('name')}")
    if meta.get("spacing"):
        parts.append("spacing " + " × ".join(f"{s:.3g}" for s in meta["spacing"]) + " mm")
    return " · ".join(parts)


def examples() -> list[dict]:
    """The bundled example scans (assets/examples/examples.json): file, title, modality, question, licence."""
    index = EXAMPLES_DIR / "examples.json"
    if not index.exists():
        return []
    items = json.loads(index.read_text())
    return [dict(item, path=str(EXAMPLES_DIR / item["file"])) for item in items if (EXAMPLES_DIR / item["file"]).exists()]
