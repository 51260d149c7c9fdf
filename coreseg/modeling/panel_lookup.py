"""The panel lookup: where a composite's reasoning says whether and where the asked finding is, it copies, not guesses.

compact-grpo26-reader lists a composite's panels ("a breast ultrasound (upper-left), a colonoscopy view
(lower-right)") and says which modality the question asks for, yet then points to a panel of its own: on the 40
validation composites it named the asked kind's panel in 7 of 24 kind questions (the "lower-right" one in 14), and
in all 31 place questions it named wrongly it wrote "…-right" where the question said "…-left". Where the question
names a place, or the reasoning's own list gives the asked modality exactly one place
(`coreseg.findings.lookup_places`), the sampler writes that place's tokens after "points to the" (fed as sure
tokens, as the box writer's coordinates are); where the list gives two (below) or none, the reasoner chooses. On
those 40 composites (`coreseg.eval --split val --limit 0 --composites 40`) it raised referring accuracy from 64.2 to
86.1 % and the mDice on the asked tiles from 0.547 to 0.714.

The fork before it holds to the list too, after "… which a colonoscopy view shows;": where the reasoning's own
list has no colonoscopy view the lookup writes "none of the panels is"; where it has one the model may not start
that denial (`banned`) and goes on in its own words (the shipped model writes "it points to the …", the later
training texts "that is …"; `coreseg.findings.lookup_presence`). With the place lookup alone the shipped model
denied a listed modality in 4 of 24 validation kind questions. Where the list gives the asked kind two places (a
"larger" or "smaller" question), the segmenter measures instead (`by_size`): prompted with each panel's box
alone (as the box writer's boxes are refined), the panel where it draws the larger (smaller) lesion is written; the
reasoner's own choice named the asked one in 9 of 16 validation and 7 of 17 development size questions, this
measure in 13 and 11. What is copied is the reasoner's reading of the image (the list) and of the question (the
modality, the size word). Single scans write neither trigger and are unchanged. `ModelConfig.panel_lookup` (on by
default; `coreseg.eval --set panel_lookup=false` compares); GRPO samples with it, as the app does, and leaves the
tokens it wrote out of the policy loss (`written`), as it does the box writer's coordinates.
"""
from __future__ import annotations

from typing import Callable

from coreseg.findings import ASKS, NO_PANEL, POINTING, PRESENT, lookup_places, lookup_presence, size_asked


def _ends_with(ids: list[int], tail: list[int]) -> bool:
    return len(ids) >= len(tail) and ids[-len(tail):] == tail


class PanelLookup:
    """The sampler's hook for one question (`coreseg.modeling.sampling.sample_tokens(lookup=)`)."""

    def __init__(self, tokenizer, question: str, lesion_area: Callable[[str], float] | None = None):
        self.tokenizer = tokenizer
        self.question = question
        self.lesion_area = lesion_area   # place → the lesion's pixels there (`CoreSeg.panel_lesion_area`)
        self.areas: dict[str, float] = {}
        self.triggers = [tokenizer.encode(f" {POINTING}"), tokenizer.encode(f" {ASKS}")]
        self.denial = tokenizer.encode(f" {NO_PANEL}")

    def opens(self, ids: list[int]) -> bool:
        """Whether a completion's tokens end with the words after which the lookup may write."""
        return any(_ends_with(ids, t) for t in self.triggers)

    def tokens(self, ids: list[int]) -> list[int]:
        """The tokens to write after `ids` (which end with a trigger): the panel after "points to the" where
        exactly one is looked up, "none of the panels is" after "which M shows;" where the list has no M; else []."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if _ends_with(ids, self.triggers[0]):
            places = self.by_size(lookup_places(self.question, text), size_asked(text))
            return self.tokenizer.encode(f" {places[0]}") if len(places) == 1 else []
        return self.denial if lookup_presence(text) == NO_PANEL else []

    def by_size(self, places: list[str], asked: str | None) -> list[str]:
        """Of two places the list gives a size question ("larger" or "smaller" `asked`), the one where the segmenter,
        prompted with the panel's box alone, draws the larger or smaller lesion; `places` as they are otherwise
        (no measure, not two, equal areas)."""
        if len(places) != 2 or asked is None or self.lesion_area is None:
            return places
        for place in places:
            if place not in self.areas:
                self.areas[place] = self.lesion_area(place)
        first, second = (self.areas[p] for p in places)
        if first == second:
            return places
        return [places[0] if (first > second) == (asked == "larger") else places[1]]

    def banned(self, ids: list[int]) -> list[int]:
        """The tokens the model may not write after `ids`: the denial's first after "which M shows;" where the
        reasoning's own list has M; else []."""
        if not _ends_with(ids, self.triggers[1]):
            return []
        listed = lookup_presence(self.tokenizer.decode(ids, skip_special_tokens=False)) == PRESENT
        return self.denial[:1] if listed else []

    def written(self, completion: list[int]) -> list[bool]:
        """Per token of a completion sampled with this lookup: whether the lookup wrote it (the policy did not)."""
        flags = [False] * len(completion)
        for k in range(1, len(completion)):
            if self.opens(completion[:k]):
                looked_up = self.tokens(completion[:k])
                if looked_up and completion[k:k + len(looked_up)] == looked_up:
                    flags[k:k + len(looked_up)] = [True] * len(looked_up)
        return flags
