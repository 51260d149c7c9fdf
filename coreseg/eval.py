"""Evaluation that can tell whether the reasoning drives the mask, on labelled images and composites.

    python -m coreseg.eval --data ../shared/data --split val [--sets busbra,kvasir,ph2] [--limit N]
        [--checkpoint DIR] [--composites N] [--candidates K] [--json OUT] [--gallery PNG] [--cache DIR]

Single scans, methods on every image (greedy answers; questions from the plain bank, never naming a label):
  probe           CORE-Seg: the `<seg>` probe drives the trained decoder (the answer's boxes are not used)
  constant_probe  the same trained decoder with ONE probe for every image (the mean of all probes): what a
                  decoder that ignores the text scores; the model must beat it
  cascade         the model's own first box → the pretrained LiteMedSAM (Seg-Zero's cascade)
  litemedsam      the pretrained LiteMedSAM with a whole-image box (no reasoning at all)
Per image: Dice, IoU, failure (Dice = 0 or unparsable), box F1 against the truth (Hungarian, IoU ≥ 0.5),
box IoU against the answer's OWN mask, the share of the answer's claims that agree with its own mask
(`coreseg.findings.check_answer`) and with the truth (`check_statements`: location, size, shape,
impression), and unknowable claims (`unsupported_claims`). Beside them, a constant-sentence baseline: the
one reasoning text per set that states the most frequent true location, size, shape and impression.

`--composites N` builds N composites from the split (`coreseg.composites`; the same plans as training's
for that split) and asks each several questions (each tile by place, a kind shown once, the larger/smaller
of two, and a kind no tile shows): referring accuracy (≥ 80 % of the mask on the named tiles), absent
accuracy (an empty mask), mDice against the named tiles; the constant-probe baseline on the same
questions; and the counterfactual: Dice between the masks of two questions about different tiles of one
image (near 0 when the mask follows the question, near 1 when it ignores it); and the same on the text: another
tile's answer forced under a place question, does the mask follow the reasoning or the question? `--candidates K`
samples K answers (T = 0.7) per composite and reports their mean pairwise mask Dice. With `--split dev` the
composites are made of the development images alone, which no trainer sees (`coreseg.composites.split_pools`):
checkpoints are chosen on those and the development images, never on the validation split. Empty-target rule:
`coreseg.metrics`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coreseg.allocator import keep_freed_memory
from coreseg.answer import parse_answer
from coreseg.composites import PLAN_SEED, CompositeScan, composite_path, load_composite, plan_composites, split_pools
from coreseg.config import SegmenterConfig
from coreseg.datasets import (LabelledImage, development_items, load_folder, load_split, read_image,
                              read_mask)
from coreseg.embedding_cache import pixel_key
from coreseg.findings import (PANEL_SHARE, VOCAB, birads_impression, check_answer, check_statements, claim_agreement,
                              panel_region, read_panel, share_on, unsupported_claims)
from coreseg.gallery import save_composite_gallery, save_gallery
from coreseg.geometry import Frames
from coreseg.lesion_facts import describe_lesion, thumbnail
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import box_iou, dice, mask_box, score_sample
from coreseg.modeling.segmenter import Segmenter
from coreseg.predictor import CoreSegPredictor
from coreseg.questions import KINDS, kind_question, place_question, sample_question, size_question

METHODS = ("probe", "constant_probe", "cascade", "litemedsam")


def _box_decode(baseline: Segmenter, embedding: torch.Tensor, box, size: tuple[int, int]) -> np.ndarray:
    frames = Frames(size, image_size=baseline.image_size)
    with torch.no_grad():
        low_res, _ = baseline.decode(embedding, boxes=torch.tensor([frames.box(box, "image", "segmenter")],
                                                                   dtype=torch.float32))
    return frames.mask(low_res[0])


def _probe_decode(predictor: CoreSegPredictor, embedding: torch.Tensor, probe: np.ndarray, size) -> np.ndarray:
    with torch.no_grad():
        low_res, _ = predictor.model.segmenter.decode(embedding, probe=torch.from_numpy(probe)[None].to(embedding.device))
    return Frames(size).mask(low_res[0])


def question_for(item: LabelledImage, fixed: str | None) -> str:
    """A fixed question when given, else a plain one from the set's bank with a per-image seed."""
    return fixed or sample_question(item.set_name, None, random.Random(item.image_id))


def own_box_iou(boxes, mask: np.ndarray) -> float | None:
    """Mean over the stated boxes of the IoU with the best-matching part box of the answer's own mask."""
    parts = mask_boxes(mask)
    if not boxes:
        return None
    return float(np.mean([max((box_iou(b, p) for p in parts), default=0.0) for b in boxes]))


def _cached_embedding(predictor: CoreSegPredictor, image: np.ndarray, path: Path | None) -> torch.Tensor:
    """The image embedding, from the feature cache when it holds this image (no re-encoding)."""
    if path is not None and path.exists():
        with np.load(path) as f:
            embedding = torch.from_numpy(f["embedding"].astype(np.float32))[None].to(predictor.device)
        predictor.cache.put(pixel_key(image, predictor.model_version), embedding)
    return predictor.embedding(image)


# ------------------------------------------------------------------------------------------ single scans
def constant_sentence(facts_list: list, set_name: str, labels_list: list[dict]) -> str:
    """The strongest constant reasoning for a set: the most frequent true location, size, shape and
    impression, stated for every image."""
    most = lambda values: Counter(values).most_common(1)[0][0]  # noqa: E731
    location, size, shape = (most([getattr(f, k) for f in facts_list]) for k in ("location", "size", "shape"))
    text = (f"There is {VOCAB['size'][size][0]} {VOCAB['shape'][shape][0]} lesion in the "
            f"{VOCAB['location'][location][0]} part of the image.")
    if set_name == "busbra":
        birads = [int(l["birads"]) for l in labels_list if l.get("birads") is not None]
        if birads:
            text += f" BI-RADS: {VOCAB['impression'][birads_impression(most(birads))][0]}."
    elif set_name == "ph2":
        from coreseg.findings import PH2_DIAGNOSIS_KEYS

        diagnoses = [l["diagnosis"] for l in labels_list if l.get("diagnosis") in PH2_DIAGNOSIS_KEYS]
        if diagnoses:
            text += f" The features {VOCAB['impression'][PH2_DIAGNOSIS_KEYS[most(diagnoses)]][0]}."
    elif set_name == "kvasir":
        text += " It is a polyp."
    return text


def evaluate(predictor: CoreSegPredictor, items: list[LabelledImage], methods=METHODS, question: str | None = None,
             cache_dir: str | None = None, keep_images: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Score every method on every item: (records, answers, examples). `answers` keep each greedy
    answer's probe (for the constant-probe baseline); examples keep images for the gallery."""
    baseline = Segmenter(SegmenterConfig()).eval() if {"cascade", "litemedsam"} & set(methods) else None
    shares_encoder = predictor.model.config.segmenter.kind == "litemedsam"
    records, answers, examples = [], [], []
    for item in tqdm(items, desc="evaluate"):
        image, truth = read_image(item), read_mask(item)
        size = truth.shape
        cached = Path(cache_dir) / item.set_name / f"{item.image_id}.npz" if cache_dir else None
        embedding = _cached_embedding(predictor, image, cached)
        q = question_for(item, question)
        facts = describe_lesion(*thumbnail(image, truth))  # measured as training measures: on a thumbnail
        truth_boxes = mask_boxes(truth)
        candidate = predictor.predict(image, q, n_candidates=1, temperature=0.0)[0]
        parsed = candidate.parsed
        answer = parsed.answer
        pred_boxes = list(answer.boxes) if answer else []
        reasoning = answer.reasoning if answer else ""
        truth_checks = check_statements(reasoning, facts, item.set_name, item.labels)
        common = {"set": item.set_name, "image": item.image_id, "question": q}
        answers.append({**common, "probe": candidate.probe, "embedding": embedding, "size": size, "truth": truth,
                        "image_pixels": image, "token_ids": candidate.token_ids, "mask": candidate.mask,
                        "facts": facts, "labels": item.labels, "parsed": parsed.ok, "boxes": pred_boxes})
        masks = {"probe": candidate.mask} if "probe" in methods else {}
        if baseline is not None:
            base_embedding = embedding if shares_encoder else baseline.encode(image)
            if "cascade" in methods:
                box = pred_boxes[0] if pred_boxes else (0, 0, size[1], size[0])
                masks["cascade"] = _box_decode(baseline, base_embedding, box, size)
            if "litemedsam" in methods:
                masks["litemedsam"] = _box_decode(baseline, base_embedding, (0, 0, size[1], size[0]), size)
        for method, mask in masks.items():
            uses_text = method != "litemedsam"
            s = score_sample(mask, truth, pred_boxes if uses_text else [], truth_boxes,
                             parsed=parsed.ok if uses_text else True)
            row = {**common, "method": method, "dice": s.dice, "iou": s.iou, "parsed": s.parsed, "failed": s.failed,
                   "box_f1": s.box_f1 if uses_text else None}
            if method == "probe":
                findings = check_answer(candidate.text, mask, image)
                truth_box = mask_box(truth)
                row.update(own_box_iou=own_box_iou(pred_boxes, mask), own_agreement=claim_agreement(findings),
                           probe_box_iou=(box_iou(candidate.probe_box, truth_box)
                                          if candidate.probe_box is not None and truth_box is not None else None),
                           own_claims=_claims_by_kind(findings),
                           truth_checks=truth_checks, unsupported=unsupported_claims(candidate.text),
                           parse_errors=list(parsed.errors), text=candidate.text)
            records.append(row)
        if keep_images and "probe" in masks:
            examples.append({"item": item, "image": image, "truth": truth, "mask": masks["probe"],
                             "boxes": pred_boxes, "dice": dice(masks["probe"], truth)})
    if "constant_probe" in methods and answers:
        records += constant_probe_records(predictor, answers)
    records += constant_sentence_records(answers)
    if "probe" in methods:
        records += text_swap_records(predictor, answers)
    for a in answers:
        a.pop("image_pixels")
    return records, answers, examples


def text_swap_records(predictor: CoreSegPredictor, answers: list[dict]) -> list[dict]:
    """The counterfactual on single scans: teacher-force the answer written for the next image of the
    same set onto this image and compare the mask with the image's own (Dice near 1: the text does not
    matter)."""
    rows = []
    for a, b in zip(answers, answers[1:]):
        if a["set"] != b["set"] or not b["token_ids"]:
            continue
        swapped = predictor.score_completions(a["image_pixels"], a["question"], [b["token_ids"]])[0].mask
        rows.append({"set": a["set"], "image": a["image"], "method": "text_swap",
                     "dice_to_own": dice(swapped, a["mask"]), "dice": dice(swapped, a["truth"])})
    return rows


def _claims_by_kind(findings) -> dict[str, bool]:
    """{"box": all boxes agree, "location": …} from an answer's findings."""
    out: dict[str, bool] = {}
    for f in findings:
        kind = f.claim.split(" ")[0]
        out[kind] = out.get(kind, True) and f.agrees
    return out


def mean_probe(answers: list[dict]) -> np.ndarray | None:
    """The mean of the answers' probes (None when no answer had a `<seg>`)."""
    probes = [a["probe"] for a in answers if a["probe"] is not None]
    return np.mean(probes, axis=0).astype(np.float32) if probes else None


def constant_probe_records(predictor: CoreSegPredictor, answers: list[dict]) -> list[dict]:
    """The trained decoder with one probe (the mean) for every image."""
    probe = mean_probe(answers)
    rows = []
    for a in answers if probe is not None else []:
        mask = _probe_decode(predictor, a["embedding"], probe, a["size"])
        s = score_sample(mask, a["truth"], a["boxes"], mask_boxes(a["truth"]), parsed=True)
        rows.append({"set": a["set"], "image": a["image"], "question": a["question"], "method": "constant_probe",
                     "dice": s.dice, "iou": s.iou, "parsed": True, "failed": s.failed, "box_f1": None})
    return rows


def constant_sentence_records(answers: list[dict]) -> list[dict]:
    """The constant-sentence baseline for the claims against the truth."""
    rows = []
    by_set = defaultdict(list)
    for a in answers:
        by_set[a["set"]].append(a)
    for set_name, group in by_set.items():
        text = constant_sentence([a["facts"] for a in group], set_name, [a["labels"] for a in group])
        for a in group:
            rows.append({"set": set_name, "image": a["image"], "method": "constant_sentence", "text": text,
                         "truth_checks": check_statements(text, a["facts"], set_name, a["labels"])})
    return rows


# ------------------------------------------------------------------------------------------ composites
def composite_questions(scan: CompositeScan, rng: random.Random) -> list[tuple[str, str, list[int]]]:
    """(kind, question, named tiles): every tile by place; a kind shown once; larger/smaller of two; absent."""
    sets = [t["set_name"] for t in scan.tiles]
    out = [("place", place_question(t["place"], rng), [i]) for i, t in enumerate(scan.tiles)]
    unique = sorted(s for s in set(sets) if sets.count(s) == 1)
    if unique:
        s = rng.choice(unique)
        out.append(("kind", kind_question(s, rng), [sets.index(s)]))
    areas = scan.tile_masks.reshape(len(sets), -1).sum(1)
    for s in sorted(set(sets)):
        pair = [i for i, t in enumerate(sets) if t == s]
        if len(pair) == 2 and max(areas[pair]) >= 1.5 * max(1, min(areas[pair])):
            larger = bool(rng.random() < 0.5)
            big, small = sorted(pair, key=lambda i: -areas[i])
            out.append(("size", size_question(s, larger, rng), [big if larger else small]))
    missing = [s for s in KINDS if s not in sets]
    if missing:
        out.append(("absent", kind_question(rng.choice(missing), rng), []))
    return out


def _boxes_region(shape: tuple[int, int], boxes) -> np.ndarray:
    """The pixels inside any of `boxes` (x1, y1, x2, y2, exclusive ends) in a frame of `shape`."""
    region = np.zeros(shape, bool)
    for x1, y1, x2, y2 in boxes:
        region[y1:y2, x1:x2] = True
    return region


def _named_region(scan: CompositeScan, named: list[int]) -> np.ndarray:
    return _boxes_region(scan.size, [scan.tiles[i]["cell"] for i in named])


def _question_row(kind: str, mask: np.ndarray, target: np.ndarray, region: np.ndarray) -> dict:
    area = int(mask.sum())
    if kind == "absent":
        return {"kind": kind, "correct": area == 0, "dice": dice(mask, target)}
    on_named = share_on(mask, region)
    return {"kind": kind, "correct": area > 0 and on_named >= PANEL_SHARE, "dice": dice(mask, target),
            "on_named": on_named}


def evaluate_composites(predictor: CoreSegPredictor, data_dir: str, split: str, count: int,
                        cache_dir: str | None = None, candidates: int = 0, probe: np.ndarray | None = None,
                        keep_images: int = 0) -> tuple[list[dict], list[dict]]:
    """Referring / absent questions on `count` composites of a split (`dev`: of the development images,
    `coreseg.composites.split_pools`): (records, examples)."""
    plans = plan_composites(split_pools(data_dir, split), count, seed=PLAN_SEED.get(split, 1))
    records, examples = [], []
    for plan in tqdm(plans, desc="composites"):
        canvas, full_masks = plan.render()
        path = composite_path(Path(cache_dir), split, plan.key) if cache_dir else None
        if path is not None and path.exists():
            scan = load_composite(path)
        else:
            scan = CompositeScan(plan.key, None, canvas.shape[:2], canvas, np.stack(full_masks),
                                 [t.__dict__ for t in plan.tiles])
        scan.tile_masks = np.stack(full_masks)  # score against the full-size masks
        embedding = _cached_embedding(predictor, canvas, path)
        rng = random.Random(plan.key)
        masks_by_tile, answers_by_tile = {}, {}
        base = _probe_decode(predictor, embedding, probe, scan.size) if probe is not None else None
        for kind, q, named in composite_questions(scan, rng):
            candidate = predictor.predict(canvas, q, n_candidates=1, temperature=0.0)[0]
            target, region = scan.target_mask(named), _named_region(scan, named)
            row = {"composite": plan.key, "question": q, "named": named, "method": "probe", "text": candidate.text,
                   **_question_row(kind, candidate.mask, target, region)}
            row["own_agreement"] = claim_agreement(check_answer(candidate.text, candidate.mask))
            if len(named) == 1:  # does the reasoning name the panel the question names (the text's choice)?
                row["text_points_right"] = read_panel(candidate.text) == scan.tiles[named[0]]["place"]
                row.update(follows_reasoning(candidate.text, candidate.mask))
            records.append(row)
            if kind == "place":
                masks_by_tile[named[0]] = candidate.mask
                answers_by_tile[named[0]] = (q, candidate)
            if base is not None:
                records.append({"composite": plan.key, "question": q, "named": named, "method": "constant_probe",
                                **_question_row(kind, base, target, region)})
            if keep_images and len(examples) < 8 and kind == "place":
                examples.append({"image": canvas, "mask": candidate.mask, "truth": target, "question": q,
                                 "correct": row["correct"]})
        for a, b in itertools.combinations(sorted(masks_by_tile), 2):
            records.append({"composite": plan.key, "method": "counterfactual", "pair": [a, b],
                            "dice_between": dice(masks_by_tile[a], masks_by_tile[b])})
        records += text_swap_on_composite(predictor, canvas, scan, plan.key, answers_by_tile)
        if candidates > 1:
            q = composite_questions(scan, rng)[0][1]
            group = predictor.predict(canvas, q, n_candidates=candidates, temperature=0.7, seed=1)
            pairs = [dice(x.mask, y.mask) for x, y in itertools.combinations(group, 2)]
            records.append({"composite": plan.key, "method": "candidates", "pairwise_dice": float(np.mean(pairs)),
                            "texts_differ": len({c.text for c in group})})
    return records, examples


def follows_reasoning(text: str, mask: np.ndarray) -> dict:
    """Where a composite answer's reasoning names a panel: whether its first box (`box_follows`) and its mask
    (`mask_follows`) lie on that panel (≥ `PANEL_SHARE` of their area); {} when it names none."""
    panel = read_panel(text)
    if panel is None:
        return {}
    region = panel_region(panel, mask.shape)
    answer = parse_answer(text, mask.shape).answer
    box = _boxes_region(mask.shape, answer.boxes[:1] if answer is not None else [])
    return {"box_follows": bool(box.any()) and share_on(box, region) >= PANEL_SHARE,
            "mask_follows": bool(mask.any()) and share_on(mask, region) >= PANEL_SHARE}


def text_swap_on_composite(predictor: CoreSegPredictor, canvas: np.ndarray, scan: CompositeScan, key: str,
                           answers_by_tile: dict[int, tuple]) -> list[dict]:
    """The counterfactual on the text: for two tiles a < b asked by place, tile b's answer forced under tile a's
    question. Does the mask follow the reasoning (≥ `PANEL_SHARE` of it on the panel that text names) or stay
    with the question (on tile a)? Pairs whose forced text names no panel, or tile a's, are left out."""
    rows = []
    for a, b in itertools.combinations(sorted(answers_by_tile), 2):
        question, _ = answers_by_tile[a]
        _, other = answers_by_tile[b]
        panel = read_panel(other.text)
        if panel is None or panel == scan.tiles[a]["place"]:
            continue
        mask = predictor.score_completions(canvas, question, [other.token_ids])[0].mask
        rows.append({"composite": key, "method": "composite_text_swap", "pair": [a, b],
                     "follows_text": bool(mask.any()) and share_on(mask, panel_region(panel, mask.shape)) >= PANEL_SHARE,
                     "stays_with_question": bool(mask.any()) and share_on(mask, _named_region(scan, [a])) >= PANEL_SHARE})
    return rows


# ------------------------------------------------------------------------------------------ summaries
def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict]) -> dict:
    """{set: {method: metrics}} for single scans (plus 'overall'), and 'composites' when present."""
    grouped = defaultdict(list)
    for r in records:
        if "set" in r:
            grouped[(r["set"], r["method"])].append(r)
            grouped[("overall", r["method"])].append(r)
    out: dict = defaultdict(dict)
    for (set_name, method), rows in grouped.items():
        m = {"n": len(rows)}
        if method not in ("constant_sentence", "text_swap"):
            m.update(dice=_mean(r["dice"] for r in rows), iou=_mean(r["iou"] for r in rows),
                     failure_rate=_mean(r["failed"] for r in rows), box_f1=_mean(r.get("box_f1") for r in rows))
        if method == "probe":
            m.update(own_box_iou=_mean(r["own_box_iou"] for r in rows),
                     probe_box_iou=_mean(r["probe_box_iou"] for r in rows),
                     own_agreement=_mean(r["own_agreement"] for r in rows),
                     unsupported=sum(bool(r["unsupported"]) for r in rows))
            for claim in ("location", "size", "shape", "box", "parts"):
                m[f"own_{claim}"] = _mean(r["own_claims"].get(claim) for r in rows)
        if method == "text_swap":
            m = {"n": len(rows), "dice_to_own": _mean(r["dice_to_own"] for r in rows), "dice": _mean(r["dice"] for r in rows)}
        if method in ("probe", "constant_sentence"):
            m["truth_agreement"] = _mean(v for r in rows for v in r["truth_checks"].values())
        out[set_name][method] = m
    composites = [r for r in records if "composite" in r]
    if composites:
        out["composites"] = summarise_composites(composites)
    return dict(out)


def summarise_composites(rows: list[dict]) -> dict:
    out = {}
    for method in ("probe", "constant_probe"):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        referring = [r for r in mine if r["kind"] != "absent"]
        absent = [r for r in mine if r["kind"] == "absent"]
        out[method] = {"questions": len(mine), "referring_accuracy": _mean(r["correct"] for r in referring),
                       "absent_accuracy": _mean(r["correct"] for r in absent),
                       "dice": _mean(r["dice"] for r in referring),
                       "by_kind": {k: _mean(r["correct"] for r in mine if r["kind"] == k)
                                   for k in sorted({r["kind"] for r in mine})}}
        if method == "probe":
            out[method]["own_agreement"] = _mean(r.get("own_agreement") for r in mine)
            out[method]["text_points_right"] = _mean(r.get("text_points_right") for r in mine)
            named = [r for r in mine if "box_follows" in r]  # the reasoning names a panel: do box and mask go there?
            out[method]["follows_reasoning"] = {"answers": len(named),
                                                "box": _mean(r["box_follows"] for r in named),
                                                "mask": _mean(r["mask_follows"] for r in named)}
    between = [r["dice_between"] for r in rows if r["method"] == "counterfactual"]
    if between:
        out["counterfactual"] = {"pairs": len(between), "dice_between_questions": float(np.mean(between)),
                                 "share_mask_moved": float(np.mean([d < 0.5 for d in between]))}
    swaps = [r for r in rows if r["method"] == "composite_text_swap"]
    if swaps:
        out["text_swap"] = {"pairs": len(swaps), "follows_text": _mean(r["follows_text"] for r in swaps),
                            "stays_with_question": _mean(r["stays_with_question"] for r in swaps)}
    pairwise = [r["pairwise_dice"] for r in rows if r["method"] == "candidates"]
    if pairwise:
        out["candidates"] = {"composites": len(pairwise), "pairwise_mask_dice": float(np.mean(pairwise))}
    return out


def markdown_table(summary: dict) -> str:
    fmt = lambda v: "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| set | method | n | mDice | mIoU | failure | box F1 | box IoU own | claims own | claims truth "
             "| unknowable |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for set_name in sorted((s for s in summary if s != "composites"), key=lambda s: (s == "overall", s)):
        for method in METHODS + ("constant_sentence",):
            m = summary[set_name].get(method)
            if m:
                lines.append(f"| {set_name} | {method} | {m['n']} | {fmt(m.get('dice'))} | {fmt(m.get('iou'))} | "
                             f"{fmt(m.get('failure_rate'))} | {fmt(m.get('box_f1'))} | {fmt(m.get('own_box_iou'))} | "
                             f"{fmt(m.get('own_agreement'))} | {fmt(m.get('truth_agreement'))} | "
                             f"{fmt(m.get('unsupported'))} |")
    aims = {s: summary[s]["probe"]["probe_box_iou"] for s in summary
            if s != "composites" and summary[s].get("probe", {}).get("probe_box_iou") is not None}
    if aims:
        lines.append("\nProbe box (where the `<seg>` state aimed the decoder) vs the truth's tight box, mean IoU — " +
                     ", ".join(f"{s} {v:.3f}" for s, v in sorted(aims.items())) + ".")
    swaps = {s: summary[s]["text_swap"] for s in summary if s != "composites" and "text_swap" in summary[s]}
    if swaps:
        lines.append("\nText swap (another image's answer forced onto this image): Dice of the mask to the image's own "
                     "mask — " + ", ".join(f"{s} {m['dice_to_own']:.3f}" for s, m in sorted(swaps.items())) +
                     " (1.000: the text does not move the mask).")
    comp = summary.get("composites")
    if comp:
        lines += ["", "| composites | questions | referring acc. | absent acc. | mDice (named) |", "|---|---|---|---|---|"]
        for method in ("probe", "constant_probe"):
            if method in comp:
                m = comp[method]
                lines.append(f"| {method} | {m['questions']} | {fmt(m['referring_accuracy'])} | "
                             f"{fmt(m['absent_accuracy'])} | {fmt(m['dice'])} |")
        if comp.get("probe", {}).get("text_points_right") is not None:
            lines.append(f"\nThe reasoning names the panel the question names in "
                         f"{100 * comp['probe']['text_points_right']:.1f} % of one-panel questions.")
            follows = comp["probe"].get("follows_reasoning")
            if follows and follows["answers"]:
                lines.append(f"Where the reasoning names a panel ({follows['answers']} answers), the first box lies on "
                             f"it in {100 * follows['box']:.1f} %, the mask in {100 * follows['mask']:.1f} %.")
        if "counterfactual" in comp:
            c = comp["counterfactual"]
            lines.append(f"\nCounterfactual: Dice between the masks of two questions about different tiles of one image "
                         f"{c['dice_between_questions']:.3f} over {c['pairs']} pairs; mask moved (Dice < 0.5) in "
                         f"{100 * c['share_mask_moved']:.0f} %.")
        if "text_swap" in comp:
            t = comp["text_swap"]
            lines.append(f"Text swap on composites (another tile's answer forced under a place question): the mask "
                         f"follows the forced reasoning's panel in {100 * t['follows_text']:.0f} %, stays on the "
                         f"question's tile in {100 * t['stays_with_question']:.0f} % of {t['pairs']} pairs.")
        if "candidates" in comp:
            lines.append(f"Candidates: mean pairwise mask Dice {comp['candidates']['pairwise_mask_dice']:.3f} "
                         f"over {comp['candidates']['composites']} composites.")
    return "\n".join(lines)


def gather_items(args) -> list[LabelledImage]:
    items = []
    if args.data:
        if args.split == "dev":
            items += development_items(args.data, args.sets.split(","))[:args.limit]
        else:
            for set_name in args.sets.split(","):
                items += load_split(args.data, set_name, args.split)[:args.limit]
    for folder in args.folder or []:
        items += load_folder(folder, Path(folder).name)[:args.limit]
    return items


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder with busbra/, kvasir-seg/, ph2/")
    parser.add_argument("--split", default="val", choices=["train", "val", "all", "dev"],
                        help="dev: the training images SFT and GRPO hold out (every 20th), to choose checkpoints on")
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--folder", action="append", help="any folder with images/ and masks/ (an extra set)")
    parser.add_argument("--question", default=None, help="the question for every image (needed for --folder)")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of each set, in name order")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped compact model")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--composites", type=int, default=0, help="also N composites of the split (needs --data)")
    parser.add_argument("--candidates", type=int, default=0, help="sample K answers per composite: pairwise mask Dice")
    parser.add_argument("--cache", default=None, help="feature cache (trainers.features) to skip encoding")
    parser.add_argument("--json", default=None, help="write per-image records and the summary here")
    parser.add_argument("--gallery", default=None, help="PNG of the best and worst overlays (composites: *-composites.png)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the checkpoint's ModelConfig for this run, e.g. box_prompt=never")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder-backend", default="auto", help="auto | eager | onnxruntime | openvino")
    args = parser.parse_args(argv)
    if args.folder and not args.question:
        parser.error("--folder needs --question (what to ask about those images)")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    from coreseg.config import DEFAULT_CHECKPOINT, overridden

    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, args.device)
    try:
        predictor.model.config = overridden(predictor.model.config, args.set)
    except ValueError as error:
        parser.error(f"--set {error}")
    predictor.model.segmenter.use_encoder_backend(args.encoder_backend, args.threads)
    items = gather_items(args)
    if not items and not args.composites:
        raise SystemExit("no images to evaluate: give --data and/or --folder")
    records, answers, examples = evaluate(predictor, items, tuple(args.methods.split(",")), args.question, args.cache,
                                          keep_images=1 if args.gallery else 0)
    composite_examples = []
    if args.composites:
        probe = mean_probe(answers) if answers and "constant_probe" in args.methods else None
        more, composite_examples = evaluate_composites(predictor, args.data, args.split, args.composites, args.cache,
                                                       args.candidates, probe, keep_images=1 if args.gallery else 0)
        records += more
    summary = summarise(records)
    print(f"model {predictor.model_version} ({'trained' if predictor.trained else 'UNTRAINED'}), "
          f"split {args.split}, {len(items)} images, {args.composites} composites")
    print(markdown_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model_version": predictor.model_version, "split": args.split,
                                               "summary": summary, "records": records}, indent=1, default=str))
    if args.gallery:
        save_gallery(examples, args.gallery)
        if composite_examples:
            save_composite_gallery(composite_examples, args.gallery.replace(".png", "-composites.png"))


if __name__ == "__main__":
    main()
