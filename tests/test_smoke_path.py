"""Issue 10: the smoke path that needs nothing prebuilt (no feature cache, no trained model), for each
profile, through the real entry points on CPU:

    python -m trainers.sft [--profile full --pretrained DIR] --data DATA --limit 4 --epochs 1 --out OUT
    python -m trainers.grpo --data DATA --base OUT/last --limit 4 --steps 1 --out OUT2
    python -m coreseg.predict IMAGE --checkpoint OUT2/final --question …

The full profile uses a tiny Qwen2.5-VL saved to a folder (its tokenizer lacks the answer tags).
"""
from __future__ import annotations

import csv
import json

import pytest

from coreseg import predict
from coreseg.checkpoint import load_checkpoint
from fake_data import make_busbra
from trainers import grpo, sft

COMMON = ["--sets", "busbra", "--limit", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_busbra(tmp_path_factory.mktemp("smoke-data"), n=8)


def _run(data, out, sft_args, capsys):
    sft.main(["--data", str(data), "--epochs", "1", "--out", str(out / "sft"), "--batch-size", "2", "--val-limit",
              "1", *COMMON, *sft_args])
    assert (out / "sft" / "last" / "tokenizer").is_dir()
    grpo.main(["--data", str(data), "--base", str(out / "sft" / "last"), "--steps", "1", "--out", str(out / "grpo"),
               "--group-size", "2", "--batch-cases", "1", *COMMON])
    rows = list(csv.DictReader((out / "grpo" / "log.csv").open()))
    assert len(rows) == 1 and rows[0]["reward"] != ""
    model, info = load_checkpoint(out / "grpo" / "final", device="cpu")
    assert info.parent and info.parent.endswith("-e1")
    image = next((data / "busbra" / "images").glob("*.png"))
    capsys.readouterr()
    assert predict.main([str(image), "--checkpoint", str(out / "grpo" / "final"), "--question",
                         "Outline the breast mass.", "--out", str(out / "pred"), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_version"] == info.model_version and len(report["candidates"]) == 1
    assert (out / "pred" / "mask-0.png").exists()
    return model


@pytest.mark.slow
def test_full_profile_smoke_path_on_cpu(data, tmp_path, capsys):
    from tiny_models import save_tiny_qwen2_5_vl

    qwen = save_tiny_qwen2_5_vl(tmp_path / "qwen")
    model = _run(data, tmp_path, ["--profile", "full", "--pretrained", str(qwen), "--max-new-tokens", "12"], capsys)
    assert model.config.reasoner.kind == "qwen2_5_vl"
    assert len(model.seg_ids) == 1


@pytest.mark.slow
def test_compact_profile_smoke_path_on_cpu(data, tmp_path, capsys):
    model = _run(data, tmp_path, ["--hidden", "64", "--layers", "2", "--heads", "2"], capsys)
    assert model.config.reasoner.kind == "compact"
