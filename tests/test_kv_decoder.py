"""The compact reasoner's own KV-cached sampling loop (coreseg.modeling.kv_decoder) computes what the
transformers forward computes: same logits, same greedy answers."""
from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from coreseg.config import DEFAULT_CHECKPOINT
from coreseg.datasets import read_image
from coreseg.modeling.drafting import DRAFT_LENGTH, NgramDrafter
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
        steps = [decoder.prefill(prompt)]
        for k in range(3):  # one token per row per pass, each kept
            steps.append(decoder.run(rows[:, k:k + 1])[0][:, 0])
            decoder.advance(torch.ones(3, dtype=torch.long))
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


def test_a_continued_pass_from_the_sampled_keys_is_the_teacher_forced_forward(shipped):
    """Completions that replace sampled rows from some token on (a changed word, a cut, none), read from sampling's
    keys, values and states (`forward_continued`), give the teacher-forced forward's logits and states."""
    predictor, reasoner = shipped, shipped.model.reasoner
    image = square((64, 64), slice(20, 44), slice(16, 40), 200)
    embedding, question = predictor.embedding(image), "Outline the lesion."
    with torch.no_grad():
        sampled = reasoner.sample(image, embedding, question, 3, 0.9, 0.95, torch.Generator().manual_seed(3))
        a, b, c = (list(ids) for ids in sampled.ids)
        new = [a[:12] + [a[13]] + a[12:], c[:30] + c[40:], b]   # a token put in, ten cut, as sampled
        continued = reasoner.forward_continued(sampled, [0, 2, 1], new)
        forward = reasoner.forward_completions([image] * 3, embedding.expand(3, -1, -1, -1), [question] * 3, new)
    for k in range(3):
        assert continued[0][k].shape == forward[0][k].shape == (len(new[k]), len(reasoner.tokenizer))
        assert torch.allclose(continued[0][k], forward[0][k], atol=1e-4), k
        assert torch.allclose(continued[1][k], forward[1][k], atol=1e-4), k
        assert torch.allclose(continued[2][k].states, forward[2][k].states, atol=1e-4), k


def test_draw_log_probabilities_are_the_re_scoring_distribution():
    """What sampling records is what GRPO re-scores with (`sampling_logprobs`), nucleus and temperature."""
    from coreseg.modeling.sampling import draw, sampling_logprobs

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in ((0.7, 0.95), (1.0, 0.5), (1.3, 1.0), (0.0, 1.0)):
        token, logp = draw(logits, temperature, top_p, torch.Generator().manual_seed(1))
        assert torch.allclose(logp, sampling_logprobs(logits, token, temperature, top_p), atol=1e-5)


@pytest.mark.slow  # the shipped model: the full run (CI) has it; the fast run measured 179–190 s with it
def test_sampling_keeps_the_teacher_forced_states_and_masks(shipped, monkeypatch):
    """The states kept while sampling (what the adapter reads at `<seg>`, and the image tokens' for the box
    pointer) are the teacher-forced forward's, with guessed tokens accepted several at a time, and the
    predictor's masks from them are the forced masks."""
    from coreseg.metrics import dice

    predictor, reasoner = shipped, shipped.model.reasoner
    image = read_image(Path(__file__).parents[1] / "assets" / "examples" / "bus_0165-r.png")  # a shipped example
    embedding = predictor.embedding(image)
    question = "Outline the breast mass."
    learned = NgramDrafter()
    monkeypatch.setattr(reasoner, "drafter", learned)
    with torch.no_grad():
        for completion in reasoner.sample(image, embedding, question, 2, 0.9, 0.95, torch.Generator()).ids:
            learned.learn(completion)
    assert len(learned) > 100
    with torch.no_grad():
        sampled = reasoner.sample(image, embedding, question, 3, 0.9, 0.95, torch.Generator().manual_seed(1),
                                  writer=predictor.model.box_writing)  # as the predictor samples
        _, hidden, states = reasoner.forward_completions([image] * 3, embedding.expand(3, -1, -1, -1),
                                                         [question] * 3, sampled.ids)
    for kept, forced, ids in zip(sampled.hidden, hidden, sampled.ids):
        assert len(ids) - 1 <= kept.shape[0] <= len(ids)
        assert torch.allclose(kept, forced[:kept.shape[0]], atol=1e-4)
    assert torch.allclose(sampled.image[0].states, states[0].states, atol=1e-4)
    assert (sampled.image[0].rows, sampled.image[0].cols) == (states[0].rows, states[0].cols)
    # the sampled tokens' own masks: claim revision would draw revised answers by a teacher-forced pass
    monkeypatch.setattr(predictor.model, "config", dataclasses.replace(predictor.model.config, revise_claims=False))
    drawn = predictor.predict(image, question, 3, temperature=0.9, seed=1)
    forced_masks = predictor.score_completions(image, question, sampled.ids)
    assert [c.text for c in drawn] == [c.text for c in forced_masks]
    assert any(c.mask.any() for c in drawn)
    for a, b in zip(drawn, forced_masks):
        assert (not a.mask.any() and not b.mask.any()) or dice(a.mask, b.mask) > 0.99


def tiny_lm(vocab: int, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return Qwen2ForCausalLM(config).eval()


def test_rows_of_different_lengths_match_the_transformers_forward():
    """A pass that feeds each row several tokens after rows kept different numbers of earlier ones computes, per
    row, the transformers forward of that row's own sequence (what speculative sampling relies on)."""
    lm = tiny_lm(97)
    prompt = torch.randn(5, 32)
    decoder = KVDecoder(lm, rows=2, max_length=5 + 8)
    first = torch.tensor([[7, 8, 9], [10, 11, 12]])
    second = torch.tensor([[20, 21, 22], [30, 31, 32]])
    with torch.no_grad():
        decoder.prefill(prompt)
        decoder.run(first)
        decoder.advance(torch.tensor([3, 1]))  # row 0 keeps 7 8 9, row 1 only 10
        logits, states = decoder.run(second)
        for row, kept in ((0, [7, 8, 9]), (1, [10])):
            tokens = torch.tensor(kept + second[row].tolist())
            full = torch.cat([prompt, lm.model.embed_tokens(tokens)])[None]
            out = lm(inputs_embeds=full, output_hidden_states=True)
            assert torch.allclose(logits[row], out.logits[0, -3:], atol=1e-5), row
            assert torch.allclose(states[row], out.hidden_states[-1][0, -3:], atol=1e-5), row


def _sample(lm, rows, drafter, temperature, top_p=1.0, seed=0, max_new=6, writer=None):
    """(ids, logps, states) — and the written-token flags when a `writer` is given."""
    from coreseg.modeling.sampling import sample_tokens

    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(123))
    decoder = KVDecoder(lm, rows, 4 + max_new + DRAFT_LENGTH)
    with torch.no_grad():
        out = sample_tokens(decoder, decoder.prefill(prompt), [0], max_new, temperature, top_p,
                            torch.Generator().manual_seed(seed), drafter, writer=writer)
    return out if writer is not None else out[:3]


def test_guessed_tokens_leave_greedy_answers_log_probabilities_and_states_unchanged():
    lm = tiny_lm(50, seed=1)
    plain = _sample(lm, 2, None, 0.0, max_new=12)
    right, wrong = NgramDrafter(order=2), NgramDrafter(order=2)
    right.learn(plain[0][0])
    wrong.learn([(t + 1) % 50 for t in plain[0][0]])
    for drafter in (right, wrong):
        ids, logps, states = _sample(lm, 2, drafter, 0.0, max_new=12)
        assert ids == plain[0]
        assert np.allclose(logps[0], plain[1][0], atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(states, plain[2]))
    assert len(plain[0][0]) == 12 and len(plain[2][0]) == 11  # the last token is never fed


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9)])
def test_guessed_tokens_leave_the_sampling_distribution_unchanged(temperature, top_p):
    """Over 4,000 rows, the first two tokens' joint frequencies with guesses (a drafter that guesses a likely and an
    unlikely token) match the exact distribution enumerated from the model, as plain sampling's do."""
    from coreseg.modeling.sampling import sampling_distribution

    vocab = 6
    lm = tiny_lm(vocab, seed=2)
    with torch.no_grad():  # exact P(t1, t2) by enumeration
        prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(123))
        p1 = sampling_distribution(lm(inputs_embeds=prompt[None]).logits[0, -1], temperature, top_p).exp()
        seqs = torch.cat([prompt.expand(vocab, -1, -1), lm.model.embed_tokens(torch.arange(vocab))[:, None]], 1)
        p2 = sampling_distribution(lm(inputs_embeds=seqs).logits[:, -1], temperature, top_p).exp()
        exact = (p1[:, None] * p2).numpy()
    drafter = NgramDrafter(order=1)
    for a, b in ((1, 2), (2, 3), (3, 4), (4, 5), (5, 1)):
        drafter.learn([a, b, a, b])
    rows = 4000
    for guesses in (None, drafter):
        ids, _, _ = _sample(lm, rows, guesses, temperature, top_p, seed=5, max_new=3)
        assert all(1 <= len(row) <= 3 and (len(row) == 3 or row[-1] == 0) for row in ids)
        counts = np.zeros((vocab, vocab))
        for row in ids:
            if len(row) >= 2:
                counts[row[0], row[1]] += 1
            else:  # stopped at token 0
                counts[row[0]] += exact[row[0]] / exact[row[0]].sum()
        assert np.abs(counts / rows - exact).max() < 0.025, guesses


def test_the_nucleus_from_the_most_likely_tokens_is_the_fully_sorted_one():
    from coreseg.modeling.sampling import nucleus_mask

    generator = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 12.0):  # flat rows (the nucleus reaches past the head: full sort) to peaked ones
        probs = torch.softmax(torch.randn(40, 1300, generator=generator) * scale, dim=-1)
        for top_p in (0.5, 0.9, 0.95, 0.999):
            sorted_p, order = probs.sort(dim=-1, descending=True)
            expected = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, sorted_p.cumsum(-1) - sorted_p < top_p)
            assert torch.equal(nucleus_mask(probs, top_p), expected), (scale, top_p)


class _EveryThirdOpens:
    """A box writer's hook for a bare LM: a token divisible by 3 (not the stop token 0) opens a "box"; the writer
    writes 11 tokens there (more than one pass of guesses holds), from the state at the bracket, and one of
    `closers` must follow them."""

    WRITTEN = [41, 42, 43, 44, 45, 46, 47, 48, 49, 40, 41]
    closers = frozenset({1, 2, 4})

    def __init__(self):
        self.states, self.texts = [], []

    def opens_box(self, ids):
        return bool(ids) and ids[-1] % 3 == 0 and ids[-1] != 0

    def write(self, state, text, ids):
        assert torch.equal(text[-1], state)  # the completion's states up to the bracket, the bracket's last
        assert len(ids) == len(text) and self.opens_box(ids)  # and its tokens, the bracket the last
        self.states.append(state)
        self.texts.append(text)
        return list(self.WRITTEN)


@pytest.mark.parametrize("guessing", [False, True])
def test_written_boxes_are_fed_and_the_model_goes_on_after_them(guessing):
    """Where a row's token opens a box, the writer's tokens follow it (flagged as written), and every other token is
    the greedy argmax of the transformers forward of the whole sequence, written tokens included (they were fed
    through the KV cache as if the model had written them), the token after them the most likely closer. Their log-probabilities are the model's own, and the
    writer read the state at the bracket."""
    lm = tiny_lm(50, seed=1)
    drafter = None
    if guessing:  # guesses that run past brackets: none may be accepted past one
        drafter = NgramDrafter(order=2)
        drafter.learn(_sample(lm, 1, None, 0.0, max_new=40)[0][0])
    writer = _EveryThirdOpens()
    ids, logps, _, forced = _sample(lm, 2, drafter, 0.0, max_new=40, writer=writer)
    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(123))
    written = 0
    for row, flags, row_logps in zip(ids, forced, logps):
        assert len(flags) == len(row) == len(row_logps)
        with torch.no_grad():
            out = lm(inputs_embeds=torch.cat([prompt, lm.model.embed_tokens(torch.tensor(row))])[None],
                     output_hidden_states=True)
        logits = out.logits[0, prompt.shape[0] - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(row)[:, None]).squeeze(-1)
        k = 0
        while k < len(row):
            if flags[k]:
                assert writer.opens_box(row[:k]), k
                n = min(len(_EveryThirdOpens.WRITTEN), len(row) - k)
                assert row[k:k + n] == _EveryThirdOpens.WRITTEN[:n] and all(flags[k:k + n])
                assert any(torch.allclose(s, out.hidden_states[-1][0, prompt.shape[0]:prompt.shape[0] + k], atol=1e-4)
                           for s in writer.texts if len(s) == k)  # the states of the tokens up to the bracket
                written += 1
                k += n
                if k < len(row):  # the closing token: the most likely closer
                    closers = sorted(_EveryThirdOpens.closers)
                    assert row[k] == closers[int(logits[k, closers].argmax())], k
                    k += 1
            else:
                assert not writer.opens_box(row[:k]) or k == 0, k
                assert row[k] == int(logits[k].argmax()), k
                k += 1
        assert np.allclose(row_logps, expected.numpy(), atol=1e-4)
    assert written >= 2


class _AfterFiveLooksUp:
    """A panel lookup's hook for a bare LM: a token divisible by 5 (not the stop token 0) ends a trigger after which
    the lookup writes 31 32; one divisible by 7 (not by 5) a trigger after which it bans tokens 40 … 49."""

    WRITTEN = [31, 32]
    BANNED = list(range(40, 50))

    def opens(self, ids):
        return bool(ids) and ids[-1] != 0 and (ids[-1] % 5 == 0 or ids[-1] % 7 == 0)

    def tokens(self, ids):
        assert self.opens(ids)
        return list(self.WRITTEN) if ids[-1] % 5 == 0 else []

    def banned(self, ids):
        return list(self.BANNED) if self.opens(ids) and ids[-1] % 5 else []


@pytest.mark.parametrize("guessing", [False, True])
def test_a_looked_up_panel_is_fed_after_its_trigger_and_the_model_goes_on_freely(guessing):
    """After each trigger the lookup's tokens follow (flagged, with the model's own log-probabilities), after each
    banning trigger the argmax without the banned tokens (its log-probability the unrestricted one), and every
    other token, the one right after the written ones included (no closing rule, unlike a written box), is the
    greedy argmax of the transformers forward of the whole sequence."""
    from coreseg.modeling.sampling import sample_tokens

    lm = tiny_lm(50, seed=3)
    prompt = torch.randn(4, 32, generator=torch.Generator().manual_seed(123))
    drafter = None
    if guessing:  # guesses that run past triggers: none may be accepted past one
        drafter = NgramDrafter(order=2)
        drafter.learn(_sample(lm, 1, None, 0.0, max_new=40)[0][0])
    lookup = _AfterFiveLooksUp()
    decoder = KVDecoder(lm, 2, 4 + 40 + DRAFT_LENGTH)
    with torch.no_grad():
        ids, logps, _, forced = sample_tokens(decoder, decoder.prefill(prompt), [0], 40, 0.0, 1.0,
                                              torch.Generator().manual_seed(0), drafter, lookup=lookup)
    looked_up = bans = 0
    for row, flags, row_logps in zip(ids, forced, logps):
        with torch.no_grad():
            logits = lm(inputs_embeds=torch.cat([prompt, lm.model.embed_tokens(torch.tensor(row))])[None]).logits[
                0, prompt.shape[0] - 1:-1]
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(row)[:, None]).squeeze(-1)
        for k, token in enumerate(row):
            if k and lookup.banned(row[:k]):
                allowed = logits[k].clone()
                allowed[lookup.BANNED] = float("-inf")
                assert not flags[k] and token == int(allowed.argmax()), k
                bans += int(int(logits[k].argmax()) in lookup.BANNED)   # a ban that changed the token
            elif k and lookup.opens(row[:k]):
                n = min(2, len(row) - k)
                assert row[k:k + n] == lookup.WRITTEN[:n] and all(flags[k:k + n]), k
                looked_up += 1
            elif not (k > 1 and lookup.opens(row[:k - 1]) and row[k - 1] == 31):
                assert not flags[k] and token == int(logits[k].argmax()), k
        assert np.allclose(row_logps, expected.numpy(), atol=1e-4)
    assert looked_up >= 2 and bans >= 1
