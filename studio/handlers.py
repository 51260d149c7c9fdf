"""The plain functions behind the app: no Gradio objects in here, so the UI, the named API and the tests
all call the same code.

`Studio` holds what is shared by every user of one app process: the configuration, the feedback store,
the one model (behind a lock; an admin may switch it), the users file, and bounded caches of things the
store already keeps (candidate masks, display images, semantic probes) so that each click answers quickly.
Per-user work in progress lives in a `studio.session.Session` that the caller keeps (Gradio: `gr.State`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from annotation.schema import RATING_SCALES, Decision, Status
from annotation.store import FeedbackError, FeedbackStore, StoreBusy
from coreseg.candidate import Candidate
from coreseg.config import ASSETS_DIR, AppConfig
from coreseg.scan_io import CT_WINDOWS, ScanError, read_scan, scan_info
from studio import overlay
from studio.session import Correction, Session
from studio.users import AccessDenied, User, UserDirectory, resolve_user

log = logging.getLogger("coreseg.studio")

MAX_CANDIDATES = 8
MAX_QUESTION_CHARS = 500
EXAMPLES_DIR = ASSETS_DIR / "examples"
ProgressFn = Callable[[float, str], None]


class StudioError(ValueError):
    """Something the person can fix, with a message for them (str(e) is shown; no file names, no identifiers)."""


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class CandidateInfo:
    """A stored candidate, as refinement needs it."""

    candidate_id: int
    run_id: int
    case_id: int
    scan_hash: str
    question: str
    text: str
    mask: np.ndarray
    token_ids: tuple[int, ...]
    model_version: str
    reasoning: str


@dataclass(frozen=True)
class PredictResult:
    case_id: int
    run_id: int
    candidate_ids: list[int]
    candidates: list[dict]          # Candidate.to_json() plus "candidate_id"
    masks: list[np.ndarray]
    overlays: list[np.ndarray]
    model_version: str
    trained: bool
    seconds: float

    def to_json(self) -> dict:
        return {"case_id": self.case_id, "run_id": self.run_id, "candidate_ids": self.candidate_ids,
                "model_version": self.model_version, "trained": self.trained,
                "seconds": round(self.seconds, 3), "candidates": self.candidates,
                "note": None if self.trained else UNTRAINED_NOTE}


UNTRAINED_NOTE = ("The serving model is UNTRAINED (no CORE-Seg checkpoint yet): its reasoning is noise and its "
                  "masks are not meaningful. Corrections still work and are stored.")


class Studio:
    """Shared, thread-safe services of one app process (see the module docstring)."""

    def __init__(self, config: AppConfig, predictor=None, store: FeedbackStore | None = None,
                 users: UserDirectory | None = None):
        self.config = config
        self.store = store if store is not None else FeedbackStore(_db_target(config.database_url))
        if users is None and config.users_file:
            users = UserDirectory.load(config.users_file)
        self.users = users
        self.on_spaces = bool(os.environ.get("SPACE_ID"))
        self.temp_dir = private_temp_dir(config)
        self._model_lock = threading.Lock()
        if predictor is None:
            from coreseg.predictor import CoreSegPredictor

            predictor = CoreSegPredictor.from_checkpoint(config.checkpoint, config.device,
                                                         encoder_backend=config.encoder_backend)
        self._predictor = predictor
        checkpoint = config.checkpoint if Path(config.checkpoint).exists() else None
        self._register_version(predictor, checkpoint)
        self._candidates = _LRU(512)
        self._displays = _LRU(32)
        self._probes = _LRU(512)
        self._people: dict[str, str] = {}
        self._people_lock = threading.Lock()

    # ------------------------------------------------------------------ the model
    @property
    def predictor(self):
        with self._model_lock:
            return self._predictor

    def _register_version(self, predictor, checkpoint: str | None) -> None:
        try:
            self.store.add_model_version(predictor.model_version, checkpoint,
                                         notes=None if predictor.trained else "untrained")
        except FeedbackError:  # registered before with another checkpoint path: the name is what runs cite
            log.warning("model version %s is registered with another checkpoint path", predictor.model_version)

    # ------------------------------------------------------------------ people
    def identify(self, auth_name: str | None, oauth_name: str | None) -> User:
        """Who is asking (see `studio.users.resolve_user`), registered in the store on first sight."""
        user = resolve_user(self.users, self.on_spaces, auth_name, oauth_name)
        with self._people_lock:
            known = self._people.get(user.name)
        if known is None:
            row = self.store.get_annotator(user.name)
            if row is None:
                self.store.add_annotator(user.name, user.role)
            elif row["role"] != user.role:
                raise AccessDenied(f"{user.name} is {user.role} in the users file but {row['role']} in the database; "
                                   "ask an admin to make them agree.")
            with self._people_lock:
                self._people[user.name] = user.role
        return user

    # ------------------------------------------------------------------ cached reads of stored things
    def display(self, scan_hash: str) -> np.ndarray:
        image = self._displays.get(scan_hash)
        if image is None:
            png = self.store.get_scan_display_png(scan_hash)
            if png is None:
                raise StudioError("this scan has no stored display image")
            with Image.open(io.BytesIO(png)) as img:
                image = np.asarray(img.convert("RGB"))
            image.setflags(write=False)
            self._displays.put(scan_hash, image)
        return image

    def _remember(self, info: CandidateInfo) -> None:
        info.mask.setflags(write=False)
        self._candidates.put(info.candidate_id, info)

    def candidate(self, candidate_id: int, case_id: int | None = None) -> CandidateInfo:
        """A stored candidate by id (from the cache, or from the store through its case's runs)."""
        candidate_id = _int(candidate_id, "candidate")
        info = self._candidates.get(candidate_id)
        if info is None and case_id is not None:
            case_id = _int(case_id, "case")
            try:
                case = self.store.get_case(case_id)
                runs = [e for e in self.store.feedback_history(case_id) if e["kind"] == "run"]
            except FeedbackError as exc:
                raise StudioError(str(exc)) from None
            for event in runs:
                if candidate_id in event["candidate_ids"]:
                    version = self.store.get_run(event["run_id"])["model_version"]
                    for row in self.store.get_candidates(event["run_id"]):
                        self._remember(CandidateInfo(
                            int(row["id"]), int(event["run_id"]), case_id, case["scan_hash"], case["question"],
                            row["text"], row["mask"], tuple(row["token_ids"]), version, row["reasoning"] or ""))
                    info = self._candidates.get(candidate_id)
                    break
        if info is None:
            raise StudioError(f"candidate {candidate_id} is not one of case {case_id}'s candidates"
                              if case_id is not None else f"unknown candidate {candidate_id}")
        if case_id is not None and info.case_id != int(case_id):
            raise StudioError(f"candidate {candidate_id} belongs to case {info.case_id}, not case {case_id}")
        return info

    def probe(self, info: CandidateInfo, predictor) -> np.ndarray | None:
        """The candidate's semantic probe under the serving model (recomputed from its tokens if not cached)."""
        if not predictor.trained or info.model_version != predictor.model_version or not info.token_ids:
            return None
        key = (info.candidate_id, predictor.model_version)
        probe = self._probes.get(key)
        if probe is None:
            scored = predictor.score_completions(self.display(info.scan_hash), info.question, [list(info.token_ids)])
            probe = scored[0].probe
            self._probes.put(key, probe)
        return probe


def private_temp_dir(config: AppConfig) -> Path:
    """A folder only this user can read, inside `config.temp_dir` (which may be a shared one such as /tmp):
    Gradio's uploads and outputs and the exports go there."""
    folder = Path(config.temp_dir).resolve() / "coreseg-private"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def _db_target(url: str) -> str:
    """AppConfig's `sqlite:///relative/path` → a path the store resolves (creating its folder)."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") and not url.startswith("sqlite:////") else url


def _int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise StudioError(f"the {what} id must be a whole number, got {value!r}") from None


def _json_arg(value: Any, what: str, default: Any) -> Any:
    """JSON strings (what API clients send) or already-parsed values; '' or None gives the default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise StudioError(f"{what} is not valid JSON ({exc.msg})") from None
    return value


# ---------------------------------------------------------------------------------------------- scans
def _read_upload(studio: Studio, path: str | os.PathLike, delete: bool) -> tuple[bytes, str]:
    """The upload's bytes and extension; the temporary file is deleted once read (when `delete`)."""
    path = Path(path)
    name = path.name.lower()
    ext = ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()
    try:
        size = path.stat().st_size
        if size > studio.config.max_upload_bytes:
            raise StudioError(f"The file is {size / 2**20:,.1f} MB; the limit is "
                              f"{studio.config.max_upload_bytes / 2**20:,.0f} MB.")
        data = path.read_bytes()
    except OSError:
        raise StudioError("The uploaded file could not be read; upload it again.") from None
    finally:
        if delete:
            _unlink_upload(path)
    return data, ext


def _unlink_upload(path: Path) -> None:
    """Delete an upload from Gradio's private temporary folder (and its now empty folder)."""
    try:
        folder = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()).resolve()
        resolved = path.resolve()
        if folder in resolved.parents:
            resolved.unlink(missing_ok=True)
            parent = resolved.parent
            if parent != folder and not any(parent.iterdir()):
                parent.rmdir()
    except OSError:
        pass


def _window(window: str | None, level: float | None, width: float | None):
    if window in (None, "", "default"):
        return None
    if window == "custom":
        if level is None or width is None:
            raise StudioError("Give a window level and width for the custom window.")
        if not float(width) > 0:
            raise StudioError("The window width must be positive.")
        return (float(level), float(width))
    return window


def open_scan(studio: Studio, session: Session, source: str | os.PathLike | bytes, *, filename: str | None = None,
              delete_upload: bool = True, frame: int | None = None, slice_index: int | None = None,
              axis: int = 2, window: str | None = None, level: float | None = None,
              width: float | None = None) -> Session:
    """Read an upload (path or bytes) into the session: de-identified slice, display image, controls info.

    The file on disk is deleted as soon as its bytes are read; only the extension of its name is kept.
    Raises StudioError (with scan_io's message) for anything that is not a readable scan of allowed size.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        ext = Path(filename or "").suffix.lower() if filename else ""
        if filename and filename.lower().endswith(".nii.gz"):
            ext = ".nii.gz"
        if len(data) > studio.config.max_upload_bytes:
            raise StudioError(f"The file is {len(data) / 2**20:,.1f} MB; the limit is "
                              f"{studio.config.max_upload_bytes / 2**20:,.0f} MB.")
    else:
        data, ext = _read_upload(studio, source, delete_upload)
    scan, info = _decode(studio, data, ext, frame, slice_index, axis, _window(window, level, width))
    session.clear()
    session.scan_bytes, session.scan_ext, session.scan, session.info = data, ext, scan, info
    return session


def reslice(studio: Studio, session: Session, *, frame: int | None = None, slice_index: int | None = None,
            axis: int = 2, window: str | None = None, level: float | None = None,
            width: float | None = None) -> Session:
    """Show another frame, slice, axis or window of the open scan (a new case: candidates are cleared)."""
    if session.scan_bytes is None:
        raise StudioError("Open a scan first.")
    scan, info = _decode(studio, session.scan_bytes, session.scan_ext, frame, slice_index, axis,
                         _window(window, level, width))
    session.new_case()
    session.scan, session.info = scan, info
    return session


def _decode(studio: Studio, data: bytes, ext: str, frame, slice_index, axis, window):
    name = f"upload{ext}"
    try:
        info = scan_info(data, filename=name)
        scan = read_scan(data, filename=name, frame=None if frame is None else int(frame),
                         slice_index=None if slice_index is None else int(slice_index), axis=int(axis or 0),
                         window=window, max_pixels=studio.config.max_pixels,
                         max_bytes=studio.config.max_upload_bytes)
    except ScanError as exc:
        raise StudioError(str(exc)) from None
    except MemoryError:
        raise StudioError("The scan is too large to open on this server.") from None
    return scan, info


def modality_of(session: Session) -> str:
    meta = getattr(session.scan, "meta", None) or {}
    return str(meta.get("modality") or "OT")


def suggested_questions(modality: str | None) -> list[str]:
    try:
        from trainers.questions import suggested_questions as suggest
    except ImportError:  # pragma: no cover - the trainers package ships with the app
        return ["Where is the lesion? Find it and identify its boundaries."]
    return suggest(modality)


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


def open_example(studio: Studio, session: Session, title: str) -> tuple[Session, dict]:
    for item in examples():
        if item["title"] == title:
            open_scan(studio, session, item["path"], delete_upload=False)
            if item.get("modality"):
                session.scan.meta["modality"] = item["modality"]
            return session, item
    raise StudioError(f"no example called {title!r}")


# ---------------------------------------------------------------------------------------------- predict
def predict(studio: Studio, user: User, session: Session, question: str, n: int, *, seed: int | None = None,
            progress: ProgressFn | None = None) -> PredictResult:
    """N candidate answers for the open scan and question: stored (scan, case, run, candidates) and put in the
    session, where the first candidate is ready to be corrected. The model runs before anything is written, so a
    failed call leaves no rows and leaves the session as it was."""
    user.require("annotate")
    if session.scan is None:
        raise StudioError("Open a scan first (upload one or pick an example).")
    question = (question or "").strip()
    if not question:
        raise StudioError("Ask a question, e.g. 'Where is the lesion? Find it and identify its boundaries.'")
    if len(question) > MAX_QUESTION_CHARS:
        raise StudioError(f"The question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS}.")
    n = _int(n, "number of candidates") if not isinstance(n, int) else n
    if not 1 <= n <= MAX_CANDIDATES:
        raise StudioError(f"Ask for 1 to {MAX_CANDIDATES} candidates.")
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    scan = session.scan
    predictor = studio.predictor
    started = time.perf_counter()
    if progress:
        progress(0.05, "Reading the scan")
    try:
        if progress:
            predictor.embedding(scan.display)   # cached: predict reuses it
            progress(0.3, f"Writing {n} answers")
        candidates = predictor.predict(scan.display, question, n_candidates=n, seed=seed)
    except ValueError as exc:
        raise StudioError(str(exc)) from None
    except Exception:
        log.exception("model call failed (predict)")
        raise StudioError("The model failed on this request; nothing you entered was lost. Try again.") from None
    if progress:
        progress(0.9, "Saving")
    try:
        scan_hash = studio.store.put_scan(scan)
        case_id = studio.store.add_case(scan_hash, question, user.name)
        sampling = {"temperature": 0.7, "top_p": 0.95, "seed": seed, "n": n}
        run_id, ids = studio.store.add_run(case_id, predictor.model_version, sampling, candidates)
    except (FeedbackError, StoreBusy) as exc:
        raise StudioError(str(exc)) from None
    display = scan.display
    cards, masks, overlays = [], [], []
    for cid, cand in zip(ids, candidates):
        card = {"candidate_id": cid, **cand.to_json()}
        cards.append(card)
        masks.append(cand.mask)
        overlays.append(overlay.draw(display, cand.mask, boxes=card["boxes"]))
        studio._remember(CandidateInfo(cid, run_id, case_id, scan_hash, question, cand.text, cand.mask.copy(),
                                       tuple(cand.token_ids), predictor.model_version, card["reasoning"]))
        if cand.probe is not None:
            studio._probes.put((cid, predictor.model_version), cand.probe)
    session.new_case()
    session.scan_hash, session.case_id, session.run_id = scan_hash, case_id, run_id
    session.candidate_ids, session.candidates = list(ids), cards
    session.masks = {cid: m for cid, m in zip(ids, masks)}
    choose(session, ids[0])
    log.info("predict case=%s run=%s n=%d %.2fs", case_id, run_id, n, time.perf_counter() - started)
    return PredictResult(case_id, run_id, list(ids), cards, masks, overlays, predictor.model_version,
                         bool(predictor.trained), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------- correct
def choose(session: Session, candidate_id: int) -> Correction:
    """Start correcting another candidate (its proposal mask; clicks and brush start afresh)."""
    candidate_id = _int(candidate_id, "candidate")
    if candidate_id not in session.masks:
        raise StudioError("Pick one of this case's candidates.")
    mask = session.masks[candidate_id]
    session.correction = Correction(candidate_id, mask.copy(), mask.copy())
    return session.correction


def parse_clicks(clicks: Any, height: int, width: int) -> list[tuple[int, int, int]]:
    """[[x, y, 1|0], …] (JSON or list) → validated clicks inside the scan."""
    clicks = _json_arg(clicks, "clicks", [])
    if not isinstance(clicks, list):
        raise StudioError("clicks must be a list of [x, y, label] (label 1 = positive, 0 = negative)")
    out = []
    for i, click in enumerate(clicks):
        if isinstance(click, dict):
            click = [click.get("x"), click.get("y"), click.get("label", 1)]
        if not isinstance(click, (list, tuple)) or len(click) not in (2, 3):
            raise StudioError(f"click {i} must be [x, y, label]")
        x, y = click[0], click[1]
        label = click[2] if len(click) == 3 else 1
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise StudioError(f"click {i} has non-numeric coordinates") from None
        if label not in (0, 1, True, False):
            raise StudioError(f"click {i}: the label must be 1 (positive) or 0 (negative)")
        if not (0 <= x < width and 0 <= y < height):
            raise StudioError(f"click {i} at ({x:g}, {y:g}) is outside the {width}×{height} scan")
        out.append((int(x), int(y), int(label)))
    return out


def parse_box(box: Any, height: int, width: int) -> tuple[int, int, int, int] | None:
    """[x1, y1, x2, y2] (exclusive ends, scan pixels) or None."""
    box = _json_arg(box, "box", None)
    if box is None or box == []:
        return None
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise StudioError("box must be [x1, y1, x2, y2]")
    try:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise StudioError("box coordinates must be numbers") from None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise StudioError(f"the box is empty or outside the {width}×{height} scan")
    return x1, y1, x2, y2


def refine(studio: Studio, user: User, case_id: int, candidate_id: int, clicks: Any = None,
           box: Any = None) -> np.ndarray:
    """The model's mask for a stored candidate with positive/negative clicks and an optional box (scan pixels):
    bool, exactly the scan's height × width. Uses the cached image embedding, so it answers quickly."""
    user.require("annotate")
    info = studio.candidate(candidate_id, case_id)
    height, width = info.mask.shape
    clicks = parse_clicks(clicks, height, width)
    box = parse_box(box, height, width)
    predictor = studio.predictor
    try:
        display = studio.display(info.scan_hash)
        probe = studio.probe(info, predictor)
        candidate = Candidate(text=info.text, mask=np.array(info.mask), mask_score=0.0, token_ids=list(info.token_ids),
                              probe=probe, model_version=info.model_version, trained=predictor.trained)
        mask = predictor.refine(display, candidate, clicks=clicks, box=box).mask
    except StudioError:
        raise
    except Exception:
        log.exception("model call failed (refine)")
        raise StudioError("The model failed to refine the mask; your clicks are kept. Try again.") from None
    if mask.shape != (height, width):  # the model works in its own frame; the mask is always the scan's size
        raise StudioError(f"internal error: refined mask {mask.shape} is not the scan's {(height, width)}")
    return mask.astype(bool)


def click(studio: Studio, user: User, session: Session, x: float, y: float, mode: str) -> Correction:
    """A click on the shown scan (shown-image pixels): positive/negative → refine; box → a corner of a box."""
    corr = _correction(session)
    height, width = corr.proposal.shape
    sx, sy = overlay.to_scan_xy(x, y, overlay.display_scale(height, width), height, width)
    corr.snapshot()
    if mode == "box":
        if corr.corner is None:
            corr.corner = (sx, sy)
            corr.n_clicks += 1
            return corr
        (cx, cy), corr.corner = corr.corner, None
        corr.box = parse_box([cx, cy, sx + 1, sy + 1], height, width)
    else:
        corr.clicks.append((sx, sy, 0 if mode == "negative" else 1))
    try:
        corr.model_mask = refine(studio, user, session.case_id, corr.candidate_id, corr.clicks, corr.box)
    except Exception:
        corr.undo()  # the click is taken back so that nothing is half-applied
        raise
    corr.n_clicks += 1
    return corr


def brush(session: Session, layer: np.ndarray | None) -> Correction:
    """Lay brush strokes (an editor layer; green adds, magenta removes) onto the mask being corrected."""
    corr = _correction(session)
    height, width = corr.proposal.shape
    add, remove = overlay.strokes_to_edit(layer, height, width)
    if not add.any() and not remove.any():
        raise StudioError("Paint on the scan first (green adds to the mask, magenta removes).")
    corr.snapshot()
    corr.apply_brush(add, remove)
    corr.n_strokes += overlay.count_strokes(add, remove)
    return corr


def undo(session: Session) -> Correction:
    corr = _correction(session)
    if not corr.undo():
        raise StudioError("Nothing to undo.")
    return corr


def _correction(session: Session) -> Correction:
    if session.correction is None:
        raise StudioError("Ask the model first, then pick the candidate to correct.")
    return session.correction


def correction_view(session: Session) -> np.ndarray | None:
    """The scan with the mask being corrected, its clicks, box and pending box corner."""
    if session.correction is None:
        return None if session.scan is None else overlay.draw(session.scan.display)
    corr = session.correction
    card = next((c for c in session.candidates if c["candidate_id"] == corr.candidate_id), {})
    return overlay.draw(session.scan.display, corr.mask, boxes=card.get("boxes", ()), clicks=corr.clicks,
                        box=corr.box, corner=corr.corner)


def brush_background(session: Session) -> np.ndarray | None:
    """What the brush paints over: the scan with the current mask, at the shown scale."""
    if session.correction is None:
        return None
    return overlay.draw(session.scan.display, session.correction.mask, alpha=0.3)


# ---------------------------------------------------------------------------------------------- submit
def parse_ranking(value: Any) -> dict[int, int]:
    """{candidate id: rank} from a dict, a JSON string, or Argilla's [{"candidate": id, "rank": r}, …]."""
    value = _json_arg(value, "ranking", {})
    if isinstance(value, list):
        try:
            value = {item["candidate"]: item["rank"] for item in value}
        except (TypeError, KeyError):
            raise StudioError('ranking must be {"candidate id": rank} or [{"candidate": id, "rank": r}]') from None
    if not isinstance(value, dict):
        raise StudioError('ranking must be {"candidate id": rank}')
    out = {}
    for key, rank in value.items():
        if rank in (None, "", "–"):
            continue
        out[_int(key, "ranked candidate")] = _int(rank, "rank")
    return out


def parse_ratings(value: Any) -> dict[int, dict[str, int]]:
    """{candidate id: {scale: value}} from a dict or JSON string; unset (None/'') values are left out."""
    value = _json_arg(value, "ratings", {})
    if not isinstance(value, dict):
        raise StudioError('ratings must be {"candidate id": {"scale": value}}')
    out: dict[int, dict[str, int]] = {}
    for key, scales in value.items():
        if not isinstance(scales, dict):
            raise StudioError(f"ratings of candidate {key} must be {{scale: value}}")
        kept = {str(s): _int(v, f"{s} rating") for s, v in scales.items() if v not in (None, "")}
        if kept:
            out[_int(key, "rated candidate")] = kept
    return out


def submit(studio: Studio, user: User, *, case_id: int, run_id: int, ranking: Any = None, ratings: Any = None,
           chosen_candidate_id: int | None = None, mask: np.ndarray | None = None, edited_reasoning: str | None = None,
           status: str = "submitted", clicks: int = 0, strokes: int = 0, seconds: float = 0.0,
           submission_id: str | None = None, supersedes: int | None = None, comment: str | None = None) -> dict:
    """Store one annotator's work on a run (idempotent on `submission_id`); returns the stored ids."""
    user.require("annotate")
    if status not in Status.__members__:
        raise StudioError(f"status must be one of {', '.join(Status.__members__)}")
    case_id, run_id = _int(case_id, "case"), _int(run_id, "run")
    ranking, ratings = parse_ranking(ranking), parse_ratings(ratings)
    chosen = _int(chosen_candidate_id, "chosen candidate") if chosen_candidate_id not in (None, "", 0) else None
    edited = (edited_reasoning or "").strip() or None
    if edited is not None:
        proposal = chosen
        if proposal is None and ranking:
            best = [c for c, r in ranking.items() if r == min(ranking.values())]
            proposal = best[0] if len(best) == 1 else None
        if proposal is not None:
            try:
                original = studio.candidate(proposal, case_id).reasoning
            except StudioError:
                original = None
            if original is not None and edited == original.strip():
                edited = None  # unchanged: not an edit
    try:
        feedback_id = studio.store.submit_feedback(
            case_id, run_id, user.name, ranking=ranking or None, ratings=ratings or None,
            chosen_candidate_id=chosen, edited_reasoning=edited, mask=mask, clicks=int(clicks), strokes=int(strokes),
            seconds=float(seconds), status=status, submission_id=submission_id or None, supersedes=supersedes,
            comment=comment or None)
    except (FeedbackError, StoreBusy) as exc:
        raise StudioError(str(exc)) from None
    log.info("feedback %s case=%s run=%s status=%s", feedback_id, case_id, run_id, status)
    return {"feedback_id": feedback_id, "case_id": case_id, "run_id": run_id, "status": status,
            "has_mask": mask is not None, "ranked": len(ranking), "rated": len(ratings), "edited": edited is not None}


def submit_session(studio: Studio, user: User, session: Session, *, ranking: dict, ratings: dict,
                   edited_reasoning: str | None, status: str) -> dict:
    """Submit, save as draft or discard what the session holds (the corrected mask of the chosen candidate)."""
    if session.case_id is None or session.run_id is None:
        raise StudioError("Nothing to submit: ask the model first.")
    if session.closed:
        raise StudioError("This case was already submitted or discarded; press Next case (or ask again).")
    corr = session.correction
    mask = corr.mask if corr is not None and status != "discarded" else None
    if mask is not None and mask.shape != session.scan.display.shape[:2]:
        raise StudioError("internal error: the corrected mask is not the scan's size")
    result = submit(studio, user, case_id=session.case_id, run_id=session.run_id, ranking=ranking, ratings=ratings,
                    chosen_candidate_id=corr.candidate_id if corr else None, mask=mask,
                    edited_reasoning=edited_reasoning if status != "discarded" else None, status=status,
                    clicks=corr.n_clicks if corr else 0, strokes=corr.n_strokes if corr else 0,
                    seconds=time.monotonic() - session.started, submission_id=session.pending_submission_id(),
                    supersedes=session.draft_id)
    session.last_feedback_id = result["feedback_id"]
    session.submission_id = None  # the next save is a new submission
    session.draft_id = result["feedback_id"] if status == "draft" else None
    session.closed = status != "draft"
    return result


# ---------------------------------------------------------------------------------------------- review
def review_queue(studio: Studio, user: User, *, status: str | None = "submitted", model_version: str | None = None,
                 annotator: str | None = None, review_state: str | None = None) -> list[dict]:
    user.require("review")
    try:
        rows = studio.store.queue(status=status or None, model_version=model_version or None,
                                  annotator=annotator or None, review_state=review_state or None)
    except FeedbackError as exc:
        raise StudioError(str(exc)) from None
    return [{k: (v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if hasattr(v, "astimezone") else v)
             for k, v in row.items() if k != "scan_hash"} for row in rows]


def feedback_view(studio: Studio, user: User, feedback_id: int) -> dict:
    """A submission for the reviewer: proposal and correction drawn over the scan, and what was said."""
    user.require("review")
    try:
        fb = studio.store.get_feedback(_int(feedback_id, "feedback"))
        case = studio.store.get_case(fb["case_id"])
        candidates = {c["id"]: c for c in studio.store.get_candidates(fb["run_id"])}
    except FeedbackError as exc:
        raise StudioError(str(exc)) from None
    display = studio.display(case["scan_hash"])
    corr = fb["correction"]
    proposal_id = corr["proposal_candidate_id"] if corr else fb["chosen_candidate_id"]
    proposal = candidates.get(proposal_id)
    proposal_img = overlay.draw(display, proposal["mask"] if proposal else None,
                                boxes=proposal["boxes"] if proposal else ())
    corrected_img = overlay.draw(display, fb["mask"], colour=(60, 230, 90)) if fb["mask"] is not None else None
    order = {cid: i + 1 for i, cid in enumerate(sorted(candidates))}
    lines = [f"**Feedback {fb['id']}** on case {fb['case_id']} (run {fb['run_id']}) by **{fb['annotator']}** — "
             f"{fb['status']}", f"Question: {case['question']}"]
    if corr:
        lines.append(f"Correction of candidate #{order.get(proposal_id)}: Dice vs proposal "
                     f"{corr['proposal_dice']:.3f}, area {corr['mask_area']} px, {fb['clicks']} clicks, "
                     f"{fb['strokes']} strokes, {fb['seconds']:.0f} s")
    if fb["ranking"]:
        lines.append("Ranking: " + ", ".join(f"#{order.get(c)} → {r}" for c, r in sorted(fb["ranking"].items(),
                                                                                        key=lambda t: t[1])))
    for cid, scales in sorted(fb["ratings"].items()):
        lines.append(f"Ratings #{order.get(cid)}: " + ", ".join(f"{s} {v}" for s, v in scales.items()))
    if proposal:
        lines.append(f"Proposal reasoning: {proposal['reasoning'] or '(none parsed)'}")
    if fb["edited_reasoning"]:
        lines.append(f"Edited reasoning: {fb['edited_reasoning']}")
    for rev in fb["reviews"]:
        lines.append(f"Review: {rev['decision']} by {rev['reviewer']} — {rev['reason'] or ''}")
    return {"feedback": fb, "proposal_image": proposal_img, "corrected_image": corrected_img,
            "markdown": "\n\n".join(lines)}


def review(studio: Studio, user: User, feedback_id: int, decision: str, reason: str = "") -> int:
    user.require("review")
    if decision not in Decision.__members__:
        raise StudioError("Choose accept, reject or flag.")
    try:
        return studio.store.review(_int(feedback_id, "feedback"), user.name, decision, reason or "")
    except (FeedbackError, StoreBusy) as exc:
        raise StudioError(str(exc)) from None


# ---------------------------------------------------------------------------------------------- dashboard
def dashboard(studio: Studio, user: User) -> dict:
    """Counts, proposal-vs-accepted Dice per model version and over time, rating averages, agreement."""
    import pandas as pd

    from annotation.export import ExportFilters, summary_tables

    user.require("dashboard")
    tables = summary_tables(studio.store, ExportFilters())
    rows = studio.store.feedback_rows(status="submitted")
    version_of = {r["id"]: r["model_version"] for r in rows}
    accepted = studio.store.accepted_corrections()
    over_time = pd.DataFrame([
        {"day": a["reviewed_at"].astimezone(timezone.utc).strftime("%Y-%m-%d"),
         "model_version": version_of.get(a["feedback_id"], "?"), "dice": float(a["proposal_dice"])}
        for a in accepted.values() if a["feedback_id"] in version_of], columns=["day", "model_version", "dice"])
    if len(over_time):
        over_time = (over_time.groupby(["day", "model_version"])["dice"].agg(["mean", "count"]).reset_index()
                     .rename(columns={"mean": "mean_dice", "count": "accepted"}))
        over_time["day"] = pd.to_datetime(over_time["day"])
    else:
        over_time = pd.DataFrame(columns=["day", "model_version", "mean_dice", "accepted"])
    counts = studio.store.counts()
    return {"counts": pd.DataFrame([counts]), "dice_over_time": over_time, **tables}


# ---------------------------------------------------------------------------------------------- admin
def export_data(studio: Studio, user: User, fmt: str, statuses: list[str] | None = None,
                model_versions: list[str] | None = None) -> Path:
    """One of the store's export formats as a zip (with its manifest), in the app's private temp folder."""
    from annotation.export import FORMATS, ExportFilters, export

    user.require("admin")
    if fmt not in FORMATS:
        raise StudioError(f"Choose one of {', '.join(FORMATS)}.")
    filters = ExportFilters(status=tuple(statuses or ["submitted"]),
                            model_versions=tuple(model_versions) if model_versions else None)
    work = Path(tempfile.mkdtemp(prefix="export-", dir=studio.temp_dir))
    folder = work / f"coreseg-{fmt}"
    try:
        export(studio.store.url, folder, fmt, filters)
    except FeedbackError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise StudioError(str(exc)) from None
    archive = work / f"coreseg-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent))
    shutil.rmtree(folder)
    return archive


def model_versions(studio: Studio) -> list[dict]:
    serving = studio.predictor.model_version
    return [{"name": v["name"], "serving": v["name"] == serving, "checkpoint": v.get("checkpoint_path"),
             "parent": v.get("parent"), "notes": v.get("notes"), "created_at": str(v.get("created_at"))[:16]}
            for v in studio.store.list_model_versions()]


def serve_model(studio: Studio, user: User, name: str) -> str:
    """Switch the serving model to a registered version (admins); the previous one keeps answering until the
    new one is loaded."""
    from coreseg.predictor import CoreSegPredictor

    user.require("admin")
    entry = next((v for v in studio.store.list_model_versions() if v["name"] == name), None)
    if entry is None:
        raise StudioError(f"unknown model version {name!r}")
    if name == studio.predictor.model_version:
        return name
    path = entry.get("checkpoint_path")
    if not path or not Path(path).exists():
        raise StudioError(f"model version {name!r} has no checkpoint on this machine")
    try:
        predictor = CoreSegPredictor.from_checkpoint(path, studio.config.device,
                                                     encoder_backend=studio.config.encoder_backend)
    except Exception as exc:
        log.exception("loading model version failed")
        raise StudioError(f"could not load {name!r}: {exc}") from None
    if predictor.model_version != name:
        raise StudioError(f"the checkpoint at that path is {predictor.model_version!r}, not {name!r}")
    with studio._model_lock:
        studio._predictor = predictor
    log.info("serving model version %s", name)
    return name


def rating_scales() -> dict[str, tuple[int, int]]:
    return dict(RATING_SCALES)


def window_choices(session: Session) -> list[str]:
    windows = list(session.info.get("windows") or [])
    return windows + (["custom"] if any(w in CT_WINDOWS or w == "percentile" for w in windows) else [])
