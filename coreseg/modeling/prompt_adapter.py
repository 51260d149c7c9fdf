"""The Semantic-Guided Prompt Adapter: the `<seg>` hidden state → a few 256-d SAM prompt tokens.

Our reading of the paper: a residual MLP lifts the language state into `num_slots` candidate
tokens in SAM's prompt space, then attention pooling with `num_tokens` learned queries emits the
semantic probe that the mask decoder reads next to (or instead of) the user's point and box prompts.
"""
from __future__ import annotations

import torch
from torch import nn

from coreseg.config import AdapterConfig

SAM_PROMPT_DIM = 256


class ResidualMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class SemanticPromptAdapter(nn.Module):
    def __init__(self, in_dim: int, cfg: AdapterConfig = AdapterConfig()):
        super().__init__()
        d = cfg.hidden_dim
        self.num_slots = cfg.num_slots
        self.lift = nn.Linear(in_dim, d * cfg.num_slots)
        self.blocks = nn.Sequential(*[ResidualMLP(d) for _ in range(cfg.num_blocks)])
        self.queries = nn.Parameter(torch.randn(cfg.num_tokens, d) * 0.02)
        self.pool = nn.MultiheadAttention(d, num_heads=4, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, SAM_PROMPT_DIM))

    def forward(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) → (B, num_tokens, 256)."""
        slots = self.blocks(self.lift(seg_hidden.float()).view(seg_hidden.shape[0], self.num_slots, -1))
        queries = self.queries.unsqueeze(0).expand(seg_hidden.shape[0], -1, -1)
        pooled, _ = self.pool(queries, slots, slots, need_weights=False)
        return self.out(pooled + queries)
