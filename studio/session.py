"""One person's work in progress, and the bounded registry of them that `Studio` keeps.

`Session` holds the open scan (de-identified, in memory only), the current case, run and candidates, and
the correction being made: clicks and a box that the model turns into a mask, brush edits laid on top,
and an undo history of all of it.

`SessionRegistry` keys sessions by (signed-in user, browser/client session): state follows the person who
is signed in, so presenting someone else's Gradio session id gives an empty session of one's own. Memory is
bounded three ways: idle sessions expire, the number of sessions is capped (least recently used go first),
and one session's bytes are capped (over the cap the raw upload is dropped first, then the undo history).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

MAX_HISTORY = 50
SESSION_TTL_S = 1800.0            # an idle session is forgotten after 30 minutes
MAX_SESSIONS = 64                 # sessions held at once (least recently used are dropped first)
MAX_SESSION_BYTES = 96 * 2**20    # one session's arrays and upload


def _pack(mask: np.ndarray | None):
    return None if mask is None else (mask.shape, np.packbits(mask, axis=None))


def _unpack(packed) -> np.ndarray | None:
    if packed is None:
        return None
    shape, bits = packed
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)


@dataclass
class Correction:
    """The mask being corrected: model clicks/box, brush edits on top, and the resulting mask."""

    candidate_id: int
    proposal: np.ndarray                     # the candidate's mask as the model proposed it
    model_mask: np.ndarray                   # the model's latest answer to the clicks and box
    clicks: list[tuple[int, int, int]] = field(default_factory=list)
    box: tuple[int, int, int, int] | None = None
    corner: tuple[int, int] | None = None    # first corner of a box being drawn
    brush_add: np.ndarray | None = None
    brush_remove: np.ndarray | None = None
    n_clicks: int = 0                        # effort, for the store: every click and box counts
    n_strokes: int = 0
    history: list = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        mask = self.model_mask.copy()
        if self.brush_add is not None:
            mask |= self.brush_add
        if self.brush_remove is not None:
            mask &= ~self.brush_remove
        return mask

    def snapshot(self) -> None:
        """Remember the current state (call before each change) so `undo` can return to it."""
        self.history.append((_pack(self.model_mask), list(self.clicks), self.box, self.corner,
                             _pack(self.brush_add), _pack(self.brush_remove)))
        del self.history[:-MAX_HISTORY]

    def undo(self) -> bool:
        if not self.history:
            return False
        model, self.clicks, self.box, self.corner, add, remove = self.history.pop()
        self.model_mask, self.brush_add, self.brush_remove = _unpack(model), _unpack(add), _unpack(remove)
        return True

    def apply_brush(self, add: np.ndarray, remove: np.ndarray) -> None:
        shape = self.model_mask.shape
        old_add = self.brush_add if self.brush_add is not None else np.zeros(shape, bool)
        old_remove = self.brush_remove if self.brush_remove is not None else np.zeros(shape, bool)
        self.brush_add = (old_add & ~remove) | add
        self.brush_remove = (old_remove & ~add) | remove

    def nbytes(self) -> int:
        arrays = [self.proposal, self.model_mask, self.brush_add, self.brush_remove]
        packed = sum(p[1].nbytes for h in self.history for p in (h[0], h[4], h[5]) if p is not None)
        return sum(a.nbytes for a in arrays if a is not None) + packed

    def reset(self) -> None:
        self.snapshot()
        self.model_mask = self.proposal.copy()
        self.clicks, self.box, self.corner, self.brush_add, self.brush_remove = [], None, None, None, None


@dataclass
class Session:
    """Everything one browser tab (or one API client) is working on."""

    owner: str | None = None                 # the signed-in user this session belongs to

    scan_bytes: bytes | None = None          # the upload, in memory only (re-read for another slice/window)
    scan_ext: str = ""                       # its extension, to tell formats apart (never the file's name)
    scan: object | None = None               # coreseg.scan_io.Scan of the shown slice (de-identified)
    info: dict = field(default_factory=dict)  # scan_info for the controls
    scan_hash: str | None = None
    case_id: int | None = None
    run_id: int | None = None
    candidate_ids: list[int] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)   # Candidate.to_json() + id, per candidate
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # the proposals, by candidate id
    correction: Correction | None = None
    api_mask: tuple[int, int, np.ndarray] | None = None    # (case id, candidate id, mask) of the last /refine
    started: float = field(default_factory=time.monotonic)
    submission_id: str | None = None         # made at the first save of a case; kept until that save succeeds
    draft_id: int | None = None
    closed: bool = False                     # submitted or discarded: no further saves on this case
    last_feedback_id: int | None = None

    def new_case(self) -> None:
        """Forget the candidates and correction (a new question or a new scan)."""
        self.case_id = self.run_id = None
        self.candidate_ids, self.candidates, self.masks = [], [], {}
        self.correction, self.api_mask, self.draft_id, self.closed = None, None, None, False
        self.started = time.monotonic()
        self.submission_id = None

    def pending_submission_id(self) -> str:
        """The id of the save in progress: the same again if it is retried (idempotent), new after a success."""
        if self.submission_id is None:
            self.submission_id = uuid.uuid4().hex
        return self.submission_id

    def clear(self) -> None:
        self.new_case()
        self.scan_bytes, self.scan_ext, self.scan, self.info, self.scan_hash = None, "", None, {}, None

    def adopt_api_case(self, other: "Session") -> None:
        """Take an API /predict's case ids, not its arrays: /refine and /submit need only the ids (the scan's
        display image is the store's, cached once in `Studio`), so an API session holds a few bytes."""
        self.clear()
        self.scan_hash, self.case_id, self.run_id = other.scan_hash, other.case_id, other.run_id
        self.candidate_ids = list(other.candidate_ids)

    def nbytes(self) -> int:
        """Bytes held in arrays and the upload (what the registry bounds)."""
        total = len(self.scan_bytes or b"")
        if self.scan is not None:
            total += sum(getattr(self.scan, k).nbytes for k in ("pixels", "display") if hasattr(self.scan, k))
        total += sum(m.nbytes for m in self.masks.values())
        if self.correction is not None:
            total += self.correction.nbytes()
        if self.api_mask is not None:
            total += self.api_mask[2].nbytes
        return total

    def shrink(self, limit: int) -> None:
        """Bring the session under `limit` bytes: drop the raw upload (another slice then needs a new upload),
        then the undo history."""
        if self.nbytes() > limit and self.scan_bytes is not None:
            self.scan_bytes = None
        if self.nbytes() > limit and self.correction is not None:
            self.correction.history.clear()

    def summary(self) -> dict:
        return {"case_id": self.case_id, "run_id": self.run_id, "candidate_ids": list(self.candidate_ids),
                "scan_open": self.scan is not None,
                "correcting": self.correction.candidate_id if self.correction else None,
                "has_refined_mask": self.api_mask is not None, "last_feedback_id": self.last_feedback_id}


class SessionRegistry:
    """Sessions by (user name, client session id), bounded in time, number and bytes (thread-safe)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 max_session_bytes: int = MAX_SESSION_BYTES):
        self.ttl_s, self.max_sessions, self.max_session_bytes = ttl_s, max_sessions, max_session_bytes
        self._items: OrderedDict[tuple[str, str], tuple[float, Session]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, user: str, client: str | None) -> Session:
        """This user's session for this client (a new one if none, expired or evicted)."""
        key = (str(user), str(client or "-"))
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._items.get(key)
            session = entry[1] if entry is not None else Session(owner=key[0])
            self._items[key] = (now, session)
            self._items.move_to_end(key)
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)
        return session

    def settle(self, session: Session) -> None:
        """After a request: keep the session under its byte cap."""
        session.shrink(self.max_session_bytes)

    def _expire(self, now: float) -> None:
        while self._items:
            key, (at, _) = next(iter(self._items.items()))
            if now - at <= self.ttl_s:
                break
            del self._items[key]

    def stats(self) -> dict:
        with self._lock:
            self._expire(time.monotonic())
            return {"sessions": len(self._items), "bytes": sum(s.nbytes() for _, s in self._items.values())}
