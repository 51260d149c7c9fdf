"""Access and abuse (issue 11): case ownership, escaped text, temporary files, bounded sessions, concurrent
identical uploads, bounded clicks and text, sign-in throttling, sessions that follow the signed-in user,
self-review, file downloads by path, n = 0; and the issue-13 rules of the submit and the cards.

The server tests run the app with a users file on a free port (gradio_client against it, a small model on real
LiteMedSAM weights); the rest call `Studio` and its parts directly.
"""
import json
import os
import threading
import time

import httpx
import numpy as np
import pytest
from markdown_it import MarkdownIt

from coreseg.config import AppConfig
from studio import scans
from studio.handlers import Studio, StudioError
from studio.session import Session, SessionRegistry
from studio.users import UserDirectory, hash_password
from studio.views import candidate_markdown, dashboard_tables, feedback_markdown
from tests.test_app import DICOM, free_port, small_predictor

PASSWORDS = {"alice": "alice-pw", "dave": "dave-pw", "bob": "bob-pw", "erin": "erin-pw", "carol": "carol-pw"}
ROLES = {"alice": "annotator", "dave": "annotator", "bob": "reviewer", "erin": "reviewer", "carol": "admin"}
QUESTION = "Where is the lesion? Find it and identify its boundaries."
HOSTILE = ('<img src="http://127.0.0.1:9/leak.png"> <form action="http://127.0.0.1:9/"><input type=password>'
           '</form> ![x](http://127.0.0.1:9/pixel.png) <script>alert(1)</script>')


def users_file(folder):
    path = folder / "users.json"
    path.write_text(json.dumps({"users": [{"name": n, "role": ROLES[n],
                                           "password_hash": hash_password(pw, iterations=1000)}
                                          for n, pw in PASSWORDS.items()]}))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import app
    from annotation.store import FeedbackStore

    folder = tmp_path_factory.mktemp("access")
    config = AppConfig(database_url=f"sqlite:///{folder / 'feedback.db'}", users_file=str(users_file(folder)),
                       temp_dir=str(folder / "gradio-tmp"), n_candidates=2)
    store = FeedbackStore(folder / "feedback.db")
    demo = app.build_app(config, predictor=small_predictor(), store=store)
    demo.coreseg_studio.client_failures = 3          # the per-client sign-in limit, small for the test
    port = free_port()
    app.launch_app(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "studio": demo.coreseg_studio, "store": store, "folder": folder}
    finally:
        demo.close()
        store.close()


def client(served, name):
    from gradio_client import Client

    return Client(served["url"], auth=(name, PASSWORDS[name]), verbose=False)


def ask(c, n=2):
    from gradio_client import handle_file

    result, gallery = c.predict(handle_file(DICOM), QUESTION, n, "", api_name="/predict")
    return result, gallery


def render(markdown: str) -> str:
    return MarkdownIt("commonmark", {"html": True}).render(markdown)


# ================================================================================ served
def test_cases_belong_to_the_person_who_asked(served):
    alice, dave = client(served, "alice"), client(served, "dave")
    mine, _ = ask(alice)
    theirs, _ = ask(dave)
    case, run, ids = mine["case_id"], mine["run_id"], mine["candidate_ids"]
    messages = set()
    for args in ((case, ids[0], "[[5, 5, 1]]", ""), (999_999, ids[0], "[[5, 5, 1]]", "")):
        with pytest.raises(Exception) as err:
            dave.predict(*args, api_name="/refine")
        messages.add(str(err.value).split("\n")[-1])
    assert len(messages) == 1 and "no such case among yours" in messages.pop()  # mine and missing read the same
    with pytest.raises(Exception, match="no such case among yours"):
        dave.predict(case, run, json.dumps({str(ids[0]): 1}), "", None, "", "submitted", 0, "", api_name="/submit")
    with pytest.raises(Exception, match="no such case among yours"):     # her run under his case
        dave.predict(theirs["case_id"], run, json.dumps({str(ids[0]): 1}), "", None, "", "submitted", 0, "",
                     api_name="/submit")
    with pytest.raises(Exception) as err:                                # her candidate under his case
        dave.predict(theirs["case_id"], ids[0], "[[5, 5, 1]]", "", api_name="/refine")
    assert "not one of this case's candidates" in str(err.value) and str(case) not in str(err.value).split("\n")[-1]
    assert all(r["case_id"] != case for r in served["store"].feedback_rows(status=None))   # nothing stored on hers


def test_bad_options_still_delete_the_raw_upload_and_n_zero_is_refused(served):
    from gradio_client import handle_file

    alice = client(served, "alice")
    tmp = served["folder"] / "gradio-tmp"
    for options, n, message in (("{not json", 2, "not valid JSON"), ('{"axis": "x"}', 2, "whole number"),
                                ("[1, 2]", 2, "JSON object"), ("", 0, "1 to 8")):
        with pytest.raises(Exception, match=message):
            alice.predict(handle_file(DICOM), QUESTION, n, options, api_name="/predict")
        assert [p for p in tmp.rglob("*.dcm")] == []                     # the DICOM (patient name inside) is gone


def test_clicks_text_and_signal_are_bounded(served):
    alice = client(served, "alice")
    result, _ = ask(alice)
    case, run, ids = result["case_id"], result["run_id"], result["candidate_ids"]
    with pytest.raises(Exception, match="at most 64"):
        alice.predict(case, ids[0], json.dumps([[5, 5, 1]] * 5000), "", api_name="/refine")
    with pytest.raises(Exception, match="limit is 4,000"):
        alice.predict(case, run, json.dumps({str(ids[0]): 1}), "", None, "x" * 20_000, "submitted", 0, "",
                      api_name="/submit")
    with pytest.raises(Exception, match="rank the candidates or rate"):
        alice.predict(case, run, "", "", None, "", "submitted", ids[0], "", api_name="/submit")
    draft = alice.predict(case, run, "", "", None, "", "draft", ids[0], "", api_name="/submit")
    assert draft["status"] == "draft"                                    # a draft may be empty-handed


def test_two_people_uploading_the_same_file_at_once_both_succeed(served):
    from gradio_client import handle_file

    clients = [client(served, "alice"), client(served, "dave")]
    results, errors = [], []
    barrier = threading.Barrier(2)

    def run(c):
        barrier.wait()
        try:
            results.append(c.predict(handle_file(DICOM), QUESTION, 1, "", api_name="/predict")[0])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2


def test_session_state_follows_the_signed_in_user(served):
    alice, bob = client(served, "alice"), client(served, "bob")
    result, _ = ask(alice)
    assert alice.predict(api_name="/session")["case_id"] == result["case_id"]
    bob.session_hash = alice.session_hash                                # bob presents alice's session id
    seen = bob.predict(api_name="/session")
    assert seen["user"] == "bob" and seen["case_id"] is None and seen["candidate_ids"] == []
    registry = served["studio"].sessions
    assert registry.get("alice", alice.session_hash).case_id == result["case_id"]


def test_review_own_submission_and_files_by_path(served):
    store, studio = served["store"], served["studio"]
    bob, carol, dave = client(served, "bob"), client(served, "carol"), client(served, "dave")
    result, gallery = ask(bob)                                           # a reviewer annotating
    ids = result["candidate_ids"]
    stored = bob.predict(result["case_id"], result["run_id"], json.dumps({str(ids[0]): 1}), "", None, HOSTILE,
                         "submitted", 0, "", api_name="/submit")
    reviewer = studio.identify("bob", None)
    with pytest.raises(StudioError, match="your own submission"):
        studio.review(reviewer, stored["feedback_id"], "accept")
    assert studio.review(studio.identify("erin", None), stored["feedback_id"], "accept") > 0
    view = studio.feedback_view(studio.identify("erin", None), stored["feedback_id"])
    page = render(view["markdown"])
    assert "<img" not in page and "<form" not in page and "<script" not in page and "<input" not in page
    assert "leak.png" in page                                            # shown as text, not fetched

    overlay_path = gallery[0]["image"] if isinstance(gallery[0], dict) else gallery[0][0]
    owned = [p for p in studio.files._owners if p.endswith("candidate-1.png")]
    assert owned and os.path.exists(overlay_path)

    def fetch(c, path):
        return httpx.get(f"{served['url']}gradio_api/file={path}", cookies=c.cookies, timeout=30)

    archive = studio.export_data(studio.identify("carol", None), "summary")
    assert fetch(dave, archive).status_code == 404                      # an annotator: as if it did not exist
    assert fetch(bob, archive).status_code == 404
    assert fetch(carol, archive).status_code != 404                     # the guard lets an admin through
    bobs_overlay = owned[-1]
    assert fetch(dave, bobs_overlay).status_code == 404
    assert fetch(bob, bobs_overlay).status_code == 200
    assert len(store.get_feedback(stored["feedback_id"])["edited_reasoning"]) == len(HOSTILE)  # stored as sent


def test_sign_in_is_throttled_per_name_and_per_client(served):
    login = f"{served['url']}login"
    users = served["studio"].users
    for _ in range(5):
        assert not users.authenticate("erin", "wrong")
    assert not users.authenticate("erin", PASSWORDS["erin"])             # the right one no longer works …
    users.throttle.succeed("name:erin")                                  # … until the window has passed
    assert users.authenticate("erin", PASSWORDS["erin"])
    codes = [httpx.post(login, data={"username": "nobody", "password": "x"}).status_code for _ in range(4)]
    assert codes[:3] == [400, 400, 400] and codes[3] == 429              # this client is refused for a while
    assert httpx.post(login, data={"username": "alice", "password": PASSWORDS["alice"]}).status_code == 429


# ================================================================================ plain parts
def test_unknown_names_cost_as_much_as_real_ones():
    users = UserDirectory([{"name": "ann", "role": "annotator", "password_hash": hash_password("pw")}])
    assert users._dummy_hash.split("$")[1] == str(200_000)              # the real hashes' cost, not a cheap one
    started = time.perf_counter()
    users.authenticate("ann", "nope")
    known = time.perf_counter() - started
    started = time.perf_counter()
    users.authenticate("nobody", "nope")
    unknown = time.perf_counter() - started
    assert unknown > known / 4                                          # same work (loose: a busy machine)


def test_start_up_cleans_what_a_killed_process_left(tmp_path):
    config = AppConfig(database_url=f"sqlite:///{tmp_path / 'f.db'}", temp_dir=str(tmp_path / "t"))
    folder = scans.private_temp_dir(config)
    (folder / scans.OWNER_FILE).write_text("999999999")                 # a process that is gone
    (folder / "abc123").mkdir()
    (folder / "abc123" / "upload.dcm").write_bytes(b"DICM patient")
    (folder / "export-x").mkdir()
    (folder / "export-x" / "coreseg-sft-1.zip").write_bytes(b"PK")
    studio = Studio(config, predictor=small_predictor())
    assert studio.leftovers_removed == 2 and sorted(p.name for p in folder.iterdir()) == [scans.OWNER_FILE]
    studio.store.close()


def test_the_same_upload_path_read_twice_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    path = tmp_path / "same" / "scan.dcm"
    path.parent.mkdir()
    path.write_bytes(b"x" * 100)
    reader = scans.UploadReader(10_000)
    first = reader.read(path)
    second = reader.read(path)                                          # the first reader deleted the file
    assert first == second == (b"x" * 100, ".dcm") and not path.exists()
    with pytest.raises(StudioError, match="could not be read"):
        reader.read(tmp_path / "never" / "there.png")


def test_sessions_are_bounded_in_number_time_and_bytes():
    registry = SessionRegistry(ttl_s=0.2, max_sessions=3, max_session_bytes=1000)
    for i in range(5):
        registry.get(f"user{i}", "tab")
    assert registry.stats()["sessions"] == 3
    time.sleep(0.3)
    assert registry.stats()["sessions"] == 0
    session = registry.get("ann", "tab")
    session.scan_bytes = b"x" * 5000
    registry.settle(session)
    assert session.scan_bytes is None and session.nbytes() <= 1000
    assert registry.get("ann", "tab") is session and registry.get("bob", "tab") is not session
    api = Session()
    api.scan_bytes, api.case_id = b"y" * 10_000, 4
    api.masks = {1: np.zeros((512, 512), bool)}
    held = Session()
    held.adopt_api_case(api)
    assert held.case_id == 4 and held.nbytes() == 0                     # an API session keeps ids, not arrays


def test_cards_show_absent_answers_findings_and_escape_everything():
    card = {"mask_score": 0.9, "mask_area": 0, "target": "polyp", "boxes": [], "present": False,
            "reasoning": "The mucosa is smooth.", "parse_errors": [], "text": ""}
    shown = candidate_markdown(0, card)
    assert "no polyp is visible" in shown and "could not be parsed" not in shown and "⚠" not in shown
    card = {"mask_score": 0.5, "mask_area": 10, "target": "mass", "boxes": [[1, 2, 3, 4]], "present": True,
            "reasoning": HOSTILE, "parse_errors": [], "text": "",
            "findings": [{"claim": "an oval mass <b>x</b>", "measured": "elongation 1.2", "agrees": True},
                         {"claim": "in the upper left", "measured": "lower right", "agrees": False}]}
    page = render(candidate_markdown(1, card))
    assert "✔ an oval mass &lt;b&gt;x&lt;/b&gt;" in page and "✘ in the upper left" in page
    assert "measured on a first look" not in page
    assert "measured on a first look" in candidate_markdown(1, {**card, "sampling": {"revised_from": 40}})
    assert "<img" not in page and "<form" not in page and "<script" not in page and "<b>x" not in page
    fb = {"id": 1, "case_id": 2, "run_id": 3, "annotator": "<i>eve</i>", "status": "submitted", "correction": None,
          "ranking": {}, "ratings": {}, "edited_reasoning": HOSTILE, "comment": None,
          "reviews": [{"decision": "flag", "reviewer": "bob", "reason": "<form>"}], "clicks": 0, "strokes": 0,
          "seconds": 0.0}
    page = render(feedback_markdown(fb, {"question": "<img src=x>"}, {}, None))
    assert "<img" not in page and "<form" not in page and "<i>eve" not in page


def test_dashboard_says_no_data_yet_and_names_columns_in_words(tmp_path):
    from annotation.store import FeedbackStore

    store = FeedbackStore(tmp_path / "f.db")
    board = dashboard_tables(store)
    assert board["has_dice"] is False and len(board["dice_plot"]) == 0
    for name in ("counts", "per_model_version", "per_annotator", "ratings", "agreement", "dice_over_time"):
        assert not any("_" in str(c) for c in board[name].columns), (name, list(board[name].columns))
    assert "Mean time per case (s)" in board["per_annotator"].columns
    store.close()
