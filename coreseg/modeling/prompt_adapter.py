"""The Semantic-Guided Prompt Adapter: the `<seg>` hidden state → a few 256-d SAM prompt tokens.

Our reading of the paper: a residual MLP lifts the language state into `num_slots` candidate
tokens in SAM's prompt space, then attention pooling with `num_tokens` learned queries emits the
semantic probe that the mask decoder reads next to (or instead of) the user's point and box prompts.

With `box_tokens` (issue 9; off for checkpoints written before it), a head also regresses a box
(normalised, from centre and size) from the same `<seg>` state; `CoreSeg` encodes it with SAM's own
prompt encoder as two corner tokens of the probe, and SFT trains it against the target's tight box.
Why: the last layer's state at `<seg>` is trained to predict the same next token every time, and in a
small LM trained only through the mask it stays one vector for every image and question (cosine 1.000,
measured); a direct "where is the target" objective on that state makes it carry the question, and the
box reaches the decoder in the language a box-trained decoder (MedSAM, LiteMedSAM) already follows.
With `box_pointer` (the default since compact-sft7) that box comes from `BoxPointer`: the `<seg>`
state points at the reasoner's image-token states, so the box can follow the question (which tile, which
of two lesions) instead of the most salient lesion.
The answer's *written* boxes are still not fed to SAM (the paper's point against cascades).
"""
from __future__ import annotations

import torch
from torch import nn

from coreseg.config import AdapterConfig
from coreseg.modeling.box_pointer import BoxPointer, ImageStates

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
        self.box_head = (nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d), nn.GELU(), nn.Linear(d, 4))
                         if cfg.box_tokens and not cfg.box_pointer else None)
        self.pointer = BoxPointer(in_dim, d) if cfg.box_tokens and cfg.box_pointer else None

    def forward(self, seg_hidden: torch.Tensor, images: list[ImageStates] | None = None):
        """`<seg>` states (B, in_dim) and, for the pointer, each one's image states → prompt tokens
        (B, num_tokens, 256), the probe's box (B, 4: x1 y1 x2 y2 in [0, 1] of the square frame, x1 ≤ x2 and
        y1 ≤ y2; None without `box_tokens`) and the pointer's logits over image cells (list of B; None
        without a pointer)."""
        slots = self.blocks(self.lift(seg_hidden.float()).view(seg_hidden.shape[0], self.num_slots, -1))
        queries = self.queries.unsqueeze(0).expand(seg_hidden.shape[0], -1, -1)
        pooled, _ = self.pool(queries, slots, slots, need_weights=False)
        box = pointer_logits = None
        if self.pointer is not None:
            if images is None:
                raise ValueError("the box pointer needs the reasoner's image states")
            box, pointer_logits = self.pointer(seg_hidden, images)
        elif self.box_head is not None:
            centre, size = torch.sigmoid(self.box_head(seg_hidden.float())).split(2, dim=-1)
            box = torch.cat([centre - size / 2, centre + size / 2], dim=-1).clamp(0.0, 1.0)
        return self.out(pooled + queries), box, pointer_logits
