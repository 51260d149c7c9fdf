"""Batched nucleus sampling with a KV cache that records each token's log-probability under the
sampling distribution (softmax of logits / temperature, cut to the top-p nucleus and renormalised):
what GRPO's importance ratio needs. `sampling_logprobs` is that same distribution for re-scoring, so
a stored completion re-scored with its own temperature and top-p under unchanged weights has ratio 1."""
from __future__ import annotations

import torch


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask (same shape) of the smallest set of most likely tokens whose mass reaches `top_p`."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    return torch.zeros_like(keep).scatter(-1, order, keep)


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """log p(token) under the sampling distribution, per row of `logits` (N × V) and `tokens` (N).

    temperature 0 (greedy) scores with the plain softmax. The nucleus is chosen without gradient and
    always holds the token itself (a sampled token always lies in its nucleus)."""
    logits = logits.float()
    scaled = logits / temperature if temperature > 0 else logits
    log_probs = torch.log_softmax(scaled, dim=-1)
    chosen = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
    if temperature <= 0 or top_p >= 1.0:
        return chosen
    with torch.no_grad():
        keep = nucleus_mask(log_probs.exp(), top_p)
        keep.scatter_(-1, tokens[:, None], True)
    return chosen - torch.logsumexp(log_probs.masked_fill(~keep, float("-inf")), dim=-1)


def sample_tokens(lm, first_out, n: int, stop_ids: list[int], max_new_tokens: int, temperature: float,
                  top_p: float, generator: torch.Generator, attention_length: int,
                  step_kwargs=None) -> tuple[list[list[int]], list[list[float]]]:
    """Continue from a prefill output `first_out` of `n` identical prompts.

    `temperature == 0` is greedy (log-probabilities then come from the plain softmax).
    `step_kwargs(step)` may add model-specific arguments for each decoding step.
    """
    device = first_out.logits.device
    past = first_out.cache
    logits = first_out.logits[:, -1].float()
    done = torch.zeros(n, dtype=torch.bool, device=device)
    ids = [[] for _ in range(n)]
    logps = [[] for _ in range(n)]
    attention = torch.ones(n, attention_length, dtype=torch.long, device=device)
    stop = torch.tensor(stop_ids, device=device)
    for step in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if top_p < 1.0:
                probs = probs * nucleus_mask(probs, top_p)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device).squeeze(1)
        else:
            token = logits.argmax(-1)
        chosen = sampling_logprobs(logits, token, temperature, top_p)
        for i in range(n):
            if not done[i]:
                ids[i].append(int(token[i]))
                logps[i].append(float(chosen[i]))
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        attention = torch.cat([attention, torch.ones(n, 1, dtype=torch.long, device=device)], dim=1)
        extra = step_kwargs(step) if step_kwargs else {}
        out = lm(input_ids=token[:, None], cache=past, attention_mask=attention, use_cache=True, **extra)
        past = out.cache
        logits = out.logits[:, -1].float()
    return ids, logps
