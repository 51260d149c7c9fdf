"""`Studio`: the app as a service. No Gradio objects in here, so the UI, the named API and the tests all call
the same methods.

A `Studio` holds what one app process shares: the configuration, the feedback store, the one model (an admin
may switch it), the users file, the per-person sessions (`studio.session.SessionRegistry`), the files it wrote
for each person (`studio.guard.OwnedFiles`) and bounded caches of things the store already keeps (candidate
masks, display images, semantic probes) so that each click answers quickly.

Access rules, enforced here whatever the caller: a role check on every action; a case (and its runs and
candidates) can be refined and submitted on only by the person who asked for it; a reviewer cannot review
their own submission (except the single local user of the laptop tool); a message about an id never says
anything about other people's cases.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

import numpy as np

from annotation.schema import Decision, Status
from annotation.store import FeedbackError, FeedbackStore, StoreBusy
from coreseg.embedding_cache import EmbeddingCache as LRU  # the one bounded thread-safe LRU
from coreseg.candidate import Candidate
from coreseg.config import AppConfig
from studio import overlay, scans
from studio.guard import CLIENT_FAILURES, OwnedFiles
from studio.inputs import (MAX_COMMENT_CHARS, MAX_QUESTION_CHARS, MAX_REASON_CHARS, MAX_REASONING_CHARS,
                           StudioError, as_int, candidate_count, parse_box, parse_clicks, parse_ranking,
                           parse_ratings, text_arg)
from studio.scans import clean_leftovers, examples, private_temp_dir
from studio.correction import _correction, brush, brush_background, choose, correction_view, undo
from studio.session import Correction, Session, SessionRegistry
from studio.users import LOCAL_USER, AccessDenied, User, UserDirectory, resolve_user

log = logging.getLogger("coreseg.studio")

__all__ = ["Studio", "StudioError", "AccessDenied", "User", "PredictResult", "CandidateInfo", "private_temp_dir",
           "examples", "UNTRAINED_NOTE", "NOT_YOURS", "choose", "brush", "undo", "correction_view",
           "brush_background"]

UNTRAINED_NOTE = ("The serving model is UNTRAINED (no CORE-Seg checkpoint yet): its reasoning is noise and its "
                  "masks are not meaningful. Corrections still work and are stored.")
NOT_YOURS = "There is no such case among yours (use the case and candidate ids your own /predict returned)."
NO_SIGNAL = ("Nothing to learn from yet: rank the candidates or rate at least one reasoning before submitting "
             "(or save a draft).")


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


def _db_target(url: str) -> str:
    """AppConfig's `sqlite:///relative/path` → a path the store resolves (creating its folder)."""
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") and not url.startswith("sqlite:////") else url


class Studio:
    """Shared, thread-safe services of one app process (see the module docstring)."""

    def __init__(self, config: AppConfig, predictor=None, store: FeedbackStore | None = None,
                 users: UserDirectory | None = None, *, sessions: SessionRegistry | None = None,
                 client_failures: int = CLIENT_FAILURES):
        self.config = config
        self.store = store if store is not None else FeedbackStore(_db_target(config.database_url))
        if users is None and config.users_file:
            users = UserDirectory.load(config.users_file)
        self.users = users
        self.on_spaces = bool(os.environ.get("SPACE_ID"))
        self.single_user = (users is None or not users.has_passwords) and not self.on_spaces
        self.temp_dir = private_temp_dir(config)
        self.leftovers_removed = clean_leftovers(self.temp_dir)
        self.files = OwnedFiles(self.temp_dir)
        self.sessions = sessions or SessionRegistry()
        self.uploads = scans.UploadReader(config.max_upload_bytes)
        self.client_failures = client_failures
        self._model_lock = threading.Lock()
        if predictor is None:
            from coreseg.predictor import CoreSegPredictor

            predictor = CoreSegPredictor.from_checkpoint(config.checkpoint, config.device,
                                                         concurrency=config.model_concurrency,
                                                         encoder_backend=config.encoder_backend)
        self._predictor = predictor
        checkpoint = config.checkpoint if Path(config.checkpoint).exists() else None
        self._register_version(predictor, checkpoint)
        self._candidates = LRU(512)
        self._displays = LRU(32)
        self._probes = LRU(512)
        self._people = LRU(4096)          # name → (role, annotator id)

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
            log.warning("a model version is registered with another checkpoint path")

    def banner(self) -> str:
        from html import escape

        p = self.predictor
        text = f"Model **{escape(p.model_version)}**"
        return text + (f" — ⚠️ **untrained**: {UNTRAINED_NOTE}" if not p.trained else "")

    # ------------------------------------------------------------------ people
    def identify(self, auth_name: str | None, oauth_name: str | None) -> User:
        """Who is asking (see `studio.users.resolve_user`), registered in the store on first sight."""
        user = resolve_user(self.users, self.on_spaces, auth_name, oauth_name)
        self._annotator_id(user)
        return user

    def _annotator_id(self, user: User) -> int:
        known = self._people.get(user.name)
        if known is None:
            row = self.store.get_annotator(user.name)
            if row is None:
                self.store.add_annotator(user.name, user.role)
                row = self.store.get_annotator(user.name)
            elif row["role"] != user.role:
                raise AccessDenied("Your role in the users file and in the database differ; ask an admin to "
                                   "make them agree.")
            known = (row["role"], int(row["id"]))
            self._people.put(user.name, known)
        return known[1]

    def role_of(self, name: str) -> str | None:
        if self.single_user:
            return "admin" if name == LOCAL_USER else None
        return self.users.role(name) if self.users is not None else None

    def session(self, user: User, client: str | None) -> Session:
        """This person's session for this browser tab or API client."""
        return self.sessions.get(user.name, client)

    # ------------------------------------------------------------------ ownership
    def own_case(self, user: User, case_id) -> dict:
        """The case, if `user` asked for it; otherwise the same message whether it exists or not."""
        try:
            case = self.store.get_case(as_int(case_id, "case id"))
        except FeedbackError:
            raise StudioError(NOT_YOURS) from None
        if int(case["created_by"]) != self._annotator_id(user):
            raise StudioError(NOT_YOURS)
        return case

    def own_run(self, user: User, case_id, run_id) -> tuple[dict, dict]:
        case = self.own_case(user, case_id)
        try:
            run = self.store.get_run(as_int(run_id, "run id"))
        except FeedbackError:
            raise StudioError(NOT_YOURS) from None
        if int(run["case_id"]) != int(case["id"]):
            raise StudioError(NOT_YOURS)
        return case, run

    # ------------------------------------------------------------------ cached reads of stored things
    def display(self, scan_hash: str) -> np.ndarray:
        image = self._displays.get(scan_hash)
        if image is None:
            import io

            from PIL import Image

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

    def candidate(self, user: User, case_id, candidate_id) -> CandidateInfo:
        """A candidate of one of `user`'s cases (from the cache, or from the store through the case's runs)."""
        case = self.own_case(user, case_id)
        candidate_id = as_int(candidate_id, "candidate id")
        info = self._candidates.get(candidate_id)
        if info is None:
            for event in self.store.feedback_history(case["id"]):
                if event["kind"] == "run" and candidate_id in event["candidate_ids"]:
                    version = self.store.get_run(event["run_id"])["model_version"]
                    for row in self.store.get_candidates(event["run_id"]):
                        self._remember(CandidateInfo(
                            int(row["id"]), int(event["run_id"]), int(case["id"]), case["scan_hash"],
                            case["question"], row["text"], row["mask"], tuple(row["token_ids"]), version,
                            row["reasoning"] or ""))
                    info = self._candidates.get(candidate_id)
                    break
        if info is None or info.case_id != int(case["id"]):
            raise StudioError("That candidate is not one of this case's candidates.")
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

    # ------------------------------------------------------------------ scans
    def open_scan(self, session: Session, source, **options) -> Session:
        """An upload (path or bytes) into the session; the file is deleted once read, on every path."""
        return scans.open_into(self.config, self.uploads, session, source, **options)

    def reslice(self, session: Session, **options) -> Session:
        return scans.reslice(self.config, session, **options)

    def open_example(self, session: Session, title: str) -> tuple[Session, dict]:
        for item in examples():
            if item["title"] == title:
                self.open_scan(session, item["path"], delete_upload=False)
                if item.get("modality"):
                    session.scan.meta["modality"] = item["modality"]
                return session, item
        raise StudioError("There is no example by that name.")

    # ------------------------------------------------------------------ predict
    def predict(self, user: User, session: Session, question: str, n, *, seed: int | None = None,
                progress=None) -> PredictResult:
        """N candidate answers for the open scan and question: stored (scan, case, run, candidates) and put in the
        session, where the first candidate is ready to be corrected. The model runs before anything is written,
        so a failed call leaves no rows and leaves the session as it was."""
        user.require("annotate")
        if session.scan is None:
            raise StudioError("Open a scan first (upload one or pick an example).")
        question = (question or "").strip() if isinstance(question, str) else ""
        if not question:
            raise StudioError("Ask a question, e.g. 'Where is the lesion? Find it and identify its boundaries.'")
        if len(question) > MAX_QUESTION_CHARS:
            raise StudioError(f"The question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS}.")
        n = candidate_count(n, self.config.n_candidates)
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        scan, predictor, started = session.scan, self.predictor, time.perf_counter()
        try:
            if progress:
                progress(0.05, "Reading the scan")
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
            scan_hash = self.store.put_scan(scan)
            case_id = self.store.add_case(scan_hash, question, user.name)
            sampling = {"temperature": 0.7, "top_p": 0.95, "seed": seed, "n": n}
            run_id, ids = self.store.add_run(case_id, predictor.model_version, sampling, candidates)
        except (FeedbackError, StoreBusy) as exc:
            raise StudioError(str(exc)) from None
        cards, masks, overlays = [], [], []
        for cid, cand in zip(ids, candidates):
            card = {"candidate_id": cid, **cand.to_json()}
            cards.append(card)
            masks.append(cand.mask)
            overlays.append(overlay.draw(scan.display, cand.mask, boxes=card["boxes"]))
            self._remember(CandidateInfo(cid, run_id, case_id, scan_hash, question, cand.text, cand.mask.copy(),
                                         tuple(cand.token_ids), predictor.model_version, card["reasoning"]))
            if cand.probe is not None:
                self._probes.put((cid, predictor.model_version), cand.probe)
        session.new_case()
        session.scan_hash, session.case_id, session.run_id = scan_hash, case_id, run_id
        session.candidate_ids, session.candidates = list(ids), cards
        session.masks = {cid: m for cid, m in zip(ids, masks)}
        choose(session, ids[0])
        log.info("predict n=%d %.2fs", n, time.perf_counter() - started)
        return PredictResult(case_id, run_id, list(ids), cards, masks, overlays, predictor.model_version,
                             bool(predictor.trained), time.perf_counter() - started)

    # ------------------------------------------------------------------ refine
    def refine(self, user: User, case_id, candidate_id, clicks=None, box=None) -> np.ndarray:
        """The model's mask for one of the user's candidates with clicks and an optional box (scan pixels): bool,
        exactly the scan's height × width. At most `inputs.MAX_CLICKS` clicks."""
        user.require("annotate")
        info = self.candidate(user, case_id, candidate_id)
        height, width = info.mask.shape
        clicks, box = parse_clicks(clicks, height, width), parse_box(box, height, width)
        predictor = self.predictor
        try:
            display = self.display(info.scan_hash)
            probe = self.probe(info, predictor)
            candidate = Candidate(text=info.text, mask=np.array(info.mask), mask_score=0.0,
                                  token_ids=list(info.token_ids), probe=probe, model_version=info.model_version,
                                  trained=predictor.trained)
            mask = predictor.refine(display, candidate, clicks=clicks, box=box).mask
        except StudioError:
            raise
        except Exception:
            log.exception("model call failed (refine)")
            raise StudioError("The model failed to refine the mask; your clicks are kept. Try again.") from None
        if mask.shape != (height, width):
            raise StudioError("internal error: the refined mask is not the scan's size")
        return mask.astype(bool)

    def click(self, user: User, session: Session, x: float, y: float, mode: str) -> Correction:
        """A click on the shown scan (shown pixels): positive/negative → refine; box → a corner of a box."""
        from studio.inputs import MAX_CLICKS

        corr = _correction(session)
        height, width = corr.proposal.shape
        sx, sy = overlay.to_scan_xy(x, y, overlay.display_scale(height, width), height, width)
        if mode != "box" and len(corr.clicks) >= MAX_CLICKS:
            raise StudioError(f"At most {MAX_CLICKS} clicks per correction; undo some or go back to the proposal.")
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
            corr.model_mask = self.refine(user, session.case_id, corr.candidate_id, corr.clicks, corr.box)
        except Exception:
            corr.undo()  # the click is taken back so that nothing is half-applied
            raise
        corr.n_clicks += 1
        return corr

    # ------------------------------------------------------------------ submit
    def submit(self, user: User, *, case_id, run_id, ranking=None, ratings=None, chosen_candidate_id=None,
               mask: np.ndarray | None = None, edited_reasoning=None, status: str = "submitted", clicks: int = 0,
               strokes: int = 0, seconds: float = 0.0, submission_id=None, supersedes: int | None = None,
               comment=None) -> dict:
        """Store one annotator's work on one of their runs (idempotent on `submission_id`, which is theirs alone).
        A submission (not a draft or a discard) needs a ranking or a rating."""
        user.require("annotate")
        if status not in Status.__members__:
            raise StudioError(f"status must be one of {', '.join(Status.__members__)}")
        case, run = self.own_run(user, case_id, run_id)
        case_id, run_id = int(case["id"]), int(run["id"])
        ranking, ratings = parse_ranking(ranking), parse_ratings(ratings)
        if status == "submitted" and not ranking and not ratings:
            raise StudioError(NO_SIGNAL)
        chosen = as_int(chosen_candidate_id, "chosen candidate id") if chosen_candidate_id not in (None, "", 0) \
            else None
        for cid in [*ranking, *ratings, *([chosen] if chosen else [])]:
            if cid not in run["candidate_ids"]:
                raise StudioError("That candidate is not one of this run's candidates.")
        edited = text_arg(edited_reasoning, "The edited reasoning", MAX_REASONING_CHARS)
        comment = text_arg(comment, "The comment", MAX_COMMENT_CHARS)
        if edited is not None:
            proposal = chosen
            if proposal is None and ranking:
                best = [c for c, r in ranking.items() if r == min(ranking.values())]
                proposal = best[0] if len(best) == 1 else None
            if proposal is not None and edited == self.candidate(user, case_id, proposal).reasoning.strip():
                edited = None  # unchanged: not an edit
        if submission_id not in (None, ""):
            submission_id = f"{user.name}/{text_arg(str(submission_id), 'submission_id', 100)}"
        try:
            feedback_id = self.store.submit_feedback(
                case_id, run_id, user.name, ranking=ranking or None, ratings=ratings or None,
                chosen_candidate_id=chosen, edited_reasoning=edited, mask=mask, clicks=int(clicks),
                strokes=int(strokes), seconds=float(seconds), status=status, submission_id=submission_id or None,
                supersedes=supersedes, comment=comment)
        except (FeedbackError, StoreBusy) as exc:
            raise StudioError(str(exc)) from None
        log.info("feedback stored status=%s", status)
        return {"feedback_id": feedback_id, "case_id": case_id, "run_id": run_id, "status": status,
                "has_mask": mask is not None, "ranked": len(ranking), "rated": len(ratings),
                "edited": edited is not None}

    def submit_session(self, user: User, session: Session, *, ranking: dict, ratings: dict,
                       edited_reasoning: str | None, status: str) -> dict:
        """Submit, save as draft or discard what the session holds (the corrected mask of the chosen candidate)."""
        if session.case_id is None or session.run_id is None:
            raise StudioError("Nothing to submit: ask the model first.")
        if session.closed:
            raise StudioError("This case was already submitted or discarded; press Next case (or ask again).")
        corr = session.correction
        mask = corr.mask if corr is not None and status != "discarded" else None
        result = self.submit(user, case_id=session.case_id, run_id=session.run_id, ranking=ranking, ratings=ratings,
                             chosen_candidate_id=corr.candidate_id if corr else None, mask=mask,
                             edited_reasoning=edited_reasoning if status != "discarded" else None, status=status,
                             clicks=corr.n_clicks if corr else 0, strokes=corr.n_strokes if corr else 0,
                             seconds=time.monotonic() - session.started,
                             submission_id=session.pending_submission_id(), supersedes=session.draft_id)
        session.last_feedback_id = result["feedback_id"]
        session.submission_id = None  # the next save is a new submission
        session.draft_id = result["feedback_id"] if status == "draft" else None
        session.closed = status != "draft"
        return result

    # ------------------------------------------------------------------ review
    def review_queue(self, user: User, *, status="submitted", model_version=None, annotator=None,
                     review_state=None) -> list[dict]:
        user.require("review")
        try:
            rows = self.store.queue(status=status or None, model_version=model_version or None,
                                    annotator=annotator or None, review_state=review_state or None)
        except FeedbackError as exc:
            raise StudioError(str(exc)) from None
        return [{k: (v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if hasattr(v, "astimezone") else v)
                 for k, v in row.items() if k != "scan_hash"} for row in rows]

    def feedback_view(self, user: User, feedback_id) -> dict:
        """A submission for the reviewer: proposal and accepted/corrected mask drawn over the scan (side by side
        on the page), and what was said, every user-written text escaped."""
        from studio.views import feedback_markdown

        user.require("review")
        try:
            fb = self.store.get_feedback(as_int(feedback_id, "feedback id"))
            case = self.store.get_case(fb["case_id"])
            candidates = {c["id"]: c for c in self.store.get_candidates(fb["run_id"])}
        except FeedbackError:
            raise StudioError("There is no such feedback.") from None
        display = self.display(case["scan_hash"])
        corr = fb["correction"]
        proposal_id = corr["proposal_candidate_id"] if corr else fb["chosen_candidate_id"]
        proposal = candidates.get(proposal_id)
        proposal_img = overlay.draw(display, proposal["mask"] if proposal else None,
                                    boxes=proposal["boxes"] if proposal else ())
        corrected_img = overlay.draw(display, fb["mask"], colour=(60, 230, 90)) if fb["mask"] is not None else None
        return {"feedback": fb, "proposal_image": proposal_img, "corrected_image": corrected_img,
                "markdown": feedback_markdown(fb, case, candidates, proposal_id)}

    def review(self, user: User, feedback_id, decision: str, reason: str = "") -> int:
        user.require("review")
        if decision not in Decision.__members__:
            raise StudioError("Choose accept, reject or flag.")
        reason = text_arg(reason, "The reason", MAX_REASON_CHARS) or ""
        try:
            fb = self.store.get_feedback(as_int(feedback_id, "feedback id"), with_mask=False)
        except FeedbackError:
            raise StudioError("There is no such feedback.") from None
        if fb["annotator"] == user.name and not self.single_user:
            raise StudioError("You cannot review your own submission; another reviewer has to.")
        try:
            return self.store.review(fb["id"], user.name, decision, reason)
        except (FeedbackError, StoreBusy) as exc:
            raise StudioError(str(exc)) from None

    # ------------------------------------------------------------------ dashboard and admin
    def dashboard(self, user: User) -> dict:
        """Counts, proposal-vs-accepted Dice per model version and over time, rating averages, agreement: tables
        with columns in words and rounded numbers (see `studio.views.dashboard_tables`)."""
        from studio.views import dashboard_tables

        user.require("dashboard")
        return dashboard_tables(self.store)

    def export_data(self, user: User, fmt: str, statuses=None, model_versions=None) -> Path:
        """One of the store's export formats as a zip (with its manifest) that only admins can fetch."""
        import shutil
        import zipfile

        from annotation.export import FORMATS, ExportFilters, export

        user.require("admin")
        if fmt not in FORMATS:
            raise StudioError(f"Choose one of {', '.join(FORMATS)}.")
        filters = ExportFilters(status=tuple(statuses or ["submitted"]),
                                model_versions=tuple(model_versions) if model_versions else None)
        work = self.files.new_folder("export")
        folder = work / f"coreseg-{fmt}"
        try:
            export(self.store.url, folder, fmt, filters)
        except FeedbackError as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise StudioError(str(exc)) from None
        archive = work / f"coreseg-{fmt}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(folder.parent))
        shutil.rmtree(folder)
        self.files.add(archive, user.name)
        return archive

    def model_versions(self) -> list[dict]:
        serving = self.predictor.model_version
        return [{"name": v["name"], "serving": v["name"] == serving, "checkpoint": v.get("checkpoint_path"),
                 "parent": v.get("parent"), "notes": v.get("notes"), "created_at": str(v.get("created_at"))[:16]}
                for v in self.store.list_model_versions()]

    def serve_model(self, user: User, name: str) -> str:
        """Switch the serving model to a registered version (admins); the previous one keeps answering until the
        new one is loaded."""
        from coreseg.predictor import CoreSegPredictor

        user.require("admin")
        entry = next((v for v in self.store.list_model_versions() if v["name"] == name), None)
        if entry is None:
            raise StudioError("There is no registered model version by that name.")
        if name == self.predictor.model_version:
            return name
        path = entry.get("checkpoint_path")
        if not path or not Path(path).exists():
            raise StudioError("That model version has no checkpoint on this machine.")
        try:
            predictor = CoreSegPredictor.from_checkpoint(path, self.config.device,
                                                         concurrency=self.config.model_concurrency,
                                                         encoder_backend=self.config.encoder_backend)
        except Exception:
            log.exception("loading model version failed")
            raise StudioError("That model version could not be loaded; the current one keeps serving.") from None
        if predictor.model_version != name:
            raise StudioError("The checkpoint at that path is another model version.")
        with self._model_lock:
            self._predictor = predictor
        log.info("serving another model version")
        return name
