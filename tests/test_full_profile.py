"""Issue 10: the full profile on a tiny Qwen2.5-VL whose tokenizer is Qwen2's real one (regex + byte-level
pre-tokenizer) WITHOUT the answer tags, so the project's own code must add them; the `<seg>` probe
without fallback; stopping on the end-of-turn token; fresh seeds; one vision pass per image; the
frozen SFT policy as KL reference; re-scoring with the sampling distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from coreseg.answer import SEG_TOKEN, render_answer
from coreseg.checkpoint import load_checkpoint, save_checkpoint
from coreseg.config import ModelConfig
from coreseg.geometry import mask_to_low_res
from coreseg.modeling.core_seg import CoreSeg
from coreseg.modeling.sampling import sampling_logprobs
from coreseg.modeling.tokenizer import ANSWER_TOKENS, END_OF_TURN
from coreseg.predictor import CoreSegPredictor
from tiny_models import full_config as make_full_config, tiny_qwen2_tokenizer

ANSWER = render_answer("A dark oval region in bright tissue.", "lesion", [(100, 200, 600, 700)])


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("full-weights")
    return make_full_config(folder, max_new_tokens=16)


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return CoreSeg.build(config).eval()


def scan(seed=0, size=(90, 120)):
    rng = np.random.default_rng(seed)
    return (rng.random((*size, 3)) * 255).astype(np.uint8)


def test_tiny_base_tokenizer_is_qwen2s_and_splits_the_tags():
    """The precondition the fix is about: Qwen2's pre-tokenizer splits every tag into pieces."""
    tok = tiny_qwen2_tokenizer()
    assert type(tok).__name__ == "Qwen2Tokenizer"
    for tag in ANSWER_TOKENS:
        assert tag not in tok.get_vocab()
    assert len(tok.encode(f"The mask is {SEG_TOKEN}.", add_special_tokens=False)) > 4
    assert tok.convert_ids_to_tokens(tok.encode(" <seg>.", add_special_tokens=False))[:2] == ["Ġ<", "seg"]


def test_answer_tags_are_added_single_tokens_whose_rows_train_and_are_saved(model, config, tmp_path):
    tok = model.reasoner.tokenizer
    ids = tok.encode(ANSWER + END_OF_TURN, add_special_tokens=False)
    for tag in ANSWER_TOKENS:
        assert ids.count(tok.convert_tokens_to_ids(tag)) == 1, tag
    assert tok.decode(ids, skip_special_tokens=False) == ANSWER + END_OF_TURN
    assert model.seg_position(ids) == ids.index(tok.convert_tokens_to_ids(SEG_TOKEN))
    rows = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens_delta" in n]
    assert len(rows) == 2, rows  # the input embedding and (untied here) the output head
    image = scan()
    truth = np.zeros(image.shape[:2], bool)
    truth[20:60, 30:90] = True
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in rows}
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    model.train()
    loss = model([image], model.segmenter.encode(image), ["Outline the lesion."], [model.encode_target(ANSWER)],
                 mask_to_low_res(truth))["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    for n, p in model.named_parameters():
        if n in rows:
            assert not torch.equal(p, before[n]), f"{n} did not train"
    path = save_checkpoint(model, tmp_path / "ckpt", "tiny-full", dtype=torch.float32)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    assert saved.encode(ANSWER, add_special_tokens=False) == tok.encode(ANSWER, add_special_tokens=False)
    loaded, _ = load_checkpoint(path, device="cpu")
    for n, p in loaded.named_parameters():
        if n in rows:
            assert torch.equal(p, dict(model.named_parameters())[n]), n
    with torch.no_grad():
        a = model.reasoner.forward_completions([image], None, ["Q?"], [ids])[0][0]
        b = loaded.reasoner.forward_completions([image], None, ["Q?"], [ids])[0][0]
    assert torch.allclose(a, b, atol=1e-5)


def test_an_answer_without_seg_has_no_probe_and_an_empty_mask(model):
    """No silent last-token fallback: the unparsable answer draws nothing and fails to parse."""
    tok = model.reasoner.tokenizer
    with_seg = model.encode_target(ANSWER)
    without = model.encode_target(ANSWER.replace(f" The mask is {SEG_TOKEN}.", ""))
    assert model.seg_position(without) is None
    image = scan(1)
    predictor = CoreSegPredictor(model, "tiny-full")
    a, b = predictor.score_completions(image, "Outline the lesion.", [with_seg, without])
    assert a.probe is not None and b.probe is None
    assert not b.mask.any()
    assert not b.parsed.ok and any(SEG_TOKEN in e for e in b.parsed.errors)
    _, hidden, states = model.reasoner.forward_completions([image] * 2, None, ["Q"] * 2, [with_seg, without])
    masks = model.decode_masks(model.segmenter.encode(image), hidden, [with_seg, without], image=states)
    assert states[0].states.shape == (states[0].rows * states[0].cols, hidden[0].shape[-1]), \
        "the box pointer's cells are the merged vision tokens"
    assert masks["rows"] == [0] and (masks["logits"][1] < 0).all()
    assert tok.convert_tokens_to_ids(SEG_TOKEN) in with_seg


def test_targets_end_with_end_of_turn_and_generation_stops_on_it(model):
    tok = model.reasoner.tokenizer
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    assert model.encode_target(ANSWER)[-1] == eot
    assert model.reasoner.stop_ids == [eot]
    # make the end-of-turn token the only likely one: generation must stop right there
    head = model.reasoner.lm.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[eot] = 1e4
    handle = head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        ids, logps = model.reasoner.generate(scan(), None, "Q?", 2, 1.0, 1.0, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert ids == [[eot], [eot]] and all(len(l) == 1 for l in logps)


def test_each_generate_call_draws_fresh_seeds_from_its_generator(model):
    image = scan(2)
    generator = torch.Generator().manual_seed(5)
    first, _ = model.reasoner.generate(image, None, "Q?", 2, 1.0, 1.0, generator)
    second, _ = model.reasoner.generate(image, None, "Q?", 2, 1.0, 1.0, generator)
    assert first != second, "repeated calls gave the same samples"
    again, _ = model.reasoner.generate(image, None, "Q?", 2, 1.0, 1.0, torch.Generator().manual_seed(5))
    assert again == first, "the same generator state gives the same samples"


def test_completions_of_one_image_share_one_vision_pass_and_rescore_to_ratio_one(model):
    image = scan(3)
    visual = model.reasoner.lm.base_model.model.model.visual
    calls = []
    handle = visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        ids, logps = model.reasoner.generate(image, None, "Q?", 3, 0.7, 0.9, torch.Generator().manual_seed(1))
        calls.clear()
        logits, hidden, _ = model.reasoner.forward_completions([image] * 3, None, ["Q?"] * 3, ids)
    finally:
        handle.remove()
    assert len(calls) == 1, f"{len(calls)} vision passes for 3 completions of one image"
    for i in range(3):
        rescored = sampling_logprobs(logits[i], torch.tensor(ids[i]), 0.7, 0.9)
        assert torch.allclose(rescored, torch.tensor(logps[i]), atol=1e-4), "ratio 1 at unchanged weights"
        assert len(hidden[i]) == len(ids[i])
    # unbatched (one completion per pass) gives the same logits: padding changes nothing
    alone = model.reasoner.forward_completions([image], None, ["Q?"], [ids[0]])[0][0]
    assert torch.allclose(alone, logits[0], atol=1e-4)


def test_grpo_reference_is_the_frozen_start_policy_not_the_lora_free_base(model):
    from trainers.grpo import ReferencePolicy

    image, ids = scan(4), [model.encode_target(ANSWER)]
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    saved = [p.detach().clone() for p in lora]
    try:
        with torch.no_grad():
            for p in lora:  # the "SFT policy": LoRA that differs from the base
                p.add_(0.05 * torch.randn_like(p))
            start = model.reasoner.forward_completions([image], None, ["Q"], ids)[0][0]
            with model.reasoner.lm.disable_adapter():
                base = model.reasoner.forward_completions([image], None, ["Q"], ids)[0][0]
        reference = ReferencePolicy(model)
        with torch.no_grad():
            for p in lora:  # training moves on
                p.add_(0.05 * torch.randn_like(p))
        ref = reference.logits([image], None, ["Q"], ids)[0]
        assert torch.allclose(ref, start, atol=1e-5)
        assert not torch.allclose(ref, base, atol=1e-3)
        now = model.reasoner.forward_completions([image], None, ["Q"], ids)[0][0]
        assert not torch.allclose(now, start, atol=1e-3), "the swap is undone after the reference pass"
    finally:
        with torch.no_grad():
            for p, s in zip(lora, saved):
                p.copy_(s)


def test_app_stays_offline_on_a_laptop_but_not_on_a_space_or_for_a_hub_model(tmp_path):
    import json

    from app import offline_env

    assert offline_env({})["HF_HUB_OFFLINE"] == "1"  # the shipped compact model needs no hub
    assert "HF_HUB_OFFLINE" not in offline_env({"SPACE_ID": "someone/coreseg-studio"})
    for pretrained, hub in (("Qwen/Qwen2.5-VL-3B-Instruct", True), (str(tmp_path), False)):
        folder = tmp_path / f"ckpt-{hub}"
        folder.mkdir()
        config = ModelConfig.full(pretrained).to_dict()
        (folder / "coreseg.json").write_text(json.dumps({"config": config}))
        env = offline_env({"CORESEG_CHECKPOINT": str(folder)})
        assert ("HF_HUB_OFFLINE" not in env) == hub, pretrained
        assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["GRADIO_ANALYTICS_ENABLED"] == "False"
