"""The Gradio app: its plain parts directly, then the named API through `gradio_client` against the app
started here on a free port with a temporary database and a small model (real LiteMedSAM weights)."""
import json
import socket
import struct
import zlib
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
from PIL import Image

from coreseg.config import AppConfig
from studio import handlers as h
from studio import inputs, overlay, scans
from studio.session import Correction, Session
from studio.users import AccessDenied, User, UserDirectory, hash_password, resolve_user, verify_password

DICOM = pydicom.data.get_testdata_file("CT_small.dcm", download=False)   # 128 × 128 CT, bundled with pydicom
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
ROLES = {"alice": "annotator", "bob": "reviewer", "carol": "admin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_predictor():
    from coreseg.config import ModelConfig, ReasonerConfig
    from coreseg.modeling.core_seg import CoreSeg
    from coreseg.predictor import CoreSegPredictor

    model = CoreSeg.build(ModelConfig(reasoner=ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2,
                                                              intermediate_size=128, max_new_tokens=40))).eval()
    return CoreSegPredictor(model, "test", trained=False)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height (a decompression bomb's shape, without the bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_files(folder):
    """The three bad uploads of the issue: a text file named .dcm, a 60000×60000 PNG, a 5-D NIfTI."""
    text = folder / "notes.dcm"
    text.write_text("this is a text file, not a DICOM\n" * 20)
    huge = folder / "huge.png"
    huge.write_bytes(png_header_only(60000, 60000))
    five = folder / "five.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2, 2), np.int16), np.eye(4)), five)
    return {"text": (text, "no DICM header"), "huge": (huge, "too large"),
            "five": (five, "5 dimensions")}


# ================================================================================ plain parts (no server, no model)
def test_overlay_scales_small_scans_up_and_maps_clicks_back():
    display = np.zeros((128, 100, 3), np.uint8)
    mask = np.zeros((128, 100), bool)
    mask[40:60, 30:50] = True
    shown = overlay.draw(display, mask, boxes=[(30, 40, 50, 60)], clicks=[(35, 45, 1), (45, 55, 0)])
    scale = overlay.display_scale(128, 100)
    assert scale == 4 and shown.shape == (512, 400, 3) and shown.dtype == np.uint8
    assert shown[50 * 4, 40 * 4].any()                               # the mask is tinted
    assert overlay.to_scan_xy(4 * 45 + 2, 4 * 55 + 3, scale, 128, 100) == (45, 55)
    assert overlay.to_scan_xy(10_000, -5, scale, 128, 100) == (99, 0)   # clipped inside
    big = overlay.draw(np.zeros((3000, 1500, 3), np.uint8))
    assert max(big.shape[:2]) == overlay.MAX_DISPLAY_SIDE


def test_brush_strokes_come_back_at_the_scan_size_whatever_the_editor_size():
    """An editor may hand back its canvas at another size (Gradio ImageEditor #10298): the edit is mapped back to
    exactly the scan's height × width, green adding and magenta removing."""
    layer = np.zeros((517, 389, 4), np.uint8)                        # not the scan's 128 × 96, not even its aspect
    layer[50:150, 40:120] = (0, 255, 0, 255)                          # add, top left
    layer[300:400, 200:300] = (255, 0, 255, 200)                      # remove, lower right
    layer[150:156, 40:60] = (10, 240, 20, 90)                         # anti-aliased green edge is still "add"
    add, remove = overlay.strokes_to_edit(layer, 128, 96)
    assert add.shape == remove.shape == (128, 96)
    assert add[20, 15] and not remove[20, 15]
    assert remove[87, 60] and not add[87, 60]
    assert not (add & remove).any()
    assert overlay.count_strokes(add, remove) == 2
    empty_add, empty_remove = overlay.strokes_to_edit(np.zeros((10, 10, 4), np.uint8), 128, 96)
    assert empty_add.shape == (128, 96) and not empty_add.any() and not empty_remove.any()


def test_correction_brush_undo_and_reset():
    proposal = np.zeros((32, 32), bool)
    proposal[8:16, 8:16] = True
    corr = Correction(7, proposal.copy(), proposal.copy())
    add = np.zeros_like(proposal)
    add[20:24, 20:24] = True
    remove = np.zeros_like(proposal)
    remove[8:10, 8:16] = True
    corr.snapshot()
    corr.apply_brush(add, remove)
    assert corr.mask.sum() == 64 + 16 - 16 and corr.mask.shape == (32, 32)
    corr.snapshot()
    corr.model_mask = np.ones_like(proposal)                          # a refine answer: brush edits stay on top
    assert not corr.mask[8:10, 8:16].any() and corr.mask[20:24, 20:24].all()
    assert corr.undo() and np.array_equal(corr.model_mask, proposal)
    assert corr.undo() and np.array_equal(corr.mask, proposal)
    assert not corr.undo()
    corr.clicks.append((1, 1, 1))
    corr.reset()
    assert np.array_equal(corr.mask, proposal) and corr.clicks == [] and corr.undo() and corr.clicks == [(1, 1, 1)]


def test_users_file_passwords_and_roles(tmp_path):
    encoded = hash_password("s3cret", iterations=1000)
    assert verify_password("s3cret", encoded) and not verify_password("wrong", encoded)
    assert not verify_password("s3cret", "md5$x$y$z")
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"name": "ann", "role": "annotator", "password_hash": encoded},
                                          {"name": "hf-rev", "role": "reviewer"}]}))
    users = UserDirectory.load(path)
    assert users.authenticate("ann", "s3cret") and not users.authenticate("ann", "nope")
    assert not users.authenticate("hf-rev", "") and not users.authenticate("nobody", "s3cret")
    assert resolve_user(users, False, "ann", None) == User("ann", "annotator")
    with pytest.raises(AccessDenied, match="Sign in"):
        resolve_user(users, False, None, None)
    assert resolve_user(None, False, None, None) == User("local", "admin")     # the laptop tool: every role
    with pytest.raises(AccessDenied, match="Hugging Face"):
        resolve_user(None, True, None, None)
    assert resolve_user(UserDirectory([{"name": "hf-rev", "role": "reviewer"}]), True, None, "hf-rev").role == "reviewer"
    assert resolve_user(None, True, None, "someone").role == "annotator"
    annotator = User("ann", "annotator")
    assert annotator.can("annotate") and not annotator.can("review") and not annotator.can("admin")
    with pytest.raises(AccessDenied, match="reviewer"):
        annotator.require("review")
    assert all(User("x", "admin").can(a) for a in ("annotate", "review", "dashboard", "admin"))
    with pytest.raises(ValueError, match="unknown role"):
        UserDirectory([{"name": "x", "role": "boss"}])


def test_api_inputs_are_validated_with_clear_messages():
    assert inputs.parse_clicks("[[10, 20, 1], [5, 6, 0]]", 64, 64) == [(10, 20, 1), (5, 6, 0)]
    assert inputs.parse_clicks([{"x": 3, "y": 4, "label": 0}], 64, 64) == [(3, 4, 0)]
    with pytest.raises(h.StudioError, match="outside the 64×64 scan"):
        inputs.parse_clicks("[[70, 1, 1]]", 64, 64)
    with pytest.raises(h.StudioError, match="label"):
        inputs.parse_clicks("[[1, 1, 5]]", 64, 64)
    with pytest.raises(h.StudioError, match="not valid JSON"):
        inputs.parse_clicks("[[1, 1", 64, 64)
    with pytest.raises(h.StudioError, match="at most 64"):
        inputs.parse_clicks([[1, 1, 1]] * 65, 64, 64)
    assert inputs.parse_box("[50, 40, 10, 5]", 64, 64) == (10, 5, 50, 40)
    assert inputs.parse_box("", 64, 64) is None
    with pytest.raises(h.StudioError, match="empty or outside"):
        inputs.parse_box([70, 70, 80, 80], 64, 64)
    assert inputs.parse_ranking('{"3": 1, "4": 1, "5": 2}') == {3: 1, 4: 1, 5: 2}          # ties kept
    assert inputs.parse_ranking([{"candidate": 3, "rank": 2}]) == {3: 2}                     # Argilla's shape
    assert inputs.parse_ratings('{"3": {"correctness": 4, "completeness": null}}') == {3: {"correctness": 4}}
    with pytest.raises(h.StudioError, match="whole number"):
        inputs.parse_ranking('{"3": 1.5}')
    assert inputs.candidate_count(None, 4) == 4 and inputs.candidate_count("", 4) == 4
    for bad in (0, -1, 9, "0"):                                                            # n = 0 is an error, not 4
        with pytest.raises(h.StudioError, match="1 to 8"):
            inputs.candidate_count(bad, 4)


def test_mask_png_round_trip_and_size_check(tmp_path):
    mask = np.zeros((30, 40), bool)
    mask[5:9, 10:30] = True
    path = tmp_path / "m.png"
    path.write_bytes(overlay.mask_to_png(mask))
    assert np.array_equal(overlay.read_mask_image(path, 30, 40), mask)
    with pytest.raises(ValueError, match="30×40"):
        overlay.read_mask_image(path, 40, 30)


def test_volumes_slices_windows_and_examples_through_the_handlers(tmp_path):
    """A NIfTI volume offers slices along three axes; a CT DICOM offers window presets and a custom level/width;
    the bundled examples open with their modality's suggested questions. No model needed."""

    config, reader, session = AppConfig(max_pixels=40_000_000), scans.UploadReader(2**30), Session()
    volume = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([0.5, 0.5, 2.0, 1.0])), path)
    scans.open_into(config, reader, session, path, delete_upload=False)
    assert session.info["n_slices"] == [5, 6, 7] and session.scan.meta["slice"] == 3
    assert "slice 3 of 7 (axis 2)" in scans.scan_summary(session)
    scans.reslice(config, session, axis=0, slice_index=1)
    assert session.scan.meta["axis"] == 0 and session.scan.meta["slice"] == 1 and session.scan.display.shape[2] == 3
    assert "slice 1 of 5 (axis 0)" in scans.scan_summary(session)
    with pytest.raises(h.StudioError, match="out of range"):
        scans.reslice(config, session, axis=0, slice_index=9)
    assert session.scan.meta["slice"] == 1                            # a refused request changes nothing
    with open(DICOM, "rb") as f:
        scans.open_into(config, reader, session, f.read(), filename="x.dcm")
    assert {"lung", "bone", "custom"} <= set(scans.window_choices(session))
    scans.reslice(config, session, window="lung")
    assert session.scan.meta["window"]["name"] == "lung"
    scans.reslice(config, session, window="custom", level=40, width=80)
    assert session.scan.meta["window"] == {"name": "custom", "level": 40.0, "width": 80.0}
    assert "window custom L 40 W 80" in scans.scan_summary(session)
    titles = [e["title"] for e in scans.examples()]
    assert len(titles) == 3 and (scans.EXAMPLES_DIR / "LICENSES.md").exists()
    for item in scans.examples():
        scans.open_into(config, reader, session, item["path"], delete_upload=False)
        session.scan.meta["modality"] = item["modality"]
        modality = session.scan.meta["modality"]
        assert modality in ("US", "endoscopy")
        assert scans.suggested_questions(modality) != scans.suggested_questions(None)
    assert all(Path(e["path"]).exists() for e in scans.examples())        # examples are never deleted like uploads


# ================================================================================ the app, served
@pytest.fixture(scope="module")
def predictor():
    return small_predictor()


@pytest.fixture(scope="module")
def served(tmp_path_factory, predictor):
    """The app with a users file (alice annotator, bob reviewer, carol admin), on a free port."""
    import app
    from annotation.store import FeedbackStore

    folder = tmp_path_factory.mktemp("served")
    users = folder / "users.json"
    users.write_text(json.dumps({"users": [{"name": n, "role": ROLES[n],
                                            "password_hash": hash_password(pw, iterations=1000)}
                                           for n, pw in PASSWORDS.items()]}))
    config = AppConfig(database_url=f"sqlite:///{folder / 'feedback.db'}", users_file=str(users),
                       temp_dir=str(folder / "gradio-tmp"), n_candidates=4)
    store = FeedbackStore(folder / "feedback.db")
    demo = app.build_app(config, predictor=predictor, store=store)
    port = free_port()
    app.launch_app(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "studio": demo.coreseg_studio, "store": store, "folder": folder,
               "config": config}
    finally:
        demo.close()
        store.close()


def client_for(served, name):
    from gradio_client import Client

    return Client(served["url"], auth=(name, PASSWORDS[name]), verbose=False)


def test_named_api_endpoints(served):
    api = client_for(served, "alice").view_api(return_format="dict", print_info=False)
    named = set(api["named_endpoints"])
    assert {"/predict", "/refine", "/submit", "/session"} <= named
    assert not any(name.startswith("/on_") for name in named)        # the UI's own events are not API
    params = [p["parameter_name"] for p in api["named_endpoints"]["/predict"]["parameters"]]
    assert params == ["scan", "question", "n", "options"]


def test_sign_in_is_required(served):
    from gradio_client import Client

    with pytest.raises(Exception):
        Client(served["url"], verbose=False).predict(api_name="/session")
    with pytest.raises(Exception):
        Client(served["url"], auth=("alice", "wrong"), verbose=False)


def test_predict_refine_submit_then_rows_are_in_the_store(served):
    from gradio_client import handle_file

    alice = client_for(served, "alice")
    result, gallery = alice.predict(handle_file(DICOM), "Where is the lesion? Find it and identify its boundaries.", 4,
                                    "", api_name="/predict")
    assert len(result["candidate_ids"]) == 4 and len(gallery) == 4
    assert result["trained"] is False and "UNTRAINED" in result["note"]
    for card in result["candidates"]:
        assert {"reasoning", "target", "boxes", "mask_score", "parse_errors", "candidate_id"} <= set(card)
    case_id, run_id, ids = result["case_id"], result["run_id"], result["candidate_ids"]
    with Image.open(gallery[0]["image"]) as shown:
        assert shown.size == (512, 512)                                # the 128 px scan, shown 4× for clicking

    mask_path, summary = alice.predict(case_id, ids[1], "[[64, 60, 1], [20, 20, 0]]", "[30, 30, 100, 100]",
                                       api_name="/refine")
    with Image.open(mask_path) as img:
        refined = np.asarray(img.convert("L")) > 0
    assert refined.shape == (128, 128) == (summary["height"], summary["width"])
    assert summary["area"] == int(refined.sum())
    decoded = outside_discs(refined, [(64, 60, 1), (20, 20, 0)])         # what the decoder made of the prompts
    inside = np.zeros_like(decoded)
    inside[30:100, 30:100] = True
    assert decoded.sum() > 50 and (decoded & ~inside).sum() <= 0.05 * decoded.sum()

    session = alice.predict(api_name="/session")
    assert session["user"] == "alice" and session["case_id"] == case_id and session["has_refined_mask"]

    stored = alice.predict(case_id, run_id, json.dumps({str(ids[0]): 2, str(ids[1]): 1, str(ids[2]): 1}),
                           json.dumps({str(ids[1]): {"correctness": 4, "completeness": 3, "clinical_relevance": 5}}),
                           None, "The bright round structure differs from the surrounding soft tissue.",
                           "submitted", 0, "alice-sub-1", api_name="/submit")
    fb = served["store"].get_feedback(stored["feedback_id"])
    assert fb["annotator"] == "alice" and fb["status"] == "submitted" and fb["case_id"] == case_id
    assert fb["ranking"] == {ids[0]: 2, ids[1]: 1, ids[2]: 1}               # ties round-trip
    assert fb["ratings"] == {ids[1]: {"correctness": 4, "completeness": 3, "clinical_relevance": 5}}
    assert fb["correction"]["proposal_candidate_id"] == ids[1]             # the refined candidate
    assert np.array_equal(fb["mask"], refined)                              # the session's refined mask, H × W
    assert fb["edited_reasoning"].startswith("The bright round")
    again = alice.predict(case_id, run_id, json.dumps({str(ids[0]): 2, str(ids[1]): 1, str(ids[2]): 1}),
                          json.dumps({str(ids[1]): {"correctness": 4, "completeness": 3, "clinical_relevance": 5}}),
                          None, "The bright round structure differs from the surrounding soft tissue.",
                          "submitted", 0, "alice-sub-1", api_name="/submit")
    assert again["feedback_id"] == stored["feedback_id"]                    # idempotent on submission_id

    # bob (another person, another session) sees none of alice's state and cannot act on her case
    bob = client_for(served, "bob")
    assert bob.predict(api_name="/session")["case_id"] is None
    with pytest.raises(Exception, match="case"):
        bob.predict(0, ids[0], "[[5, 5, 1]]", "", api_name="/refine")
    right = served["folder"] / "right.png"
    drawn = np.zeros((128, 128), bool)
    drawn[40:80, 50:90] = True
    right.write_bytes(overlay.mask_to_png(drawn))
    with pytest.raises(Exception, match="no such case among yours"):
        bob.predict(case_id, run_id, json.dumps({str(ids[0]): 1}), "", handle_file(str(right)), "", "draft",
                    ids[0], "", api_name="/submit")
    # a mask file must fit the scan
    wrong = served["folder"] / "wrong.png"
    wrong.write_bytes(overlay.mask_to_png(np.zeros((64, 64), bool)))
    with pytest.raises(Exception, match="scan is 128×128"):
        alice.predict(case_id, run_id, "", "", handle_file(str(wrong)), "", "submitted", ids[0], "",
                      api_name="/submit")
    drafted = alice.predict(case_id, run_id, json.dumps({str(ids[0]): 1}), "", handle_file(str(right)), "", "draft",
                            ids[0], "", api_name="/submit")
    assert np.array_equal(served["store"].get_feedback(drafted["feedback_id"])["mask"], drawn)
    # a second session of the same person starts empty too
    assert client_for(served, "alice").predict(api_name="/session")["case_id"] is None

    queue = served["store"].queue(status="submitted")
    assert [r["feedback_id"] for r in queue] == [stored["feedback_id"]]
    counts = served["store"].counts()
    assert counts["cases"] == 1 and counts["runs"] == 1 and counts["candidates"] == 4 and counts["feedback"] == 2


def test_bad_uploads_give_a_message_and_the_app_keeps_working(served, tmp_path):
    from gradio_client import handle_file

    alice = client_for(served, "alice")
    for path, message in bad_files(tmp_path).values():
        with pytest.raises(Exception, match=message):
            alice.predict(handle_file(str(path)), "Outline the lesion.", 1, "", api_name="/predict")
    with pytest.raises(Exception, match="Ask a question"):
        alice.predict(handle_file(DICOM), "  ", 1, "", api_name="/predict")
    assert alice.predict(api_name="/session")["user"] == "alice"          # still answering
    leftovers = [p.name for p in (served["folder"] / "gradio-tmp").rglob("*")
                 if p.is_file() and (p.suffix in (".dcm", ".nii") or p.name == "huge.png")]
    assert leftovers == []                                                  # uploads are deleted once read


def submitted_case(studio, name="alice", seed=5):
    """A submission of `name`'s own, made here (no test depends on another having run first)."""
    user, session = studio.identify(name, None), Session()
    with open(DICOM, "rb") as f:
        studio.open_scan(session, f.read(), filename="scan.dcm")
    studio.predict(user, session, "Outline the lesion.", 2, seed=seed)
    result = studio.submit_session(user, session, ranking={session.candidate_ids[0]: 1}, ratings={},
                                   edited_reasoning="", status="submitted")
    return result["feedback_id"], result["case_id"]


def test_roles_are_checked_in_every_handler(served):
    studio = served["studio"]
    alice, bob, carol = (studio.identify(n, None) for n in ("alice", "bob", "carol"))
    assert (alice.role, bob.role, carol.role) == ("annotator", "reviewer", "admin")
    with pytest.raises(AccessDenied):
        studio.review_queue(alice)
    with pytest.raises(AccessDenied):
        studio.dashboard(alice)
    with pytest.raises(AccessDenied):
        studio.export_data(bob, "summary")
    with pytest.raises(AccessDenied):
        studio.serve_model(bob, "test")
    with pytest.raises(AccessDenied):
        studio.identify(None, None)                                         # users file: sign-in needed
    fid, case_id = submitted_case(studio)
    assert fid in [row["feedback_id"] for row in studio.review_queue(bob)]
    view = studio.feedback_view(bob, fid)
    assert view["proposal_image"].shape[2] == 3 and "alice" in view["markdown"]
    with pytest.raises(h.StudioError, match="needs a reason"):
        studio.review(bob, fid, "reject", "")
    studio.review(bob, fid, "accept")
    assert served["store"].accepted_mask(case_id).shape == (128, 128)
    board = studio.dashboard(bob)
    assert int(board["counts"]["Feedback"].iloc[0]) >= 1 and board["has_dice"] and len(board["dice_over_time"]) >= 1
    archive = studio.export_data(carol, "summary")
    with zipfile.ZipFile(archive) as zf:
        assert "coreseg-summary/manifest.json" in zf.namelist()
    assert archive.parent.parent == served["studio"].temp_dir               # the private folder


def outside_discs(mask, clicks, radius=3):
    """The mask without the small discs `enforce_clicks` may paint around each click: what the decoder said."""
    yy, xx = np.ogrid[:mask.shape[0], :mask.shape[1]]
    keep = np.ones_like(mask)
    for x, y, _ in clicks:
        keep &= (yy - y) ** 2 + (xx - x) ** 2 > radius ** 2
    return mask & keep


def test_session_correction_through_the_handlers(served):
    """What the UI does, without a browser: open, ask, click, brush with an editor layer of another size,
    undo, then submit; the stored mask is exactly the scan's size."""
    studio = served["studio"]
    user = studio.identify("alice", None)
    session = Session()
    with open(DICOM, "rb") as f:
        studio.open_scan(session, f.read(), filename="scan.dcm")
    assert session.scan.meta["modality"] == "CT" and "patient" not in json.dumps(session.scan.meta).lower()
    studio.predict(user, session, "Outline the lesion.", 2, seed=3)
    assert session.correction is not None and session.correction.candidate_id == session.candidate_ids[0]
    corr = studio.click(user, session, 4 * 64 + 1, 4 * 64 + 1, "positive")   # shown pixels (4×)
    assert corr.clicks == [(64, 64, 1)]
    studio.click(user, session, 4 * 10, 4 * 10, "box")
    assert session.correction.corner == (10, 10)
    studio.click(user, session, 4 * 100, 4 * 90, "box")
    assert session.correction.box == (10, 10, 101, 91) and session.correction.corner is None
    decoded = outside_discs(session.correction.model_mask, corr.clicks)
    inside = np.zeros_like(decoded)
    inside[10:91, 10:101] = True
    assert decoded.sum() > 50 and (decoded & ~inside).sum() <= 0.05 * decoded.sum()   # the decoder followed the box
    layer = np.zeros((700, 700, 4), np.uint8)
    layer[0:50, 0:50] = (0, 255, 0, 255)
    h.brush(session, layer)
    assert session.correction.mask[:8, :8].all() and session.correction.mask.shape == (128, 128)
    h.undo(session)
    assert not session.correction.mask[:4, :4].any()
    h.brush(session, layer)
    shown = h.correction_view(session)
    assert shown.shape == (512, 512, 3)
    result = studio.submit_session(user, session, ranking={session.candidate_ids[0]: 1}, ratings={},
                                   edited_reasoning="", status="submitted")
    stored = served["store"].get_feedback(result["feedback_id"])
    assert stored["mask"].shape == (128, 128) and stored["mask"][:8, :8].all()
    assert stored["clicks"] == 3 and stored["strokes"] == 2 and stored["edited_reasoning"] is None  # effort: undo too
    with pytest.raises(h.StudioError, match="already submitted"):
        studio.submit_session(user, session, ranking={}, ratings={}, edited_reasoning="", status="submitted")


def test_a_failed_model_call_shows_an_error_and_loses_nothing(served, monkeypatch):
    from gradio_client import handle_file

    studio = served["studio"]
    alice = client_for(served, "alice")
    first, _ = alice.predict(handle_file(DICOM), "Outline the lesion.", 1, "", api_name="/predict")

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(studio.predictor, "predict", broken)
    with pytest.raises(Exception, match="model failed"):
        alice.predict(handle_file(DICOM), "Outline the lesion.", 1, "", api_name="/predict")
    monkeypatch.undo()
    assert alice.predict(api_name="/session")["case_id"] == first["case_id"]   # the earlier case is still there
    monkeypatch.setattr(studio.predictor, "refine", broken)
    with pytest.raises(Exception, match="clicks are kept"):
        alice.predict(first["case_id"], first["candidate_ids"][0], "[[3, 3, 1]]", "", api_name="/refine")
