"""Batched nucleus sampling with a KV cache that records each token's log-probability under the
sampling distribution (softmax of logits / temperature, cut to the top-p nucleus and renormalised):
what GRPO's importance ratio needs. `sampling_logprobs` is that same distribution for re-scoring, so
a stored completion re-scored with its own temperature and top-p under unchanged weights has ratio 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampled:
    """Sampled completions: token ids and their log-probabilities per row and, where the reasoner kept them
    while sampling, the last layer's states at each completion token (`hidden`, T_i × H, the final token's
    may be missing: no step ran after it) and at the image tokens (`image`): what `CoreSeg.decode_masks`
    reads. None where the reasoner keeps none (a teacher-forced pass then computes them)."""
    ids: list[list[int]]
    logps: list[list[float]]
    hidden: list[torch.Tensor] | None = None
    image: list | None = None


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


def draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
    """One token per row of `logits` (N × V, float) and its log-probability under the sampling distribution
    (what `sampling_logprobs` computes, from the same softmax and nucleus: one pass instead of two)."""
    if temperature <= 0:
        token = logits.argmax(-1)
        return token, torch.log_softmax(logits, dim=-1).gather(-1, token[:, None]).squeeze(-1)
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    probs = log_probs.exp()
    if top_p < 1.0:
        probs = probs * nucleus_mask(probs, top_p)
    token = torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device).squeeze(1)
    return token, log_probs.gather(-1, token[:, None]).squeeze(-1) - probs.sum(-1).log()


def sample_tokens(first_logits: torch.Tensor, step, stop_ids: list[int], max_new_tokens: int, temperature: float,
                  top_p: float, generator: torch.Generator) -> tuple[list[list[int]], list[list[float]]]:
    """Sample from `first_logits` (n × V, after n identical prompts) on, `step(tokens)` giving the
    logits after each row's new token, until every row wrote a stop token or `max_new_tokens`.

    `temperature == 0` is greedy (log-probabilities then come from the plain softmax)."""
    logits = first_logits.float()
    n = logits.shape[0]
    stop = torch.tensor(stop_ids, device=logits.device)
    done = torch.zeros(n, dtype=torch.bool, device=logits.device)
    tokens, chosen, live = [], [], []
    for _ in range(max_new_tokens):
        token, logp = draw(logits, temperature, top_p, generator)
        tokens.append(token)
        chosen.append(logp)
        live.append(~done)
        done = done | torch.isin(token, stop)
        if bool(done.all()):
            break
        logits = step(token).float()
    tokens, chosen, live = (torch.stack(t, dim=1).cpu() for t in (tokens, chosen, live))
    return ([t[k].tolist() for t, k in zip(tokens, live)], [c[k].tolist() for c, k in zip(chosen, live)])
