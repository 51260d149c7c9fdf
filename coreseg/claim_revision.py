"""Claim revision: an answer's measurable words rewritten to what its own mask shows.

The compact reasoner writes its description before any mask exists, from 8 × 8 pooled image tokens, and writes
nearly the same words for every image ("middle", "large", "lobulated"): on validation 0.711 of its claims agreed
with its own mask. What a mask alone can measure (`coreseg.findings.own_mask_measure`, the checker's own measure)
is therefore measured and written: `revise_claims` rewrites the statements the checker reads where they disagree
with a mask (location, size word, shape word and its reason, number of parts) and those a mask also decides (the
share of the image, the orientation sentence). The predictor (`CoreSegPredictor.predict`, `ModelConfig.revise_claims`)
first revises each answer to the mask the segmenter drew in its boxes while sampling (the box writer's, which costs
no decoder pass), then draws the answer's mask from the revised answer, so the checks see a mask drawn after the words
they check. Where that mask measures otherwise (the box's mask and the `<seg>` mask differ in shape or parts), the
answers whose checked words disagree are revised to it and drawn again (`disagreeing`), up to
`ModelConfig.revision_passes` times. Words a mask cannot measure (margin, echo, colour, the impression) and the
boxes stay as written (the box writer's, pointed from the states before the revision); a statement the text does not
make is not added, save the number of parts (without one the answer's number of boxes is its claim, `_revise_parts`).
"""
from __future__ import annotations

import re

import numpy as np

from coreseg.answer import parse_answer, render_answer
from coreseg.findings import (ORIENTATION_SENTENCES, PARTS_SENTENCES, SHAPE_WHY, SHARE, SIZE_SUFFIX, VOCAB,
                              first_match, location_agrees, location_cells, location_match,
                              number_words, own_mask_measure, read_statements, share_words, words_to_int)

_ARTICLE = re.compile(r"\b([Aa]n?) $")


def _replace(text: str, start: int, end: int, phrase: str) -> str:
    """`text` with [start, end) replaced by `phrase`, and an "a"/"an" just before it made to fit."""
    head = text[:start]
    article = _ARTICLE.search(head)
    if article is not None:
        fit = "an" if phrase[:1].lower() in "aeio" else "a"
        fit = fit.capitalize() if article.group(1)[0].isupper() else fit
        head = head[:article.start(1)] + fit + " "
    return head + phrase + text[end:]


def _sentence_swap(text: str, sentences: dict[str, list[str]], key: str) -> str:
    """The first of the writer's `sentences` found in `text` replaced by the first of `key`'s, unless it is `key`'s."""
    for other, said in sentences.items():
        for sentence in said:
            at = text.find(sentence)
            if at >= 0:
                return text if other == key else text[:at] + sentences[key][0] + text[at + len(sentence):]
    return text


def revise_reasoning(reasoning: str, mask: np.ndarray) -> str:
    """A reasoning text with its mask-measurable statements rewritten to what `mask` (non-empty) shows."""
    facts, part_boxes = own_mask_measure(mask)
    text = reasoning
    where = location_match(text)
    if where is not None:
        group = next(i for i in range(1, len(where.groups()) + 1) if where.group(i))
        if not location_agrees(location_cells()[where.group(group).lower()], facts.location):
            text = _replace(text, where.start(group), where.end(group), VOCAB["location"][facts.location][0])
    for kind, suffix in (("size", SIZE_SUFFIX), ("shape", "")):
        found = first_match(text, VOCAB[kind], suffix)
        measured = getattr(facts, kind)
        if found is not None and found[0] != measured:
            match = found[1]
            text = _replace(text, match.start(1), match.end(1), VOCAB[kind][measured][0])
    for reason in SHAPE_WHY.values():
        text = text.replace(reason, SHAPE_WHY[facts.shape])
    share = SHARE.search(text)
    if share is not None:
        text = text[:share.start()] + share_words(facts.size_fraction) + text[share.end():]
    text = _sentence_swap(text, ORIENTATION_SENTENCES, facts.orientation)
    return _revise_parts(text, len(part_boxes))


def _revise_parts(text: str, parts: int) -> str:
    """The writer's parts sentence ("It forms a single connected region.", "It consists of two separate parts.")
    rewritten to `parts` where it says another number. Where the text has none, its number of boxes is its claim
    (`coreseg.findings.check_answer`), one box as a rule: for a mask of several parts the sentence that says so is
    added after the one that states the shape (or, without one, the location)."""
    several = PARTS_SENTENCES["several"][0].format(n=number_words(parts))
    if read_statements(text)["parts"] is None:
        if parts == 1:
            return text
        anchor = first_match(text, VOCAB["shape"]) or first_match(text, VOCAB["size"], SIZE_SUFFIX)
        end = text.find(". ", anchor[1].end()) if anchor else -1
        return text if end < 0 else text[:end + 2] + several + " " + text[end + 2:]
    for key, sentences in PARTS_SENTENCES.items():
        for sentence in sentences:
            pattern = re.escape(sentence).replace(re.escape("{n}"), r"([a-z]+(?:-[a-z]+)?)")
            match = re.search(pattern, text)
            if match is None:
                continue
            said = words_to_int(match.group(1)) if key == "several" else 1
            if said == parts:
                return text
            fit = several if parts > 1 else PARTS_SENTENCES["one"][0]
            return text[:match.start()] + fit + text[match.end():]
    return text


REVISED_CLAIMS = ("location", "size", "shape", "parts")   # the checked claims a revision rewrites


def disagreeing(findings) -> bool:
    """Whether one of these checked claims (`check_answer`'s findings) that a revision rewrites disagrees."""
    return any(not f.agrees for f in findings if f.claim in REVISED_CLAIMS)


def revise_claims(text: str, mask: np.ndarray) -> str:
    """An answer (original pixels) with its reasoning revised to its own `mask` (`revise_reasoning`); the text as
    it is where there is nothing to revise: not parsed cleanly, absent, or an empty mask."""
    mask = np.asarray(mask).astype(bool)
    result = parse_answer(text, mask.shape)
    answer = result.answer
    if answer is None or not result.ok or not answer.present or not answer.boxes or not mask.any():
        return text
    reasoning = revise_reasoning(answer.reasoning, mask)
    return text if reasoning == answer.reasoning else render_answer(reasoning, answer.target, answer.boxes)
