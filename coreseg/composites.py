"""Composite scans: 2–4 real lesion images tiled in one frame, so that the mask must follow the question.

On a single scan with one lesion a decoder can ignore the question and still score; on a composite
it cannot: "Outline the polyp." (by kind), "Segment the lesion in the upper-left part of the image."
(by place), "Outline the larger of the two breast masses." (by size) and "Segment every lesion in this
image." (all) each name different lesions of the same image, and "Outline the pigmented skin lesion."
on a composite without one must be answered `No pigmented skin lesion is visible.` with an empty mask.

A composite is a `CANVAS` × `CANVAS` frame of 1 × 2, 2 × 1 or 2 × 2 cells; each tile keeps its aspect
ratio, centred on black. Plans are drawn deterministically from a split (so training
(`trainers.composites`) and evaluation (`coreseg.eval --composites`) rebuild the same scans); the `dev`
split's tiles are the development images alone (`coreseg.datasets.development_items`), and trainers drop
every training composite that holds one (`holds_any`), so checkpoints are chosen on composites of images no
trainer has seen, as the validation composites are. A
cached composite keeps its embedding and its tiles' masks on the aspect-preserving thumbnail; the
target of a question is built when the question is drawn.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from coreseg.datasets import (DEV_EVERY, LabelledImage, development_items, load_split, read_image, read_mask,
                              resolve_data_dir, set_info)
from coreseg.geometry import mask_to_low_res
from coreseg.lesion_facts import thumbnail
from coreseg.questions import KINDS, all_question, kind_question, place_question, size_question

CANVAS = 512
PLACES = {(1, 2): ["left", "right"], (2, 1): ["upper", "lower"],
          (2, 2): ["upper-left", "upper-right", "lower-left", "lower-right"]}
SIZE_RATIO = 1.5  # "the larger of the two" is only asked when the areas differ by this factor
PLAN_SEED = {"train": 0, "val": 1, "dev": 2}


@dataclass
class Tile:
    set_name: str
    image_id: str
    labels: dict
    place: str                        # "upper-left", "left", …: how a question names its cell
    cell: tuple[int, int, int, int]   # the cell's box in the canvas (x1, y1, x2, y2)


def cell_boxes(layout: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    rows, cols = layout
    h, w = CANVAS // rows, CANVAS // cols
    return [(c * w, r * h, (c + 1) * w, (r + 1) * h) for r in range(rows) for c in range(cols)]


def build_composite(images: list[np.ndarray], masks: list[np.ndarray], layout: tuple[int, int],
                    cells: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Place image i (and its mask) in cell `cells[i]` of `layout`: the canvas and each tile's mask."""
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    tile_masks = []
    boxes = cell_boxes(layout)
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

    @property
    def tiles(self) -> list[Tile]:
        places, boxes = PLACES[self.layout], cell_boxes(self.layout)
        return [Tile(i.set_name, i.image_id, i.labels, places[c], boxes[c]) for i, c in zip(self.items, self.cells)]

    def render(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """The canvas and the tiles' masks at full size (reads the images)."""
        return build_composite([read_image(i) for i in self.items], [read_mask(i) for i in self.items],
                               self.layout, self.cells)


def split_pools(data_dir, split: str, every: int = DEV_EVERY) -> dict[str, list[LabelledImage]]:
    """The images a split's composites are drawn from, per set present under `data_dir`: `dev` is the training
    split's held-out images (`development_items`)."""
    root = resolve_data_dir(data_dir)
    sets = [s for s in KINDS if (root / set_info(s).folder).is_dir()]
    if split == "dev":
        held = development_items(data_dir, sets, every)
        return {s: [i for i in held if i.set_name == s] for s in sets}
    return {s: load_split(data_dir, s, split) for s in sets}


def holds_any(tiles: list[dict], images: set[tuple[str, str]]) -> bool:
    """Whether a composite's tiles include one of `images` ((set, image id) pairs)."""
    return any((t["set_name"], t["image_id"]) in images for t in tiles)


def plan_composites(pools: dict[str, list[LabelledImage]], count: int, seed: int = 0) -> list[CompositePlan]:
    """`count` composites drawn from per-set pools: 2–4 tiles; about a third repeat one set (so that
    place and size questions must tell two lesions of one kind apart), the rest mix sets."""
    rng = random.Random(seed)
    sets = sorted(s for s in pools if pools[s])
    plans = []
    while len(plans) < count:
        n = rng.choice([2, 2, 3, 4])
        layout = rng.choice([(1, 2), (2, 1)]) if n == 2 else (2, 2)
        if rng.random() < 0.35:
            chosen = [rng.choice(sets)] * 2 + [rng.choice(sets) for _ in range(n - 2)]
        else:
            chosen = [rng.choice(sets) for _ in range(n)]
        items = [rng.choice(pools[s]) for s in chosen]
        if len({(i.set_name, i.image_id) for i in items}) == n:
            plans.append(CompositePlan(items, layout, rng.sample(range(layout[0] * layout[1]), n)))
    return plans


def composite_path(root: Path, split: str, key: str) -> Path:
    return Path(root) / "composites" / split / f"{key}.npz"


def save_composite(path: Path, plan: CompositePlan, canvas: np.ndarray, tile_masks: list[np.ndarray],
                   embedding: torch.Tensor) -> None:
    """One cached composite, written atomically."""
    thumb, _ = thumbnail(canvas, tile_masks[0])
    thumb_masks = np.stack([thumbnail(canvas, m)[1] for m in tile_masks])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embedding=embedding[0].to(torch.float16).cpu().numpy(), size=np.array(canvas.shape[:2]),
             thumb=thumb, tile_masks=thumb_masks, tiles=np.array(json.dumps([asdict(t) for t in plan.tiles])))
    tmp.rename(path)


class CompositeQuestion(NamedTuple):
    text: str
    named: list[int]               # the tiles it names (empty when absent)
    absent_kind: str | None        # the asked set when no tile shows it
    way: str                       # kind | size | place | all | absent


@dataclass
class CompositeScan:
    """A cached composite: its embedding, thumbnail, the tiles' masks on it, and the tiles."""

    key: str
    embedding: torch.Tensor | None
    size: tuple[int, int]
    thumb: np.ndarray
    tile_masks: np.ndarray             # K × h × w bool, on the thumbnail
    tiles: list[dict]
    image: np.ndarray | None = None
    set_name: str = "composite"

    def choose_question(self, rng: random.Random) -> "CompositeQuestion":
        """A question, the tiles it names and the asked kind when no tile shows it: by kind (a kind shown
        once), by size (a kind shown twice, areas apart by `SIZE_RATIO`), by place, all, or absent."""
        sets = [t["set_name"] for t in self.tiles]
        areas = self.tile_masks.reshape(len(self.tiles), -1).sum(1)
        unique = sorted(s for s in set(sets) if sets.count(s) == 1)
        pairs = sorted(s for s in set(sets) if sets.count(s) == 2)
        missing = [s for s in KINDS if s not in sets]
        options = ["place", "all"] + ["kind"] * (2 if unique else 0) + ["size"] * (2 if pairs else 0)
        options += ["absent"] * bool(missing)
        kind = rng.choice(options)
        if kind == "kind":
            s = rng.choice(unique)
            return CompositeQuestion(kind_question(s, rng), [sets.index(s)], None, "kind")
        if kind == "size":
            s = rng.choice(pairs)
            a, b = [i for i, t in enumerate(sets) if t == s]
            if max(areas[a], areas[b]) >= SIZE_RATIO * max(1, min(areas[a], areas[b])):
                larger = rng.random() < 0.5
                big, small = (a, b) if areas[a] >= areas[b] else (b, a)
                return CompositeQuestion(size_question(s, larger, rng), [big if larger else small], None, "size")
        if kind == "absent":
            s = rng.choice(missing)
            return CompositeQuestion(kind_question(s, rng), [], s, "absent")
        if kind == "all":
            return CompositeQuestion(all_question(rng), list(range(len(self.tiles))), None, "all")
        i = rng.randrange(len(self.tiles))
        return CompositeQuestion(place_question(self.tiles[i]["place"], rng), [i], None, "place")

    def target_mask(self, named: list[int]) -> np.ndarray:
        """The union of the named tiles' masks on the thumbnail (empty when none is named)."""
        return self.tile_masks[named].any(0) if named else np.zeros(self.tile_masks.shape[1:], bool)

    def target(self, named: list[int]) -> torch.Tensor:
        return mask_to_low_res(self.target_mask(named))


def load_composite(path: Path, cls=CompositeScan) -> CompositeScan:
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    return cls(path.stem, torch.from_numpy(data["embedding"].astype(np.float32))[None],
               tuple(int(v) for v in data["size"]), data["thumb"], data["tile_masks"].astype(bool),
               json.loads(str(data["tiles"])))


def load_composites(cache_dir, split: str, limit: int | None = None, cls=CompositeScan) -> list[CompositeScan]:
    """The cached composites of a split, sorted by key."""
    paths = [p for p in sorted((Path(cache_dir) / "composites" / split).glob("*.npz")) if ".tmp" not in p.name]
    return [load_composite(p, cls) for p in paths[:limit]]
