"""The app in a real browser (Debian's chromium through Playwright), as a clinician uses it: bad uploads are refused
with a message, then a DICOM is uploaded, the model asked, the mask refined by clicking on the scan, painted with
the brush, the candidates ranked and rated, the case submitted and found, then accepted, in the reviewer's queue.
A screenshot of each step is saved under test-artifacts/browser/.

Needs /usr/bin/chromium (`apt-get install -y chromium`); without it this test fails (it is not skipped).
"""
import os
import re
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest

from coreseg.config import AppConfig
from tests.test_app import bad_files, small_predictor

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
DICOM = pydicom.data.get_testdata_file("CT_small.dcm", download=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The single-user laptop app (no users file: one local user with every role), temporary database."""
    import app
    from annotation.store import FeedbackStore

    folder = tmp_path_factory.mktemp("browser")
    config = AppConfig(database_url=f"sqlite:///{folder / 'feedback.db'}", temp_dir=str(folder / "gradio-tmp"),
                       n_candidates=4)
    store = FeedbackStore(folder / "feedback.db")
    demo = app.build_app(config, predictor=small_predictor(), store=store)
    port = free_port()
    app.launch_app(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "store": store, "folder": folder}
    finally:
        demo.close()
        store.close()


@pytest.fixture(scope="module")
def page(served):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium chromium-driver); "
                    "the browser test needs it and is not skipped")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1600})
        tab.set_default_timeout(60_000)
        tab.goto(served["url"], wait_until="load")
        tab.wait_for_selector("#ask-btn")
        yield tab
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def upload(page, path) -> None:
    page.locator("#scan-upload input[type=file]").set_input_files(str(path))


def pick(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} label").filter(has_text=re.compile(rf"^\s*{re.escape(value)}\s*$")).click()


def status(page) -> str:
    return page.locator("#status").inner_text()


@pytest.mark.browser
@pytest.mark.slow
def test_a_clinician_session_end_to_end(served, page, tmp_path):
    expect_text = page.wait_for_selector
    assert "Keyboard shortcuts" in page.locator("#shortcuts").inner_text()
    assert "untrained" in page.locator("#model-banner").inner_text()
    shot(page, "01-start")

    # -- bad input: a message each time, and the app keeps working
    for name, (path, message) in bad_files(tmp_path).items():
        upload(page, path)
        expect_text(f"#scan-info >> text={message}")
        shot(page, f"02-bad-{name}")

    # -- a NIfTI volume: slices along another axis
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(20 * 24 * 12, dtype=np.int16).reshape(20, 24, 12), np.eye(4)), volume)
    upload(page, volume)
    expect_text("#scan-info >> text=slice 6 of 12 (axis 2)")
    pick(page, "axis", "sagittal")
    expect_text("#scan-info >> text=slice 10 of 20 (axis 0)")
    shot(page, "03-nifti-sagittal")

    # -- a DICOM, the model's candidates
    upload(page, DICOM)
    expect_text("#scan-info >> text=DICOM")
    assert "CT" in page.locator("#scan-info").inner_text()
    shot(page, "04-dicom-open")
    page.fill("#question textarea", "Where is the lesion? Find it and identify its boundaries.")
    page.click("#ask-btn")
    expect_text("#cand-md-3 >> text=mask score")
    assert page.locator("#cand-4").is_hidden()                      # 4 of the 8 slots shown
    expect_text("#status >> text=4 candidates")
    shot(page, "05-candidates")

    # -- click on the scan: the mask changes
    image = page.locator("#scan-view img")
    before = image.get_attribute("src")
    box = image.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.45)
    page.wait_for_function("(s) => document.querySelector('#scan-view img').src !== s", arg=before)
    expect_text("#status >> text=after 1 click")
    shot(page, "06-click-refined")

    # -- keyboard: N switches to negative clicks; a negative click; Ctrl+Z undoes it
    page.locator("#whoami").click()                                 # focus off any text field
    page.keyboard.press("n")
    assert page.locator('#click-mode input[value="negative"]').is_checked()
    before = image.get_attribute("src")
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2)
    page.wait_for_function("(s) => document.querySelector('#scan-view img').src !== s", arg=before)
    expect_text("#status >> text=after 2 click")
    page.locator("#whoami").click()
    page.keyboard.press("Control+z")
    expect_text("#status >> text=Undone")
    page.keyboard.press("p")
    assert page.locator('#click-mode input[value="positive"]').is_checked()

    # -- brush: a green stroke, applied
    page.wait_for_timeout(500)
    canvas = page.locator("#brush-editor canvas").first
    c = canvas.bounding_box()
    x0, y0 = c["x"] + c["width"] * 0.35, c["y"] + c["height"] * 0.7
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 5):                                            # few moves: each one repaints the canvas
        page.mouse.move(x0 + 30 * k, y0 + 8 * k)
    page.mouse.up()
    shot(page, "07-brush-painted")
    page.click("#apply-brush-btn")
    expect_text("#status >> text=stroke")
    shot(page, "08-brush-applied")

    # -- rank (a tie at the top) and rate, edit the reasoning, submit
    for slot, rank in enumerate(["1", "1", "2", "3"]):
        pick(page, f"rank-{slot}", rank)
    for scale, value in (("correctness", "4"), ("completeness", "3"), ("clinical_relevance", "5")):
        pick(page, f"rate-{scale}-0", value)
    page.fill("#edited-reasoning textarea", "Soft tissue is uniform; the lesion is a rounder, brighter region.")
    shot(page, "09-ranked-rated")
    page.click("#submit-btn")
    expect_text("#status >> text=Submitted")
    feedback_id = int(re.search(r"feedback (\d+)", status(page)).group(1))
    shot(page, "10-submitted")

    # -- the reviewer's queue (the local user has every role): find it, open it, accept it
    page.get_by_role("tab", name="Review").click()
    page.wait_for_function("() => document.querySelector('#review-queue').innerText.includes('Where is the lesion')")
    page.fill("#review-feedback-id input", str(feedback_id))
    page.click("#review-open")
    expect_text("#review-detail >> text=Correction of candidate")
    shot(page, "11-review-open")
    page.click("#review-save")
    expect_text("#review-detail >> text=Review: accept")
    shot(page, "12-accepted")

    # -- the dashboard and the admin's export
    page.get_by_role("tab", name="Dashboard").click()
    page.wait_for_function("() => document.querySelector('#dash-versions').innerText.includes('test')")
    page.wait_for_selector("#dash-plot canvas, #dash-plot svg")
    shot(page, "13-dashboard")
    page.get_by_role("tab", name="Admin").click()
    page.wait_for_function("() => document.querySelector('#versions').innerText.includes('test')")
    page.click("#export-btn")
    expect_text("#export-file >> text=.zip")
    shot(page, "14-export")

    # -- what the store holds
    store = served["store"]
    fb = store.get_feedback(feedback_id)
    ids = sorted(fb["ranking"])
    assert [fb["ranking"][i] for i in ids] == [1, 1, 2, 3]          # the tie round-trips
    assert fb["ratings"][ids[0]] == {"correctness": 4, "completeness": 3, "clinical_relevance": 5}
    assert fb["mask"].shape == (128, 128) and fb["mask"].any()
    assert fb["clicks"] == 2 and fb["strokes"] >= 1
    assert fb["edited_reasoning"].startswith("Soft tissue is uniform")
    proposal = store.get_candidates(fb["run_id"])[0]["mask"]
    assert not np.array_equal(proposal, fb["mask"])                  # the clicks and the brush changed it
    assert fb["reviews"][-1]["decision"] == "accept"
    assert np.array_equal(store.accepted_mask(fb["case_id"]), fb["mask"])
    uploads = [p.name for p in (served["folder"] / "gradio-tmp").rglob("*.dcm")]
    assert uploads == []                                             # the upload was deleted once read
