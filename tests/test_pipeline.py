"""The training pipeline end to end on a tiny BUS-BRA-shaped set: features → SFT (with --resume)
→ GRPO → evaluation, through the real command-line entry points and the real LiteMedSAM encoder."""
from __future__ import annotations

import csv
import json

import pytest

from coreseg import eval as coreseg_eval
from coreseg.answer import render_answer
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
    model, info = load_checkpoint(out / "last")
    assert info.model_version.endswith("-e3") and info.trained
    first = model.encode_target(render_answer("A dark region.", "lesion", [(1, 2, 3, 4)]))[0]
    assert model.reasoner.drafter.draft([], 1) == [first], "SFT's checkpoint guesses the phrasing it was taught"


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


def test_soup_interpolates_a_run_and_its_continuation(trained, tmp_path):
    """`trainers.soup`: alpha 1 and 0 give back each checkpoint's tensors, 0.5 their mean; the soup names its
    second checkpoint as parent; checkpoints of different architectures are refused."""
    import torch

    from trainers import soup

    root, data, cache = trained
    first, _ = load_checkpoint(root / "sft" / "epoch-1", device="cpu")
    second, info = load_checkpoint(root / "sft" / "last", device="cpu")
    a, b = first.trainable_state_dict(), second.trainable_state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    soup.main([str(root / "sft" / "epoch-1"), str(root / "sft" / "last"), "--alpha", "0.5", "--out", str(tmp_path / "s")])
    mixed, mixed_info = load_checkpoint(tmp_path / "s", device="cpu")
    m = mixed.trainable_state_dict()
    assert all(torch.allclose(m[k].float(), (a[k].float() + b[k].float()) / 2, atol=2e-3) for k in a)
    assert mixed_info.parent == info.model_version
    for alpha, expected in ((1.0, a), (0.0, b)):
        model, _ = load_checkpoint(root / "sft" / "epoch-1", device="cpu")
        other, _ = load_checkpoint(root / "sft" / "last", device="cpu")
        got = soup.interpolate(model, other, alpha).trainable_state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in a)
    from dataclasses import replace

    from coreseg.modeling.core_seg import CoreSeg

    config = replace(second.config, reasoner=replace(second.config.reasoner, num_layers=1))
    shallower = CoreSeg.build(config, tokenizer=second.reasoner.tokenizer)
    with pytest.raises(ValueError, match="different architectures"):
        soup.interpolate(shallower, second, 0.5)


def test_the_eval_s_development_images_are_the_ones_training_held_out(trained):
    from coreseg.datasets import development_items, held_out
    from trainers.samples import load_cases

    _, data, cache = trained
    kept, dev = held_out(load_cases(data, cache, ["busbra"], "train"))
    assert kept and [c.item.image_id for c in dev] == [i.image_id for i in development_items(data, ["busbra"])]
