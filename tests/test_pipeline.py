"""The training pipeline end to end on a tiny BUS-BRA-shaped set: features → SFT (with --resume)
→ GRPO → evaluation, through the real command-line entry points and the real LiteMedSAM encoder."""
from __future__ import annotations

import csv
import json

import pytest

from coreseg import eval as coreseg_eval
from coreseg.checkpoint import load_checkpoint
from trainers import grpo, sft

TINY = ["--hidden", "64", "--layers", "2", "--heads", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tiny_sft, tmp_path_factory):
    """A private copy of the shared tiny SFT run (the resume test adds an epoch to it)."""
    import shutil

    source, data, cache = tiny_sft
    root = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(source / "sft", root / "sft")
    return root, data, cache


def test_features_cover_both_splits(trained):
    root, _, cache = trained
    assert len(list((cache / "busbra").glob("*.npz"))) == 8


def test_sft_writes_epochs_and_resumes(trained):
    root, data, cache = trained
    out = root / "sft"
    assert (out / "epoch-1" / "coreseg.json").exists() and (out / "epoch-2" / "coreseg.json").exists()
    rows = list(csv.DictReader((out / "log.csv").open()))
    first = [float(r["val_lm"]) for r in rows if r["val_lm"]]
    sft.main(["--data", str(data), "--cache", str(cache), "--out", str(out), "--sets", "busbra", "--epochs", "3",
              "--batch-size", "3", "--lr", "3e-3", "--decoder-lr", "3e-4", "--val-limit", "2", "--resume", *TINY])
    rows = list(csv.DictReader((out / "log.csv").open()))
    val_lm = [float(r["val_lm"]) for r in rows if r["val_lm"]]
    assert len(val_lm) == 3 and len(first) == 2, "resume ran exactly the missing epoch"
    assert val_lm[-1] < val_lm[0], "the text loss falls"
    _, info = load_checkpoint(out / "last")
    assert info.model_version.endswith("-e3") and info.trained


def test_sft_from_a_checkpoint_names_its_version_as_parent(tiny_sft, tmp_path):
    """A warm start records the model version it grew from (the lineage the store and model card show),
    not a path on the machine that trained it."""
    source, data, cache = tiny_sft
    _, start = load_checkpoint(source / "sft" / "last")
    sft.main(["--data", str(data), "--cache", str(cache), "--out", str(tmp_path / "ft"), "--sets", "busbra",
              "--init", str(source / "sft" / "last"), "--epochs", "1", "--batch-size", "3", "--val-limit", "2",
              "--threads", "1", "--version", "tiny-ft"])
    _, info = load_checkpoint(tmp_path / "ft" / "last")
    assert info.model_version == "tiny-ft-e1" and info.parent == start.model_version


def test_grpo_then_eval(trained, tmp_path):
    root, data, cache = trained
    out = root / "grpo"
    grpo.main(["--data", str(data), "--cache", str(cache), "--base", str(root / "sft" / "last"), "--out", str(out),
               "--sets", "busbra", "--steps", "2", "--batch-cases", "1", "--group-size", "2", "--threads", "1"])
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(r["kl"] != "" and r["reward"] != "" for r in rows)
    assert (out / "curves.png").stat().st_size > 1000
    _, info = load_checkpoint(out / "final")
    assert info.parent and info.parent.endswith("-e3")
    report = tmp_path / "eval.json"
    coreseg_eval.main(["--data", str(data), "--sets", "busbra", "--split", "val", "--checkpoint", str(out / "final"),
                       "--json", str(report), "--cache", str(cache), "--gallery", str(tmp_path / "g.png"),
                       "--threads", "1"])
    result = json.loads(report.read_text())
    wrote_seg = any("<seg>" in r["text"] for r in result["records"] if r["method"] == "probe")
    mask_methods = ("probe", "cascade", "litemedsam") + (("constant_probe",) if wrote_seg else ())
    pairs = {(r["image"], r["method"]) for r in result["records"] if r["method"] in mask_methods}
    assert len(pairs) == 2 * len(mask_methods), "every image, every mask method"
    assert len([r for r in result["records"] if r["method"] == "text_swap"]) == 1, "one swap between two images"
    for method in mask_methods:
        dices = [r["dice"] for r in result["records"] if r["method"] == method]
        assert result["summary"]["busbra"][method]["dice"] == pytest.approx(sum(dices) / len(dices))
    assert (tmp_path / "g.png").stat().st_size > 1000
