"""The box pointer: where on the image the `<seg>` state points, as the probe's box.

The regressed box head (`SemanticPromptAdapter` without a pointer) had to read coordinates out of one
vector; in the compact reasoner it aimed at the most salient lesion whatever the question named
(composites: mask on the named tile 16.6 %, a constant probe 13.9 %). Here the `<seg>` state is a
query over the reasoner's own last-layer states of the image tokens, which already know what each
cell shows: the attention weights pick the cells (the box centre is their weighted position plus a
bounded offset), and the attended states with the `<seg>` state give the size. SFT also trains the
weights directly towards the share of the target in each cell (`pointer_loss`), so choosing *which*
finding the question names is a classification over cells, not a regression.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coreseg.modeling.text_reader import TextReader


@dataclass
class ImageStates:
    """A reasoner's last-layer states of one image's tokens (N × H, row-major over rows × cols cells
    that tile the image evenly)."""

    states: torch.Tensor
    rows: int
    cols: int

    def centres(self) -> torch.Tensor:
        """Each cell's centre (N × 2: x, y in [0, 1] of the image)."""
        ys = (torch.arange(self.rows, device=self.states.device, dtype=torch.float32) + 0.5) / self.rows
        xs = (torch.arange(self.cols, device=self.states.device, dtype=torch.float32) + 0.5) / self.cols
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


class BoxPointer(nn.Module):
    def __init__(self, in_dim: int, dim: int, reads_text: bool = False):
        super().__init__()
        self.dim = dim
        self.reader = TextReader(in_dim) if reads_text else None  # the box writer's: see text_reader.py
        self.query = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.key = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.value = nn.LayerNorm(in_dim)
        self.head = nn.Sequential(nn.Linear(2 * in_dim, dim), nn.GELU(), nn.Linear(dim, 4))

    def forward(self, seg_hidden: torch.Tensor, images: list[ImageStates],
                reach: int | None = None, texts: list[torch.Tensor] | None = None,
                within: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`<seg>` states (B × H) and each one's image → boxes (B × 4: x1 y1 x2 y2 in [0, 1]) and the
        pointer's logits over the image's cells (per row, N). `reach`: read only the cells within that many rows and
        columns of the most attended one (a pointer torn between two findings otherwise boxes the space between them).
        `texts`: per row, the completion's states up to the state given (a pointer with a text reader reads them).
        `within`: per row, the cells (bool, N) the box may be pointed in, or None for all; the logits returned are
        the pointer's own."""
        if self.reader is not None:
            if texts is None:
                raise ValueError("this pointer reads the text before it: give `texts`")
            seg_hidden = self.reader(seg_hidden.float(), texts)
        boxes, logits = [], []
        queries = self.query(seg_hidden.float())
        for row, (query, seg, image) in enumerate(zip(queries, seg_hidden.float(), images)):
            states = image.states.float()
            scores = self.key(states) @ query / self.dim ** 0.5
            cells = None if within is None else within[row]
            weights = torch.softmax(scores if cells is None else scores.masked_fill(~cells, float("-inf")), dim=0)
            if reach is not None:
                weights = weights * _near(int(weights.argmax()), image, reach)
                weights = weights / weights.sum()
            point = weights @ image.centres()
            attended = weights @ self.value(states)
            raw = self.head(torch.cat([self.value(seg), attended]))
            cell = torch.tensor([1 / image.cols, 1 / image.rows], device=raw.device)
            centre = point + torch.tanh(raw[:2]) * cell
            size = torch.sigmoid(raw[2:])
            boxes.append(torch.cat([centre - size / 2, centre + size / 2]).clamp(0.0, 1.0))
            logits.append(scores)
        return torch.stack(boxes), logits


def _near(cell: int, image: ImageStates, radius: int) -> torch.Tensor:
    """1 for the cells within `radius` rows and columns of `cell`, else 0 (N)."""
    rows = torch.arange(image.rows, device=image.states.device)[:, None]
    cols = torch.arange(image.cols, device=image.states.device)[None, :]
    near = ((rows - cell // image.cols).abs() <= radius) & ((cols - cell % image.cols).abs() <= radius)
    return near.flatten().float()
