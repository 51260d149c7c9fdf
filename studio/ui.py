"""The Gradio Blocks: annotate (upload, ask, compare, correct, rank, rate, submit), review, dashboard, admin,
and the named API (`/predict`, `/refine`, `/submit`, `/session`) that calls the same `studio.handlers`.

Per-user state lives in `gr.State` only; the model is shared through `Studio` with a queue concurrency limit.
Every handler that reads or writes cases first asks `Studio.identify` who is calling (Gradio sign-in, Hugging
Face login on Spaces, or the local user) and checks the role.
"""
import functools
import html
import logging
from pathlib import Path

import gradio as gr
import numpy as np

from annotation.export import FORMATS
from annotation.schema import RATING_SCALES
from annotation.store import FeedbackError
from studio import handlers as h
from studio import overlay
from studio.session import Session
from studio.users import AccessDenied

log = logging.getLogger("coreseg.studio")

MAX = h.MAX_CANDIDATES
SCALES = list(RATING_SCALES)
AXES = [("sagittal", 0), ("coronal", 1), ("axial", 2)]
STATE_TTL_S = 4 * 3600   # an abandoned session's scan leaves memory after this long

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


def _esc(text) -> str:
    return html.escape(str(text or ""), quote=False)


def guarded(fn):
    """Turn the handlers' user-facing errors into Gradio error toasts; nothing the user entered is touched."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (h.StudioError, AccessDenied, FeedbackError) as exc:
            raise gr.Error(_esc(exc), print_exception=False) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error("Something went wrong on the server; nothing you entered was lost. Try again.",
                           print_exception=False) from None

    return inner


def candidate_markdown(index: int, card: dict) -> str:
    lines = [f"**#{index + 1}** · mask score {card['mask_score']:.2f} · area {card['mask_area']} px"]
    if card.get("target"):
        lines.append(f"**Target:** {_esc(card['target'])}")
    if card.get("boxes"):
        lines.append("**Boxes:** " + ", ".join(str(list(b)) for b in card["boxes"]))
    lines.append(f"**Reasoning:** {_esc(card['reasoning']) or '_(no reasoning could be parsed)_'}")
    if card.get("parse_errors"):
        lines.append(f"⚠ {_esc('; '.join(card['parse_errors']))}")
        lines.append(f"<details><summary>raw answer</summary>\n\n{_esc(card['text'])}\n\n</details>")
    return "\n\n".join(lines)


def build_ui(studio: h.Studio) -> gr.Blocks:
    config = studio.config
    model_limit = max(1, int(config.model_concurrency))

    def who(request: gr.Request | None, profile) -> h.User:
        return studio.identify(getattr(request, "username", None) if request is not None else None,
                               getattr(profile, "username", None) if profile is not None else None)

    def banner() -> str:
        p = studio.predictor
        text = f"Model **{_esc(p.model_version)}**"
        if not p.trained:
            text += f" — ⚠️ **untrained**: {h.UNTRAINED_NOTE}"
        return text

    with gr.Blocks(title="CORE-Seg Studio", delete_cache=(900, 3600)) as demo:
        session = gr.State(Session(), time_to_live=STATE_TTL_S)
        with gr.Row():
            gr.Markdown("# CORE-Seg Studio\nReasoning-driven lesion segmentation, corrected and rated by clinicians.")
            whoami = gr.Markdown(elem_id="whoami")
        if studio.on_spaces and (studio.users is None or not studio.users.has_passwords):
            gr.LoginButton()
        model_md = gr.Markdown(banner(), elem_id="model-banner")

        with gr.Tabs():
            # ================================================================== annotate
            with gr.Tab("Annotate", id="annotate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        upload = gr.File(label="Scan: PNG, JPEG, TIFF, DICOM or NIfTI", type="filepath",
                                         elem_id="scan-upload")
                        example_titles = [e["title"] for e in h.examples()]
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
                        suggestions = gr.Dropdown(h.suggested_questions(None), value=None,
                                                  label="Suggested questions", elem_id="suggestions")
                        n_cands = gr.Slider(1, MAX, value=min(MAX, config.n_candidates), step=1,
                                            label="Candidates", elem_id="n-candidates")
                        ask = gr.Button("Ask the model", variant="primary", elem_id="ask-btn")
                    with gr.Column(scale=2, min_width=420):
                        scan_view = gr.Image(label="Scan — click to refine the chosen mask", interactive=False,
                                             type="numpy", format="png", elem_id="scan-view", buttons=["fullscreen"],
                                             height=520)
                        with gr.Row():
                            click_mode = gr.Radio(["positive", "negative", "box"], value="positive",
                                                  label="Click mode (P / N / B)", elem_id="click-mode")
                            undo_btn = gr.Button("Undo (Ctrl+Z)", elem_id="undo-btn", size="sm")
                            reset_btn = gr.Button("Back to proposal", elem_id="reset-btn", size="sm")
                        correct_choice = gr.Radio([], value=None, label="Candidate to correct",
                                                  elem_id="correct-choice")
                        with gr.Accordion("Brush and eraser", open=True):
                            gr.Markdown("Paint **green** to add to the mask and **magenta** to remove from it "
                                        "(the eraser takes strokes back before you apply), then *Apply strokes*.")
                            editor = gr.ImageEditor(
                                label="Brush", type="numpy", image_mode="RGBA", sources=[], transforms=[],
                                brush=gr.Brush(colors=[overlay.ADD_STROKE, overlay.REMOVE_STROKE],
                                               default_color=overlay.ADD_STROKE, color_mode="fixed"),
                                eraser=gr.Eraser(), layers=gr.LayerOptions(allow_additional_layers=False,
                                                                           layers=["Edit"]),
                                format="png", elem_id="brush-editor", buttons=[], height=560)
                            apply_btn = gr.Button("Apply strokes", elem_id="apply-brush-btn")
                slots, slot_images, slot_md, slot_rank, slot_rates = [], [], [], [], []
                with gr.Row(equal_height=False):
                    for i in range(MAX):
                        with gr.Column(visible=False, min_width=220, elem_id=f"cand-{i}") as col:
                            slot_images.append(gr.Image(label=f"Candidate #{i + 1}", interactive=False, type="numpy",
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

            # ================================================================== review
            with gr.Tab("Review", id="review", visible=False) as review_tab:
                with gr.Row():
                    q_status = gr.Dropdown(["submitted", "draft", "discarded"], value="submitted", label="Status")
                    q_state = gr.Dropdown([("all", ""), ("not reviewed", "unreviewed"), ("accepted", "accept"),
                                           ("rejected", "reject"), ("flagged", "flag")], value="",
                                          label="Review state")
                    q_version = gr.Dropdown([], value=None, label="Model version", allow_custom_value=True)
                    q_annotator = gr.Dropdown([], value=None, label="Annotator", allow_custom_value=True)
                    q_refresh = gr.Button("Refresh queue", elem_id="queue-refresh")
                queue_df = gr.Dataframe(interactive=False, elem_id="review-queue", wrap=True)
                with gr.Row():
                    fb_id = gr.Number(label="Feedback id", precision=0, elem_id="review-feedback-id")
                    fb_open = gr.Button("Open", elem_id="review-open")
                with gr.Row():
                    rv_proposal = gr.Image(label="Model proposal", interactive=False, format="png")
                    rv_corrected = gr.Image(label="Annotator's correction", interactive=False, format="png")
                rv_md = gr.Markdown(elem_id="review-detail")
                with gr.Row():
                    rv_decision = gr.Radio([("accept", "accept"), ("reject", "reject"), ("flag", "flag")],
                                           value="accept", label="Decision", elem_id="review-decision")
                    rv_reason = gr.Textbox(label="Reason (needed to reject or flag)", elem_id="review-reason")
                    rv_save = gr.Button("Save review", variant="primary", elem_id="review-save")

            # ================================================================== dashboard
            with gr.Tab("Dashboard", id="dashboard", visible=False) as dash_tab:
                dash_refresh = gr.Button("Refresh", elem_id="dash-refresh")
                dash_counts = gr.Dataframe(label="Rows in the store", interactive=False, elem_id="dash-counts")
                dash_plot = gr.LinePlot(x="day", y="mean_dice", color="model_version",
                                        label="Proposal-vs-accepted Dice over time", elem_id="dash-plot",
                                        y_lim=[0, 1])
                dash_time = gr.Dataframe(label="Proposal-vs-accepted Dice per day", interactive=False)
                dash_versions = gr.Dataframe(label="Per model version", interactive=False, elem_id="dash-versions")
                dash_ratings = gr.Dataframe(label="Rating averages", interactive=False)
                dash_agree = gr.Dataframe(label="Agreement between annotators", interactive=False)
                dash_people = gr.Dataframe(label="Per annotator", interactive=False)

            # ================================================================== admin
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
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

        # ====================================================================== the named API (hidden)
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
            api_mask_out = gr.Image(type="numpy", image_mode="L", format="png", label="mask")
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
            api_buttons = [gr.Button(visible=False) for _ in range(4)]

        # ---------------------------------------------------------------------- view helpers
        rank_and_rate = [*slot_rank, *[r for rates in slot_rates for r in rates]]
        case_outputs = [scan_view, correct_choice, editor, edited, status_md, *slots, *slot_images, *slot_md,
                        *slot_rank, *[r for rates in slot_rates for r in rates]]
        scan_controls = [scan_md, frame, axis, slice_, window, level, width, suggestions]

        def case_view(sess: Session, status: str = "") -> dict:
            """Every case-dependent component, from the session."""
            out = {scan_view: h.correction_view(sess), status_md: status}
            n = len(sess.candidates)
            for i in range(MAX):
                visible = i < n
                out[slots[i]] = gr.Column(visible=visible)
                out[slot_images[i]] = (overlay.draw(sess.scan.display, sess.masks[sess.candidates[i]["candidate_id"]],
                                                    boxes=sess.candidates[i]["boxes"]) if visible else None)
                out[slot_md[i]] = candidate_markdown(i, sess.candidates[i]) if visible else ""
                out[slot_rank[i]] = gr.Radio(choices=[str(r) for r in range(1, max(n, 1) + 1)], value=None)
                for r in slot_rates[i]:
                    out[r] = gr.Radio(value=None)
            choices = [(f"#{i + 1}", c["candidate_id"]) for i, c in enumerate(sess.candidates)]
            chosen = sess.correction.candidate_id if sess.correction else None
            out[correct_choice] = gr.Radio(choices=choices, value=chosen)
            out[editor] = editor_value(sess)
            card = next((c for c in sess.candidates if c["candidate_id"] == chosen), None)
            out[edited] = card["reasoning"] if card else ""
            return out

        def editor_value(sess: Session):
            background = h.brush_background(sess)
            return None if background is None else {"background": background, "layers": [], "composite": None}

        def controls_view(sess: Session) -> dict:
            info, meta = sess.info, (sess.scan.meta if sess.scan is not None else {})
            n_frames = int(info.get("n_frames") or 1)
            n_slices = info.get("n_slices")
            ax = int(meta.get("axis", info.get("default_axis", 2)) or 0)
            windows = h.window_choices(sess)
            current = (meta.get("window") or {}).get("name")
            custom = current == "custom"
            out = {
                scan_md: h.scan_summary(sess),
                frame: gr.Slider(0, max(n_frames - 1, 1), value=int(meta.get("frame", 0) or 0), step=1,
                                 visible=n_frames > 1),
                axis: gr.Radio(value=ax, visible=bool(n_slices)),
                slice_: (gr.Slider(0, max(int(n_slices[ax]) - 1, 1), value=int(meta.get("slice", 0) or 0), step=1,
                                   visible=True) if n_slices else gr.Slider(visible=False)),
                window: gr.Dropdown(choices=windows, value=current if current in windows else None,
                                    visible=bool(windows)),
                level: gr.Number(value=(meta.get("window") or {}).get("level"), visible=custom),
                width: gr.Number(value=(meta.get("window") or {}).get("width"), visible=custom),
                suggestions: gr.Dropdown(choices=h.suggested_questions(h.modality_of(sess)), value=None),
            }
            return out

        # ---------------------------------------------------------------------- annotate handlers
        @guarded
        def on_upload(path, sess: Session, request: gr.Request, profile: gr.OAuthProfile | None):
            who(request, profile)
            if not path:
                return {}
            try:
                h.open_scan(studio, sess, path)
            except h.StudioError as exc:  # say why, clear the upload box, keep whatever was open before
                gr.Warning(_esc(exc))
                return {upload: None, scan_md: f"⚠️ **{_esc(exc)}**\n\n{h.scan_summary(sess)}"}
            return {session: sess, upload: None, **controls_view(sess), **case_view(sess, "Scan opened.")}

        @guarded
        def on_example(title, sess: Session, request: gr.Request, profile: gr.OAuthProfile | None):
            who(request, profile)
            if not title:
                return {}
            _, item = h.open_example(studio, sess, title)
            out = {session: sess, **controls_view(sess), **case_view(sess, f"Example opened ({_esc(item['licence'])}).")}
            if item.get("question"):
                out[question] = item["question"]
            return out

        @guarded
        def on_reslice(frame_v, axis_v, slice_v, window_v, level_v, width_v, sess: Session, request: gr.Request,
                       profile: gr.OAuthProfile | None):
            who(request, profile)
            if sess.scan is None:
                return {}
            meta = sess.scan.meta
            if axis_v is not None and int(axis_v) != int(meta.get("axis", 2) or 0):
                slice_v = None  # another axis: start in its middle
            if window_v == "custom" and (level_v is None or width_v is None):
                cur = meta.get("window") or {}
                level_v, width_v = cur.get("level", 40.0), cur.get("width", 400.0)
            h.reslice(studio, sess, frame=frame_v if int(sess.info.get("n_frames") or 1) > 1 else None,
                      slice_index=slice_v if sess.info.get("n_slices") else None,
                      axis=int(axis_v) if axis_v is not None else 2,
                      window=window_v, level=level_v, width=width_v)
            return {session: sess, **controls_view(sess), **case_view(sess, "")}

        @guarded
        def on_predict(sess: Session, question_v, n_v, request: gr.Request, profile: gr.OAuthProfile | None,
                       progress=gr.Progress()):
            user = who(request, profile)
            result = h.predict(studio, user, sess, question_v, int(n_v),
                               progress=lambda f, d: progress(f, desc=d))
            note = "" if result.trained else " ⚠️ untrained model"
            status = (f"Case {result.case_id}: {len(result.candidate_ids)} candidates in {result.seconds:.1f} s"
                      f"{note}. Click on the scan to refine candidate #1, or pick another.")
            return {session: sess, **case_view(sess, status)}

        @guarded
        def on_choose(choice, sess: Session):
            if choice is None:
                return {}
            h.choose(sess, choice)
            card = next(c for c in sess.candidates if c["candidate_id"] == sess.correction.candidate_id)
            return {session: sess, scan_view: h.correction_view(sess), editor: editor_value(sess),
                    edited: card["reasoning"]}

        @guarded
        def on_click(mode, sess: Session, evt: gr.SelectData, request: gr.Request, profile: gr.OAuthProfile | None):
            user = who(request, profile)
            if sess.correction is None:
                raise h.StudioError("Ask the model first; clicks refine the chosen candidate's mask.")
            x, y = evt.index[0], evt.index[1]
            corr = h.click(studio, user, sess, x, y, mode or "positive")
            status = ("Box: now click the opposite corner." if corr.corner is not None else
                      f"Mask: {int(corr.mask.sum())} px after {corr.n_clicks} click(s).")
            return {session: sess, scan_view: h.correction_view(sess), editor: editor_value(sess), status_md: status}

        @guarded
        def on_brush(value, sess: Session):
            layers = (value or {}).get("layers") or []
            layer = layers[0] if layers else None
            if layer is not None and len(layers) > 1:  # several layers: paint is paint
                layer = np.max(np.stack([np.asarray(x) for x in layers if x is not None]), axis=0)
            corr = h.brush(sess, layer)
            return {session: sess, scan_view: h.correction_view(sess), editor: editor_value(sess),
                    status_md: f"Mask: {int(corr.mask.sum())} px after {corr.n_strokes} stroke(s)."}

        @guarded
        def on_undo(sess: Session):
            h.undo(sess)
            return {session: sess, scan_view: h.correction_view(sess), editor: editor_value(sess),
                    status_md: "Undone."}

        @guarded
        def on_reset(sess: Session):
            if sess.correction is None:
                raise h.StudioError("Nothing to reset.")
            sess.correction.reset()
            return {session: sess, scan_view: h.correction_view(sess), editor: editor_value(sess),
                    status_md: "Back to the model's proposal."}

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
            @guarded
            def on_submit(values: dict, request: gr.Request, profile: gr.OAuthProfile | None):
                user = who(request, profile)
                sess = values[session]
                ranking, ratings = collect(sess, [values[c] for c in rank_and_rate])
                result = h.submit_session(studio, user, sess, ranking=ranking, ratings=ratings,
                                          edited_reasoning=values[edited], status=status)
                verb = {"submitted": "Submitted", "draft": "Draft saved", "discarded": "Discarded"}[status]
                return {session: sess, status_md: f"{verb}: feedback {result['feedback_id']} on case "
                                                  f"{result['case_id']}."}
            on_submit.__name__ = f"on_{status}"
            return on_submit

        @guarded
        def on_next(sess: Session):
            sess.clear()
            return {session: sess, upload: None, question: "", example: None, **controls_view(sess),
                    **case_view(sess, "Ready for the next case: upload a scan or pick an example.")}

        # ---------------------------------------------------------------------- review/dashboard/admin handlers
        @guarded
        def on_load(request: gr.Request, profile: gr.OAuthProfile | None):
            try:
                user = who(request, profile)
            except AccessDenied as exc:
                return {whoami: f"_{_esc(exc)}_", review_tab: gr.Tab(visible=False),
                        dash_tab: gr.Tab(visible=False), admin_tab: gr.Tab(visible=False), model_md: banner()}
            versions = [v["name"] for v in studio.store.list_model_versions()]
            people = [p["name"] for p in studio.store.list_annotators()] if user.can("review") else []
            return {whoami: f"Signed in as **{_esc(user.name)}** ({user.role})", model_md: banner(),
                    review_tab: gr.Tab(visible=user.can("review")), dash_tab: gr.Tab(visible=user.can("dashboard")),
                    admin_tab: gr.Tab(visible=user.can("admin")),
                    q_version: gr.Dropdown(choices=[""] + versions, value=""),
                    q_annotator: gr.Dropdown(choices=[""] + people, value=""),
                    serve_pick: gr.Dropdown(choices=versions, value=studio.predictor.model_version)}

        @guarded
        def on_queue(status_v, state_v, version_v, annotator_v, request: gr.Request, profile: gr.OAuthProfile | None):
            user = who(request, profile)
            rows = h.review_queue(studio, user, status=status_v, model_version=version_v or None,
                                  annotator=annotator_v or None, review_state=state_v or None)
            import pandas as pd

            cols = ["feedback_id", "case_id", "annotator", "model_version", "status", "created_at", "question",
                    "has_mask", "proposal_dice", "clicks", "strokes", "seconds", "review", "reviewer", "review_reason"]
            return pd.DataFrame(rows, columns=cols)

        @guarded
        def on_queue_select(df, evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            try:
                return int(df.iloc[int(row)]["feedback_id"])
            except (IndexError, KeyError, ValueError, TypeError):
                return gr.skip()

        @guarded
        def on_open(fid, request: gr.Request, profile: gr.OAuthProfile | None):
            user = who(request, profile)
            if fid is None:
                raise h.StudioError("Pick a row of the queue (or type a feedback id).")
            view = h.feedback_view(studio, user, fid)
            return view["proposal_image"], view["corrected_image"], view["markdown"]

        @guarded
        def on_review(fid, decision, reason, status_v, state_v, version_v, annotator_v, request: gr.Request,
                      profile: gr.OAuthProfile | None):
            user = who(request, profile)
            if fid is None:
                raise h.StudioError("Open a submission first.")
            review_id = h.review(studio, user, fid, decision, reason)
            view = h.feedback_view(studio, user, fid)
            gr.Info(f"Review {review_id} saved: {decision}.")
            table = on_queue.__wrapped__(status_v, state_v, version_v, annotator_v, request, profile)
            return view["markdown"], "", table

        @guarded
        def on_dashboard(request: gr.Request, profile: gr.OAuthProfile | None):
            user = who(request, profile)
            d = h.dashboard(studio, user)
            per_day = d["dice_over_time"].copy()
            per_day["day"] = per_day["day"].astype(str).str[:10]
            return (d["counts"], d["dice_over_time"], per_day, d["per_model_version"], d["ratings"],
                    d["agreement"], d["per_annotator"])

        @guarded
        def on_export(fmt, statuses, request: gr.Request, profile: gr.OAuthProfile | None):
            user = who(request, profile)
            return str(h.export_data(studio, user, fmt, statuses))

        @guarded
        def on_versions(request: gr.Request, profile: gr.OAuthProfile | None):
            import pandas as pd

            who(request, profile).require("admin")
            return pd.DataFrame(h.model_versions(studio))

        @guarded
        def on_serve(name, request: gr.Request, profile: gr.OAuthProfile | None):
            import pandas as pd

            user = who(request, profile)
            h.serve_model(studio, user, name)
            return pd.DataFrame(h.model_versions(studio)), banner()

        # ---------------------------------------------------------------------- the named API
        @guarded
        def api_predict(scan, question, n, options, sess: Session, request: gr.Request,
                        profile: gr.OAuthProfile | None, progress=gr.Progress()):
            """Upload a scan, ask a question, get n candidate answers. Returns JSON (case_id, run_id,
            candidate_ids, candidates: reasoning, target, boxes, mask_score, parse_errors) and overlay images.
            `options` (JSON, optional): frame, slice, axis, window, level, width."""
            user = who(request, profile)
            if not scan:
                raise h.StudioError("Send a scan file.")
            opts = h._json_arg(options, "options", {})
            if not isinstance(opts, dict):
                raise h.StudioError("options must be a JSON object")
            fresh = Session()   # the session's earlier case stays as it was if anything below fails
            h.open_scan(studio, fresh, scan, frame=opts.get("frame"), slice_index=opts.get("slice"),
                        axis=int(opts.get("axis", 2)), window=opts.get("window"), level=opts.get("level"),
                        width=opts.get("width"))
            result = h.predict(studio, user, fresh, question, int(n or config.n_candidates),
                               progress=lambda f, d: progress(f, desc=d))
            gallery = [(img, f"#{i + 1} (candidate {cid})") for i, (img, cid) in
                       enumerate(zip(result.overlays, result.candidate_ids))]
            return result.to_json(), gallery, fresh

        @guarded
        def api_refine(case_id, candidate_id, clicks, box, sess: Session, request: gr.Request,
                       profile: gr.OAuthProfile | None):
            """Refine a stored candidate's mask with clicks ([[x, y, 1|0], …], scan pixels) and an optional box
            ([x1, y1, x2, y2]). Returns the mask as a PNG (0/255, the scan's height × width) and a summary."""
            user = who(request, profile)
            case_id = sess.case_id if case_id in (None, 0) else case_id
            if case_id is None:
                raise h.StudioError("Say which case (case_id from /predict).")
            mask = h.refine(studio, user, case_id, candidate_id, clicks, box)
            sess.api_mask = (int(case_id), int(candidate_id), mask)
            summary = {"case_id": int(case_id), "candidate_id": int(candidate_id), "height": int(mask.shape[0]),
                       "width": int(mask.shape[1]), "area": int(mask.sum())}
            return np.where(mask, 255, 0).astype(np.uint8), summary, sess

        @guarded
        def api_submit(case_id, run_id, ranking, ratings, mask, edited_reasoning, status, chosen_candidate_id,
                       submission_id, sess: Session, request: gr.Request, profile: gr.OAuthProfile | None):
            """Store feedback on a run: ranking ({candidate_id: rank}, ties allowed), ratings ({candidate_id:
            {scale: value}}), the corrected mask (a PNG of the scan's size; default: this session's last /refine
            mask on the case), edited reasoning, status (submitted/draft/discarded). Returns the stored ids."""
            user = who(request, profile)
            case_id = h._int(case_id, "case")
            run_id = h._int(run_id, "run") if run_id not in (None, 0) else (
                sess.run_id if sess.case_id == case_id else None)
            if run_id is None:
                raise h.StudioError("Say which run (run_id from /predict).")
            chosen = chosen_candidate_id or None
            corrected = None
            if mask:
                height, width = studio.display(studio.store.get_case(case_id)["scan_hash"]).shape[:2]
                try:
                    corrected = overlay.read_mask_image(mask, height, width)
                except ValueError as exc:
                    raise h.StudioError(str(exc)) from None
                except OSError:
                    raise h.StudioError("the mask file is not a readable image") from None
                finally:
                    h._unlink_upload(Path(mask))
            elif sess.api_mask is not None and sess.api_mask[0] == case_id:
                _, refined_candidate, corrected = sess.api_mask
                chosen = chosen or refined_candidate
            result = h.submit(studio, user, case_id=case_id, run_id=run_id, ranking=ranking, ratings=ratings,
                              chosen_candidate_id=chosen, mask=corrected, edited_reasoning=edited_reasoning or None,
                              status=status or "submitted", submission_id=submission_id or None)
            return result, sess

        @guarded
        def api_session(sess: Session, request: gr.Request, profile: gr.OAuthProfile | None):
            """Who is calling and what this session holds (nothing from other sessions)."""
            user = who(request, profile)
            return {"user": user.name, "role": user.role, "model_version": studio.predictor.model_version,
                    "trained": bool(studio.predictor.trained), **sess.summary()}

        # ---------------------------------------------------------------------- wiring
        private = {"api_visibility": "private"}
        model_q = {"concurrency_id": "model", "concurrency_limit": model_limit}
        refine_q = {"concurrency_id": "refine", "concurrency_limit": model_limit}
        all_case = [session, *case_outputs]
        upload.upload(on_upload, [upload, session], [upload, *all_case, *scan_controls], **private)
        example.input(on_example, [example, session], [*all_case, *scan_controls, question], **private)
        reslice_inputs = [frame, axis, slice_, window, level, width, session]
        reslice_outputs = [*all_case, *scan_controls]
        for control in (frame, slice_):
            control.release(on_reslice, reslice_inputs, reslice_outputs, **private)
        for control in (axis, window):
            control.input(on_reslice, reslice_inputs, reslice_outputs, **private)
        for control in (level, width):
            control.submit(on_reslice, reslice_inputs, reslice_outputs, **private)
        suggestions.input(lambda s: s or gr.skip(), [suggestions], [question], **private)
        busy = {"show_progress_on": [scan_view, status_md]}
        ask.click(on_predict, [session, question, n_cands], all_case, **private, **model_q, **busy)
        question.submit(on_predict, [session, question, n_cands], all_case, **private, **model_q, **busy)
        correct_choice.input(on_choose, [correct_choice, session], [session, scan_view, editor, edited], **private)
        click_outputs = [session, scan_view, editor, status_md]
        scan_view.select(on_click, [click_mode, session], click_outputs, **private, **refine_q,
                         show_progress="minimal")
        apply_btn.click(on_brush, [editor, session], click_outputs, **private)
        undo_btn.click(on_undo, [session], click_outputs, **private)
        reset_btn.click(on_reset, [session], click_outputs, **private)
        feedback_inputs = {session, edited, *rank_and_rate}
        for button, status in ((submit_btn, "submitted"), (draft_btn, "draft"), (discard_btn, "discarded")):
            button.click(make_submit(status), feedback_inputs, [session, status_md], **private)
        next_btn.click(on_next, [session], [upload, question, example, *all_case, *scan_controls], **private)

        demo.load(on_load, None, [whoami, model_md, review_tab, dash_tab, admin_tab, q_version, q_annotator,
                                  serve_pick], **private)
        queue_inputs = [q_status, q_state, q_version, q_annotator]
        q_refresh.click(on_queue, queue_inputs, [queue_df], **private)
        review_tab.select(on_queue, queue_inputs, [queue_df], **private)
        queue_df.select(on_queue_select, [queue_df], [fb_id], **private)
        fb_open.click(on_open, [fb_id], [rv_proposal, rv_corrected, rv_md], **private)
        fb_id.submit(on_open, [fb_id], [rv_proposal, rv_corrected, rv_md], **private)
        rv_save.click(on_review, [fb_id, rv_decision, rv_reason, *queue_inputs], [rv_md, rv_reason, queue_df],
                      **private)
        dash_outputs = [dash_counts, dash_plot, dash_time, dash_versions, dash_ratings, dash_agree, dash_people]
        dash_refresh.click(on_dashboard, None, dash_outputs, **private)
        dash_tab.select(on_dashboard, None, dash_outputs, **private)
        ex_btn.click(on_export, [ex_format, ex_status], [ex_file], **private)
        admin_tab.select(on_versions, None, [versions_df], **private)
        serve_btn.click(on_serve, [serve_pick], [versions_df, model_md], **private, **model_q)

        api_buttons[0].click(api_predict, [api_file, api_question, api_n, api_options, session],
                             [api_predict_json, api_gallery, session], api_name="predict", **model_q)
        api_buttons[1].click(api_refine, [api_case, api_cand, api_clicks, api_box, session],
                             [api_mask_out, api_refine_json, session], api_name="refine", **refine_q)
        api_buttons[2].click(api_submit, [api_case, api_run, api_ranking, api_ratings, api_mask_in, api_edited,
                                          api_status, api_chosen, api_subid, session],
                             [api_submit_json, session], api_name="submit")
        api_buttons[3].click(api_session, [session], [api_session_json], api_name="session")
    return demo
