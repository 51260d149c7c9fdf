"""Train the box writer (`coreseg/modeling/box_writer.py`) of a checkpoint, everything else frozen.

    python -m trainers.box_writer --data ../shared/data --cache ~/.cache/coreseg/features --init CKPT --out DIR \
        [--composites 300] [--reads-text] [--text-swaps] [--epochs 4] [--lr 1e-3] [--limit N]

The reasoner reads SFT targets teacher-forced, without gradient; at the k-th opening bracket of each answer the
writer learns the k-th box written there (`CoreSeg.box_writer_loss`). A new writer starts from the `<seg>` box
pointer's weights. Text, probe and decoder are untouched: the masks change only through the boxes the `<seg>` state
then reads. Every epoch writes `OUT/last` and reports, on the held-out development cases (`coreseg.datasets.held_out`,
never the validation split), the mean IoU of the written boxes with the target's boxes.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from coreseg.allocator import keep_freed_memory
from coreseg.checkpoint import load_checkpoint, read_info, save_checkpoint
from coreseg.datasets import DEV_EVERY, held_out
from coreseg.modeling.core_seg import CoreSeg
from trainers.composites import development_composites, training_composites
from trainers.samples import Case, attach_embeddings, load_cases
from trainers.sft import draw_samples, encode_batch


def teacher_forced(model: CoreSeg, drawn):
    """(hidden, image states, completions, per-completion boxes, targets) of drawn samples, without gradient."""
    questions, completions, targets = encode_batch(model, drawn)
    embeddings = torch.cat([case.embedding for case, _ in drawn])
    with torch.no_grad():
        _, hidden, image = model.reasoner.forward_completions([case.image for case, _ in drawn], embeddings,
                                                              questions, completions)
    return hidden, image, completions, [sample.boxes for _, sample in drawn], targets


@torch.no_grad()
def development_iou(model: CoreSeg, cases: list[Case], batch_size: int) -> float:
    """Mean IoU of the boxes written at each opening bracket with the boxes the targets write there."""
    rng, ious = random.Random(0), []
    for i in range(0, len(cases), batch_size):
        hidden, image, completions, boxes, _ = teacher_forced(model, draw_samples(cases[i:i + batch_size], rng,
                                                                                  model.config.box_frame))
        for h, im, completion, truth in zip(hidden, image, completions, boxes):
            for at, box in zip(model.brackets.openings(completion), truth):
                written, _ = model.box_writer(h[at][None], [im], reach=model.config.box_writer_reach, texts=[h[:at + 1]])
                goal = torch.tensor([box], dtype=torch.float32) / model.config.box_frame
                ious.append(float(box_iou(written.float(), goal)[0, 0]))
    return float(np.mean(ious)) if ious else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True, help="feature cache (trainers.features, trainers.composites)")
    parser.add_argument("--init", required=True, help="the checkpoint whose writer is trained (grown if it has none)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--limit", type=int, default=None, help="at most N training images per set")
    parser.add_argument("--composites", type=int, default=0, help="and up to N cached training composites")
    parser.add_argument("--reads-text", action="store_true", help="grow a text reader (text_reader.py): the bracket's "
                        "state reads the reasoning before it")
    parser.add_argument("--text-swaps", action="store_true", help="draw each composite also under a question naming "
                        "another tile, and that answer under the first question (trainers.sft's --paired-questions "
                        "--text-swaps): where question and reasoning disagree, the box follows the reasoning")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-limit", type=int, default=60, help="at most N development cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(args.seed)

    cases = load_cases(args.data, args.cache, args.sets.split(","), "train", args.limit)
    if args.composites:
        composites = training_composites(args.cache, args.data, args.composites)
        dev_composites = development_composites(args.cache)
    cases, dev = held_out(cases, DEV_EVERY)
    dev = dev[:args.val_limit]
    if args.composites:
        cases += composites
        dev += dev_composites[:max(1, args.val_limit // 4)]
    if not cases:
        raise SystemExit("no training cases: run python -m trainers.features first")
    base, _ = load_checkpoint(args.init, device="cpu")
    model = base.with_box_writer(reads_text=args.reads_text).eval()  # eval: no dropout in the frozen reasoner
    attach_embeddings(cases + dev, model)
    optimizer = torch.optim.AdamW(model.box_writer.parameters(), lr=args.lr, weight_decay=0.01)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    version = args.version or f"{read_info(args.init).model_version}-writer"
    print(f"{len(cases)} training cases, {len(dev)} development cases; development IoU at the start: "
          f"{development_iou(model, dev, args.batch_size):.3f}")
    total, step = args.epochs * ((len(cases) + args.batch_size - 1) // args.batch_size), 0
    for epoch in range(args.epochs):
        rng = random.Random(args.seed * 1000 + epoch)
        order = rng.sample(cases, len(cases))
        bar = tqdm(range(0, len(order), args.batch_size), desc=f"box writer epoch {epoch + 1}/{args.epochs}")
        for i in bar:
            for group in optimizer.param_groups:  # cosine decay to a tenth
                group["lr"] = args.lr * (0.1 + 0.45 * (1 + np.cos(np.pi * step / max(1, total))))
            hidden, image, completions, boxes, targets = teacher_forced(
                model, draw_samples(order[i:i + args.batch_size], rng, model.config.box_frame,
                                    paired=args.text_swaps, swaps=args.text_swaps))
            loss = model.box_writer_loss(hidden, completions, image, boxes, targets)
            if loss.requires_grad:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.box_writer.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.set_postfix(loss=f"{float(loss):.3f}")
        iou = development_iou(model, dev, args.batch_size)
        print(f"epoch {epoch + 1}: " + json.dumps({"dev_box_iou": round(iou, 4)}))
        save_checkpoint(model, out / "last", f"{version}-e{epoch + 1}", metrics={"dev_box_iou": iou},
                        parent=read_info(args.init).model_version)


if __name__ == "__main__":
    main()
