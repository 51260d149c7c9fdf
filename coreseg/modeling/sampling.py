"""Batched nucleus sampling with a KV cache that records each token's log-probability under the
sampling distribution (softmax of logits / temperature, cut to the top-p nucleus and renormalised):
what GRPO's importance ratio needs. `sampling_logprobs` is that same distribution for re-scoring, so
a stored completion re-scored with its own temperature and top-p under unchanged weights has ratio 1."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coreseg.modeling.drafting import DRAFT_LENGTH


@dataclass
class Sampled:
    """Sampled completions: token ids and their log-probabilities per row and, where the reasoner kept them
    while sampling, the last layer's states at each completion token (`hidden`, T_i × H, the final token's
    may be missing: no step ran after it) and at the image tokens (`image`): what `CoreSeg.decode_masks`
    reads. None where the reasoner keeps none (a teacher-forced pass then computes them). `drawn`: per row, the
    mask logits (1 × S × S) the segmenter drew in the boxes the box writer wrote (`BoxWriting.drawn_for`); None
    without a writer. `decoder`: the `KVDecoder` that sampled them (its keys and values), or None."""
    ids: list[list[int]]
    logps: list[list[float]]
    hidden: list[torch.Tensor] | None = None
    image: list | None = None
    drawn: list[list[torch.Tensor]] | None = None
    decoder: object | None = None

    def replaced(self, rows: list[int], other: "Sampled") -> "Sampled":
        """These completions with rows `rows` replaced by `other`'s (one per row, in order; its states too where
        these keep states). What the box writer drew stays out: it was drawn for the replaced tokens."""
        ids, logps = list(self.ids), list(self.logps)
        hidden = None if self.hidden is None else list(self.hidden)
        image = None if self.image is None else list(self.image)
        for j, i in enumerate(rows):
            ids[i], logps[i] = other.ids[j], other.logps[j]
            if hidden is not None:
                hidden[i], image[i] = other.hidden[j], other.image[j]
        return Sampled(ids, logps, hidden, image)


def first_difference(a: list[int], b: list[int]) -> int:
    """The index of the first token where two completions differ (the shorter's length where one begins the other):
    where a revised answer's tokens leave the sampled ones."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def nucleus_mask(probs: torch.Tensor, top_p: float, head: int = 64) -> torch.Tensor:
    """Boolean mask (same shape) of the smallest set of most likely tokens whose mass reaches `top_p`.

    The `head` most likely tokens are sorted first (a full sort of every row took 13 % of sampling); only where
    a nucleus reaches past them is every token sorted."""
    sorted_p, order = probs.topk(min(head, probs.shape[-1]), dim=-1)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p
    if head < probs.shape[-1] and bool(keep[..., -1].any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
    return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter(-1, order, keep)


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


def sampling_distribution(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities (… × V) of the distribution `draw` samples from: softmax of logits / temperature cut to the
    top-p nucleus and renormalised; greedy (temperature 0) scores with the plain softmax."""
    if temperature <= 0:
        return torch.log_softmax(logits, dim=-1)
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        log_probs = log_probs.masked_fill(~nucleus_mask(log_probs.exp(), top_p), float("-inf"))
        log_probs = log_probs - torch.logsumexp(log_probs, dim=-1, keepdim=True)
    return log_probs


def draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator):
    """One token per row of `logits` (N × V, float) and its log-probability under the sampling distribution
    (`sampling_distribution`, what `sampling_logprobs` re-scores); greedy at temperature 0."""
    log_probs = sampling_distribution(logits, temperature, top_p)
    if temperature <= 0:
        token = logits.argmax(-1)
    else:
        token = torch.multinomial(log_probs.exp().cpu(), 1, generator=generator).to(logits.device).squeeze(1)
    return token, log_probs.gather(-1, token[:, None]).squeeze(-1)


def guesses_until(ids: list[int], guesses: list[int], hooks) -> list[int]:
    """Guessed tokens up to and including the first after which a hook writes (`hooks`: predicates on a row's
    tokens, the box writer's opening bracket, the panel lookup's "points to the"): what follows is the hook's, never a
    guess."""
    for k in range(len(guesses)):
        if any(opens(ids + guesses[:k + 1]) for opens in hooks):
            return guesses[:k + 1]
    return guesses


def sample_tokens(decoder, first_logits: torch.Tensor, stop_ids: list[int], max_new_tokens: int, temperature: float,
                  top_p: float, generator: torch.Generator, drafter=None, draft_length: int = DRAFT_LENGTH,
                  writer=None, lookup=None):
    """Sample from `first_logits` (rows × V, after `decoder.prefill`) on, until every row wrote a stop token or
    `max_new_tokens`. Returns token ids, their log-probabilities under the sampling distribution, and each row's
    last-layer states at the tokens it fed (T_i × H: all but, at times, the final token). The decoder holds the
    prompt, `max_new_tokens` and `draft_length` more positions (a pass pads every row to the longest guess).

    With a `drafter` (`coreseg.modeling.drafting`), each pass feeds a row its pending token and up to `draft_length`
    guessed ones and keeps the longest prefix of guesses the model accepts, speculative sampling's rule for a sure
    guess: a guess g is accepted with probability p(g); at the first refusal the token is drawn from p without g,
    renormalised; after all were accepted one more is drawn from p. Each emitted token is then distributed as p
    given the tokens before it, so the samples follow the same distribution as without guesses (greedy: the same
    tokens); only the number of passes changes. `temperature == 0` is greedy.

    With a `writer` (`coreseg.modeling.box_writer.BoxWriting`), where a row's kept tokens end with a box's opening
    bracket the writer's coordinate tokens (from the state at that bracket) replace what the model would draw: they
    are fed as sure guesses (all accepted, at most `draft_length` a pass), with the model's own log-probabilities
    (softmax of the logits: a written token need not lie in the nucleus). After the last one the model draws the
    token that closes the box from the tempered softmax renormalised over `writer.closers`; its log-probability is
    the unrestricted tempered softmax's, finite for GRPO's ratio. With a `lookup`
    (`coreseg.modeling.panel_lookup.PanelLookup`), where a row's kept tokens end with "points to the" the panel it
    looks up is fed the same way (no closing rule after it), and the tokens it bans after its triggers
    (`lookup.banned`) are not drawn (p renormalised without them; the drawn token's log-probability stays the
    unrestricted one). Returns also, per row and token, whether the writer or the lookup wrote it."""
    rows = first_logits.shape[0]
    device = first_logits.device
    greedy = temperature <= 0
    stop = set(stop_ids)
    token, logp = draw(first_logits.float(), temperature, top_p, generator)
    ids = [[t] for t in token.tolist()]
    logps = [[p] for p in logp.tolist()]
    forced = [[False] for _ in range(rows)]
    queue: list[list[int]] = [[] for _ in range(rows)]  # the writer's (or the lookup's) tokens not yet emitted
    boxing = [False] * rows                               # whether a row's queue is the writer's (a box to close)
    states: list[list[torch.Tensor]] = [[] for _ in range(rows)]
    hooks = ([] if writer is None else [writer.opens_box]) + ([] if lookup is None else [lookup.opens])
    done = [t in stop or max_new_tokens <= 1 for t in token.tolist()]
    while not all(done):
        drafts = []
        for r in range(rows):
            room = min(draft_length, max_new_tokens - len(ids[r]) - 1)
            if done[r] or room <= 0:
                drafts.append([])
            elif queue[r]:
                drafts.append(queue[r][:room])
            elif writer is not None and writer.opens_box(ids[r]) or lookup is not None and lookup.opens(ids[r]):
                drafts.append([])   # the box (from this bracket's state, computed in this pass) or the panel is written
            elif drafter is not None:
                drafts.append(guesses_until(ids[r], drafter.draft(ids[r], room), hooks))
            else:
                drafts.append([])
        sure = [bool(queue[r]) for r in range(rows)]
        width = max(len(d) for d in drafts)
        fed = torch.tensor([[ids[r][-1]] + drafts[r] + [ids[r][-1]] * (width - len(drafts[r])) for r in range(rows)],
                           device=device)
        logits, hidden = decoder.run(fed)
        log_probs = sampling_distribution(logits.float(), temperature, top_p)   # rows × (1 + width) × V
        accepted = torch.zeros(rows, dtype=torch.long, device=device)
        guess_logps = None
        if width:
            guesses = fed[:, 1:]
            guess_logps = log_probs[:, :width].gather(-1, guesses[..., None]).squeeze(-1)
            real = torch.arange(width, device=device) < torch.tensor([len(d) for d in drafts], device=device)[:, None]
            if greedy:
                ok = logits[:, :width].argmax(-1) == guesses
            else:
                ok = torch.rand(rows, width, generator=generator).to(device) < guess_logps.exp()
            accepted = (ok & real).long().cumprod(1).sum(1)
            for r in range(rows):
                if sure[r]:
                    accepted[r] = len(drafts[r])
        at = log_probs[torch.arange(rows, device=device), accepted]   # where the next token is drawn: rows × V
        closing = [r for r in range(rows) if sure[r] and boxing[r] and len(queue[r]) <= len(drafts[r])]
        if closing:  # after the writer's last coordinate the model closes the box: "]]." or "], [" for another
            step = logits[closing, accepted[closing]].float()
            step = torch.log_softmax(step / temperature if temperature > 0 else step, dim=-1)  # tempered, no nucleus
            allowed = torch.zeros(step.shape[-1], dtype=torch.bool, device=device)
            allowed[list(writer.closers)] = True
            at = at.clone()
            at[closing] = torch.log_softmax(step.masked_fill(~allowed, float("-inf")), dim=-1)
        for r in range(rows):   # the lookup's bans (a denial its panel list contradicts): p renormalised without them
            free = lookup is not None and not done[r] and not sure[r]
            banned = lookup.banned(ids[r] + drafts[r][:int(accepted[r])]) if free else []
            if banned:
                at[r, banned] = float("-inf")
                at[r] = torch.log_softmax(at[r], dim=-1)
        if greedy:
            token = at.argmax(-1)
        else:
            probs = at.exp()
            refused = [r for r in range(rows) if accepted[r] < len(drafts[r])]
            if refused:  # at a refused guess the token is drawn from p without it
                probs[refused, fed[refused, 1 + accepted[refused]]] = 0
            token = torch.multinomial(probs.cpu(), 1, generator=generator).to(device).squeeze(1)
        token_logp = log_probs[torch.arange(rows, device=device), accepted].gather(-1, token[:, None]).squeeze(-1)
        if closing:  # a closer's: unrestricted and finite (it may lie outside the nucleus)
            token_logp[closing] = step.gather(-1, token[closing, None]).squeeze(-1)
        keep = torch.zeros(rows, dtype=torch.long)
        for r in range(rows):
            if done[r]:
                continue
            a = int(accepted[r])
            new = drafts[r][:a] + [int(token[r])]
            new_logps = (guess_logps[r, :a].tolist() if a else []) + [float(token_logp[r])]
            new_forced = [sure[r]] * a + [False]
            if sure[r]:
                queue[r] = queue[r][a:]
                plain = torch.log_softmax(logits[r, :a].float(), dim=-1)
                new_logps[:a] = plain.gather(-1, fed[r, 1:1 + a, None]).squeeze(-1).tolist()
            elif writer is not None and writer.opens_box(ids[r] + drafts[r][:a]):
                queue[r] = writer.write(hidden[r, a], torch.cat(states[r] + [hidden[r, :a + 1]]), ids[r] + drafts[r][:a])
                boxing[r] = True
            elif lookup is not None and lookup.opens(ids[r] + drafts[r][:a]):
                queue[r], boxing[r] = lookup.tokens(ids[r] + drafts[r][:a]), False
            if queue[r]:  # the writer's next token instead of the drawn one
                new[-1] = queue[r].pop(0)
                new_logps[-1] = float(torch.log_softmax(logits[r, a].float(), dim=-1)[new[-1]])
                new_forced[-1] = True
            cut = next((j + 1 for j, t in enumerate(new) if t in stop), len(new))
            cut = min(cut, max_new_tokens - len(ids[r]))
            ids[r] += new[:cut]
            logps[r] += new_logps[:cut]
            forced[r] += new_forced[:cut]
            states[r].append(hidden[r, :1 + min(a, cut - 1)])
            keep[r] = 1 + a
            done[r] = cut < len(new) or new[cut - 1] in stop or len(ids[r]) >= max_new_tokens
        decoder.advance(keep)
    hidden_size = decoder.lm.config.hidden_size
    kept = [torch.cat(s) if s else first_logits.new_zeros(0, hidden_size) for s in states]
    return ids, logps, kept, forced
