"""Validated writes of the feedback store: every method checks its whole input and does all decoding, parsing
and mask arithmetic *before* it opens a write transaction, so a bad call raises `FeedbackError` with nothing
written and no model or image work ever holds the write lock. Rows are only appended, never updated.
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import Connection, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from annotation import codec
from annotation.db import Database, FeedbackError
from annotation.queries import Queries
from annotation.schema import RATING_SCALES, Decision, Role, Status, utcnow
from annotation.tables import (T_ANN, T_CAND, T_CASE, T_CORR, T_FB, T_MV, T_RANK, T_RATE, T_REV, T_ROUND,
                               T_ROUND_FB, T_RUN, T_SCAN)
from annotation.validation import as_id, as_int, check_mask, deidentify, jsonable, payload_hash
from coreseg.answer import ANSWER_CLOSE, ANSWER_OPEN, SEG_TOKEN, THINK_CLOSE, THINK_OPEN, parse_answer
from coreseg.metrics import dice
from coreseg.scan_io import scan_identity


class Writes:
    """Every write of the store (see the module docstring); reads what it validates against through `q`."""

    def __init__(self, db: Database, queries: Queries):
        self.db, self.q = db, queries

    def add_annotator(self, name: str, role: str | None = None) -> int:
        """Register a person (idempotent by name); a different role for an existing name is refused."""
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("an annotator needs a non-empty name")
        name = name.strip()
        if role is not None and role not in Role.__members__:
            raise FeedbackError(f"unknown role {role!r}; use one of {', '.join(Role.__members__)}")

        def write(conn: Connection) -> int:
            row = conn.execute(select(T_ANN.c.id, T_ANN.c.role).where(T_ANN.c.name == name)).first()
            if row is not None:
                if role is not None and row.role != role:
                    raise FeedbackError(f"annotator {name!r} already exists with role {row.role!r}, not {role!r}")
                return int(row.id)
            return int(conn.execute(insert(T_ANN).values(name=name, role=role or Role.annotator.value,
                                                         created_at=utcnow())).inserted_primary_key[0])

        return self.db.idempotent(write)

    def put_scan(self, scan: Any) -> str:
        """Store a de-identified scan once under its identity; returns it (idempotent, also when two users
        store the same scan at the same moment).

        `scan` is a `coreseg.scan_io.Scan` (or anything with `pixels`, `meta` and optionally `display`). The key
        is `coreseg.scan_io.scan_identity` of the pixels, the display image and the stored meta, so a DICOM
        whose pixels equal an earlier PNG's is stored as a scan of its own. Pixels are kept losslessly in their
        dtype; identifier-like meta keys are dropped.
        """
        pixels = getattr(scan, "pixels", None)
        if pixels is None:
            raise FeedbackError("a scan needs pixels")
        pixels = np.asarray(pixels)
        if pixels.ndim not in (2, 3) or pixels.size == 0:
            raise FeedbackError(f"scan pixels must be a non-empty 2-D (or H×W×C) array, got shape {pixels.shape}")
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        meta = deidentify(jsonable(dict(getattr(scan, "meta", None) or {})))
        for key, actual in (("height", height), ("width", width)):
            if key in meta and meta[key] is not None and int(meta[key]) != actual:
                raise FeedbackError(f"scan meta says {key} {meta[key]} but the pixels have {actual}")
        display = getattr(scan, "display", None)
        display_png = None
        if display is not None:
            display = np.asarray(display)
            if display.shape[:2] != (height, width):
                raise FeedbackError(f"the display image is {display.shape[:2]} but the pixels are {(height, width)}")
            display = display.astype(np.uint8) if display.dtype != np.uint8 else display
            display_png = codec.to_png_bytes(display)
        content_hash = scan_identity(pixels, display, meta)  # what is stored decides the key, not the caller
        with self.db.read() as conn:
            if conn.execute(select(T_SCAN.c.hash).where(T_SCAN.c.hash == content_hash)).first() is not None:
                return content_hash
        scan_codec, data = codec.encode_pixels(pixels)
        row = dict(hash=content_hash, codec=scan_codec, dtype=pixels.dtype.str, shape=list(pixels.shape),
                   height=height, width=width, modality=meta.get("modality"),
                   source_format=meta.get("source_format"), meta=meta, pixels=data, display_png=display_png,
                   created_at=utcnow())

        def write(conn: Connection) -> str:
            if conn.dialect.name == "postgresql":  # two users storing the same scan at once: both succeed
                conn.execute(pg_insert(T_SCAN).values(**row).on_conflict_do_nothing(index_elements=["hash"]))
            elif conn.execute(select(T_SCAN.c.hash).where(T_SCAN.c.hash == content_hash)).first() is None:
                conn.execute(insert(T_SCAN).values(**row))
            return content_hash

        return self.db.idempotent(write)

    def add_case(self, scan_hash: str, question: str, created_by: str | int, target: str | None = None) -> int:
        """A scan and a clinical question (optionally the lesion's name, used when a reasoning has none)."""
        if not isinstance(question, str) or not question.strip():
            raise FeedbackError("a case needs a non-empty question")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise FeedbackError("a case's target, when given, must be a non-empty name")
        self.q.scan_row(scan_hash, T_SCAN.c.hash)
        author = self.q.require_annotator(created_by, "case author")
        row = dict(scan_hash=scan_hash, question=question.strip(), target=target.strip() if target else None,
                   created_by=author.id, created_at=utcnow())
        return self.db.write(lambda conn: int(conn.execute(insert(T_CASE).values(**row)).inserted_primary_key[0]))

    def add_model_version(self, name: str, checkpoint_path: str | os.PathLike | None = None,
                          parent: str | int | None = None, metrics: dict | None = None,
                          notes: str | None = None) -> int:
        """Register a model version (idempotent on name; a name never points at two checkpoints)."""
        if not isinstance(name, str) or not name.strip():
            raise FeedbackError("a model version needs a non-empty name")
        name = name.strip()
        checkpoint = str(checkpoint_path) if checkpoint_path is not None else None
        parent_id = self.q.model_version_id(parent) if parent is not None else None

        def write(conn: Connection) -> int:
            row = conn.execute(select(T_MV.c.id, T_MV.c.checkpoint_path).where(T_MV.c.name == name)).first()
            if row is not None:
                if checkpoint is not None and row.checkpoint_path not in (None, checkpoint):
                    raise FeedbackError(f"model version {name!r} is already registered with checkpoint "
                                        f"{row.checkpoint_path!r}; give the new checkpoint a new name")
                return int(row.id)
            return int(conn.execute(insert(T_MV).values(
                name=name, checkpoint_path=checkpoint, parent_id=parent_id, metrics=jsonable(metrics),
                notes=notes, created_at=utcnow())).inserted_primary_key[0])

        return self.db.idempotent(write)

    def add_run(self, case_id: int, model_version: str | int | None, sampling: dict | None,
                candidates: Sequence[Any]) -> tuple[int, list[int]]:
        """Store one sampling of a model on a case and its candidates (one group); returns (run id, candidate ids).

        Each candidate's text is parsed with `coreseg.answer.parse_answer` (reasoning, target, boxes and parse
        errors are kept beside the raw text) and its mask is checked against the scan's height × width.
        """
        case = self.q.get_case(case_id)
        info = self.q.get_scan_info(case["scan_hash"])
        height, width = info["height"], info["width"]
        if not candidates:
            raise FeedbackError("a run needs at least one candidate")
        if model_version is None:
            model_version = getattr(candidates[0], "model_version", "") or None
            if model_version is None:
                raise FeedbackError("say which model version produced the candidates")
        version_id = self.q.model_version_id(model_version)
        rows = []
        for index, cand in enumerate(candidates):
            text = getattr(cand, "text", None)
            if not isinstance(text, str):
                raise FeedbackError(f"candidate {index}: text must be a string")
            mask = check_mask(getattr(cand, "mask", None), height, width, f"candidate {index}'s mask")
            score = getattr(cand, "mask_score", None)
            try:
                score = float(score)
            except (TypeError, ValueError):
                raise FeedbackError(f"candidate {index}: mask_score must be a number, got {score!r}") from None
            token_ids = list(getattr(cand, "token_ids", None) or [])
            logprobs = list(getattr(cand, "token_logprobs", None) or [])
            if token_ids and logprobs and len(token_ids) != len(logprobs):
                raise FeedbackError(f"candidate {index}: {len(token_ids)} token ids but {len(logprobs)} log-probs")
            parsed = parse_answer(text, (height, width))
            answer = parsed.answer
            rows.append(dict(
                group_index=index, text=text, reasoning=answer.reasoning if answer else "",
                target=answer.target if answer else "", boxes=[list(b) for b in answer.boxes] if answer else [],
                parse_errors=list(parsed.errors), mask_png=codec.encode_mask(mask), mask_area=int(mask.sum()),
                mask_score=score, token_ids=codec.pack_ints(token_ids), token_logprobs=codec.pack_floats(logprobs),
                sampling=jsonable(dict(getattr(cand, "sampling", None) or {})),
                trained=bool(getattr(cand, "trained", True))))
        run_row = dict(case_id=case["id"], model_version_id=version_id, sampling=jsonable(dict(sampling or {})),
                       created_at=utcnow())

        def write(conn: Connection) -> tuple[int, list[int]]:
            run_id = int(conn.execute(insert(T_RUN).values(**run_row)).inserted_primary_key[0])
            ids = [int(conn.execute(insert(T_CAND).values(run_id=run_id, **r)).inserted_primary_key[0])
                   for r in rows]
            return run_id, ids

        return self.db.write(write)

    def submit_feedback(self, case_id: int, run_id: int, annotator: str | int, *,
                        ranking: dict[int, int] | None = None,
                        ratings: dict[int, dict[str, int]] | None = None,
                        chosen_candidate_id: int | None = None, edited_reasoning: str | None = None,
                        mask: np.ndarray | None = None, clicks: int = 0, strokes: int = 0, seconds: float = 0.0,
                        status: str = "submitted", submission_id: str | None = None,
                        supersedes: int | None = None, comment: str | None = None) -> int:
        """Store one submission atomically; returns its feedback id.

        ranking: candidate id → rank (1 = best, ties allowed, 1 … group size); ratings: candidate id → {scale:
        integer on `RATING_SCALES`}; edited_reasoning: the annotator's rewrite of the chosen (or unique top-ranked,
        or only) candidate's reasoning; mask: the corrected mask (H×W bool) of that same proposal, whose Dice
        against the proposal is stored with the clicks, strokes and seconds spent. `submission_id` makes the call
        idempotent: the same id with the same content returns the first row's id. `supersedes` names this
        annotator's earlier draft on the same run that this row finalises (submitted) or discards.
        Raises `FeedbackError`, before writing anything, on any invalid part.
        """
        info = self.q.run_info(run_id)
        case_id = as_id(case_id, "case id")
        if info.case_id != case_id:
            raise FeedbackError(f"run {info.run_id} belongs to case {info.case_id}, not case {case_id}")
        person = self.q.require_annotator(annotator)
        if status not in Status.__members__:
            raise FeedbackError(f"unknown status {status!r}; use one of {', '.join(Status.__members__)}")
        group = set(info.candidate_ids)
        n = len(info.candidate_ids)

        def candidate(value: Any, what: str) -> int:
            cid = as_id(value, what)
            if cid not in group:
                raise FeedbackError(f"{what} {cid} is not one of run {info.run_id}'s candidates "
                                    f"{sorted(group)}")
            return cid

        ranks: dict[int, int] = {}
        if ranking is not None:
            if not isinstance(ranking, dict):
                raise FeedbackError("ranking must map candidate id → rank")
            for key, value in ranking.items():
                cid = candidate(key, "ranked candidate")
                rank = as_int(value, f"rank of candidate {cid}")
                if not 1 <= rank <= n:
                    raise FeedbackError(f"rank {rank} of candidate {cid} is out of range: ranks go from 1 (best) "
                                        f"to {n} (the group's size)")
                ranks[cid] = rank
        scores: dict[int, dict[str, int]] = {}
        if ratings is not None:
            if not isinstance(ratings, dict):
                raise FeedbackError("ratings must map candidate id → {scale: value}")
            for key, per_scale in ratings.items():
                cid = candidate(key, "rated candidate")
                if not isinstance(per_scale, dict) or not per_scale:
                    raise FeedbackError(f"ratings of candidate {cid} must be a non-empty {{scale: value}} dict")
                for scale, value in per_scale.items():
                    if scale not in RATING_SCALES:
                        raise FeedbackError(f"unknown rating scale {scale!r}; the scales are "
                                            f"{', '.join(RATING_SCALES)}")
                    low, high = RATING_SCALES[scale]
                    value = as_int(value, f"{scale} rating of candidate {cid}")
                    if not low <= value <= high:
                        raise FeedbackError(f"{scale} rating {value} of candidate {cid} is off the scale "
                                            f"{low}–{high}")
                    scores.setdefault(cid, {})[scale] = value
        chosen = candidate(chosen_candidate_id, "chosen candidate") if chosen_candidate_id is not None else None

        def proposal(what: str) -> int:
            if chosen is not None:
                return chosen
            best = [c for c, r in ranks.items() if r == min(ranks.values())] if ranks else []
            if len(best) == 1:
                return best[0]
            if n == 1:
                return info.candidate_ids[0]
            raise FeedbackError(f"{what}: say which candidate it starts from (chosen_candidate_id)")

        edited, edited_candidate = None, None
        if edited_reasoning is not None:
            if not isinstance(edited_reasoning, str) or not edited_reasoning.strip():
                raise FeedbackError("edited reasoning, when given, must be non-empty text")
            if any(tag in edited_reasoning for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
                                                       SEG_TOKEN)):
                raise FeedbackError("edited reasoning must be plain text, without <think>, <answer> or <seg>")
            edited = edited_reasoning
            edited_candidate = proposal("the edited reasoning")
        correction = None
        if mask is not None:
            corrected = check_mask(mask, info.height, info.width, "the corrected mask")
            proposal_id = proposal("the corrected mask")
            correction = dict(proposal_candidate_id=proposal_id, mask_png=codec.encode_mask(corrected),
                              height=info.height, width=info.width, mask_area=int(corrected.sum()),
                              proposal_dice=float(dice(self.q.candidate_mask(proposal_id), corrected)))
        clicks = as_int(clicks, "clicks")
        strokes = as_int(strokes, "strokes")
        if clicks < 0 or strokes < 0:
            raise FeedbackError("clicks and strokes cannot be negative")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise FeedbackError(f"seconds must be a number, got {seconds!r}") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise FeedbackError(f"seconds must be a finite number ≥ 0, got {seconds}")
        if comment is not None and not isinstance(comment, str):
            raise FeedbackError("comment must be text")
        if submission_id is not None and (not isinstance(submission_id, str) or not submission_id.strip()
                                          or len(submission_id) > 200):
            raise FeedbackError("submission_id must be a non-empty string of at most 200 characters")
        supersedes_id = as_id(supersedes, "superseded feedback id") if supersedes is not None else None
        empty = not ranks and not scores and chosen is None and edited is None and correction is None
        if empty and status != Status.discarded.value:
            raise FeedbackError("empty submission: give a ranking, ratings, a chosen candidate, an edited "
                                "reasoning or a corrected mask (or discard it)")
        payload = {
            "case": case_id, "run": info.run_id, "annotator": int(person.id), "status": status,
            "ranking": sorted(ranks.items()), "ratings": sorted((c, sorted(s.items())) for c, s in scores.items()),
            "chosen": chosen, "edited": edited, "edited_candidate": edited_candidate,
            "mask": hashlib.sha256(correction["mask_png"]).hexdigest() if correction else None,
            "proposal": correction["proposal_candidate_id"] if correction else None,
            "clicks": clicks, "strokes": strokes, "seconds": seconds, "supersedes": supersedes_id,
            "comment": comment,
        }
        digest = payload_hash(payload)
        row = dict(case_id=case_id, run_id=info.run_id, annotator_id=int(person.id), status=status,
                   submission_id=submission_id, payload_sha256=digest, chosen_candidate_id=chosen,
                   edited_reasoning=edited, edited_candidate_id=edited_candidate, clicks=clicks, strokes=strokes,
                   seconds=seconds, supersedes_id=supersedes_id, comment=comment)

        def write(conn: Connection) -> int:
            if submission_id is not None:
                prior = conn.execute(select(T_FB.c.id, T_FB.c.payload_sha256)
                                     .where(T_FB.c.submission_id == submission_id)).first()
                if prior is not None:
                    if prior.payload_sha256 != digest:
                        raise FeedbackError(f"submission {submission_id!r} was already stored (feedback "
                                            f"{prior.id}) with different content; use a new submission id")
                    return int(prior.id)
            if supersedes_id is not None:
                old = conn.execute(select(T_FB.c.run_id, T_FB.c.annotator_id, T_FB.c.status)
                                   .where(T_FB.c.id == supersedes_id)).first()
                if old is None or old.run_id != info.run_id or old.annotator_id != person.id:
                    raise FeedbackError(f"feedback {supersedes_id} is not this annotator's on run {info.run_id}")
                if old.status != Status.draft.value:
                    raise FeedbackError(f"feedback {supersedes_id} is {old.status}; only a draft can be superseded")
                if conn.execute(select(T_FB.c.id).where(T_FB.c.supersedes_id == supersedes_id)).first():
                    raise FeedbackError(f"draft {supersedes_id} was already superseded")
            feedback_id = int(conn.execute(insert(T_FB).values(created_at=utcnow(), **row))
                              .inserted_primary_key[0])
            if ranks:
                conn.execute(insert(T_RANK), [dict(feedback_id=feedback_id, candidate_id=c, rank=r)
                                              for c, r in ranks.items()])
            if scores:
                conn.execute(insert(T_RATE), [dict(feedback_id=feedback_id, candidate_id=c, scale=s, value=v)
                                              for c, per in scores.items() for s, v in per.items()])
            if correction:
                conn.execute(insert(T_CORR).values(feedback_id=feedback_id, **correction))
            return feedback_id

        return self.db.idempotent(write)

    def review(self, feedback_id: int, reviewer: str | int, decision: str, reason: str = "",
               review_id: str | None = None) -> int:
        """Accept, reject or flag a submitted feedback row (reject and flag need a reason); returns the review id."""
        feedback_id = as_id(feedback_id, "feedback id")
        person = self.q.require_annotator(reviewer, "reviewer")
        if person.role not in (Role.reviewer.value, Role.admin.value):
            raise FeedbackError(f"{person.name} is an {person.role}; only reviewers and admins can review")
        if decision not in Decision.__members__:
            raise FeedbackError(f"unknown decision {decision!r}; use accept, reject or flag")
        if not isinstance(reason, str):
            raise FeedbackError("reason must be text")
        if decision != Decision.accept.value and not reason.strip():
            raise FeedbackError(f"a {decision} needs a reason")
        if review_id is not None and (not isinstance(review_id, str) or not review_id.strip()):
            raise FeedbackError("review_id must be a non-empty string")
        row = dict(feedback_id=feedback_id, reviewer_id=int(person.id), decision=decision, reason=reason,
                   review_id=review_id)

        def write(conn: Connection) -> int:
            if review_id is not None:
                prior = conn.execute(select(T_REV).where(T_REV.c.review_id == review_id)).first()
                if prior is not None:
                    if (prior.feedback_id, prior.reviewer_id, prior.decision, prior.reason) != (
                            feedback_id, person.id, decision, reason):
                        raise FeedbackError(f"review {review_id!r} was already stored with different content")
                    return int(prior.id)
            status = conn.execute(select(T_FB.c.status).where(T_FB.c.id == feedback_id)).scalar_one_or_none()
            if status is None:
                raise FeedbackError(f"unknown feedback {feedback_id}")
            if status != Status.submitted.value:
                raise FeedbackError(f"feedback {feedback_id} is {status}; only submitted feedback can be reviewed")
            return int(conn.execute(insert(T_REV).values(created_at=utcnow(), **row)).inserted_primary_key[0])

        return self.db.idempotent(write)

    def add_training_round(self, base_version: str | int | None, out_version: str | int,
                           feedback_ids: Iterable[int], metrics: dict | None = None,
                           report_path: str | os.PathLike | None = None) -> int:
        """Record which feedback went into a training run, the version it produced and its evaluation."""
        base_id = self.q.model_version_id(base_version) if base_version is not None else None
        out_id = self.q.model_version_id(out_version)
        ids = sorted({as_id(f, "feedback id") for f in feedback_ids})
        if not ids:
            raise FeedbackError("a training round needs the feedback ids that went into it")
        found = self.q.chunked(lambda chunk: select(T_FB.c.id).where(T_FB.c.id.in_(chunk)), ids)
        missing = sorted(set(ids) - {r.id for r in found})
        if missing:
            raise FeedbackError(f"unknown feedback ids {missing[:10]}{'…' if len(missing) > 10 else ''}")
        row = dict(base_version_id=base_id, out_version_id=out_id, metrics=jsonable(metrics),
                   report_path=str(report_path) if report_path is not None else None, created_at=utcnow())

        def write(conn: Connection) -> int:
            round_id = int(conn.execute(insert(T_ROUND).values(**row)).inserted_primary_key[0])
            conn.execute(insert(T_ROUND_FB), [dict(round_id=round_id, feedback_id=f) for f in ids])
            return round_id

        return self.db.write(write)

