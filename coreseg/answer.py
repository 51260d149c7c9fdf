"""The answer format: one renderer and one parser for model, rewards, store and UI.

    <think> reasoning without coordinates </think>
    <answer> The {target} is located at [[x1, y1, x2, y2], ...]. The mask is <seg>. </answer>

An absent target is a first-class answer, not a failure: when the scan does not show what was asked,

    <think> reasoning </think><answer> No {target} is visible. </answer>

with no boxes and no `<seg>`: its mask is empty (scored by the empty-target rule of `coreseg.metrics`).

Boxes are `[x1, y1, x2, y2]` in original-image pixels with exclusive ends (a box covers columns
x1 … x2−1, so a whole W×H image is `[0, 0, W, H]`), everywhere; the model's own frame is converted at the model
boundary only (see `coreseg.predictor`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SEG_TOKEN = "<seg>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

Box = tuple[int, int, int, int]

_BOX_LIST = re.compile(r"\[\s*(\[\s*-?\d+(?:\.\d+)?\s*(?:,\s*-?\d+(?:\.\d+)?\s*){3}\](?:\s*,\s*\[\s*-?\d+(?:\.\d+)?\s*(?:,\s*-?\d+(?:\.\d+)?\s*){3}\])*)\s*\]")
_ONE_BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")
_TARGET = re.compile(r"The (.+?) (?:is|are) located at", re.S)
_NUMBER_PAIR = re.compile(r"\d+\s*,\s*\d+")
_ABSENT = re.compile(r"^No (.+?) (?:is|are) visible\.?$", re.S)


@dataclass(frozen=True)
class Answer:
    """What a parsed completion says."""

    reasoning: str
    target: str
    boxes: tuple[Box, ...]
    present: bool = True      # False: the answer says the target is not in the scan (no boxes, no mask)


@dataclass(frozen=True)
class ParseResult:
    """The outcome of parsing: `answer` is the best reading (None when nothing usable was found);
    `errors` lists every rule the text breaks. `ok` means strictly valid."""

    answer: Answer | None
    errors: tuple[str, ...] = field(default_factory=tuple)
    rejected_boxes: int = 0  # boxes written but refused (outside the image, x1 ≥ x2): false positives to a scorer

    @property
    def ok(self) -> bool:
        return self.answer is not None and not self.errors


def render_answer(reasoning: str, target: str, boxes) -> str:
    """The canonical text for a reasoning chain, a target name and boxes (original pixels).
    No boxes means the target is absent: `<answer> No {target} is visible. </answer>`."""
    if not len(boxes):
        return f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE}{ANSWER_OPEN} No {target.strip()} is visible. {ANSWER_CLOSE}"
    box_text = ", ".join(f"[{int(x1)}, {int(y1)}, {int(x2)}, {int(y2)}]" for x1, y1, x2, y2 in boxes)
    verb = "are" if len(boxes) > 1 else "is"
    return (f"{THINK_OPEN} {reasoning.strip()} {THINK_CLOSE}"
            f"{ANSWER_OPEN} The {target.strip()} {verb} located at [{box_text}]. The mask is {SEG_TOKEN}. {ANSWER_CLOSE}")


def _between(text: str, opening: str, closing: str) -> str | None:
    start = text.find(opening)
    end = text.find(closing, start + len(opening)) if start >= 0 else -1
    return text[start + len(opening):end].strip() if start >= 0 and end >= 0 else None


def parse_answer(text: str, image_size: tuple[int, int] | None = None) -> ParseResult:
    """Parse a completion; `image_size` is (height, width) for the in-image check of the boxes.

    Lenient in what it extracts (so a reward can still score a slightly broken answer), strict in
    what it reports: every violated rule is listed in `errors`.
    """
    errors: list[str] = []
    if not isinstance(text, str) or not text.strip():
        return ParseResult(None, ("empty output",))
    reasoning = _between(text, THINK_OPEN, THINK_CLOSE)
    if reasoning is None:
        errors.append("no <think>…</think> block")
        reasoning = ""
    elif _NUMBER_PAIR.search(reasoning) or _ONE_BOX.search(reasoning):
        errors.append("coordinates inside <think>")
    if text.count(THINK_OPEN) > 1:
        errors.append("more than one <think> block")
    body = _between(text, ANSWER_OPEN, ANSWER_CLOSE)
    if body is None:
        return ParseResult(None, tuple(errors + ["no <answer>…</answer> block"]))
    if text.count(ANSWER_OPEN) > 1:
        errors.append("more than one <answer> block")
    if text.strip()[-len(ANSWER_CLOSE):] != ANSWER_CLOSE:
        errors.append("text after </answer>")
    if reasoning and text.find(THINK_CLOSE) > text.find(ANSWER_OPEN):
        errors.append("<think> must come before <answer>")
    absent = _ABSENT.match(body)
    if absent and SEG_TOKEN not in text and not _ONE_BOX.search(body):
        return ParseResult(Answer(reasoning, absent.group(1).strip(), (), present=False), tuple(errors))
    seg_count = body.count(SEG_TOKEN)
    if seg_count != 1:
        errors.append(f"the answer must hold exactly one {SEG_TOKEN} (found {seg_count})")
    if text.count(SEG_TOKEN) != seg_count:  # a <seg> in <think> or elsewhere still triggers a mask
        errors.append(f"{SEG_TOKEN} outside <answer>")
    target_match = _TARGET.search(body)
    target = target_match.group(1).strip() if target_match else ""
    if not target:
        errors.append("no target named ('The … is located at')")
    box_list = _BOX_LIST.search(body)
    boxes: list[Box] = []
    rejected = 0
    if box_list is None:
        errors.append("no box list [[x1, y1, x2, y2], …]")
    else:
        for match in _ONE_BOX.finditer(box_list.group(1)):
            x1, y1, x2, y2 = (int(round(float(v))) for v in match.groups())
            if not (x1 < x2 and y1 < y2):
                errors.append(f"box {[x1, y1, x2, y2]} needs x1 < x2 and y1 < y2")
                rejected += 1
                continue
            if image_size is not None:
                height, width = image_size
                if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                    errors.append(f"box {[x1, y1, x2, y2]} lies outside the {width}×{height} image")
                    rejected += 1
                    continue
            boxes.append((x1, y1, x2, y2))
    return ParseResult(Answer(reasoning, target, tuple(boxes)), tuple(errors), rejected)
