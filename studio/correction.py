"""The correction being made in a session: pick a candidate, brush strokes, undo, and the images the page
shows of it (clicks go through `Studio.click`, which needs the model)."""
from __future__ import annotations

import numpy as np

from studio import overlay
from studio.inputs import StudioError, as_int
from studio.session import Correction, Session

def choose(session: Session, candidate_id) -> Correction:
    """Start correcting another candidate (its proposal mask; clicks and brush start afresh)."""
    candidate_id = as_int(candidate_id, "candidate id")
    if candidate_id not in session.masks:
        raise StudioError("Pick one of this case's candidates.")
    mask = session.masks[candidate_id]
    session.correction = Correction(candidate_id, mask.copy(), mask.copy())
    return session.correction


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
