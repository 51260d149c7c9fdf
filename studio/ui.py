"""The Gradio Blocks, one builder per tab (annotate, review, dashboard, admin) and one for the named API
(`/predict`, `/refine`, `/submit`, `/session`), all calling `studio.handlers.Studio`.

Every event goes through one decorator, `Events.on(action)`: it asks `Studio.identify` who is calling
(Gradio sign-in, Hugging Face login on Spaces, or the local user), checks the role, hands the handler that
person's session (kept by `Studio.sessions`, keyed by the signed-in user and the browser tab, never in a
`gr.State`), keeps the session within its memory bound afterwards, and turns user-facing errors into a
message. Images sent to the page are written as files only their owner (and admins) can fetch.
"""
from __future__ import annotations

import logging

import gradio as gr
import numpy as np

from annotation.export import FORMATS
from annotation.schema import RATING_SCALES
from studio import handlers as h
from studio import overlay, scans
from studio.inputs import MAX_CANDIDATES, StudioError
from studio.session import Session
from studio.api import api_endpoints
from studio.events import Events
from studio.views import NO_DATA, candidate_markdown, esc

log = logging.getLogger("coreseg.studio")

MAX = MAX_CANDIDATES
SCALES = list(RATING_SCALES)
AXES = [("sagittal", 0), ("coronal", 1), ("axial", 2)]
QUEUE_COLUMNS = ["feedback_id", "case_id", "annotator", "model_version", "status", "created_at", "question",
                 "has_mask", "proposal_dice", "clicks", "strokes", "seconds", "review", "reviewer", "review_reason"]

SHORTCUTS = [("Ctrl/⌘ + Enter", "submit"), ("Ctrl/⌘ + S", "save as draft"), ("Alt + N", "next case"),
             ("Ctrl/⌘ + Z", "undo the last correction"), ("P", "positive click mode"),
             ("N", "negative click mode"), ("B", "box mode (two clicks: opposite corners)")]

SHORTCUT_JS = """
if (!window.__coresegKeys) {
  window.__coresegKeys = true;
  const typing = (e) => {
    const t = e.target;
    if (!t) return false;
    if (t.isContentEditable || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT') return true;
    return t.tagName === 'INPUT' && !['radio', 'checkbox', 'range', 'button', 'submit'].includes(t.type);
  };
  const press = (id) => {
    const el = document.getElementById(id);
    if (!el) return;
    const button = el.tagName === 'BUTTON' ? el : el.querySelector('button');
    if (button) button.click();
  };
  const mode = (value) => {
    const input = document.querySelector('#click-mode input[value="' + value + '"]');
    if (input) input.click();
  };
  document.addEventListener('keydown', (e) => {
    const mod = e.ctrlKey || e.metaKey;
    if (mod && e.key === 'Enter') { e.preventDefault(); press('submit-btn'); return; }
    if (mod && e.code === 'KeyS') { e.preventDefault(); press('draft-btn'); return; }
    if (e.altKey && e.code === 'KeyN') { e.preventDefault(); press('next-btn'); return; }
    if (typing(e)) return;
    if (mod && e.code === 'KeyZ') { e.preventDefault(); press('undo-btn'); return; }
    if (mod || e.altKey) return;
    if (e.code === 'KeyP') mode('positive');
    else if (e.code === 'KeyN') mode('negative');
    else if (e.code === 'KeyB') mode('box');
  });
}
"""




# ================================================================================================ annotate
def annotate_tab(ev: Events, config) -> None:
    studio = ev.studio
    with gr.Tab("Annotate", id="annotate"):
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                upload = gr.File(label="Scan: PNG, JPEG, TIFF, DICOM or NIfTI", type="filepath", elem_id="scan-upload")
                example_titles = [e["title"] for e in scans.examples()]
                example = gr.Dropdown(example_titles, value=None, label="…or open a bundled example",
                                      elem_id="example-pick", visible=bool(example_titles))
                scan_md = gr.Markdown("No scan open.", elem_id="scan-info")
                frame = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame")
                axis = gr.Radio(AXES, value=2, label="Slice axis", visible=False, elem_id="axis")
                slice_ = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                window = gr.Dropdown([], value=None, label="Window", visible=False, elem_id="window")
                with gr.Row():
                    level = gr.Number(label="Level (HU)", visible=False)
                    width = gr.Number(label="Width (HU)", visible=False, minimum=1)
                question = gr.Textbox(label="Question", lines=2, elem_id="question",
                                      placeholder="Where is the lesion? Find it and identify its boundaries.")
                suggestions = gr.Dropdown(scans.suggested_questions(None), value=None, label="Suggested questions",
                                          elem_id="suggestions")
                n_cands = gr.Slider(1, MAX, value=min(MAX, config.n_candidates), step=1, label="Candidates",
                                    elem_id="n-candidates")
                ask = gr.Button("Ask the model", variant="primary", elem_id="ask-btn")
            with gr.Column(scale=2, min_width=420):
                scan_view = gr.Image(label="Scan — click to refine the chosen mask", interactive=False, type="numpy",
                                     format="png", elem_id="scan-view", buttons=["fullscreen"], height=520)
                with gr.Row():
                    click_mode = gr.Radio(["positive", "negative", "box"], value="positive",
                                          label="Click mode (P / N / B)", elem_id="click-mode")
                    undo_btn = gr.Button("Undo (Ctrl+Z)", elem_id="undo-btn", size="sm")
                    reset_btn = gr.Button("Back to proposal", elem_id="reset-btn", size="sm")
                correct_choice = gr.Radio([], value=None, label="Candidate to correct", elem_id="correct-choice")
                with gr.Accordion("Brush and eraser", open=True):
                    gr.Markdown("Paint **green** to add to the mask and **magenta** to remove from it "
                                "(the eraser takes strokes back before you apply), then *Apply strokes*.")
                    editor = gr.ImageEditor(
                        label="Brush", type="numpy", image_mode="RGBA", sources=[], transforms=[],
                        brush=gr.Brush(colors=[overlay.ADD_STROKE, overlay.REMOVE_STROKE],
                                       default_color=overlay.ADD_STROKE, color_mode="fixed"),
                        eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False, layers=["Edit"]),
                        format="png", elem_id="brush-editor", buttons=[], height=560)
                    apply_btn = gr.Button("Apply strokes", elem_id="apply-brush-btn")
        slots, slot_images, slot_md, slot_rank, slot_rates = [], [], [], [], []
        with gr.Row(equal_height=False):
            for i in range(MAX):
                with gr.Column(visible=False, min_width=220, elem_id=f"cand-{i}") as col:
                    slot_images.append(gr.Image(label=f"Candidate #{i + 1}", interactive=False, type="filepath",
                                                format="png", buttons=["fullscreen"], height=240,
                                                elem_id=f"cand-img-{i}"))
                    slot_md.append(gr.Markdown(elem_id=f"cand-md-{i}"))
                    slot_rank.append(gr.Radio([str(r) for r in range(1, MAX + 1)], value=None,
                                              label="Rank (1 = best; ties allowed)", elem_id=f"rank-{i}"))
                    slot_rates.append([gr.Radio([str(v) for v in range(lo, hi + 1)], value=None,
                                                label=scale.replace("_", " ").capitalize(),
                                                elem_id=f"rate-{scale}-{i}")
                                       for scale, (lo, hi) in RATING_SCALES.items()])
                slots.append(col)
        edited = gr.Textbox(label="Reasoning of the candidate you keep (edit it freely)", lines=4,
                            elem_id="edited-reasoning")
        with gr.Row():
            submit_btn = gr.Button("Submit (Ctrl+Enter)", variant="primary", elem_id="submit-btn")
            draft_btn = gr.Button("Save draft (Ctrl+S)", elem_id="draft-btn")
            discard_btn = gr.Button("Discard", variant="stop", elem_id="discard-btn")
            next_btn = gr.Button("Next case (Alt+N)", elem_id="next-btn")
        status_md = gr.Markdown(elem_id="status")
        gr.HTML("<b>Keyboard shortcuts</b>: " + " · ".join(f"<kbd>{k}</kbd> {v}" for k, v in SHORTCUTS),
                js_on_load=SHORTCUT_JS, elem_id="shortcuts")

    rates_flat = [r for rates in slot_rates for r in rates]
    rank_and_rate = [*slot_rank, *rates_flat]
    case_outputs = [scan_view, correct_choice, editor, edited, status_md, *slots, *slot_images, *slot_md,
                    *rank_and_rate]
    scan_controls = [scan_md, frame, axis, slice_, window, level, width, suggestions]
    click_outputs = [scan_view, editor, status_md]

    def editor_value(sess: Session):
        background = h.brush_background(sess)
        return None if background is None else {"background": background, "layers": [], "composite": None}

    def case_view(user, sess: Session, status: str = "") -> dict:
        """Every case-dependent component, from the session."""
        out = {scan_view: h.correction_view(sess), status_md: status}
        n = len(sess.candidates)
        for i in range(MAX):
            visible = i < n
            out[slots[i]] = gr.Column(visible=visible)
            if visible:
                card = sess.candidates[i]
                drawn = overlay.draw(sess.scan.display, sess.masks[card["candidate_id"]], boxes=card["boxes"])
                out[slot_images[i]] = studio.files.png(drawn, user.name, f"candidate-{i + 1}")
            else:
                out[slot_images[i]] = None
            out[slot_md[i]] = candidate_markdown(i, sess.candidates[i]) if visible else ""
            out[slot_rank[i]] = gr.Radio(choices=[str(r) for r in range(1, max(n, 1) + 1)], value=None)
            for r in slot_rates[i]:
                out[r] = gr.Radio(value=None)
        chosen = sess.correction.candidate_id if sess.correction else None
        out[correct_choice] = gr.Radio(choices=[(f"#{i + 1}", c["candidate_id"]) for i, c in enumerate(sess.candidates)],
                                       value=chosen)
        out[editor] = editor_value(sess)
        card = next((c for c in sess.candidates if c["candidate_id"] == chosen), None)
        out[edited] = card["reasoning"] if card else ""
        return out

    def controls_view(sess: Session) -> dict:
        info, meta = sess.info, (sess.scan.meta if sess.scan is not None else {})
        n_frames = int(info.get("n_frames") or 1)
        n_slices = info.get("n_slices")
        ax = int(meta.get("axis", info.get("default_axis", 2)) or 0)
        windows = scans.window_choices(sess)
        current = (meta.get("window") or {}).get("name")
        custom = current == "custom"
        return {
            scan_md: scans.scan_summary(sess),
            frame: gr.Slider(0, max(n_frames - 1, 1), value=int(meta.get("frame", 0) or 0), step=1,
                             visible=n_frames > 1),
            axis: gr.Radio(value=ax, visible=bool(n_slices)),
            slice_: (gr.Slider(0, max(int(n_slices[ax]) - 1, 1), value=int(meta.get("slice", 0) or 0), step=1,
                               visible=True) if n_slices else gr.Slider(visible=False)),
            window: gr.Dropdown(choices=windows, value=current if current in windows else None, visible=bool(windows)),
            level: gr.Number(value=(meta.get("window") or {}).get("level"), visible=custom),
            width: gr.Number(value=(meta.get("window") or {}).get("width"), visible=custom),
            suggestions: gr.Dropdown(choices=scans.suggested_questions(scans.modality_of(sess)), value=None),
        }

    @ev.on()
    def on_upload(user, sess, path):
        if not path:
            return {}
        try:
            studio.open_scan(sess, path)
        except StudioError as exc:  # say why, clear the upload box, keep whatever was open before
            gr.Warning(esc(exc))
            return {upload: None, scan_md: f"⚠️ **{esc(exc)}**\n\n{scans.scan_summary(sess)}"}
        return {upload: None, **controls_view(sess), **case_view(user, sess, "Scan opened.")}

    @ev.on()
    def on_example(user, sess, title):
        if not title:
            return {}
        _, item = studio.open_example(sess, title)
        out = {**controls_view(sess), **case_view(user, sess, f"Example opened ({esc(item['licence'])}).")}
        if item.get("question"):
            out[question] = item["question"]
        return out

    @ev.on()
    def on_reslice(user, sess, frame_v, axis_v, slice_v, window_v, level_v, width_v):
        if sess.scan is None:
            return {}
        meta = sess.scan.meta
        if axis_v is not None and int(axis_v) != int(meta.get("axis", 2) or 0):
            slice_v = None  # another axis: start in its middle
        if window_v == "custom" and (level_v is None or width_v is None):
            cur = meta.get("window") or {}
            level_v, width_v = cur.get("level", 40.0), cur.get("width", 400.0)
        studio.reslice(sess, frame=frame_v if int(sess.info.get("n_frames") or 1) > 1 else None,
                       slice_index=slice_v if sess.info.get("n_slices") else None,
                       axis=int(axis_v) if axis_v is not None else 2, window=window_v, level=level_v, width=width_v)
        return {**controls_view(sess), **case_view(user, sess, "")}

    @ev.on("annotate")
    def on_predict(user, sess, question_v, n_v, progress=None):
        result = studio.predict(user, sess, question_v, n_v, progress=progress)
        note = "" if result.trained else " ⚠️ untrained model"
        return case_view(user, sess, f"Case {result.case_id}: {len(result.candidate_ids)} candidates in "
                                     f"{result.seconds:.1f} s{note}. Click on the scan to refine candidate #1, "
                                     "or pick another.")

    @ev.on()
    def on_choose(user, sess, choice):
        if choice is None:
            return {}
        h.choose(sess, choice)
        card = next(c for c in sess.candidates if c["candidate_id"] == sess.correction.candidate_id)
        return {scan_view: h.correction_view(sess), editor: editor_value(sess), edited: card["reasoning"]}

    @ev.on("annotate")
    def on_click(user, sess, mode, evt=None):
        if sess.correction is None:
            raise StudioError("Ask the model first; clicks refine the chosen candidate's mask.")
        corr = studio.click(user, sess, evt.index[0], evt.index[1], mode or "positive")
        status = ("Box: now click the opposite corner." if corr.corner is not None else
                  f"Mask: {int(corr.mask.sum())} px after {corr.n_clicks} click(s).")
        return {scan_view: h.correction_view(sess), editor: editor_value(sess), status_md: status}

    @ev.on()
    def on_brush(user, sess, value):
        layers = (value or {}).get("layers") or []
        layer = layers[0] if layers else None
        if layer is not None and len(layers) > 1:  # several layers: paint is paint
            layer = np.max(np.stack([np.asarray(x) for x in layers if x is not None]), axis=0)
        corr = h.brush(sess, layer)
        return {scan_view: h.correction_view(sess), editor: editor_value(sess),
                status_md: f"Mask: {int(corr.mask.sum())} px after {corr.n_strokes} stroke(s)."}

    @ev.on()
    def on_undo(user, sess):
        h.undo(sess)
        return {scan_view: h.correction_view(sess), editor: editor_value(sess), status_md: "Undone."}

    @ev.on()
    def on_reset(user, sess):
        if sess.correction is None:
            raise StudioError("Nothing to reset.")
        sess.correction.reset()
        return {scan_view: h.correction_view(sess), editor: editor_value(sess), status_md: "Back to the model's proposal."}

    def collect(sess: Session, values) -> tuple[dict, dict]:
        ranks, rates = values[:MAX], values[MAX:]
        ranking, ratings = {}, {}
        for i, cid in enumerate(sess.candidate_ids):
            if ranks[i]:
                ranking[cid] = int(ranks[i])
            scales = {scale: int(rates[i * len(SCALES) + j]) for j, scale in enumerate(SCALES)
                      if rates[i * len(SCALES) + j]}
            if scales:
                ratings[cid] = scales
        return ranking, ratings

    def make_submit(status: str):
        @ev.on("annotate")
        def on_submit(user, sess, values):
            ranking, ratings = collect(sess, [values[c] for c in rank_and_rate])
            result = studio.submit_session(user, sess, ranking=ranking, ratings=ratings,
                                           edited_reasoning=values[edited], status=status)
            verb = {"submitted": "Submitted", "draft": "Draft saved", "discarded": "Discarded"}[status]
            return f"{verb}: feedback {result['feedback_id']} on case {result['case_id']}."

        on_submit.__name__ = f"on_{status}"
        return on_submit

    @ev.on()
    def on_next(user, sess):
        sess.clear()
        return {upload: None, question: "", example: None, **controls_view(sess),
                **case_view(user, sess, "Ready for the next case: upload a scan or pick an example.")}

    private = {"api_visibility": "private"}
    model_q = {"concurrency_id": "model", "concurrency_limit": max(1, int(config.model_concurrency))}
    refine_q = {"concurrency_id": "refine", "concurrency_limit": max(1, int(config.model_concurrency))}
    upload.upload(on_upload, [upload], [upload, *case_outputs, *scan_controls], **private)
    example.input(on_example, [example], [*case_outputs, *scan_controls, question], **private)
    reslice_inputs = [frame, axis, slice_, window, level, width]
    for control in (frame, slice_):
        control.release(on_reslice, reslice_inputs, [*case_outputs, *scan_controls], **private)
    for control in (axis, window):
        control.input(on_reslice, reslice_inputs, [*case_outputs, *scan_controls], **private)
    for control in (level, width):
        control.submit(on_reslice, reslice_inputs, [*case_outputs, *scan_controls], **private)
    suggestions.input(lambda s: s or gr.skip(), [suggestions], [question], **private)
    busy = {"show_progress_on": [scan_view, status_md]}
    ask.click(on_predict, [question, n_cands], case_outputs, **private, **model_q, **busy)
    question.submit(on_predict, [question, n_cands], case_outputs, **private, **model_q, **busy)
    correct_choice.input(on_choose, [correct_choice], [scan_view, editor, edited], **private)
    scan_view.select(on_click, [click_mode], click_outputs, **private, **refine_q, show_progress="minimal")
    apply_btn.click(on_brush, [editor], click_outputs, **private)
    undo_btn.click(on_undo, None, click_outputs, **private)
    reset_btn.click(on_reset, None, click_outputs, **private)
    for button, status in ((submit_btn, "submitted"), (draft_btn, "draft"), (discard_btn, "discarded")):
        button.click(make_submit(status), {edited, *rank_and_rate}, [status_md], **private)
    next_btn.click(on_next, None, [upload, question, example, *case_outputs, *scan_controls], **private)


# ================================================================================================ review
def review_tab(ev: Events):
    studio = ev.studio
    with gr.Tab("Review", id="review", visible=False) as tab:
        with gr.Row():
            q_status = gr.Dropdown(["submitted", "draft", "discarded"], value="submitted", label="Status")
            q_state = gr.Dropdown([("all", ""), ("not reviewed", "unreviewed"), ("accepted", "accept"),
                                   ("rejected", "reject"), ("flagged", "flag")], value="", label="Review state")
            q_version = gr.Dropdown([], value=None, label="Model version", allow_custom_value=True)
            q_annotator = gr.Dropdown([], value=None, label="Annotator", allow_custom_value=True)
            q_refresh = gr.Button("Refresh queue", elem_id="queue-refresh")
        queue_df = gr.Dataframe(interactive=False, elem_id="review-queue", wrap=True)
        with gr.Row():
            fb_id = gr.Number(label="Feedback id", precision=0, elem_id="review-feedback-id")
            fb_open = gr.Button("Open", elem_id="review-open")
        with gr.Row(equal_height=True):
            rv_proposal = gr.Image(label="Model proposal", interactive=False, type="filepath", format="png",
                                   elem_id="review-proposal")
            rv_corrected = gr.Image(label="Accepted / corrected mask", interactive=False, type="filepath",
                                    format="png", elem_id="review-corrected")
        rv_md = gr.Markdown(elem_id="review-detail")
        with gr.Row():
            rv_decision = gr.Radio([("accept", "accept"), ("reject", "reject"), ("flag", "flag")], value="accept",
                                   label="Decision", elem_id="review-decision")
            rv_reason = gr.Textbox(label="Reason (needed to reject or flag)", elem_id="review-reason")
            rv_save = gr.Button("Save review", variant="primary", elem_id="review-save")

    def queue_table(user, status_v, state_v, version_v, annotator_v):
        import pandas as pd

        rows = studio.review_queue(user, status=status_v, model_version=version_v or None,
                                   annotator=annotator_v or None, review_state=state_v or None)
        return pd.DataFrame(rows, columns=QUEUE_COLUMNS)

    @ev.on("review")
    def on_queue(user, sess, status_v, state_v, version_v, annotator_v):
        return queue_table(user, status_v, state_v, version_v, annotator_v)

    def on_queue_select(df, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return int(df.iloc[int(row)]["feedback_id"])
        except (IndexError, KeyError, ValueError, TypeError):
            return gr.skip()

    def images(user, view):
        own = (lambda img, name: None if img is None else studio.files.png(img, user.name, name))
        return own(view["proposal_image"], "proposal"), own(view["corrected_image"], "accepted")

    @ev.on("review")
    def on_open(user, sess, fid):
        if fid is None:
            raise StudioError("Pick a row of the queue (or type a feedback id).")
        view = studio.feedback_view(user, fid)
        return (*images(user, view), view["markdown"])

    @ev.on("review")
    def on_review(user, sess, fid, decision, reason, status_v, state_v, version_v, annotator_v):
        if fid is None:
            raise StudioError("Open a submission first.")
        review_id = studio.review(user, fid, decision, reason)
        gr.Info(f"Review {review_id} saved: {decision}.")
        return (studio.feedback_view(user, fid)["markdown"], "",
                queue_table(user, status_v, state_v, version_v, annotator_v))

    private = {"api_visibility": "private"}
    queue_inputs = [q_status, q_state, q_version, q_annotator]
    q_refresh.click(on_queue, queue_inputs, [queue_df], **private)
    tab.select(on_queue, queue_inputs, [queue_df], **private)
    queue_df.select(on_queue_select, [queue_df], [fb_id], **private)
    fb_open.click(on_open, [fb_id], [rv_proposal, rv_corrected, rv_md], **private)
    fb_id.submit(on_open, [fb_id], [rv_proposal, rv_corrected, rv_md], **private)
    rv_save.click(on_review, [fb_id, rv_decision, rv_reason, *queue_inputs], [rv_md, rv_reason, queue_df], **private)
    return tab, q_version, q_annotator


# ================================================================================================ dashboard
def dashboard_tab(ev: Events):
    studio = ev.studio
    with gr.Tab("Dashboard", id="dashboard", visible=False) as tab:
        refresh = gr.Button("Refresh", elem_id="dash-refresh")
        counts = gr.Dataframe(label="Rows in the store", interactive=False, elem_id="dash-counts")
        empty = gr.Markdown(NO_DATA, elem_id="dash-empty")
        plot = gr.LinePlot(x="day", y="mean_dice", color="model_version", x_title="Day",
                           y_title="Mean Dice, proposal vs accepted", color_title="Model version",
                           label="Proposal-vs-accepted Dice over time", elem_id="dash-plot", y_lim=[0, 1],
                           visible=False)
        per_day = gr.Dataframe(label="Proposal-vs-accepted Dice per day", interactive=False, elem_id="dash-days")
        versions = gr.Dataframe(label="Per model version", interactive=False, elem_id="dash-versions")
        ratings = gr.Dataframe(label="Rating averages (scale 1–5)", interactive=False)
        agreement = gr.Dataframe(label="Agreement between annotators", interactive=False)
        people = gr.Dataframe(label="Per annotator", interactive=False, elem_id="dash-people")

    @ev.on("dashboard")
    def on_dashboard(user, sess):
        d = studio.dashboard(user)
        return (d["counts"], gr.Markdown(visible=not d["has_dice"]),
                gr.LinePlot(value=d["dice_plot"], visible=d["has_dice"]), d["dice_over_time"],
                d["per_model_version"], d["ratings"], d["agreement"], d["per_annotator"])

    outputs = [counts, empty, plot, per_day, versions, ratings, agreement, people]
    refresh.click(on_dashboard, None, outputs, api_visibility="private")
    tab.select(on_dashboard, None, outputs, api_visibility="private")
    return tab


# ================================================================================================ admin
def admin_tab(ev: Events, model_md, config):
    studio = ev.studio
    with gr.Tab("Admin", id="admin", visible=False) as tab:
        with gr.Row():
            ex_format = gr.Dropdown(list(FORMATS), value="sft", label="Export format")
            ex_status = gr.CheckboxGroup(["submitted", "draft", "discarded"], value=["submitted"],
                                         label="Feedback status")
            ex_btn = gr.Button("Export", elem_id="export-btn")
        ex_file = gr.File(label="Export (zip with manifest)", interactive=False, elem_id="export-file")
        versions_df = gr.Dataframe(label="Registered model versions", interactive=False, elem_id="versions")
        with gr.Row():
            serve_pick = gr.Dropdown([], value=None, label="Serve model version")
            serve_btn = gr.Button("Serve", elem_id="serve-btn")

    @ev.on("admin")
    def on_export(user, sess, fmt, statuses):
        return str(studio.export_data(user, fmt, statuses))

    @ev.on("admin")
    def on_versions(user, sess):
        import pandas as pd

        return pd.DataFrame(studio.model_versions())

    @ev.on("admin")
    def on_serve(user, sess, name):
        import pandas as pd

        studio.serve_model(user, name)
        return pd.DataFrame(studio.model_versions()), studio.banner()

    private = {"api_visibility": "private"}
    ex_btn.click(on_export, [ex_format, ex_status], [ex_file], **private)
    tab.select(on_versions, None, [versions_df], **private)
    serve_btn.click(on_serve, [serve_pick], [versions_df, model_md], **private, concurrency_id="model",
                    concurrency_limit=max(1, int(config.model_concurrency)))
    return tab, serve_pick


# ================================================================================================ the page
def build_ui(studio: h.Studio) -> gr.Blocks:
    ev = Events(studio)
    with gr.Blocks(title="CORE-Seg Studio", delete_cache=(900, 3600)) as demo:
        with gr.Row():
            gr.Markdown("# CORE-Seg Studio\nReasoning-driven lesion segmentation, corrected and rated by clinicians.")
            whoami = gr.Markdown(elem_id="whoami")
        if studio.on_spaces and (studio.users is None or not studio.users.has_passwords):
            gr.LoginButton()
        model_md = gr.Markdown(studio.banner(), elem_id="model-banner")
        with gr.Tabs():
            annotate_tab(ev, studio.config)
            review, q_version, q_annotator = review_tab(ev)
            dashboard = dashboard_tab(ev)
            admin, serve_pick = admin_tab(ev, model_md, studio.config)
        api_endpoints(ev, studio.config)

        @ev.on(anonymous=True)
        def on_load(user, sess):
            if user is None:
                return {whoami: "_Sign in first._", review: gr.Tab(visible=False), dashboard: gr.Tab(visible=False),
                        admin: gr.Tab(visible=False), model_md: studio.banner()}
            versions = [v["name"] for v in studio.store.list_model_versions()]
            people = [p["name"] for p in studio.store.list_annotators()] if user.can("review") else []
            return {whoami: f"Signed in as **{esc(user.name)}** ({user.role})", model_md: studio.banner(),
                    review: gr.Tab(visible=user.can("review")), dashboard: gr.Tab(visible=user.can("dashboard")),
                    admin: gr.Tab(visible=user.can("admin")), q_version: gr.Dropdown(choices=[""] + versions, value=""),
                    q_annotator: gr.Dropdown(choices=[""] + people, value=""),
                    serve_pick: gr.Dropdown(choices=versions, value=studio.predictor.model_version)}

        demo.load(on_load, None, [whoami, model_md, review, dashboard, admin, q_version, q_annotator, serve_pick],
                  api_visibility="private")
    return demo
