"""The named API (`/predict`, `/refine`, `/submit`, `/session`) for `gradio_client`: hidden components wired to
the same `Studio` methods as the page, through the same `Events.on` wrapper (see studio/API.md)."""
from __future__ import annotations

import gradio as gr
import numpy as np

from studio import overlay, scans
from studio.events import Events
from studio.inputs import StudioError, as_int, json_arg
from studio.session import Session


def api_endpoints(ev: Events, config) -> None:
    studio = ev.studio
    with gr.Group(visible=False):
        api_file = gr.File(type="filepath", label="scan")
        api_question = gr.Textbox(label="question")
        api_n = gr.Number(value=config.n_candidates, precision=0, label="n")
        api_options = gr.Textbox(value="", label="options")
        api_predict_json = gr.JSON(label="result")
        api_gallery = gr.Gallery(label="overlays", format="png")
        api_case = gr.Number(precision=0, label="case_id")
        api_cand = gr.Number(precision=0, label="candidate_id")
        api_clicks = gr.Textbox(value="[]", label="clicks")
        api_box = gr.Textbox(value="", label="box")
        api_mask_out = gr.Image(type="filepath", image_mode="L", format="png", label="mask")
        api_refine_json = gr.JSON(label="summary")
        api_run = gr.Number(precision=0, label="run_id")
        api_ranking = gr.Textbox(value="", label="ranking")
        api_ratings = gr.Textbox(value="", label="ratings")
        api_mask_in = gr.File(type="filepath", label="mask")
        api_edited = gr.Textbox(value="", label="edited_reasoning")
        api_status = gr.Textbox(value="submitted", label="status")
        api_chosen = gr.Number(value=0, precision=0, label="chosen_candidate_id")
        api_subid = gr.Textbox(value="", label="submission_id")
        api_submit_json = gr.JSON(label="stored")
        api_session_json = gr.JSON(label="session")
        buttons = [gr.Button(visible=False) for _ in range(4)]

    @ev.on("annotate")
    def api_predict(user, sess, scan, question, n, options, progress=None):
        """Upload a scan, ask a question, get n candidate answers (1–8; empty: the default). Returns JSON (case_id,
        run_id, candidate_ids, candidates: reasoning, target, boxes, present, mask_score, parse_errors) and overlay
        images. `options` (JSON, optional): frame, slice, axis, window, level, width."""
        try:
            if not scan:
                raise StudioError("Send a scan file.")
            opts = json_arg(options, "options", {})
            if not isinstance(opts, dict):
                raise StudioError("options must be a JSON object")
            fresh = Session(owner=user.name)  # the session's earlier case stays as it was if anything below fails
            studio.open_scan(fresh, scan, frame=opts.get("frame"), slice_index=opts.get("slice"),
                             axis=as_int(opts.get("axis", 2), "axis"), window=opts.get("window"),
                             level=opts.get("level"), width=opts.get("width"), keep_bytes=False)
        finally:
            scans.discard_upload(scan)   # deleted on every path, bad options included
        result = studio.predict(user, fresh, question, n, progress=progress)
        sess.adopt_api_case(fresh)
        gallery = [(studio.files.png(img, user.name, f"candidate-{i + 1}"), f"#{i + 1} (candidate {cid})")
                   for i, (img, cid) in enumerate(zip(result.overlays, result.candidate_ids))]
        return result.to_json(), gallery

    @ev.on("annotate")
    def api_refine(user, sess, case_id, candidate_id, clicks, box):
        """Refine one of your candidates' masks with clicks ([[x, y, 1|0], …], scan pixels, at most 64) and an
        optional box ([x1, y1, x2, y2]). Returns the mask as a PNG (0/255, the scan's height × width) and a summary."""
        case_id = sess.case_id if case_id in (None, 0) else case_id
        if case_id is None:
            raise StudioError("Say which case (case_id from /predict).")
        mask = studio.refine(user, case_id, candidate_id, clicks, box)
        sess.api_mask = (int(case_id), int(candidate_id), mask)
        summary = {"case_id": int(case_id), "candidate_id": int(candidate_id), "height": int(mask.shape[0]),
                   "width": int(mask.shape[1]), "area": int(mask.sum())}
        return studio.files.png(np.where(mask, 255, 0).astype(np.uint8), user.name, "mask"), summary

    @ev.on("annotate")
    def api_submit(user, sess, case_id, run_id, ranking, ratings, mask, edited_reasoning, status, chosen_candidate_id,
                   submission_id):
        """Store feedback on one of your runs: ranking ({candidate_id: rank}, ties allowed), ratings ({candidate_id:
        {scale: value}}), the corrected mask (a PNG of the scan's size; default: this session's last /refine
        mask on the case), edited reasoning (≤ 4,000 characters), status (submitted/draft/discarded; a submission
        needs a ranking or a rating). Returns the stored ids."""
        try:
            case = studio.own_case(user, case_id)
            case_id = int(case["id"])
            run_id = as_int(run_id, "run id") if run_id not in (None, 0) else (
                sess.run_id if sess.case_id == case_id else None)
            if run_id is None:
                raise StudioError("Say which run (run_id from /predict).")
            chosen, corrected = chosen_candidate_id or None, None
            if mask:
                height, width = studio.display(case["scan_hash"]).shape[:2]
                try:
                    corrected = overlay.read_mask_image(mask, height, width)
                except ValueError as exc:
                    raise StudioError(str(exc)) from None
                except (OSError, SyntaxError):
                    raise StudioError("the mask file is not a readable image") from None
            elif sess.api_mask is not None and sess.api_mask[0] == case_id:
                _, refined_candidate, corrected = sess.api_mask
                chosen = chosen or refined_candidate
        finally:
            scans.discard_upload(mask)
        return studio.submit(user, case_id=case_id, run_id=run_id, ranking=ranking, ratings=ratings,
                             chosen_candidate_id=chosen, mask=corrected, edited_reasoning=edited_reasoning or None,
                             status=status or "submitted", submission_id=submission_id or None)

    @ev.on()
    def api_session(user, sess):
        """Who is calling and what this session holds (nothing from other people or sessions)."""
        return {"user": user.name, "role": user.role, "model_version": studio.predictor.model_version,
                "trained": bool(studio.predictor.trained), **sess.summary()}

    model_q = {"concurrency_id": "model", "concurrency_limit": max(1, int(config.model_concurrency))}
    refine_q = {"concurrency_id": "refine", "concurrency_limit": max(1, int(config.model_concurrency))}
    buttons[0].click(api_predict, [api_file, api_question, api_n, api_options], [api_predict_json, api_gallery],
                     api_name="predict", **model_q)
    buttons[1].click(api_refine, [api_case, api_cand, api_clicks, api_box], [api_mask_out, api_refine_json],
                     api_name="refine", **refine_q)
    buttons[2].click(api_submit, [api_case, api_run, api_ranking, api_ratings, api_mask_in, api_edited, api_status,
                                  api_chosen, api_subid], [api_submit_json], api_name="submit")
    buttons[3].click(api_session, None, [api_session_json], api_name="session")
