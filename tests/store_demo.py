"""Test scaffolding for the feedback store: synthetic content (scans with known masks, candidate groups,
feedback) and the writer processes the concurrency test and `bench/bench_store.py` run. No real patient data.
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Any

import numpy as np

from coreseg.answer import render_answer
from coreseg.candidate import Candidate
from coreseg.scan_io import Scan


def make_scan(seed: int, height: int = 64, width: int = 80, dtype: str = "uint16",
              modality: str = "CT") -> Scan:
    """A noisy scan with a bright disc (the 'lesion'); pixels in `dtype`, display uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx, r = height * 0.45, width * 0.55, min(height, width) * 0.2
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    base = rng.normal(100, 20, (height, width)) + 400 * disc
    if np.dtype(dtype).kind == "i":
        pixels = (base - 500).astype(dtype)          # Hounsfield-like, negative values included
    elif np.dtype(dtype).kind == "f":
        pixels = (base / 1000).astype(dtype)
    else:
        pixels = np.clip(base, 0, np.iinfo(dtype).max).astype(dtype)
    grey = np.clip((base - base.min()) / (np.ptp(base) or 1) * 255, 0, 255).astype(np.uint8)
    meta = {"source_format": "png", "modality": modality, "height": height, "width": width,
            "bit_depth": np.dtype(dtype).itemsize * 8, "spacing": [0.7, 0.7], "window": {"level": 40, "width": 400},
            "frame": 0, "n_frames": 1}
    return Scan(pixels, np.repeat(grey[..., None], 3, axis=2), meta)


def rect_mask(height: int, width: int, y1: int, x1: int, y2: int, x2: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def make_candidates(height: int, width: int, n: int = 4, seed: int = 0, target: str = "liver tumor",
                    model_version: str = "demo-v0") -> list[Candidate]:
    """n candidates with distinct reasoning, shifted rectangular masks, boxes and token log-probs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y1, x1 = int(height * 0.3) + i, int(width * 0.35) + i
        y2, x2 = y1 + height // 3, x1 + width // 3
        mask = rect_mask(height, width, y1, x1, y2, x2)
        reasoning = (f"The liver parenchyma is normally homogeneous (variant {seed}-{i}). "
                     f"Here a hypodense region with irregular margins differs from it.")
        ids = rng.integers(0, 32000, 12).tolist()
        out.append(Candidate(text=render_answer(reasoning, target, [(x1, y1, x2, y2)]), mask=mask,
                             mask_score=float(0.5 + 0.1 * i), token_ids=ids,
                             token_logprobs=(-rng.random(12) * 3).tolist(), model_version=model_version,
                             sampling={"temperature": 0.7, "top_p": 0.9, "seed": seed, "index": i}))
    return out


def populate(store, n_cases: int = 4, n_candidates: int = 4, annotators=("ann-a", "ann-b"), reviewer="rev",
             model_version: str = "demo-v0", height: int = 64, width: int = 80, dtype: str = "uint16",
             feedback_per_annotator: int = 1, review: bool = True, seed: int = 0) -> dict[str, Any]:
    """Fill a store: cases with one run each, every annotator ranks, rates and corrects, the reviewer accepts
    the first annotator's correction. Returns the ids and the masks written, for checking."""
    for name in annotators:
        store.add_annotator(name, "annotator")
    store.add_annotator(reviewer, "reviewer")
    store.add_model_version(model_version, f"/checkpoints/{model_version}")
    made: dict[str, Any] = {"cases": [], "runs": [], "candidates": {}, "feedback": [], "masks": {}, "accepted": {}}
    rng = np.random.default_rng(seed)
    for c in range(n_cases):
        scan = make_scan(seed * 1000 + c, height, width, dtype)
        scan_hash = store.put_scan(scan)
        case_id = store.add_case(scan_hash, "Locate and segment the liver tumor.", annotators[0])
        run_id, cand_ids = store.add_run(case_id, model_version, {"n": n_candidates},
                                         make_candidates(height, width, n_candidates, seed * 1000 + c,
                                                         model_version=model_version))
        made["cases"].append(case_id)
        made["runs"].append(run_id)
        made["candidates"][run_id] = cand_ids
        for a, name in enumerate(annotators):
            for k in range(feedback_per_annotator):
                order = rng.permutation(len(cand_ids))
                ranking = {cand_ids[j]: int(r) + 1 for r, j in enumerate(order)}
                ratings = {cid: {"correctness": int(rng.integers(1, 6)), "completeness": int(rng.integers(1, 6))}
                           for cid in cand_ids}
                y1, x1 = int(height * 0.3) + a + k, int(width * 0.35) + a
                mask = rect_mask(height, width, y1, x1, y1 + height // 3 + 2, x1 + width // 3 + 1)
                best = cand_ids[int(order[0])]
                fid = store.submit_feedback(case_id, run_id, name, ranking=ranking, ratings=ratings,
                                            chosen_candidate_id=best,
                                            edited_reasoning=f"Edited by {name}: normal liver is homogeneous; the "
                                                             f"lesion is darker with ill-defined margins.",
                                            mask=mask, clicks=3 + a, strokes=1, seconds=20.0 + a,
                                            submission_id=f"demo-{seed}-{c}-{a}-{k}")
                made["feedback"].append(fid)
                made["masks"][fid] = mask
                if review and a == 0 and k == 0:
                    store.review(fid, reviewer, "accept")
                    made["accepted"][case_id] = fid
    return made


# ------------------------------------------------------------------------------------ writer processes
def writer_process(db: str, worker: int, case_id: int, run_id: int, annotator: str, seconds: float,
                   barrier, results, resend_every: int = 10) -> None:
    """Submit feedback in a loop for `seconds` (after all writers meet at `barrier`); report every stored id.

    Every `resend_every`-th submission is sent twice with the same submission id: the second must return the
    first id (0: never). Any exception (a "database is locked" included) is reported, not swallowed.
    """
    report: dict[str, Any] = {"worker": worker, "ids": [], "resent": 0, "errors": []}
    try:
        from annotation.store import FeedbackStore

        store = FeedbackStore(db)
        cands = store.get_run(run_id)["candidate_ids"]
        info = store.get_scan_info(store.get_case(case_id)["scan_hash"])
        height, width = info["height"], info["width"]
        rng = np.random.default_rng(worker)
        barrier.wait(timeout=300)
        started = time.monotonic()
        deadline = started + seconds
        n = 0
        while time.monotonic() < deadline:
            order = rng.permutation(len(cands))
            y1, x1 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            kwargs = dict(ranking={cands[j]: int(r) + 1 for r, j in enumerate(order)},
                          ratings={cands[0]: {"correctness": int(rng.integers(1, 6)),
                                              "clinical_relevance": int(rng.integers(1, 6))}},
                          chosen_candidate_id=cands[int(order[0])],
                          mask=rect_mask(height, width, y1, x1, y1 + height // 4, x1 + width // 4),
                          clicks=int(rng.integers(0, 10)), seconds=float(rng.random() * 60),
                          submission_id=f"w{worker}-{n}")
            fid = store.submit_feedback(case_id, run_id, annotator, **kwargs)
            report["ids"].append(fid)
            if resend_every and n % resend_every == 0:
                if store.submit_feedback(case_id, run_id, annotator, **kwargs) != fid:
                    raise AssertionError(f"resending w{worker}-{n} gave a new row")
                report["resent"] += 1
            n += 1
        report["seconds"] = time.monotonic() - started
        store.close()
    except BaseException:  # report everything: the test asserts there was nothing
        report["errors"].append(traceback.format_exc())
    results.put(report)


def crash_in_transaction(db: str, case_id: int, run_id: int, annotator_id: int, ready, how: str) -> None:
    """Begin a write transaction, insert a feedback row and its ranking, then die before COMMIT:
    `how="exit"` calls os._exit(1) at once; `how="hang"` signals `ready` and waits to be SIGKILLed."""
    from sqlalchemy import insert

    from annotation.schema import Feedback, Ranking, utcnow
    from annotation.store import FeedbackStore

    store = FeedbackStore(db)
    candidate = store.get_run(run_id)["candidate_ids"][0]
    with store.transaction() as conn:
        fid = conn.execute(insert(Feedback.__table__).values(
            case_id=case_id, run_id=run_id, annotator_id=annotator_id, status="submitted",
            submission_id="never-committed", payload_sha256="0" * 64, clicks=0, strokes=0, seconds=0.0,
            created_at=utcnow())).inserted_primary_key[0]
        conn.execute(insert(Ranking.__table__).values(feedback_id=fid, candidate_id=candidate, rank=1))
        if how == "exit":
            os._exit(1)
        ready.set()
        time.sleep(120)
