"""The text reader: the state at a box's opening bracket reads the reasoning written before it.

The box writer's pointer (`box_pointer.py`) queried the image with the bracket's state alone. On composites that state
carried the panel the reasoning names poorly: where the reasoning named the question's panel the written box lay on
it in 59 % of answers, and in 33 % of those where it named another (compact-grpo26-writer, 151 one-panel validation
questions). The reader is one residual cross-attention from that state over the completion's states up to the
bracket (the reasoning and the answer so far: "points to the right panel", "the upper left portion", "about four
percent of the area"), so where and how large the box is can follow the words directly. Its output projection starts
at zero: a writer grown by a reader writes the boxes it wrote before until it is trained.
"""
from __future__ import annotations

import torch
from torch import nn


class TextReader(nn.Module):
    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.query_norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, states: torch.Tensor, texts: list[torch.Tensor]) -> torch.Tensor:
        """Bracket states (B × H) and, per row, the states it reads (T_i × H, the bracket's own last) → B × H."""
        read = []
        for state, text in zip(states, texts):
            text = self.text_norm(text.float())[None]
            out, _ = self.attention(self.query_norm(state)[None, None], text, text, need_weights=False)
            read.append(out[0, 0])
        return states + torch.stack(read)
