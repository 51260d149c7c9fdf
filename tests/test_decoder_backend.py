"""The mask decoder's inference passes on ONNX Runtime (coreseg.modeling.decoder_backend) against PyTorch, on a tiny
SAM: the same logits, PyTorch wherever gradients are on, and PyTorch again once the weights change in place.

Every test points CORESEG_CACHE at its own temporary folder, so nothing is written to ~/.cache.
"""
import numpy as np
import pytest
import torch

from coreseg.config import SegmenterConfig
from coreseg.modeling.decoder_backend import TOLERANCE
from coreseg.modeling.segmenter import Segmenter
from tiny_models import TINY_VIT


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CORESEG_CACHE", str(tmp_path / "cache"))


def tiny_sam() -> tuple[Segmenter, torch.Tensor]:
    torch.manual_seed(0)
    seg = Segmenter(SegmenterConfig(kind="sam", image_size=64, vit=TINY_VIT, pixel_scale="imagenet"),
                    pretrained=False).eval()
    image = (np.random.default_rng(1).random((50, 70, 3)) * 255).astype(np.uint8)
    return seg, seg.encode(image)


def prompts(batch: int):
    g = torch.Generator().manual_seed(batch)
    probe = torch.randn(batch, 6, 256, generator=g)
    points = (torch.rand(batch, 2, 2, generator=g) * 64, torch.tensor([[1, 0]] * batch))
    boxes = torch.tensor([[8.0, 10.0, 40.0, 50.0]] * batch)
    return probe, points, boxes


def test_the_onnx_decoder_draws_pytorchs_masks_and_leaves_training_to_pytorch():
    seg, embedding = tiny_sam()
    probe, points, boxes = prompts(3)
    with torch.no_grad():
        reference = seg.decode(embedding, probe=probe, points=points, boxes=boxes)
        box_only = seg.decode(embedding, boxes=boxes[:1])
    assert seg.use_encoder_backend("onnxruntime", threads=1) == "onnxruntime"
    assert seg.decoder_backend == "onnxruntime"
    runner = seg.__dict__["_decoder_runner"]
    assert runner.check["passed"] and runner.check["max_abs_diff"] < TOLERANCE
    calls = []
    original = runner.session.run
    runner.session.run = lambda *a, **k: calls.append(1) or original(*a, **k)
    with torch.no_grad():
        fast = seg.decode(embedding, probe=probe, points=points, boxes=boxes)   # 9 prompt tokens
        fast_box = seg.decode(embedding, boxes=boxes[:1])                       # 3: the prompt length is free
    assert len(calls) == 4   # one pass a prompt, all on ONNX Runtime
    for got, want in ((fast, reference), (fast_box, box_only)):
        assert got[0].shape == want[0].shape and float((got[0] - want[0]).abs().max()) < TOLERANCE
        assert torch.equal(got[0] > 0, want[0] > 0) and float((got[1] - want[1]).abs().max()) < TOLERANCE
    assert not torch.equal(fast[0][0], fast[0][1])   # each prompt its own mask
    trained = seg.decode(embedding, probe=probe.requires_grad_(), points=points, boxes=boxes)
    assert len(calls) == 4 and trained[0].grad_fn is not None   # gradients on: PyTorch
    assert float((trained[0].detach() - reference[0]).abs().max()) < TOLERANCE


def test_a_weight_changed_in_place_sends_the_decoder_back_to_pytorch():
    seg, embedding = tiny_sam()
    seg.use_encoder_backend("onnxruntime", threads=1)
    probe, points, boxes = prompts(1)
    with torch.no_grad():
        before = seg.decode(embedding, probe=probe, boxes=boxes)[0]
        seg.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(3.0)   # an optimiser step's kind of change
        after = seg.decode(embedding, probe=probe, boxes=boxes)[0]
        assert seg.decoder_backend == "eager"   # the runner gave its export up
        seg.__dict__["_decoder_runner"] = None
        pytorch = seg.decode(embedding, probe=probe, boxes=boxes)[0]
    assert float((after - before).abs().max()) > 0.1   # the export's old weights would have drawn `before`
    assert torch.equal(after, pytorch)
