"""The compact reasoner's own KV-cached sampling loop (coreseg.modeling.kv_decoder) computes what the
transformers forward computes: same logits, same greedy answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from coreseg.config import DEFAULT_CHECKPOINT
from coreseg.modeling.kv_decoder import KVDecoder
from coreseg.predictor import CoreSegPredictor


def test_kv_decoder_logits_match_the_transformers_forward():
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    lm = Qwen2ForCausalLM(config).eval()
    prompt = torch.randn(7, 64)
    rows = torch.tensor([[5, 9, 11, 3], [42, 42, 1, 96], [0, 17, 17, 17]])  # three rows, other tokens each
    decoder = KVDecoder(lm, rows=3, max_length=7 + 4)
    with torch.no_grad():
        steps = [decoder.prefill(prompt)] + [decoder.step(rows[:, k]) for k in range(3)]
        full = torch.cat([prompt.expand(3, -1, -1), lm.model.embed_tokens(rows[:, :3])], dim=1)
        reference = lm(inputs_embeds=full).logits[:, 6:]
    for k, logits in enumerate(steps):
        assert torch.allclose(logits, reference[:, k], atol=1e-5), k
    assert not torch.allclose(steps[1][0], steps[1][1]), "rows are decoded apart"


@pytest.fixture(scope="module")
def shipped():
    """The shipped compact model's predictor, loaded once for this module."""
    torch.set_num_threads(1)
    return CoreSegPredictor.from_checkpoint(DEFAULT_CHECKPOINT, "cpu")


def square(shape: tuple[int, int], rows: slice, cols: slice, value: int) -> np.ndarray:
    """A black RGB image with one bright rectangle: a lesion-like finding for the shipped model."""
    image = np.zeros((*shape, 3), dtype=np.uint8)
    image[rows, cols] = value
    return image


def test_greedy_answers_are_the_argmax_of_the_teacher_forced_forward(shipped):
    """On the shipped model: each greedy token is the argmax of the training-time forward at its place."""
    predictor, reasoner = shipped, shipped.model.reasoner
    image = square((64, 64), slice(20, 44), slice(16, 40), 200)
    embedding = predictor.embedding(image)
    with torch.no_grad():
        ids, logps = reasoner.generate(image, embedding, "Outline the lesion.", 2, 0.0, 1.0, torch.Generator())
        logits, *_ = reasoner.forward_completions([image] * 2, embedding.expand(2, -1, -1, -1),
                                                 ["Outline the lesion."] * 2, ids)
    assert ids[0] == ids[1] and len(ids[0]) > 20
    assert ids[0][-1] in reasoner.stop_ids
    assert logits[0].argmax(-1).tolist() == ids[0]
    expected = torch.log_softmax(logits[0].float(), -1).gather(-1, torch.tensor(ids[0])[:, None]).squeeze(-1)
    assert np.allclose(logps[0], expected.numpy(), atol=1e-4)


def test_draw_log_probabilities_are_the_re_scoring_distribution():
    """What sampling records is what GRPO re-scores with (`sampling_logprobs`), nucleus and temperature."""
    from coreseg.modeling.sampling import draw, sampling_logprobs

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in ((0.7, 0.95), (1.0, 0.5), (1.3, 1.0), (0.0, 1.0)):
        token, logp = draw(logits, temperature, top_p, torch.Generator().manual_seed(1))
        assert torch.allclose(logp, sampling_logprobs(logits, token, temperature, top_p), atol=1e-5)


def test_sampling_keeps_the_teacher_forced_states_and_masks(shipped):
    """The states kept while sampling (what the adapter reads at `<seg>`, and the image tokens' for the box
    pointer) are the teacher-forced forward's, and the predictor's masks from them are the forced masks."""
    from coreseg.metrics import dice

    predictor, reasoner = shipped, shipped.model.reasoner
    image = square((96, 80), slice(30, 60), slice(20, 50), 180)
    embedding = predictor.embedding(image)
    question = "Outline the lesion."
    with torch.no_grad():
        sampled = reasoner.sample(image, embedding, question, 3, 0.9, 0.95, torch.Generator().manual_seed(3))
        _, hidden, states = reasoner.forward_completions([image] * 3, embedding.expand(3, -1, -1, -1),
                                                         [question] * 3, sampled.ids)
    for kept, forced, ids in zip(sampled.hidden, hidden, sampled.ids):
        assert len(ids) - 1 <= kept.shape[0] <= len(ids)
        assert torch.allclose(kept, forced[:kept.shape[0]], atol=1e-4)
    assert torch.allclose(sampled.image[0].states, states[0].states, atol=1e-4)
    assert (sampled.image[0].rows, sampled.image[0].cols) == (states[0].rows, states[0].cols)
    drawn = predictor.predict(image, question, 3, temperature=0.9, seed=3)
    forced_masks = predictor.score_completions(image, question, sampled.ids)
    assert [c.text for c in drawn] == [c.text for c in forced_masks]
    assert any(c.mask.any() for c in drawn)
    for a, b in zip(drawn, forced_masks):
        assert (not a.mask.any() and not b.mask.any()) or dice(a.mask, b.mask) > 0.99
