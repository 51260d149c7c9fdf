"""Encoder backends (ONNX Runtime, OpenVINO) against eager on tiny encoders, and the measured bf16 choice.

Every test points CORESEG_CACHE at its own temporary folder, so nothing is written to ~/.cache.
"""
import argparse
import json

import numpy as np
import pytest
import torch
from torch import nn

from coreseg import precision
from coreseg.config import SegmenterConfig
from coreseg.modeling import encoder_backend
from coreseg.modeling.encoder_backend import TOLERANCE, EncoderRunner
from coreseg.modeling.segmenter import Segmenter
from tiny_models import TINY_VIT


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORESEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.GELU(), nn.Conv2d(8, 16, 2, stride=2)).eval()


class TracedBranch(nn.Module):
    """Data-dependent control flow: the ONNX trace keeps only the branch its all-zero example took,
    so the export disagrees with eager on real input (a genuine way an export goes wrong)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if x.sum() > 0 else y - 1


def test_onnxruntime_matches_eager_on_a_tiny_sam_encoder(private_cache):
    seg = Segmenter(SegmenterConfig(kind="sam", image_size=64, vit=TINY_VIT, pixel_scale="imagenet"),
                    pretrained=False).eval()
    image = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    eager = seg.encode(image)
    assert seg.use_encoder_backend("onnxruntime", threads=1) == "onnxruntime"
    assert seg.encoder_backend == "onnxruntime"
    fast = seg.encode(image)
    assert fast.shape == eager.shape == (1, 256, 4, 4)
    assert float((fast - eager).abs().max()) < TOLERANCE
    runner = seg.__dict__["_encoder_runner"]
    assert runner.check["passed"] and runner.check["max_abs_diff"] < TOLERANCE
    # the export and its verdict live in the private cache, and a batch of 2 gets its own export
    x = torch.from_numpy(np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32))
    with torch.no_grad():
        assert float((runner(x) - seg.image_encoder(x)).abs().max()) < TOLERANCE
    assert len(list((private_cache / "encoders").glob("*.onnx"))) == 2   # encoding alone exports no decoder
    verdicts = list((private_cache / "encoders").glob("encoder-*.onnxruntime-*.json"))
    assert len(verdicts) == 1 and json.loads(verdicts[0].read_text())["passed"] is True


def test_openvino_matches_eager_on_a_tiny_conv_net():
    module = tiny_conv()
    runner = EncoderRunner(module, 32, "openvino", threads=1)
    assert runner.backend == "openvino"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert float((runner(x) - module(x)).abs().max()) < TOLERANCE


def test_auto_takes_the_first_passing_runtime_and_eager_runs_no_export(private_cache):
    module = tiny_conv()
    assert EncoderRunner(module, 32, "eager").backend == "eager"
    assert not (private_cache / "encoders").exists()
    assert EncoderRunner(module, 32, "auto", threads=1).backend == encoder_backend.AUTO_ORDER[0]


def test_a_backend_that_fails_its_check_falls_back_under_auto_and_raises_when_chosen():
    module = TracedBranch().eval()
    runner = EncoderRunner(module, 16, "auto", threads=1)
    assert runner.backend == "eager" and runner.check is None
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(runner(x), module(x))
    for name in ("onnxruntime", "openvino"):
        with pytest.raises(RuntimeError, match=f"{name} differs from eager"):
            EncoderRunner(module, 16, name, threads=1)


def test_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="encoder backend must be one of"):
        EncoderRunner(tiny_conv(), 32, "tensorrt")


def test_auto_falls_back_to_eager_when_a_runtime_fails_at_run_time():
    module = tiny_conv()
    runner = EncoderRunner(module, 32, "auto", threads=1)
    assert runner.backend != "eager"
    odd = torch.rand(1, 3, 24, 24)   # not the exported input size: the runtime refuses it
    with torch.no_grad():
        assert torch.equal(runner(odd), module(odd))
    assert runner.backend == "eager"
    explicit = EncoderRunner(module, 32, "onnxruntime", threads=1)
    with pytest.raises(Exception):
        explicit(odd)


def test_use_bf16_follows_the_choice_and_the_cached_verdict(private_cache):
    assert precision.use_bf16("fp32") is False
    assert precision.use_bf16("bf16") is True
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.use_bf16("fp16")
    path = private_cache / "precision.json"
    path.parent.mkdir(parents=True)
    for pays in (True, False):
        path.write_text(json.dumps({precision._cpu_key(): {"speedup": 2.0 if pays else 0.1, "bf16": pays}}))
        assert precision.use_bf16("auto", "cpu") is pays
        assert json.loads(path.read_text())[precision._cpu_key()]["bf16"] is pays   # read, not re-measured
    assert precision.use_bf16("auto", "meta") is False


def test_precision_argument_keeps_bf16_as_an_alias():
    parser = argparse.ArgumentParser()
    precision.add_precision_argument(parser)
    assert parser.parse_args([]).precision == "auto"
    assert parser.parse_args(["--bf16"]).precision == "bf16"
    assert parser.parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
