"""Training cases from the feature cache: embedding + target mask + a freshly worded answer.

Shared by SFT, GRPO and evaluation so that all three see the same data the same way.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coreseg.answer import render_answer
from coreseg.datasets import LabelledImage, interleave, load_split, read_image, read_mask
from coreseg.geometry import mask_to_low_res
from coreseg.geometry import Frames
from coreseg.lesion_facts import thumbnail
from trainers.features import feature_path, load_features
from coreseg.questions import KINDS, sample_question, worded_question
from coreseg.lesion_facts import LesionFacts, describe_lesion
from trainers.reasoning import MODALITY_OF, build_reasoning, describe_absence, target_name


ABSENT_SHARE = 0.1  # of single-scan samples: a question about a kind of finding the scan does not show
NAMED_SHARE = 0.3   # of the other single-scan samples: the question names the kind in the absent questions' words


@dataclass
class Sample:
    """One drawn question with the answer the model should write and the mask it should draw."""

    question: str
    answer: str                        # in the model's box frame
    target: torch.Tensor               # 1 × 1 × 256 × 256 (empty when the asked finding is absent)
    boxes: list = field(default_factory=list)        # box frame
    targets: list[int] = field(default_factory=list)  # composites: which tiles the question names
    pointing: str | None = None        # composites: the sentence that picks the target (the pointing reward's)
    text_weight: float = 1.0           # 0: the answer is forced, not taught (a text swap: only the mask learns)


@dataclass
class Case:
    """One labelled image, ready for the model."""

    item: LabelledImage
    embedding: torch.Tensor | None   # 1 × 256 × 64 × 64 (None until `attach_embeddings`)
    target: torch.Tensor             # 1 × 1 × 256 × 256 (decoder frame)
    size: tuple[int, int]            # original (H, W)
    facts: LesionFacts               # measured on the aspect-preserving thumbnail
    thumb_size: tuple[int, int]
    image: np.ndarray | None = field(default=None, repr=False)  # display image (full profile only)

    @property
    def set_name(self) -> str:
        return self.item.set_name

    def boxes(self, frame="image", box_frame: int = 256) -> list[tuple[int, int, int, int]]:
        """The lesion's boxes (measured on the thumbnail) in original pixels, or in another frame of
        `coreseg.geometry.Frames` (e.g. "box": the model's `box_frame`)."""
        return Frames(self.size, box_frame=box_frame).boxes(self.facts.boxes, self.thumb_size, frame)

    def sample_text(self, rng: random.Random, frame: int, question: str | None = None) -> tuple[str, str]:
        """(question, answer in the model's box frame), worded anew from `rng` (the question from the plain bank
        unless given)."""
        key = self.set_name
        question = question or sample_question(key, self.item.labels, rng)
        reasoning = build_reasoning(self.facts, key, self.item.labels, rng, modality=MODALITY_OF.get(key))
        boxes = self.boxes("box", frame)
        return question, render_answer(reasoning, target_name(key, len(boxes)), boxes)

    def sample(self, rng: random.Random, frame: int, absent_share: float = ABSENT_SHARE) -> Sample:
        """A question, its answer and its target; with probability `absent_share` the question asks for a
        kind of finding another set shows, answered "No … is visible." with an empty target."""
        others = [s for s in KINDS if s != self.set_name]
        if others and rng.random() < absent_share:
            asked = rng.choice(others)
            answer = render_answer(describe_absence(asked, [self.set_name], rng), KINDS[asked][0], [])
            return Sample(worded_question(asked, rng), answer, torch.zeros_like(self.target), [])
        named = self.set_name in KINDS and rng.random() < NAMED_SHARE  # asked as absent kinds are asked
        question, answer = self.sample_text(rng, frame, worded_question(self.set_name, rng) if named else None)
        return Sample(question, answer, self.target, self.boxes("box", frame))


def load_cases(data_dir, cache_dir, sets: list[str], split: str, limit: int | None = None,
               with_images: bool = False, require_cached: bool = True) -> list[Case]:
    """Cases of `sets`/`split` (first `limit` per set, in name order).

    With a `cache_dir` (trainers.features): those whose features are cached (all of them, or a
    FileNotFoundError, when not `require_cached`). Without one: every image, measured here and read
    with its pixels; its embedding is left to `attach_embeddings` (the model's own encoder)."""
    cases = []
    for item in interleave([load_split(data_dir, s, split)[:limit] for s in sets]):
        if cache_dir is None:
            image, mask = read_image(item), read_mask(item)
            thumb, thumb_mask = thumbnail(image, mask)
            f = {"embedding": None, "target": mask_to_low_res(mask)[0, 0].numpy(), "size": image.shape[:2],
                 "thumb": thumb, "thumb_mask": thumb_mask}
        else:
            path = feature_path(Path(cache_dir), item)
            if not path.exists():
                if require_cached:
                    continue
                raise FileNotFoundError(f"no features for {item.image_id}: run python -m trainers.features first")
            f = load_features(path)
            image = read_image(item) if with_images else None
        facts = describe_lesion(f["thumb"], f["thumb_mask"], MODALITY_OF.get(item.set_name))
        embedding = None if f["embedding"] is None else torch.from_numpy(f["embedding"].astype(np.float32))[None]
        cases.append(Case(item, embedding, torch.from_numpy(np.asarray(f["target"]).astype(np.float32))[None, None],
                          tuple(int(v) for v in f["size"]), facts, f["thumb_mask"].shape[:2], image))
    return cases


@torch.no_grad()
def attach_embeddings(cases: list, model) -> None:
    """Encode, with the model's own frozen image encoder, every case that has no embedding yet."""
    for case in cases:
        if getattr(case, "embedding", None) is None:
            case.embedding = model.segmenter.encode(case.image).cpu()
