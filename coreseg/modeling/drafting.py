"""Guessed continuations for sampling (speculative decoding with an n-gram draft).

The compact reasoner's answers repeat their phrasing ("In a healthy breast, ultrasound shows …"), so the tokens
that most often followed the last few tokens in earlier answers are a good guess of the next ones. Sampling feeds
the guesses with the pending token in one forward pass and keeps the longest prefix the model's own distribution
accepts (`coreseg.modeling.sampling.sample_tokens`): the guesses decide how many tokens one pass yields, never
which tokens are sampled. On this CPU a pass with guesses took 8.5 ms against 4.8 ms for one token a row
(bench/bench_encoder.py's sampling rows), and 41 passes replaced 191.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

START = -1  # pads the context before an answer's first token
DRAFT_LENGTH = 8  # guesses per row and pass


class NgramDrafter:
    """For each run of `order` tokens seen in learned answers, how often each token came next; `draft` chains the
    most frequent ones. At most `capacity` runs are kept (memory is bounded however long the app serves)."""

    def __init__(self, order: int = 3, capacity: int = 200_000):
        self.order, self.capacity = order, capacity
        self._next: dict[tuple[int, ...], dict[int, int]] = {}
        self._lock = threading.Lock()  # one model serves every Gradio user's thread

    def __len__(self) -> int:
        return len(self._next)

    def learn(self, ids: list[int]) -> None:
        """Count the continuations of one answer (token ids, from its first token on)."""
        seq = [START] * self.order + [int(t) for t in ids]
        with self._lock:
            for i in range(len(seq) - self.order):
                key = tuple(seq[i:i + self.order])
                counts = self._next.get(key)
                if counts is None:
                    if len(self._next) >= self.capacity:
                        continue
                    counts = self._next[key] = {}
                counts[seq[i + self.order]] = counts.get(seq[i + self.order], 0) + 1

    def draft(self, context: list[int], length: int) -> list[int]:
        """Up to `length` guessed tokens after `context` (the answer so far)."""
        seq = [START] * self.order + list(context[-self.order:])
        out: list[int] = []
        with self._lock:
            while len(out) < length:
                counts = self._next.get(tuple(seq[-self.order:]))
                if not counts:
                    break
                token = max(counts, key=counts.get)
                out.append(token)
                seq.append(token)
        return out

    def save(self, path: str | Path) -> None:
        with self._lock:
            rows = [[*key, token, count] for key, counts in self._next.items() for token, count in counts.items()]
        tmp = Path(path).with_name(Path(path).name + ".partial")
        tmp.write_text(json.dumps({"order": self.order, "rows": rows}, separators=(",", ":")))
        tmp.replace(path)  # complete or absent

    @classmethod
    def load(cls, path: str | Path, capacity: int = 200_000) -> "NgramDrafter":
        data = json.loads(Path(path).read_text())
        drafter = cls(int(data["order"]), capacity)
        order = drafter.order
        for row in data["rows"]:
            key, token, count = tuple(int(t) for t in row[:order]), int(row[order]), int(row[order + 1])
            drafter._next.setdefault(key, {})[token] = count
        return drafter
