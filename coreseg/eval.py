"""Evaluation on labelled images: the CORE-Seg path against its baselines, on the same images.

    python -m coreseg.eval --data ../shared/data --split val [--sets busbra,kvasir,ph2] [--limit N]
        [--checkpoint DIR] [--json OUT] [--gallery PNG] [--folder DIR --question "…"] [--cache DIR]

Methods (each on every image):
  probe       CORE-Seg: the `<seg>` probe alone drives the trained decoder (the boxes are not used)
  probe_box   the probe together with the answer's first box
  cascade     the model's own first box → the pretrained LiteMedSAM (Seg-Zero's cascade)
  litemedsam  the pretrained LiteMedSAM with a whole-image box (no reasoning at all)
Metrics per image: Dice, IoU, whether the answer parses, box F1 (Hungarian, IoU ≥ 0.5), failure
(Dice = 0 or unparsable) and reasoning accuracy (do the stated location, size, shape and conclusion
agree with the truth measured on the expert mask). Empty-target rule: see coreseg.metrics.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coreseg.config import SegmenterConfig
from coreseg.datasets import LabelledImage, load_folder, load_split, read_image, read_mask
from coreseg.embedding_cache import pixel_key
from coreseg.geometry import Frames
from coreseg.metrics import dice, score_sample
from coreseg.modeling.segmenter import Segmenter
from coreseg.predictor import CoreSegPredictor

METHODS = ("probe", "probe_box", "cascade", "litemedsam")


def _box_decode(baseline: Segmenter, embedding: torch.Tensor, box, size: tuple[int, int]) -> np.ndarray:
    frames = Frames(size, image_size=baseline.image_size)
    with torch.no_grad():
        low_res, _ = baseline.decode(embedding, boxes=torch.tensor([frames.box(box, "image", "segmenter")],
                                                                   dtype=torch.float32))
    return frames.mask(low_res[0])


def question_for(item: LabelledImage, fixed: str | None) -> str:
    """A fixed question when given, else one drawn from the set's bank with a per-image seed."""
    if fixed:
        return fixed
    from coreseg.questions import sample_question

    return sample_question(item.set_name, item.labels, random.Random(item.image_id))


def evaluate(predictor: CoreSegPredictor, items: list[LabelledImage], methods=METHODS, question: str | None = None,
             cache_dir: str | None = None, keep_images: int = 0) -> tuple[list[dict], list[dict]]:
    """Score every method on every item. Returns (records, examples) where examples keep the
    image, masks and answer of each item for the gallery (only when keep_images > 0)."""
    from trainers.reasoning import check_statements, describe_lesion

    baseline = Segmenter(SegmenterConfig()).eval() if {"cascade", "litemedsam"} & set(methods) else None
    shares_encoder = predictor.model.config.segmenter.kind == "litemedsam"
    records, examples = [], []
    for item in tqdm(items, desc="evaluate"):
        image, truth = read_image(item), read_mask(item)
        size = truth.shape
        if cache_dir:
            cached = Path(cache_dir) / item.set_name / f"{item.image_id}.npz"
            if cached.exists():
                with np.load(cached) as f:
                    emb = torch.from_numpy(f["embedding"].astype(np.float32))[None].to(predictor.device)
                predictor.cache.put(pixel_key(image, predictor.model_version), emb)
        q = question_for(item, question)
        facts = describe_lesion(image, truth)
        truth_boxes = list(facts.boxes)
        candidate = predictor.predict(image, q, n_candidates=1, temperature=0.0)[0]
        parsed = candidate.parsed
        answer = parsed.answer
        pred_boxes = list(answer.boxes) if answer else []
        checks = check_statements(answer.reasoning if answer else "", facts, item.set_name, item.labels)
        masks = {}
        if "probe" in methods:
            masks["probe"] = candidate.mask
        if "probe_box" in methods:
            masks["probe_box"] = predictor.score_completions(image, q, [candidate.token_ids], box_prompt=True)[0].mask
        if baseline is not None:
            embedding = predictor.embedding(image) if shares_encoder else baseline.encode(image)
            if "cascade" in methods:
                box = pred_boxes[0] if pred_boxes else (0, 0, size[1], size[0])
                masks["cascade"] = _box_decode(baseline, embedding, box, size)
            if "litemedsam" in methods:
                masks["litemedsam"] = _box_decode(baseline, embedding, (0, 0, size[1], size[0]), size)
        for method, mask in masks.items():
            uses_text = method != "litemedsam"
            s = score_sample(mask, truth, pred_boxes if uses_text else [], truth_boxes,
                             parsed=parsed.ok if uses_text else True)
            records.append({"set": item.set_name, "image": item.image_id, "method": method, "question": q,
                            "dice": s.dice, "iou": s.iou, "parsed": s.parsed, "failed": s.failed,
                            "box_f1": s.box_f1 if uses_text else None,
                            "reasoning": checks if uses_text else None,
                            "parse_errors": list(parsed.errors) if uses_text else []})
        if keep_images and "probe" in masks:
            examples.append({"item": item, "image": image, "truth": truth, "mask": masks["probe"],
                             "boxes": pred_boxes, "dice": dice(masks["probe"], truth)})
    return records, examples


def summarise(records: list[dict]) -> dict:
    """{set: {method: metrics}} plus an 'overall' set."""
    grouped = defaultdict(list)
    for r in records:
        grouped[(r["set"], r["method"])].append(r)
        grouped[("overall", r["method"])].append(r)
    out: dict = defaultdict(dict)
    for (set_name, method), rows in grouped.items():
        m = {"n": len(rows), "dice": float(np.mean([r["dice"] for r in rows])),
             "iou": float(np.mean([r["iou"] for r in rows])), "failure_rate": float(np.mean([r["failed"] for r in rows]))}
        f1 = [r["box_f1"] for r in rows if r["box_f1"] is not None]
        m["box_f1"] = float(np.mean(f1)) if f1 else None
        checks = [v for r in rows if r["reasoning"] for v in r["reasoning"].values()]
        m["reasoning_accuracy"] = float(np.mean(checks)) if checks else None
        out[set_name][method] = m
    return dict(out)


def markdown_table(summary: dict) -> str:
    lines = ["| set | method | n | mDice | mIoU | failure | box F1 | reasoning acc. |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for set_name in sorted(summary, key=lambda s: (s == "overall", s)):
        for method in METHODS:
            m = summary[set_name].get(method)
            if m:
                lines.append(f"| {set_name} | {method} | {m['n']} | {fmt(m['dice'])} | {fmt(m['iou'])} | "
                             f"{fmt(m['failure_rate'])} | {fmt(m['box_f1'])} | {fmt(m['reasoning_accuracy'])} |")
    return "\n".join(lines)


def save_gallery(examples: list[dict], path: str, per_side: int = 4) -> None:
    """Best and worst probe overlays (red: prediction, green: expert outline, yellow: boxes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from coreseg.overlay import draw_overlay

    ranked = sorted(examples, key=lambda e: e["dice"])
    chosen = ranked[::-1][:per_side] + ranked[:per_side]
    fig, axes = plt.subplots(2, per_side, figsize=(4 * per_side, 8))
    for ax, ex in zip(axes.flat, chosen):
        ax.imshow(draw_overlay(ex["image"], ex["mask"], ex["boxes"], truth=ex["truth"]))
        ax.set_title(f"{ex['item'].set_name} {ex['item'].image_id[:14]}  Dice {ex['dice']:.2f}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("best (top) and worst (bottom) by Dice — red: model, green: expert, yellow: answer boxes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def gather_items(args) -> list[LabelledImage]:
    items = []
    if args.data:
        for set_name in args.sets.split(","):
            items += load_split(args.data, set_name, args.split)[:args.limit]
    for folder in args.folder or []:
        items += load_folder(folder, Path(folder).name)[:args.limit]
    return items


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder with busbra/, kvasir-seg/, ph2/")
    parser.add_argument("--split", default="val", choices=["train", "val", "all"])
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--folder", action="append", help="any folder with images/ and masks/ (an extra set)")
    parser.add_argument("--question", default=None, help="the question for every image (needed for --folder)")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of each set, in name order")
    parser.add_argument("--checkpoint", default=None, help="default: the shipped compact model")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--cache", default=None, help="feature cache (trainers.features) to skip encoding")
    parser.add_argument("--json", default=None, help="write per-image records and the summary here")
    parser.add_argument("--gallery", default=None, help="PNG of the best and worst overlays")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.folder and not args.question:
        parser.error("--folder needs --question (what to ask about those images)")
    torch.set_num_threads(args.threads)
    from coreseg.config import DEFAULT_CHECKPOINT

    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, args.device)
    items = gather_items(args)
    if not items:
        raise SystemExit("no images to evaluate: give --data and/or --folder")
    records, examples = evaluate(predictor, items, tuple(args.methods.split(",")), args.question, args.cache,
                                 keep_images=1 if args.gallery else 0)
    summary = summarise(records)
    print(f"model {predictor.model_version} ({'trained' if predictor.trained else 'UNTRAINED'}), "
          f"split {args.split}, {len(items)} images")
    print(markdown_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"model_version": predictor.model_version, "split": args.split,
                                               "summary": summary, "records": records}, indent=1))
    if args.gallery:
        save_gallery(examples, args.gallery)


if __name__ == "__main__":
    main()
