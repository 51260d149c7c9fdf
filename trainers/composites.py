"""Composite training cases (`coreseg.composites`): a drawn question, its written answer and its target.

    python -m trainers.composites --data ../shared/data --out ~/.cache/coreseg/features --split train --count 500

encodes the composites of a split once (resumable, next to the single-image features); SFT and GRPO mix
them in with `--composites N` (`training_composites`), and SFT and the box writer report on the `dev` split's
(`--split dev --count 40`: composites of the development images alone).
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from tqdm import tqdm

from coreseg.answer import render_answer
from coreseg.composites import (PLAN_SEED, CompositeScan, composite_path, holds_any, load_composites,
                                plan_composites, save_composite, split_pools)
from coreseg.datasets import DEV_EVERY
from coreseg.findings import ASKS, MODALITY_WORDS, NO_PANEL, PRESENT, number_words, read_panel
from coreseg.geometry import Frames
from coreseg.lesion_facts import describe_lesion
from coreseg.questions import KINDS
from trainers.reasoning import MODALITY_OF, build_reasoning, describe_absence
from trainers.samples import Sample

EVERY_LESION = "asks for every lesion"   # the pointing sentences' words that `named_in` reads back


class CompositeCase(CompositeScan):
    """A cached composite as a training case."""

    def panels(self) -> str:
        """The panels in reading order (upper before lower, left before right): each is named where it is
        seen, so writing the list is reading the image, not recalling the order the tiles were drawn in."""
        tiles = sorted(self.tiles, key=lambda t: (t["cell"][1], t["cell"][0]))
        listed = ", ".join(f"{MODALITY_WORDS[t['set_name']]} ({t['place']})" for t in tiles)
        return f"The image is a composite of {number_words(len(tiles))} panels: {listed}."

    def pointing(self, way: str, named: list[int], absent_kind: str | None = None) -> str:
        """Which panel the question names, said before the lesion is described, in small steps the reasoner can
        take one at a time: a kind is first tied to the modality that shows it, then that modality's entry is
        copied from the panel list and its place repeated ("The question asks for a polyp, which a colonoscopy view
        shows; that is a colonoscopy view (upper-left), so it points to the upper-left panel."): each step copies
        words that stand once in the context before it, where "it points to the upper-" after the list had to pick
        the one "upper-" of several that follows the asked modality (compact-grpo26 named the asked kind's panel in 4
        of 25 development questions); a place is copied from the question before the list (`opening`); an absent
        kind parts from a present one only after its modality is named ("…; none of the panels is a colonoscopy
        view."). The description and the mask that follow are about that panel."""
        if way == "all":
            return f"The question {EVERY_LESION}, one in each panel."
        asked = absent_kind or self.tiles[named[0]]["set_name"]
        modality = MODALITY_WORDS[asked]
        if way == "absent":
            return f"The question asks for a {KINDS[asked][0]}, which {modality} {ASKS} {NO_PANEL} {modality}."
        place = self.tiles[named[0]]["place"]
        if way == "place":
            return f"The question points to the {place} panel."
        wanted = f"a {KINDS[asked][0]}" if way == "kind" else f"the {self._size_word(named[0])} of the two {KINDS[asked][1]}"
        return (f"The question asks for {wanted}, which {modality} {ASKS} {PRESENT} {modality} ({place}), so it points "
                f"to the {place} panel.")

    def opening(self, way: str, pointing: str) -> str:
        """The reasoning's first sentences: the panel list, then the pointing sentence that looks the question's
        kind or size up in it; a place question's pointing sentence comes first. Copying a quadrant's second word
        ("upper-left") from the question failed while the list stood between them: after "points to the upper-"
        the list offers "upper-left" and "upper-right" as much as the question does, and compact-grpo26 wrote
        "…-right" in all 34 place questions it named wrongly on the development composites, each asked "…-left".
        Trained on these texts (sft20 and after, README) the place questions named right rose from 78 to 95 of 112
        on the development composites but only from 80 to 82 of 111 on the validation ones."""
        return f"{pointing} {self.panels()}" if way == "place" else f"{self.panels()} {pointing}"

    def named_in(self, text: str) -> list[int] | None:
        """The tiles a written reasoning picks, by the sentences `pointing` writes: its "points to the … panel",
        all tiles for "every lesion", none for "none of the panels"; None where it picks nothing readable."""
        place = read_panel(text)
        if place is not None:
            return [i for i, t in enumerate(self.tiles) if t["place"] == place] or None
        if EVERY_LESION in text:
            return list(range(len(self.tiles)))
        if NO_PANEL in text:
            return []
        return None

    def _size_word(self, i: int) -> str:
        """"larger" or "smaller": tile i's lesion against the other tile of its kind."""
        areas = self.tile_masks.reshape(len(self.tiles), -1).sum(1)
        other = next(j for j, t in enumerate(self.tiles) if t["set_name"] == self.tiles[i]["set_name"] and j != i)
        return "larger" if areas[i] >= areas[other] else "smaller"

    def sample(self, rng: random.Random, frame: int) -> Sample:
        question, named, absent_kind, way = self.choose_question(rng)
        mask = self.target_mask(named)
        pointing = self.pointing(way, named, absent_kind)
        opening = self.opening(way, pointing)
        if absent_kind is not None:
            reasoning = f"{opening} {describe_absence(absent_kind, [t['set_name'] for t in self.tiles], rng)}"
            return Sample(question, render_answer(reasoning, KINDS[absent_kind][0], []), self.target(named), [], named,
                          pointing)
        named_sets = {self.tiles[i]["set_name"] for i in named}
        one = self.tiles[named[0]] if len(named) == 1 else None
        set_name = one["set_name"] if one else (named_sets.pop() if len(named_sets) == 1 else None)
        modality = MODALITY_OF.get(set_name, "composite")
        facts = describe_lesion(self.thumb, mask, modality)
        body = build_reasoning(facts, set_name, one["labels"] if one else {}, rng, modality=modality)
        boxes = Frames(self.size, box_frame=frame).boxes(facts.boxes, mask.shape, "box")
        if set_name:
            target = KINDS[set_name][0] if len(boxes) == 1 else KINDS[set_name][1]
        else:
            target = "lesions" if len(boxes) > 1 else "lesion"
        return Sample(question, render_answer(f"{opening} {body}", target, boxes), self.target(named), boxes, named,
                      pointing)


def load_composite_cases(cache_dir, split: str, limit: int | None = None) -> list[CompositeCase]:
    return load_composites(cache_dir, split, limit, cls=CompositeCase)


def development_composites(cache_dir) -> list[CompositeCase]:
    """The cached `dev` composites (of the development images alone) that checkpoints are chosen on."""
    found = load_composite_cases(cache_dir, "dev")
    if not found:
        print(f"no development composites in {cache_dir}: python -m trainers.composites --split dev --count 40")
    return found


def training_composites(cache_dir, data_dir, count: int, every: int = DEV_EVERY) -> list[CompositeCase]:
    """Of the first `count` cached training composites (by key), those without a development image: the `dev`
    composites (`python -m trainers.composites --split dev`) are made of those images, and stay unseen."""
    held = {(i.set_name, i.image_id) for pool in split_pools(data_dir, "dev", every).values() for i in pool}
    return [c for c in load_composite_cases(cache_dir, "train", count) if not holds_any(c.tiles, held)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="the feature cache folder (composites/<split>/ inside it)")
    parser.add_argument("--split", default="train", choices=sorted(PLAN_SEED))
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoder-backend", default="auto")
    args = parser.parse_args(argv)
    from coreseg.config import SegmenterConfig
    from coreseg.modeling.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    plans = plan_composites(split_pools(args.data, args.split), args.count, seed=PLAN_SEED[args.split])
    todo = [p for p in plans if not composite_path(Path(args.out), args.split, p.key).exists()]
    segmenter = Segmenter(SegmenterConfig()).eval()
    print(f"encoder backend: {segmenter.use_encoder_backend(args.encoder_backend, args.threads)}")
    for plan in tqdm(todo, desc=f"composites {args.split}"):
        canvas, tile_masks = plan.render()
        save_composite(composite_path(Path(args.out), args.split, plan.key), plan, canvas, tile_masks,
                       segmenter.encode(canvas))


if __name__ == "__main__":
    main()
