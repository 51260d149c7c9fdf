"""Issue 6: the loop from collected feedback to a better, registered model, on a tiny model and
images made here (known masks), through the real store, simulator and GRPO entry point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from annotation import codec
from annotation.store import FeedbackStore
from coreseg.checkpoint import load_checkpoint, save_checkpoint
from coreseg.config import DEFAULT_CHECKPOINT
from coreseg.datasets import load_split
from coreseg.predictor import CoreSegPredictor
from trainers import grpo
from trainers.feedback import load_feedback_cases, snapshot_store
from trainers.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent


def annotators_draw_wider(data: Path, out: Path, margin: int = 3) -> Path:
    """A copy of the tiny set whose masks include a `margin`-pixel rim: the house convention of these
    annotators, which the shipped model (Dice 0.997 on the tight masks) does not follow, so feedback has
    something to teach."""
    import shutil

    from PIL import Image
    from scipy.ndimage import binary_dilation

    shutil.copytree(data, out)
    for path in (out / "busbra" / "masks").glob("*.png"):
        mask = np.array(Image.open(path).convert("L")) > 0
        Image.fromarray(binary_dilation(mask, iterations=margin)).convert("1").save(path)
    return out


@pytest.fixture(scope="module")
def loop(tiny_sft, tmp_path_factory):
    """The shipped compact model as base (the tiny SFT model never writes `<seg>`, so it would have no mask
    to learn from) and a store filled by simulated annotators (their wider masks as corrections) on the tiny set."""
    _, data, _ = tiny_sft
    root = tmp_path_factory.mktemp("loop")
    data = annotators_draw_wider(data, root / "data")
    model, _ = load_checkpoint(DEFAULT_CHECKPOINT, device="cpu")
    base = save_checkpoint(model, root / "base", "tiny-base")
    db = root / "feedback.db"
    predictor = CoreSegPredictor(model, "tiny-base")
    ids = simulate(predictor, FeedbackStore(db), load_split(data, "busbra", "all"), n_candidates=2, seed=0)
    return root, base, db, ids


def _args(db, base, out, *extra):
    return ["--db", str(db), "--base", str(base), "--out", str(out), "--group-size", "2", "--batch-cases", "1",
            "--lr", "5e-5", "--beta", "0.01", "--threads", "1", *extra]


def test_simulated_feedback_is_accepted_with_truth_and_ranks(loop):
    root, base, db, ids = loop
    store = FeedbackStore(db)
    assert len(ids) == 8 and len(store.accepted_corrections()) == 8
    cases = load_feedback_cases(snapshot_store(str(db), root / "snaps"))
    assert all(c.mask.any() and len(c.stored) == 2 for c in cases)
    assert all({s["rank"] for s in c.stored} <= {1, 2} for c in cases)


def test_one_round_registers_a_version_with_higher_segment_reward(loop):
    root, base, db, _ = loop
    out = root / "round"
    grpo.main(_args(db, base, out, "--rounds", "1", "--steps", "8"))
    result = json.loads((out / "round-1" / "done.json").read_text())
    assert result["registered"], result["decision"]
    ev = result["eval"]["train"]
    assert ev["new"]["segment_reward"] > ev["base"]["segment_reward"], ev
    versions = {v["name"]: v for v in FeedbackStore(db).list_model_versions()}
    assert result["new_version"] in versions and versions[result["new_version"]]["parent"] == "tiny-base"
    rounds = FeedbackStore(db).list_training_rounds()
    assert rounds[-1]["out_version"] == result["new_version"] and len(rounds[-1]["feedback_ids"]) == 8
    assert (out / "round-1" / "report.md").read_text().count("|") > 10
    assert (out / "round-1" / "curves.png").stat().st_size > 1000
    # the app's loader serves the registered checkpoint as is
    served = CoreSegPredictor.from_checkpoint(versions[result["new_version"]]["checkpoint_path"], "cpu")
    assert served.model_version == result["new_version"]


def test_snapshot_keeps_a_rounds_data_fixed_while_the_app_writes(loop):
    root, base, db, _ = loop
    snap = snapshot_store(str(db), root / "snap-consistency")
    before = [c.case_id for c in load_feedback_cases(snap)]
    live = FeedbackStore(db)
    case = live.accepted_corrections()[before[0]]
    fb = live.submit_feedback(before[0], case["run_id"], "simulated-annotator",
                              chosen_candidate_id=case["proposal_candidate_id"],
                              mask=codec.decode_mask(case["mask_png"]), status="submitted", submission_id="late-write")
    live.review(fb, "simulated-reviewer", "accept")
    assert [c.case_id for c in load_feedback_cases(snap)] == before
    assert load_feedback_cases(snap)[0].feedback_id != fb
    assert live.accepted_corrections()[before[0]]["feedback_id"] == fb


def test_bad_feedback_is_skipped_with_a_message(loop, tmp_path):
    root, base, db, _ = loop
    copy = tmp_path / "bad.db"
    FeedbackStore(db).backup(copy)
    import sqlite3

    con = sqlite3.connect(copy)
    accepted = FeedbackStore(copy, read_only=True).accepted_corrections()
    victim = next(iter(accepted.values()))["feedback_id"]  # a correction that a round would read
    con.execute("UPDATE corrections SET mask_png = ? WHERE feedback_id = ?",
                (codec.encode_mask(np.ones((7, 9), bool)), victim))
    con.commit()
    con.close()
    messages = []
    cases = load_feedback_cases(FeedbackStore(copy, read_only=True), log=messages.append)
    assert len(cases) == len(accepted) - 1 and any("accepted mask is (7, 9)" in m for m in messages)


def test_crash_mid_round_then_resume_gives_one_version(loop, tmp_path):
    root, base, db, _ = loop
    work = tmp_path / "db.sqlite"
    FeedbackStore(db).backup(work)
    out = tmp_path / "crash"
    cmd = [sys.executable, "-m", "trainers.grpo", *_args(work, base, out, "--rounds", "1", "--steps", "3",
                                                          "--save-every", "1", "--version", "crash-v")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "round-1" / "trainer_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert state.exists(), "the round saved a resumable state"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "round-1" / "done.json").exists()
    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((out / "round-1" / "done.json").read_text())
    assert result["new_version"] == "crash-v"
    before = json.loads((out / "round-1" / "before.json").read_text())   # the base scored once, before the kill
    assert {k: v["base"] for k, v in result["eval"].items()} == before
    store = FeedbackStore(work)
    names = [v["name"] for v in store.list_model_versions()]
    assert names.count("crash-v") == (1 if result["registered"] else 0)
    assert sum(r["out_version"] == "crash-v" for r in store.list_training_rounds()) == (1 if result["registered"] else 0)
    assert (Path(result["checkpoint"]) / "coreseg.json").exists()
