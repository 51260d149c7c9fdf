"""Read models of the feedback store: what the app, the reviewer, the dashboard, exports and trainers read.

Plain dicts out, no writes. Runs, candidate masks and annotators never change once stored, so they are cached
(bounded, thread-safe: the app shares one store between threads).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Sequence

import numpy as np
from sqlalchemy import Connection, func, select

from annotation import codec, migrations
from annotation.db import Database, FeedbackError
from annotation.schema import Decision, Status
from annotation.tables import (T_ANN, T_CAND, T_CASE, T_CORR, T_FB, T_MV, T_RANK, T_RATE, T_REV, T_ROUND,
                               T_ROUND_FB, T_RUN, T_SCAN)
from annotation.validation import as_id, as_int, aware
from coreseg.cache import LRU as _Lru  # the one bounded, thread-safe cache type

CHUNK = 500  # ids per IN (…) list: far below every database's bound-parameter limit


@dataclass(frozen=True)
class RunInfo:
    """What validation needs to know about a run; immutable once written, so safe to cache."""

    run_id: int
    case_id: int
    height: int
    width: int
    candidate_ids: tuple[int, ...]
    model_version: str


def _feedback_joins(latest):
    """Feedback with its run, case, model version, author, correction and latest review."""
    return (T_FB.join(T_RUN, T_FB.c.run_id == T_RUN.c.id)
            .join(T_CASE, T_FB.c.case_id == T_CASE.c.id)
            .join(T_MV, T_RUN.c.model_version_id == T_MV.c.id)
            .join(T_ANN, T_FB.c.annotator_id == T_ANN.c.id)
            .outerjoin(T_CORR, T_CORR.c.feedback_id == T_FB.c.id)
            .outerjoin(latest, latest.c.feedback_id == T_FB.c.id))


def _not_superseded():
    """Drafts that a later row finalised or discarded are history, not work to show."""
    superseding = T_FB.alias("superseding")
    return ~select(superseding.c.id).where(superseding.c.supersedes_id == T_FB.c.id).exists()


class Queries:
    """Every read of the store (see the module docstring)."""

    def __init__(self, db: Database):
        self.db = db
        self._runs = _Lru(4096)
        self._masks = _Lru(256)
        self._annotators = _Lru(4096)

    def schema_version(self) -> int | None:
        """The database's schema version (None for an empty database)."""
        with self.db.read() as conn:
            return migrations.read_version(conn)

    def get_annotator(self, name_or_id: str | int) -> dict | None:
        with self.db.read() as conn:
            row = self._annotator_row(conn, name_or_id)
        return dict(row._mapping) if row is not None else None

    def list_annotators(self) -> list[dict]:
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(T_ANN).order_by(T_ANN.c.id))]

    @staticmethod
    def _annotator_row(conn: Connection, ref: str | int):
        column = T_ANN.c.name if isinstance(ref, str) else T_ANN.c.id
        value = ref.strip() if isinstance(ref, str) else ref
        return conn.execute(select(T_ANN).where(column == value)).first()

    def require_annotator(self, ref: str | int, what: str = "annotator") -> Any:
        """The annotator's row by name or id (cached: names and roles never change once stored)."""
        if not isinstance(ref, (str, int, np.integer)) or isinstance(ref, bool):
            raise FeedbackError(f"{what} must be a name or an id, got {ref!r}")
        key = ref.strip() if isinstance(ref, str) else int(ref)
        row = self._annotators.get(key)
        if row is None:
            with self.db.read() as conn:
                row = self._annotator_row(conn, key)
            if row is None:
                raise FeedbackError(f"unknown {what} {ref!r}; register them first (add_annotator)")
            self._annotators.put(key, row)
        return row

    def scan_row(self, scan_hash: str, *columns):
        with self.db.read() as conn:
            row = conn.execute(select(*(columns or (T_SCAN,))).where(T_SCAN.c.hash == scan_hash)).first()
        if row is None:
            raise FeedbackError(f"unknown scan {scan_hash!r}")
        return row

    def get_scan_pixels(self, scan_hash: str) -> np.ndarray:
        """The stored pixels, bit for bit, in their original dtype."""
        row = self.scan_row(scan_hash, T_SCAN.c.codec, T_SCAN.c.pixels, T_SCAN.c.dtype)
        pixels = codec.decode_pixels(row.codec, row.pixels)
        return pixels.astype(np.dtype(row.dtype), copy=False)

    def get_scan_meta(self, scan_hash: str) -> dict:
        """The stored (de-identified) meta: modality, source format, spacing, window, slice, affine…"""
        row = self.scan_row(scan_hash, T_SCAN.c.meta)
        return dict(row.meta or {})

    def get_scan_info(self, scan_hash: str) -> dict:
        """Hash, dtype, shape, height, width, modality, source format and meta (no pixels)."""
        row = self.scan_row(scan_hash, T_SCAN.c.hash, T_SCAN.c.dtype, T_SCAN.c.shape, T_SCAN.c.height,
                             T_SCAN.c.width, T_SCAN.c.modality, T_SCAN.c.source_format, T_SCAN.c.meta,
                             T_SCAN.c.created_at)
        return dict(row._mapping)

    def get_scan_display_png(self, scan_hash: str) -> bytes | None:
        """The uint8 RGB image the model and the clinician saw, as PNG bytes (None if none was stored)."""
        return self.scan_row(scan_hash, T_SCAN.c.display_png).display_png

    def get_case(self, case_id: int) -> dict:
        with self.db.read() as conn:
            row = conn.execute(select(T_CASE).where(T_CASE.c.id == as_id(case_id, "case id"))).first()
        if row is None:
            raise FeedbackError(f"unknown case {case_id!r}")
        return dict(row._mapping)

    # ------------------------------------------------------------------ model versions and runs

    def list_model_versions(self) -> list[dict]:
        parent = T_MV.alias("parent")
        query = (select(T_MV, parent.c.name.label("parent")).select_from(T_MV.outerjoin(parent, T_MV.c.parent_id
                                                                                           == parent.c.id))
                 .order_by(T_MV.c.id))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def model_version_id(self, ref: str | int) -> int:
        if isinstance(ref, str):
            column, value = T_MV.c.name, ref.strip()
        else:
            column, value = T_MV.c.id, as_int(ref, "model version id")
        with self.db.read() as conn:
            row = conn.execute(select(T_MV.c.id).where(column == value)).first()
        if row is None:
            raise FeedbackError(f"unknown model version {ref!r}; register it first (add_model_version)")
        return int(row.id)

    def run_info(self, run_id: int) -> RunInfo:
        run_id = as_id(run_id, "run id")
        cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        with self.db.read() as conn:
            row = conn.execute(
                select(T_RUN.c.id, T_RUN.c.case_id, T_SCAN.c.height, T_SCAN.c.width, T_MV.c.name)
                .select_from(T_RUN.join(T_CASE, T_RUN.c.case_id == T_CASE.c.id)
                             .join(T_SCAN, T_CASE.c.scan_hash == T_SCAN.c.hash)
                             .join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                .where(T_RUN.c.id == run_id)).first()
            if row is None:
                raise FeedbackError(f"unknown run {run_id}")
            ids = conn.execute(select(T_CAND.c.id).where(T_CAND.c.run_id == run_id)
                               .order_by(T_CAND.c.group_index)).scalars().all()
        info = RunInfo(run_id, int(row.case_id), int(row.height), int(row.width), tuple(int(i) for i in ids),
                        row.name)
        self._runs.put(run_id, info)
        return info

    def candidate_mask(self, candidate_id: int) -> np.ndarray:
        cached = self._masks.get(candidate_id)
        if cached is None:
            with self.db.read() as conn:
                data = conn.execute(select(T_CAND.c.mask_png).where(T_CAND.c.id == candidate_id)).scalar_one()
            cached = codec.decode_mask(data)
            cached.setflags(write=False)
            self._masks.put(candidate_id, cached)
        return cached

    def get_run(self, run_id: int) -> dict:
        info = self.run_info(run_id)
        with self.db.read() as conn:
            row = conn.execute(select(T_RUN).where(T_RUN.c.id == info.run_id)).first()
        return dict(row._mapping) | {"model_version": info.model_version, "candidate_ids": list(info.candidate_ids)}

    def get_candidates(self, run_id: int, with_masks: bool = True) -> list[dict]:
        """The candidates of a run in group order: text, parsed fields, mask (bool), score, tokens, log-probs."""
        info = self.run_info(run_id)
        with self.db.read() as conn:
            rows = conn.execute(select(T_CAND).where(T_CAND.c.run_id == info.run_id)
                                .order_by(T_CAND.c.group_index)).all()
        return [self._candidate_dict(r, with_masks) for r in rows]

    @staticmethod
    def _candidate_dict(row, with_masks: bool) -> dict:
        out = dict(row._mapping)
        out["token_ids"] = codec.unpack_ints(out["token_ids"])
        out["token_logprobs"] = codec.unpack_floats(out["token_logprobs"])
        if with_masks:
            out["mask"] = codec.decode_mask(out["mask_png"])
        return out

    def get_feedback(self, feedback_id: int, with_mask: bool = True) -> dict:
        """One submission as stored: ranking, ratings, edit, corrected mask, effort, reviews."""
        feedback_id = as_id(feedback_id, "feedback id")
        with self.db.read() as conn:
            row = conn.execute(select(T_FB, T_ANN.c.name.label("annotator"))
                               .select_from(T_FB.join(T_ANN, T_FB.c.annotator_id == T_ANN.c.id))
                               .where(T_FB.c.id == feedback_id)).first()
            if row is None:
                raise FeedbackError(f"unknown feedback {feedback_id}")
            out = dict(row._mapping)
            out["ranking"] = {r.candidate_id: r.rank for r in conn.execute(
                select(T_RANK).where(T_RANK.c.feedback_id == feedback_id).order_by(T_RANK.c.id))}
            ratings: dict[int, dict[str, int]] = {}
            for r in conn.execute(select(T_RATE).where(T_RATE.c.feedback_id == feedback_id).order_by(T_RATE.c.id)):
                ratings.setdefault(r.candidate_id, {})[r.scale] = r.value
            out["ratings"] = ratings
            corr = conn.execute(select(T_CORR).where(T_CORR.c.feedback_id == feedback_id)).first()
            out["correction"] = None
            if corr is not None:
                c = dict(corr._mapping)
                if with_mask:
                    c["mask"] = codec.decode_mask(c["mask_png"])
                out["correction"] = c
            out["reviews"] = [dict(r._mapping) for r in conn.execute(
                select(T_REV, T_ANN.c.name.label("reviewer"))
                .select_from(T_REV.join(T_ANN, T_REV.c.reviewer_id == T_ANN.c.id))
                .where(T_REV.c.feedback_id == feedback_id).order_by(T_REV.c.id))]
        out["mask"] = out["correction"]["mask"] if out["correction"] and with_mask else None
        return out

    # ------------------------------------------------------------------ reviews and the accepted mask

    @staticmethod
    def _latest_review():
        """Subquery: each reviewed feedback row's latest review (decision, reason, reviewer, time)."""
        latest = select(T_REV.c.feedback_id, func.max(T_REV.c.id).label("review_pk")).group_by(
            T_REV.c.feedback_id).subquery("latest_ids")
        return (select(T_REV.c.feedback_id, T_REV.c.decision, T_REV.c.reason, T_REV.c.reviewer_id,
                       T_REV.c.created_at.label("reviewed_at"))
                .select_from(T_REV.join(latest, T_REV.c.id == latest.c.review_pk)).subquery("latest_review"))

    def accepted_corrections(self, case_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """case id → its accepted correction: the latest (newest feedback) correction whose latest review accepts
        it. Carries the feedback id, annotator, proposal candidate, Dice, edit and the mask's PNG bytes."""
        latest = self._latest_review()
        query = (select(T_FB.c.case_id, T_FB.c.id.label("feedback_id"), T_FB.c.annotator_id, T_FB.c.run_id,
                        T_FB.c.edited_reasoning, T_FB.c.edited_candidate_id, T_FB.c.chosen_candidate_id,
                        T_FB.c.created_at, T_CORR.c.proposal_candidate_id, T_CORR.c.proposal_dice,
                        T_CORR.c.mask_png, T_CORR.c.height, T_CORR.c.width, T_CORR.c.mask_area,
                        latest.c.reviewed_at)
                 .select_from(T_FB.join(T_CORR, T_CORR.c.feedback_id == T_FB.c.id)
                              .join(latest, latest.c.feedback_id == T_FB.c.id))
                 .where(latest.c.decision == Decision.accept.value, T_FB.c.status == Status.submitted.value)
                 .order_by(T_FB.c.case_id, T_FB.c.id))
        out: dict[int, dict] = {}
        with self.db.read() as conn:
            if case_ids is None:
                rows = conn.execute(query).all()
            else:
                ids = sorted({int(c) for c in case_ids})
                rows = [r for chunk in range(0, len(ids), CHUNK)
                        for r in conn.execute(query.where(T_FB.c.case_id.in_(ids[chunk:chunk + CHUNK])))]
        for r in rows:  # ordered by feedback id: the last one per case wins
            out[int(r.case_id)] = dict(r._mapping)
        return out

    def accepted_mask(self, case_id: int) -> np.ndarray | None:
        """The case's accepted mask (latest accepted correction), or None when none is accepted yet."""
        found = self.accepted_corrections([as_id(case_id, "case id")]).get(int(case_id))
        return codec.decode_mask(found["mask_png"]) if found else None

    # ------------------------------------------------------------------ reading for the app, the reviewer, exports

    def queue(self, status: str | None = "submitted", model_version: str | None = None,
              annotator: str | int | None = None, review_state: str | None = None, case_id: int | None = None,
              limit: int | None = None) -> list[dict]:
        """Feedback rows for the reviewer page, oldest first, with their latest review.

        review_state: None (all), "unreviewed", or a decision ("accept", "reject", "flag"). Drafts that were
        later finalised or discarded are left out.
        """
        latest = self._latest_review()
        reviewer = T_ANN.alias("reviewer")
        query = (select(T_FB.c.id.label("feedback_id"), T_FB.c.case_id, T_FB.c.run_id, T_CASE.c.scan_hash,
                        T_CASE.c.question, T_MV.c.name.label("model_version"), T_ANN.c.name.label("annotator"),
                        T_FB.c.status, T_FB.c.created_at, T_FB.c.chosen_candidate_id,
                        (T_FB.c.edited_reasoning.is_not(None)).label("edited"),
                        T_CORR.c.id.is_not(None).label("has_mask"), T_CORR.c.proposal_dice, T_FB.c.seconds,
                        T_FB.c.clicks, T_FB.c.strokes, latest.c.decision.label("review"),
                        latest.c.reason.label("review_reason"), reviewer.c.name.label("reviewer"),
                        latest.c.reviewed_at)
                 .select_from(_feedback_joins(latest).outerjoin(reviewer, reviewer.c.id == latest.c.reviewer_id))
                 .where(_not_superseded())
                 .order_by(T_FB.c.id))
        if status is not None:
            if status not in Status.__members__:
                raise FeedbackError(f"unknown status {status!r}")
            query = query.where(T_FB.c.status == status)
        if model_version is not None:
            query = query.where(T_MV.c.name == model_version)
        if annotator is not None:
            person = self.require_annotator(annotator)
            query = query.where(T_FB.c.annotator_id == person.id)
        if case_id is not None:
            query = query.where(T_FB.c.case_id == as_id(case_id, "case id"))
        if review_state == "unreviewed":
            query = query.where(latest.c.decision.is_(None))
        elif review_state is not None:
            if review_state not in Decision.__members__:
                raise FeedbackError(f"unknown review state {review_state!r}")
            query = query.where(latest.c.decision == review_state)
        if limit is not None:
            query = query.limit(int(limit))
        with self.db.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for r in rows:
            r["edited"], r["has_mask"] = bool(r["edited"]), bool(r["has_mask"])
        return rows

    def feedback_history(self, case_id: int) -> list[dict]:
        """The audit trail of a case, oldest first: the case, each run, each submission, each review."""
        case = self.get_case(case_id)
        with self.db.read() as conn:
            author = self._annotator_row(conn, int(case["created_by"]))
            runs = conn.execute(select(T_RUN, T_MV.c.name.label("model_version"))
                                .select_from(T_RUN.join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                                .where(T_RUN.c.case_id == case["id"]).order_by(T_RUN.c.id)).all()
            fb_ids = conn.execute(select(T_FB.c.id).where(T_FB.c.case_id == case["id"])
                                  .order_by(T_FB.c.id)).scalars().all()
        events = [{"kind": "case", "at": case["created_at"], "actor": author.name, "case_id": case["id"],
                   "question": case["question"], "scan_hash": case["scan_hash"]}]
        for run in runs:
            events.append({"kind": "run", "at": run.created_at, "actor": run.model_version, "run_id": run.id,
                           "sampling": run.sampling, "candidate_ids": list(self.run_info(run.id).candidate_ids)})
        for fid in fb_ids:
            fb = self.get_feedback(fid, with_mask=False)
            corr = fb["correction"]
            events.append({"kind": "feedback", "at": fb["created_at"], "actor": fb["annotator"], "feedback_id": fid,
                           "run_id": fb["run_id"], "status": fb["status"], "submission_id": fb["submission_id"],
                           "ranking": fb["ranking"], "ratings": fb["ratings"],
                           "chosen_candidate_id": fb["chosen_candidate_id"],
                           "edited_reasoning": fb["edited_reasoning"], "comment": fb["comment"],
                           "supersedes_id": fb["supersedes_id"], "clicks": fb["clicks"], "strokes": fb["strokes"],
                           "seconds": fb["seconds"],
                           "correction": None if corr is None else {
                               k: corr[k] for k in ("proposal_candidate_id", "proposal_dice", "mask_area")}})
            for rev in fb["reviews"]:
                events.append({"kind": "review", "at": rev["created_at"], "actor": rev["reviewer"],
                               "feedback_id": fid, "review_pk": rev["id"], "decision": rev["decision"],
                               "reason": rev["reason"]})
        order = {"case": 0, "run": 1, "feedback": 2, "review": 3}
        events.sort(key=lambda e: (e["at"], order[e["kind"]]))
        return events

    def feedback_rows(self, status: str | Sequence[str] | None = "submitted", since: datetime | None = None,
                      until: datetime | None = None, model_version: str | Sequence[str] | None = None,
                      min_raters: int | None = None) -> list[dict]:
        """Filtered feedback for exports and summaries, in id order (one query, no masks).

        Each row: feedback fields, annotator name, model version, scan hash, question, target, correction
        fields (proposal, Dice, area) and the latest review. `min_raters` keeps runs that at least that many
        distinct annotators gave (filtered) feedback on. Superseded drafts are left out.
        """
        latest = self._latest_review()
        query = (select(T_FB, T_ANN.c.name.label("annotator"), T_MV.c.name.label("model_version"),
                        T_CASE.c.scan_hash, T_CASE.c.question, T_CASE.c.target.label("case_target"),
                        T_CORR.c.proposal_candidate_id, T_CORR.c.proposal_dice, T_CORR.c.mask_area,
                        latest.c.decision.label("review"))
                 .select_from(_feedback_joins(latest))
                 .where(_not_superseded())
                 .order_by(T_FB.c.id))
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            for s in statuses:
                if s not in Status.__members__:
                    raise FeedbackError(f"unknown status {s!r}")
            query = query.where(T_FB.c.status.in_(statuses))
        if since is not None:
            query = query.where(T_FB.c.created_at >= aware(since))
        if until is not None:
            query = query.where(T_FB.c.created_at < aware(until))
        if model_version is not None:
            names = [model_version] if isinstance(model_version, str) else list(model_version)
            query = query.where(T_MV.c.name.in_(names))
        with self.db.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        if min_raters:
            raters: dict[int, set[int]] = {}
            for r in rows:
                raters.setdefault(r["run_id"], set()).add(r["annotator_id"])
            rows = [r for r in rows if len(raters[r["run_id"]]) >= int(min_raters)]
        return rows

    def chunked(self, query_for, ids: Iterable[int]) -> list:
        ids = sorted({int(i) for i in ids})
        out: list = []
        with self.db.read() as conn:
            for start in range(0, len(ids), CHUNK):
                out.extend(conn.execute(query_for(ids[start:start + CHUNK])).all())
        return out

    def rankings_for(self, feedback_ids: Iterable[int]) -> dict[int, dict[int, int]]:
        """feedback id → {candidate id: rank}."""
        out: dict[int, dict[int, int]] = {}
        for r in self.chunked(lambda ids: select(T_RANK).where(T_RANK.c.feedback_id.in_(ids))
                               .order_by(T_RANK.c.id), feedback_ids):
            out.setdefault(r.feedback_id, {})[r.candidate_id] = r.rank
        return out

    def ratings_for(self, feedback_ids: Iterable[int]) -> dict[int, dict[int, dict[str, int]]]:
        """feedback id → {candidate id: {scale: value}}."""
        out: dict[int, dict[int, dict[str, int]]] = {}
        for r in self.chunked(lambda ids: select(T_RATE).where(T_RATE.c.feedback_id.in_(ids))
                               .order_by(T_RATE.c.id), feedback_ids):
            out.setdefault(r.feedback_id, {}).setdefault(r.candidate_id, {})[r.scale] = r.value
        return out

    def candidates_for_runs(self, run_ids: Iterable[int]) -> dict[int, list[dict]]:
        """run id → its candidates in group order (mask as PNG bytes in `mask_png`, tokens unpacked)."""
        out: dict[int, list[dict]] = {}
        for r in self.chunked(lambda ids: select(T_CAND).where(T_CAND.c.run_id.in_(ids))
                               .order_by(T_CAND.c.run_id, T_CAND.c.group_index), run_ids):
            out.setdefault(r.run_id, []).append(self._candidate_dict(r, with_masks=False))
        return out

    def runs_for(self, run_ids: Iterable[int]) -> dict[int, dict]:
        """run id → run fields with the model version's name."""
        rows = self.chunked(lambda ids: select(T_RUN, T_MV.c.name.label("model_version"))
                             .select_from(T_RUN.join(T_MV, T_RUN.c.model_version_id == T_MV.c.id))
                             .where(T_RUN.c.id.in_(ids)), run_ids)
        return {r.id: dict(r._mapping) for r in rows}

    def cases_for(self, case_ids: Iterable[int]) -> dict[int, dict]:
        rows = self.chunked(lambda ids: select(T_CASE).where(T_CASE.c.id.in_(ids)), case_ids)
        return {r.id: dict(r._mapping) for r in rows}

    def scans_for(self, scan_hashes: Iterable[str]) -> dict[str, dict]:
        """hash → scan fields without the pixels (display PNG included)."""
        hashes = sorted(set(scan_hashes))
        cols = [c for c in T_SCAN.c if c.name != "pixels"]
        out: dict[str, dict] = {}
        with self.db.read() as conn:
            for start in range(0, len(hashes), CHUNK):
                for r in conn.execute(select(*cols).where(T_SCAN.c.hash.in_(hashes[start:start + CHUNK]))):
                    out[r.hash] = dict(r._mapping)
        return out

    def reviews_for(self, feedback_ids: Iterable[int]) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for r in self.chunked(lambda ids: select(T_REV, T_ANN.c.name.label("reviewer"))
                               .select_from(T_REV.join(T_ANN, T_REV.c.reviewer_id == T_ANN.c.id))
                               .where(T_REV.c.feedback_id.in_(ids)).order_by(T_REV.c.id), feedback_ids):
            out.setdefault(r.feedback_id, []).append(dict(r._mapping))
        return out

    def correction_pngs(self, feedback_ids: Iterable[int]) -> dict[int, bytes]:
        """feedback id → its corrected mask's PNG bytes."""
        rows = self.chunked(lambda ids: select(T_CORR.c.feedback_id, T_CORR.c.mask_png)
                             .where(T_CORR.c.feedback_id.in_(ids)), feedback_ids)
        return {r.feedback_id: r.mask_png for r in rows}

    def counts(self) -> dict[str, int]:
        """Rows per table (for manifests and health checks)."""
        tables = {"annotators": T_ANN, "scans": T_SCAN, "cases": T_CASE, "model_versions": T_MV, "runs": T_RUN,
                  "candidates": T_CAND, "feedback": T_FB, "rankings": T_RANK, "ratings": T_RATE,
                  "corrections": T_CORR, "reviews": T_REV, "training_rounds": T_ROUND}
        with self.db.read() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                    for name, t in tables.items()}

    def list_training_rounds(self) -> list[dict]:
        base, out = T_MV.alias("base"), T_MV.alias("out")
        query = (select(T_ROUND, base.c.name.label("base_version"), out.c.name.label("out_version"))
                 .select_from(T_ROUND.outerjoin(base, T_ROUND.c.base_version_id == base.c.id)
                              .join(out, T_ROUND.c.out_version_id == out.c.id)).order_by(T_ROUND.c.id))
        with self.db.read() as conn:
            rounds = [dict(r._mapping) for r in conn.execute(query)]
            for r in rounds:
                r["feedback_ids"] = conn.execute(select(T_ROUND_FB.c.feedback_id).where(
                    T_ROUND_FB.c.round_id == r["id"]).order_by(T_ROUND_FB.c.feedback_id)).scalars().all()
        return rounds

