"""The box writer: an answer's box coordinates written by a pointer, not spelt digit by digit.

The compact reasoner spelt its boxes from 8 × 8 pooled image tokens: box F1 against the truth 0.28, IoU with the
box of its own mask 0.37, while the mask drawn from the `<seg>` state lay on the lesion. So where the answer opens a
box (the ` [[` or ` [` token after `<answer>`), the state at that bracket, which has read the question and the
reasoning, queries the image states as the `<seg>` box pointer (`box_pointer.py`) does, and its box is written as the
coordinates ("x1, y1, x2, y2", the model's box frame); the reasoner then closes the box (`]].`, or `],` and ` [`
for another) and the `<seg>` state reads those boxes. Which finding a box lands on is still the state's choice; the
digits are the pointer's and SAM's. With a text reader (`text_reader.py`) the state first reads the completion up to
the bracket. Trained by `trainers.box_writer` on teacher-forced SFT targets (the k-th opening bracket towards the k-th
box written there).

The pointer's box is then refined the way MedSAM is used: given to the segmenter as a box prompt, and the box of the
mask it draws there is written (`CoreSeg.refined_box`; the pointer's own box where that mask is empty). On held-out
training cases (teacher-forced, compact-grpo26's reasoner, the first writer) the pointer's boxes met the target's at
IoU 0.43, the refined ones at 0.60.

Every frame here is the image squashed (`coreseg.geometry`), so a box normalised to [0, 1] is the same in the box
frame, the segmenter's and the decoder's; the image cells tile it evenly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from coreseg.answer import ANSWER_OPEN
from coreseg.findings import panel_region, read_panel
from coreseg.modeling.box_pointer import BoxPointer, ImageStates


@dataclass(frozen=True)
class Brackets:
    """A tokenizer's box brackets: the tokens that open a box (their text is "[" or "[[" with or without a leading
    space), those that close one (their text starts with "]": `]].`, `],`, …) and `<answer>`, after which they
    count. Computed once per model (`CoreSeg.brackets`): reading them off the vocabulary takes ~10 ms."""

    openers: frozenset[int]
    closers: frozenset[int]
    answer_open: int

    @classmethod
    def of(cls, tokenizer) -> "Brackets":
        text = {i: tokenizer.convert_tokens_to_string([t]) for t, i in tokenizer.get_vocab().items()}
        return cls(frozenset(i for i, t in text.items() if t.strip() in ("[", "[[")),
                   frozenset(i for i, t in text.items() if t.startswith("]")),
                   tokenizer.convert_tokens_to_ids(ANSWER_OPEN))

    def openings(self, completion: list[int]) -> list[int]:
        """Positions of the box-opening tokens of a completion's answer (none before `<answer>`)."""
        if self.answer_open not in completion:
            return []
        start = completion.index(self.answer_open)
        return [k for k in range(start + 1, len(completion)) if completion[k] in self.openers]

    def written(self, completion: list[int]) -> list[bool]:
        """Per token of a completion sampled with the writer: whether the writer wrote it (the coordinates between
        each opening bracket of the answer and the bracket that closes it). GRPO leaves those out of the policy
        loss: the policy did not choose them."""
        written = [False] * len(completion)
        for k in self.openings(completion):
            for j in range(k + 1, len(completion)):
                if completion[j] in self.closers or completion[j] in self.openers:
                    break
                written[j] = True
        return written


def coordinate_text(box: torch.Tensor, frame: int) -> str:
    """A normalised box (x1, y1, x2, y2 in [0, 1]) as the answer's coordinates in the `frame` × `frame` box frame:
    rounded, ordered, at least one pixel, exclusive ends (`coreseg.answer`)."""
    x1, y1, x2, y2 = (float(v) * frame for v in box)
    x1, x2 = sorted((round(x1), round(x2)))
    y1, y2 = sorted((round(y1), round(y2)))
    x1, y1 = min(max(x1, 0), frame - 1), min(max(y1, 0), frame - 1)
    x2, y2 = max(min(x2, frame), x1 + 1), max(min(y2, frame), y1 + 1)
    return f"{x1}, {y1}, {x2}, {y2}"


def panel_cells(text: str, image: ImageStates) -> torch.Tensor | None:
    """The image cells (bool, N) of the composite panel that `text` says the question points to ("… points to the
    upper-left panel …", `coreseg.findings.read_panel`), or None where it names none."""
    panel = read_panel(text)
    if panel is None:
        return None
    return torch.from_numpy(panel_region(panel, (image.rows, image.cols))).flatten().to(image.states.device)


def _clipped(box: torch.Tensor, cells: torch.Tensor, image: ImageStates) -> torch.Tensor:
    """A normalised box cut to the rectangle the given cells span."""
    rows, cols = cells.reshape(image.rows, image.cols).nonzero(as_tuple=True)
    scale = box.new_tensor([image.cols, image.rows])
    low = torch.stack([cols.min(), rows.min()]).to(box) / scale
    high = torch.stack([cols.max(), rows.max()]).to(box).add(1) / scale
    return torch.cat([torch.maximum(box[:2], low), torch.minimum(box[2:], high)])


class BoxWriting:
    """The sampling hook (`coreseg.modeling.sampling.sample_tokens`' `writer`) for one image: it tells where a
    row's last token opened a box, returns the coordinate tokens the pointer writes there, and names the tokens
    that may follow them (`closers`: without that a model could append a digit to the last coordinate)."""

    def __init__(self, pointer: BoxPointer, tokenizer, brackets: Brackets, image: ImageStates, frame: int,
                 refine=None, reach: int | None = None, follows_panel: bool = False):
        self.pointer, self.tokenizer, self.brackets, self.image, self.frame = pointer, tokenizer, brackets, image, frame
        self.reach = reach  # the pointer reads the cells within this many of its most attended one (None: all)
        self.follows_panel = follows_panel  # a box goes only on the composite panel the reasoning names
        self.refine = refine  # normalised box → (the box of the mask SAM draws in it, that mask's logits), or None
        self.drawn: list[tuple[tuple[int, ...], torch.Tensor]] = []  # (the tokens before a refined box, its mask)

    @property
    def closers(self) -> frozenset[int]:
        return self.brackets.closers

    def opens_box(self, ids: list[int]) -> bool:
        """Whether `ids` (a row's tokens so far) end with a box's opening bracket inside the answer."""
        return bool(ids) and ids[-1] in self.brackets.openers and self.brackets.answer_open in ids

    def drawn_for(self, completion: list[int]) -> list[torch.Tensor]:
        """The mask logits (1 × S × S each) the segmenter drew in the boxes this hook wrote for a completion: those
        whose preceding tokens begin it (the same tokens, the same states, the same box)."""
        return [logits for ids, logits in self.drawn if tuple(completion[:len(ids)]) == ids]

    @torch.no_grad()
    def write(self, state: torch.Tensor, text: torch.Tensor, ids: list[int]) -> list[int]:
        """The coordinate tokens for the box the state at an opening bracket points to; `text`: the completion's
        states up to and including that bracket (T × H), which a writer with a text reader reads; `ids`: the
        completion's tokens up to it, whose panel ("points to the left panel") bounds the box when `follows_panel`."""
        within = panel_cells(self.tokenizer.decode(ids), self.image) if self.follows_panel else None
        boxes, _ = self.pointer(state[None].float(), [self.image], reach=self.reach, texts=[text], within=[within])
        box = boxes[0]
        if self.refine is not None:
            box, logits = self.refine(box)
            self.drawn.append((tuple(ids), logits))
        if within is not None:  # SAM's mask may spill over the panel's edge: the box stays on the panel
            box = _clipped(box, within, self.image)
            if not bool((box[2:] > box[:2]).all()):
                box = _clipped(boxes[0], within, self.image)
        return self.tokenizer.encode(coordinate_text(box, self.frame), add_special_tokens=False)
