"""Issue 10, GRPO on feedback: the human term compares stored candidates among themselves (fresh samples
get none and no bias), stored candidates are re-scored with their own temperature and top-p, groups of
unequal size train, ranks may tie, and `--db` without `--base` starts from the serving model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coreseg.answer import render_answer
from coreseg.config import ModelConfig, ReasonerConfig
from coreseg.modeling.core_seg import CoreSeg
from coreseg.predictor import CoreSegPredictor
from trainers.grpo import GRPOConfig, Group, _advantages, _token_logps, grpo_loss, relative_human_term
from trainers.rewards import RewardWeights, score_completions

SMALL = ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_new_tokens=12)
TEXT = render_answer("A dark oval region.", "lesion", [(10, 10, 60, 50)])
WEIGHTS = RewardWeights(human=0.5)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=SMALL), pretrained_segmenter=False).eval()
    return CoreSegPredictor(model, "tiny-compact")


def _rows(ranks):
    n = len(ranks)
    truth = np.zeros((256, 256), bool)
    truth[10:50, 10:60] = True
    return score_completions(["Q"] * n, [TEXT] * n, WEIGHTS, image_size=[(256, 256)] * n,
                             gt_boxes=[[(10, 10, 60, 50)]] * n, gt_mask=[truth] * n, pred_mask=[truth] * n,
                             human_rank=ranks, human_rating=[None] * n, group_id=[0] * n)


def test_identical_fresh_and_stored_completions_get_no_advantage_from_their_origin():
    """8 identical completions, 4 stored (ranked 1…4), 4 fresh: the fresh ones sit at the stored mean."""
    rows = _rows([1, 2, 3, 4, None, None, None, None])
    biased, _, _ = _advantages([[r["total"] for r in rows]], "group")
    assert biased[0][4] < -0.5, "without the fix every fresh sample is pushed down"
    fair, keep, _ = _advantages([[r["total"] for r in relative_human_term(rows, WEIGHTS.human)]], "group")
    assert keep == [True]
    assert np.allclose(fair[0][4:], 0.0, atol=1e-6)
    assert fair[0][0] > fair[0][1] > 0 > fair[0][2] > fair[0][3]
    assert fair[0][:4].sum() == pytest.approx(0.0, abs=1e-6)


def test_ranked_ties_score_equal():
    rows = relative_human_term(_rows([1, 1, 3]), WEIGHTS.human)
    assert rows[0]["human"] == rows[1]["human"] > rows[2]["human"]
    adv, _, _ = _advantages([[r["total"] for r in rows]], "group")
    assert adv[0][0] == pytest.approx(adv[0][1]) and adv[0][0] > 0 > adv[0][2]
    all_tied = relative_human_term(_rows([2, 2, 2]), WEIGHTS.human)
    assert len({r["total"] for r in all_tied}) == 1


def _group(predictor, n, seed, temperature=1.0, top_p=1.0):
    torch.manual_seed(seed)
    embedding = torch.randn(1, 256, 64, 64)
    ids, logps = predictor.model.reasoner.generate(None, embedding, "Outline the lesion.", n, temperature, top_p,
                                                   torch.Generator().manual_seed(seed))
    target = torch.zeros(1, 1, 256, 256)
    target[..., 40:120, 60:160] = 1
    return Group(None, embedding, target, [(60, 40, 160, 120)], "Outline the lesion.", ids, logps,
                 sampling=[(temperature, top_p)] * n)


def test_groups_of_unequal_size_train(predictor):
    model = predictor.model
    groups = [_group(predictor, 3, 1), _group(predictor, 4, 2)]
    loss, stats = grpo_loss(model, None, groups, GRPOConfig(beta=0.0), predictor)
    assert torch.isfinite(loss) and 0.0 <= stats["frac_zero_std"] <= 1.0
    if loss.requires_grad:
        loss.backward()
    model.zero_grad(set_to_none=True)


def test_the_supervised_anchor_trains_the_probe_box_and_pointer_on_the_policys_texts(predictor):
    """GRPO's supervised anchor is `CoreSeg.probe_losses` on the sampled completions: beside DiceCE, the probe
    box's and the box pointer's loss, weighted by `box_weight` (the pointer drifted off the named finding
    when GRPO trained the masks by DiceCE alone)."""
    model = predictor.model
    group = _group(predictor, 2, 3)
    ids = [model.encode_target(TEXT)] * 2
    group = Group(None, group.embedding, group.target, group.gt_boxes, group.question, ids,
                  [[0.0] * len(c) for c in ids], sampling=[(1.0, 1.0)] * 2)
    losses = {w: float(grpo_loss(model, None, [group], GRPOConfig(beta=0.0, box_weight=w), predictor)[0].detach())
              for w in (0.0, 1.0)}
    with torch.no_grad():
        n = len(ids)
        _, hidden, states = model.reasoner.forward_completions([None] * n, group.embedding.expand(n, -1, -1, -1),
                                                               [group.question] * n, ids)
        masks = model.decode_masks(group.embedding, hidden, ids, image=states)
        _, box = model.probe_losses(masks, group.target > 0.5, states)
    assert masks["pointer"] is not None and float(box) > 0.1
    assert losses[1.0] - losses[0.0] == pytest.approx(float(box), rel=1e-3)


def test_the_anchor_can_follow_each_completion_s_own_target(predictor):
    """`Group.anchor_targets` (GRPO `--anchor-follows-text`): the supervised anchor measures each completion's mask
    against its own target, here the question's for one and another region for the other; the rewards still
    score against the question's."""
    model = predictor.model
    group = _group(predictor, 2, 3)
    ids = [model.encode_target(TEXT)] * 2
    base = Group(None, group.embedding, group.target, group.gt_boxes, group.question, ids,
                 [[0.0] * len(c) for c in ids], sampling=[(1.0, 1.0)] * 2)
    other = torch.zeros_like(group.target)
    other[..., 150:220, 150:230] = 1
    cfg = GRPOConfig(beta=0.0, box_weight=0.0)
    same = float(grpo_loss(model, None, [base], cfg, predictor)[0].detach())
    anchored = Group(**{**base.__dict__, "anchor_targets": torch.cat([group.target, other])})
    loss, stats = grpo_loss(model, None, [anchored], cfg, predictor)
    kept = Group(**{**base.__dict__, "anchor_targets": torch.cat([group.target, group.target])})
    assert float(grpo_loss(model, None, [kept], cfg, predictor)[0].detach()) == pytest.approx(same, rel=1e-5)
    with torch.no_grad():
        n = len(ids)
        _, hidden, states = model.reasoner.forward_completions([None] * n, group.embedding.expand(n, -1, -1, -1),
                                                               [group.question] * n, ids)
        masks = model.decode_masks(group.embedding, hidden, ids, image=states)
        expected, _ = model.probe_losses(masks, torch.cat([group.target, other]) > 0.5, states)
    assert stats["mask_loss"] == pytest.approx(float(expected), rel=1e-3) and abs(float(loss.detach()) - same) > 1e-3


def test_the_text_weight_adds_sft_s_text_loss_on_the_written_answer(predictor):
    """`text_weight`: GRPO's loss gains exactly weight × the token cross-entropy of the case's written answer (the
    SFT text loss), and its log says so; without a written answer (feedback groups) nothing is added."""
    from coreseg.modeling.losses import token_cross_entropy

    model = predictor.model
    group = _group(predictor, 2, 3)
    written = model.encode_target(TEXT)
    with_answer = Group(None, group.embedding, group.target, group.gt_boxes, group.question, group.completions,
                        group.old_logps, target_ids=written)
    losses, logs = {}, {}
    for w in (0.0, 0.5):
        loss, stats = grpo_loss(model, None, [with_answer], GRPOConfig(beta=0.0, text_weight=w), predictor)
        losses[w], logs[w] = float(loss.detach()), stats["text_loss"]
    with torch.no_grad():
        logits, _, _ = model.reasoner.forward_completions([None], group.embedding, [group.question], [written])
        expected = float(token_cross_entropy(logits, [written]))
    assert expected > 0.01 and logs[0.0] is None and logs[0.5] == pytest.approx(expected, rel=1e-4)
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * expected, rel=1e-3)
    unwritten = float(grpo_loss(model, None, [group], GRPOConfig(beta=0.0, text_weight=0.5), predictor)[0].detach())
    assert unwritten == pytest.approx(losses[0.0], rel=1e-5)


@pytest.mark.parametrize("frozen", ["reasoner", "mask_path"])
def test_a_frozen_part_keeps_its_weights_and_the_other_trains(tmp_path, frozen):
    """`--freeze-reasoner`: a GRPO step moves the adapter (box pointer included) and the decoder, leaves every
    language-model weight bitwise, and the checkpoint still holds the reasoner. `--freeze-mask-path`: the other
    way round (the anchor's gradient reaches the language model through the `<seg>` state)."""
    from safetensors.torch import load_file

    from trainers.grpo_loop import train_groups

    torch.manual_seed(0)
    model = CoreSeg.build(ModelConfig(reasoner=SMALL), pretrained_segmenter=False)
    ids = [model.encode_target(TEXT)] * 2
    target = torch.zeros(1, 1, 256, 256)
    target[..., 40:120, 60:160] = 1
    embedding = torch.randn(1, 256, 64, 64)

    def make_groups(step, predictor, generator):
        return [Group(None, embedding, target, [(60, 40, 160, 120)], "Outline the lesion.", ids,
                      [[0.0] * len(c) for c in ids], sampling=[(1.0, 1.0)] * 2)]

    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    cfg = GRPOConfig(beta=0.0, lr=1e-3, freeze_reasoner=frozen == "reasoner", freeze_mask_path=frozen == "mask_path")
    final = train_groups(model, make_groups, 1, cfg, tmp_path, "t")
    saved = load_file(str(final / "trainable.safetensors"))
    moved = {k for k in before if not torch.equal(saved[k].float(), before[k].half().float())}
    assert set(saved) == set(before)
    if frozen == "reasoner":
        assert moved and not any(k.startswith("reasoner.") for k in moved)
        assert any(k.startswith("adapter.pointer.") for k in moved) and any(k.startswith("segmenter.") for k in moved)
    else:
        assert moved and all(k.startswith("reasoner.") for k in moved)


def test_stored_candidates_are_rescored_with_their_own_temperature_and_top_p(predictor):
    from trainers.feedback import FeedbackCase, feedback_groups

    image = np.full((80, 100, 3), 150, np.uint8)
    image[20:50, 30:70] = 40
    mask = image[:, :, 0] < 100
    stored = predictor.predict(image, "Outline the lesion.", 2, temperature=0.7, top_p=0.95, seed=3)
    case = FeedbackCase(1, 1, "Outline the lesion.", image, mask, "lesion", "", [
        {"text": c.text, "token_ids": c.token_ids, "token_logprobs": c.token_logprobs, "rank": r, "rating": None,
         "temperature": c.sampling["temperature"], "top_p": c.sampling["top_p"]} for c, r in zip(stored, (1, 2))])
    case.stored.append({**case.stored[0], "temperature": None})  # no recorded distribution: not reusable
    stats: dict = {}
    cfg = GRPOConfig(group_size=2, temperature=1.0, top_p=1.0)
    (group,) = feedback_groups([case], cfg, 1, 0, stats)(0, predictor, torch.Generator().manual_seed(0))
    assert stats == {"stored_used": 2, "stored_unusable": 1}
    assert group.sampling == [(0.7, 0.95)] * 2 + [(1.0, 1.0)] * 2
    assert group.columns["human_rank"] == [1, 2, None, None]
    n = len(group.completions)
    with torch.no_grad():
        logits, *_ = predictor.model.reasoner.forward_completions([image] * n, group.embedding.expand(n, -1, -1, -1),
                                                                 [group.question] * n, group.completions)
    for i in range(n):
        t, p = group.sampling_of(i, cfg)
        ratio = torch.exp(_token_logps(logits[i], group.completions[i], t, p) - torch.tensor(group.old_logps[i]))
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3), (i, ratio)
    wrong = torch.exp(_token_logps(logits[0], group.completions[0], 1.0) - torch.tensor(group.old_logps[0]))
    assert not torch.allclose(wrong, torch.ones_like(wrong), atol=1e-2), "T = 1 re-scoring would be off-policy"


@pytest.mark.slow
def test_db_without_base_starts_from_the_serving_model(predictor, tmp_path):
    from annotation.store import FeedbackStore
    from coreseg.checkpoint import save_checkpoint
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.datasets import load_split
    from fake_data import make_busbra
    from trainers.feedback import serving_checkpoint
    from trainers.simulate import simulate

    store = FeedbackStore(tmp_path / "fb.db")
    assert serving_checkpoint(store) == DEFAULT_CHECKPOINT  # nothing collected yet: the shipped model
    checkpoint = save_checkpoint(predictor.model, tmp_path / "serving", "v-serving")
    store.add_model_version("v-serving", checkpoint)
    serving = CoreSegPredictor(predictor.model, "v-serving")
    data = make_busbra(tmp_path / "data", n=4)
    simulate(serving, store, load_split(data, "busbra", "all")[:2], n_candidates=2)
    assert serving_checkpoint(store) == checkpoint
