"""Composite scans: 2–4 real lesion images tiled in one frame, so that the mask must follow the question.

On a single scan with one lesion a decoder can ignore the question and still score; on a composite
it cannot: "Outline the polyp." (by kind), "Segment the lesion in the upper-left part of the image."
(by place), "Outline the larger of the two breast masses." (by size) and "Segment every lesion in this
image." (all) each name different lesions of the same image, and "Outline the pigmented skin lesion."
on a composite without one is answered `No pigmented skin lesion is visible.` with an empty mask.

A composite is a `CANVAS` × `CANVAS` frame of 1 × 2, 2 × 1 or 2 × 2 cells; each tile keeps its aspect
ratio, centred on black. Each is encoded once (`python -m trainers.composites`, resumable, one `.npz`
per composite next to the single-image features) with its tiles' masks on the aspect-preserving
thumbnail; the target of a question is built when the question is drawn.

    python -m trainers.composites --data ../shared/data --out ~/.cache/coreseg/features --split train --count 500
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from coreseg.answer import render_answer
from coreseg.findings import number_words
from coreseg.datasets import LabelledImage, load_split, read_image, read_mask
from coreseg.geometry import Frames, mask_to_low_res
from coreseg.lesion_facts import describe_lesion, thumbnail
from coreseg.questions import KINDS, all_question, kind_question, place_question, size_question
from trainers.reasoning import MODALITY_OF, build_reasoning, describe_absence
from trainers.samples import Sample

CANVAS = 512
PLACES = {(1, 2): ["left", "right"], (2, 1): ["upper", "lower"],
          (2, 2): ["upper-left", "upper-right", "lower-left", "lower-right"]}
MODALITY_WORDS = {"busbra": "a breast ultrasound", "kvasir": "a colonoscopy view", "ph2": "a dermoscopy image"}
SIZE_RATIO = 1.5  # "the larger of the two" is only asked when the areas differ by this factor


@dataclass
class Tile:
    set_name: str
    image_id: str
    labels: dict
    place: str                        # "upper-left", "left", …: how a question names its cell


def _cells(layout: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    rows, cols = layout
    h, w = CANVAS // rows, CANVAS // cols
    return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in range(rows) for c in range(cols)]


def build_composite(images: list[np.ndarray], masks: list[np.ndarray], layout: tuple[int, int],
                    cells: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Place image i (and its mask) in cell `cells[i]` of `layout`: the canvas and each tile's mask."""
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    tile_masks = []
    boxes = _cells(layout)
    for image, mask, cell in zip(images, masks, cells):
        x1, y1, x2, y2 = boxes[cell]
        scale = min((x2 - x1) / image.shape[1], (y2 - y1) / image.shape[0])
        w, h = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
        ox, oy = x1 + ((x2 - x1) - w) // 2, y1 + ((y2 - y1) - h) // 2
        canvas[oy:oy + h, ox:ox + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        full = np.zeros((CANVAS, CANVAS), bool)
        full[oy:oy + h, ox:ox + w] = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        tile_masks.append(full)
    return canvas, tile_masks


@dataclass
class CompositePlan:
    """Which images go where; its `key` names the cached file."""

    items: list[LabelledImage]
    layout: tuple[int, int]
    cells: list[int]

    @property
    def key(self) -> str:
        text = json.dumps([[i.set_name, i.image_id] for i in self.items] + [list(self.layout), self.cells])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def plan_composites(pools: dict[str, list[LabelledImage]], count: int, seed: int = 0) -> list[CompositePlan]:
    """`count` composites drawn from per-set pools: 2–4 tiles; about a third repeat one set (so that
    place and size questions must tell two lesions of one kind apart), the rest mix sets."""
    rng = random.Random(seed)
    sets = sorted(s for s in pools if pools[s])
    plans = []
    for _ in range(count):
        n = rng.choice([2, 2, 3, 4])
        layout = rng.choice([(1, 2), (2, 1)]) if n == 2 else (2, 2)
        if rng.random() < 0.35:
            chosen = [rng.choice(sets)] * 2 + [rng.choice(sets) for _ in range(n - 2)]
        else:
            chosen = [rng.choice(sets) for _ in range(n)]
        items = [rng.choice(pools[s]) for s in chosen]
        if len({(i.set_name, i.image_id) for i in items}) < n:
            continue
        cells = rng.sample(range(layout[0] * layout[1]), n)
        plans.append(CompositePlan(items, layout, cells))
    return plans


def composite_path(root: Path, split: str, key: str) -> Path:
    return Path(root) / "composites" / split / f"{key}.npz"


def encode_composite(segmenter, plan: CompositePlan, out: Path) -> None:
    images = [read_image(i) for i in plan.items]
    masks = [read_mask(i) for i in plan.items]
    canvas, tile_masks = build_composite(images, masks, plan.layout, plan.cells)
    embedding = segmenter.encode(canvas)[0].to(torch.float16).cpu().numpy()
    thumb, _ = thumbnail(canvas, tile_masks[0])
    thumb_masks = np.stack([thumbnail(canvas, m)[1] for m in tile_masks])
    places = PLACES[plan.layout]
    tiles = [Tile(i.set_name, i.image_id, i.labels, places[c]).__dict__ for i, c in zip(plan.items, plan.cells)]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, embedding=embedding, size=np.array(canvas.shape[:2]), thumb=thumb, tile_masks=thumb_masks,
             tiles=np.array(json.dumps(tiles)))
    tmp.rename(out)


# ------------------------------------------------------------------------------------------ questions
@dataclass
class CompositeCase:
    """A cached composite, ready for SFT/GRPO; `sample` draws a question and builds its target."""

    key: str
    embedding: torch.Tensor | None
    size: tuple[int, int]
    thumb: np.ndarray
    tile_masks: np.ndarray             # K × h × w bool, on the thumbnail
    tiles: list[dict]
    image: np.ndarray | None = None
    set_name: str = "composite"

    def choose_question(self, rng: random.Random) -> tuple[str, list[int], str | None]:
        """(question, named tile indices, the asked kind when no tile shows it)."""
        sets = [t["set_name"] for t in self.tiles]
        areas = self.tile_masks.reshape(len(self.tiles), -1).sum(1)
        options = ["place", "all"]
        unique = [s for s in set(sets) if sets.count(s) == 1]
        pairs = [s for s in set(sets) if sets.count(s) == 2]
        missing = [s for s in KINDS if s not in sets]
        options += ["kind"] * (2 if unique else 0) + ["size"] * (2 if pairs else 0) + ["absent"] * bool(missing)
        kind = rng.choice(options)
        if kind == "kind":
            s = rng.choice(sorted(unique))
            return kind_question(s, rng), [sets.index(s)], None
        if kind == "size":
            s = rng.choice(sorted(pairs))
            a, b = [i for i, t in enumerate(sets) if t == s]
            if max(areas[a], areas[b]) >= SIZE_RATIO * max(1, min(areas[a], areas[b])):
                larger = rng.random() < 0.5
                big, small = (a, b) if areas[a] >= areas[b] else (b, a)
                return size_question(s, larger, rng), [big if larger else small], None
            kind = "place"
        if kind == "absent":
            s = rng.choice(sorted(missing))
            return kind_question(s, rng), [], s
        if kind == "all":
            return all_question(rng), list(range(len(self.tiles))), None
        i = rng.randrange(len(self.tiles))
        return place_question(self.tiles[i]["place"], rng), [i], None

    def sample(self, rng: random.Random, frame: int) -> Sample:
        question, named, absent_kind = self.choose_question(rng)
        mask = self.tile_masks[named].any(0) if named else np.zeros(self.tile_masks.shape[1:], bool)
        panels = ", ".join(f"{MODALITY_WORDS[t['set_name']]} ({t['place']})" for t in self.tiles)
        opening = f"The image is a composite of {number_words(len(self.tiles))} panels: {panels}."
        if absent_kind is not None:
            reasoning = f"{opening} {describe_absence(absent_kind, [t['set_name'] for t in self.tiles], rng)}"
            answer, boxes = render_answer(reasoning, KINDS[absent_kind][0], []), []
        else:
            named_sets = {self.tiles[i]["set_name"] for i in named}
            one = self.tiles[named[0]] if len(named) == 1 else None
            set_name = one["set_name"] if one else (named_sets.pop() if len(named_sets) == 1 else None)
            modality = MODALITY_OF.get(set_name, "composite")
            facts = describe_lesion(self.thumb, mask, modality)
            body = build_reasoning(facts, set_name, one["labels"] if one else {}, rng, modality=modality)
            frames = Frames(self.size, box_frame=frame)
            boxes = frames.boxes(facts.boxes, mask.shape, "box")
            if set_name:
                target = KINDS[set_name][0] if len(boxes) == 1 else KINDS[set_name][1]
            else:
                target = "lesions" if len(boxes) > 1 else "lesion"
            answer = render_answer(f"{opening} {body}", target, boxes)
        return Sample(question, answer, mask_to_low_res(mask), boxes, named)


def load_composites(cache_dir, split: str, limit: int | None = None, with_images: bool = False) -> list[CompositeCase]:
    """The cached composites of a split (sorted by key), optionally with their canvases."""
    folder = Path(cache_dir) / "composites" / split
    cases = []
    for path in sorted(folder.glob("*.npz"))[:limit]:
        if path.name.endswith(".tmp.npz"):
            continue
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        cases.append(CompositeCase(path.stem, torch.from_numpy(data["embedding"].astype(np.float32))[None],
                                   tuple(int(v) for v in data["size"]), data["thumb"], data["tile_masks"].astype(bool),
                                   json.loads(str(data["tiles"]))))
    return cases


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="the feature cache folder (composites/<split>/ inside it)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoder-backend", default="auto")
    args = parser.parse_args(argv)
    from coreseg.config import SegmenterConfig
    from coreseg.modeling.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    pools = {s: load_split(args.data, s, args.split) for s in KINDS}
    plans = plan_composites(pools, args.count, seed=args.seed + (0 if args.split == "train" else 1))
    todo = [p for p in plans if not composite_path(Path(args.out), args.split, p.key).exists()]
    segmenter = Segmenter(SegmenterConfig()).eval()
    print(f"encoder backend: {segmenter.use_encoder_backend(args.encoder_backend, args.threads)}")
    for plan in tqdm(todo, desc=f"composites {args.split}"):
        encode_composite(segmenter, plan, composite_path(Path(args.out), args.split, plan.key))


if __name__ == "__main__":
    main()
