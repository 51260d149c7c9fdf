"""Stage 1, SFT ("CoT-based semantic alignment"): text cross-entropy + DiceCE on the probe's mask.

    python -m trainers.sft --data ../shared/data --cache runs/features --out runs/sft \
        [--profile compact|full] [--init CKPT] [--epochs 4] [--batch-size 8] [--lr 5e-4] [--resume]
    python -m trainers.sft --db feedback.db --init CKPT --out DIR …   (accepted feedback: the edited or
        chosen reasoning with boxes from the accepted mask, DiceCE against the accepted mask)

Trains the compact reasoner (or LoRA and the answer tokens' embedding rows), the adapter and the mask
decoder; the image encoder is frozen, read from the feature cache (`--cache`, from `python -m
trainers.features`) or, without one, run here once per image. Each target ends with the end-of-turn
token, so the model learns to stop. One checkpoint per epoch
(`OUT/epoch-K`, and `OUT/last`), a CSV of the losses, and `--resume` from the last epoch. Runs under
`accelerate launch` unchanged: each process takes its share of every epoch's cases.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from coreseg.allocator import keep_freed_memory
from coreseg.checkpoint import load_checkpoint, read_info, save_checkpoint
from coreseg.config import ModelConfig, ReasonerConfig
from coreseg.datasets import DEV_EVERY, held_out
from coreseg.geometry import LOW_RES, Frames
from coreseg.metrics import dice, mask_box
from coreseg.modeling.core_seg import CoreSeg
from coreseg.modeling.tokenizer import END_OF_TURN, build_tokenizer
from coreseg.precision import add_precision_argument, use_bf16
from trainers.composites import CompositeCase, development_composites, training_composites
from trainers.samples import Case, Sample, attach_embeddings, load_cases



def shard(order: list, rank: int, world: int) -> list:
    """This process's share of one epoch's order, padded from its start (as `DistributedSampler` does) so that
    every process takes the same number of steps: DDP's gradient all-reduce needs every process in every step."""
    padded = order + order[:(-len(order)) % world]
    return padded[rank::world]

def prompt_mix(targets: list[torch.Tensor], rng: random.Random, image_size: int, share: float):
    """With probability `share` per batch, user-style prompts from the truth: a jittered box, and
    half of those times also one positive and one negative click (teaches refinement)."""
    if rng.random() >= share:
        return None, None
    boxes, coords, labels = [], [], []
    frames = Frames((LOW_RES, LOW_RES), image_size=image_size)  # the targets are in the decoder's frame
    for target in targets:
        target = target[0, 0].numpy() > 0.5
        ys, xs = np.nonzero(target)
        x1, y1, x2, y2 = mask_box(target) or frames.whole_box("low_res")
        w, h = x2 - x1, y2 - y1
        jitter = [rng.uniform(-0.1, 0.1) * d for d in (w, h, w, h)]
        corners = frames.points([(x1 + jitter[0], y1 + jitter[1]), (x2 + jitter[2], y2 + jitter[3])], "low_res",
                                "segmenter")
        boxes.append([*corners[0], *corners[1]])
        inside = rng.randrange(len(xs)) if len(xs) else 0
        out_y, out_x = np.nonzero(~target)
        outside = rng.randrange(len(out_x))
        positive = (xs[inside], ys[inside]) if len(xs) else (0, 0)
        coords.append([list(p) for p in frames.points([positive, (out_x[outside], out_y[outside])], "low_res",
                                                      "segmenter")])
        labels.append([1, 0])
    boxes = torch.tensor(boxes, dtype=torch.float32)
    points = (torch.tensor(coords, dtype=torch.float32), torch.tensor(labels)) if rng.random() < 0.5 else None
    return boxes, points


PAIR_TRIES = 8  # draws to find a composite's second question that names other tiles


def draw_samples(cases: list[Case], rng: random.Random, frame: int, paired: bool = False,
                 swaps: bool = False) -> list[tuple[Case, Sample]]:
    """A drawn question per case; with `paired`, a composite is drawn twice with questions that name different
    tiles (a counterfactual pair: one image, two questions, two answers and masks), so that only the question tells
    the two apart (without pairs and `token_weights` the reasoner never learned to read "left"/"right": it wrote
    the panel its image prior chose whatever the question said). With `swaps` (and `paired`), a third draw puts
    the second answer under the first question, text not taught (`text_weight` 0), target the second answer's:
    where question and reasoning disagree, the mask is taught to follow the reasoning."""
    drawn = []
    for case in cases:
        first = case.sample(rng, frame)
        drawn.append((case, first))
        if paired and isinstance(case, CompositeCase):
            other = (case.sample(rng, frame) for _ in range(PAIR_TRIES))
            second = next((s for s in other if s.targets != first.targets), None)
            if second is not None:
                drawn.append((case, second))
                if swaps and first.pointing and second.pointing:
                    drawn.append((case, replace(second, question=first.question, text_weight=0.0)))
    return drawn


def encode_batch(model: CoreSeg, drawn: list[tuple[Case, Sample]]):
    """Drawn samples → (questions, completions, targets B × 1 × 256 × 256)."""
    questions = [sample.question for _, sample in drawn]
    completions = [model.encode_target(sample.answer) for _, sample in drawn]  # end-of-turn: stopping is trained
    return questions, completions, torch.cat([sample.target for _, sample in drawn])


def token_weights(model: CoreSeg, drawn: list[tuple[Case, Sample]], weight: float) -> list[torch.Tensor] | None:
    """Per-token text-loss weights (the pointing weight and the text swaps' zeros in one place): `weight` on the
    tokens of a composite's pointing sentence (the one that picks the panel, which the mask then follows), 1
    elsewhere, all times the sample's `text_weight` (0 for a text swap);
    None when every weight would be 1. Measured (150 steps of counterfactual pairs from compact-grpo19): at weight 1
    the reasoner's "left"/"right" after "points to the" still barely depended on the question (P 0.51 vs 0.39), at
    10 it followed it (0.98 vs 0.01)."""
    if weight == 1 and all(sample.text_weight == 1 for _, sample in drawn):
        return None
    weights = []
    for _, sample in drawn:
        encoded = model.reasoner.tokenizer(sample.answer + END_OF_TURN, add_special_tokens=False,
                                           return_offsets_mapping=True)
        row = torch.ones(len(encoded["input_ids"]))
        if sample.pointing and sample.pointing in sample.answer:
            start = sample.answer.index(sample.pointing)
            end = start + len(sample.pointing)
            for k, (a, b) in enumerate(encoded["offset_mapping"]):
                if a < end and b > start:
                    row[k] = weight
        weights.append(row * sample.text_weight)
    return weights


@torch.no_grad()
def validate(model: CoreSeg, cases: list[Case], batch_size: int, seed: int = 0) -> dict:
    """Teacher-forced validation: text loss and the probe mask's Dice (decoder frame)."""
    model.eval()
    rng = random.Random(seed)
    lm, dices = [], []
    for i in range(0, len(cases), batch_size):
        drawn = draw_samples(cases[i:i + batch_size], rng, model.config.box_frame)
        batch = [case for case, _ in drawn]
        questions, completions, targets = encode_batch(model, drawn)
        device = next(model.segmenter.mask_decoder.parameters()).device  # cases live on the CPU
        out = model([c.image for c in batch], torch.cat([c.embedding for c in batch]).to(device), questions, completions,
                    targets.to(device))
        lm.append(float(out["lm"]))
        pred = (out["mask_logits"] > 0)[:, 0].cpu().numpy()
        target = torch.nn.functional.interpolate(targets, size=pred.shape[-2:]) > 0.5
        dices += [dice(p, t) for p, t in zip(pred, target[:, 0].cpu().numpy())]
    model.train()
    return {"val_lm": float(np.mean(lm)) if lm else float("nan"), "val_dice": float(np.mean(dices)) if dices else float("nan")}


def _full_checkpoint(path) -> bool:
    """Whether the checkpoint at `path` (if any) is of the full profile."""
    from coreseg.checkpoint import existing_checkpoint, read_info

    return bool(path) and existing_checkpoint(path).exists() and read_info(path).config.reasoner.kind != "compact"


def build_model(args, cases: list[Case]) -> CoreSeg:
    if args.init:
        model, _ = load_checkpoint(args.init, device="cpu")
        return model.with_box_pointer() if args.box_pointer else model
    if args.profile == "full":
        from dataclasses import replace

        config = ModelConfig.full(args.pretrained)
        if args.max_new_tokens:
            config = replace(config, reasoner=replace(config.reasoner, max_new_tokens=args.max_new_tokens))
        return CoreSeg.build(config)
    rng = random.Random(args.seed)
    corpus = [text for case in cases[:600] for sample in [case.sample(rng, 256)] for text in (sample.question, sample.answer)]
    reasoner = ReasonerConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                              intermediate_size=args.hidden * 3)
    return CoreSeg.build(ModelConfig(reasoner=reasoner), tokenizer=build_tokenizer(corpus))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder with busbra/, kvasir-seg/, ph2/")
    parser.add_argument("--db", help="feedback database: train on its accepted cases (needs --init)")
    parser.add_argument("--cache", default=None, help="feature cache from trainers.features (default: encode "
                        "the images here with the model's own encoder)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--profile", choices=["compact", "full"], default="compact")
    parser.add_argument("--pretrained", default="Qwen/Qwen2.5-VL-3B-Instruct", help="full profile: hub id or folder")
    parser.add_argument("--init", default=None, help="start from this checkpoint")
    parser.add_argument("--box-weight", type=float, default=1.0, help="weight of the probe box's loss (5·L1 + 2·GIoU, "
                        "+ the pointer's cross-entropy) against the text loss")
    parser.add_argument("--box-pointer", action="store_true", help="with --init: grow a checkpoint written before the "
                        "box pointer into it (new models always have it)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="full profile: answer length cap "
                        "(default: the config's)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--decoder-lr", type=float, default=1e-4)
    add_precision_argument(parser)   # --precision auto|fp32|bf16 (bf16 only where measured faster); --bf16 alias
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--prompt-share", type=float, default=0.3, help="share of batches with box/click prompts")
    parser.add_argument("--limit", type=int, default=None, help="at most N training images per set")
    parser.add_argument("--val-limit", type=int, default=40, help="at most N development cases")
    parser.add_argument("--dev-every", type=int, default=DEV_EVERY, help="every N-th training image (and composite) is "
                        "held out as the development set that chooses checkpoints (never the reported val split)")
    parser.add_argument("--composites", type=int, default=0, help="mix in up to N cached training composites "
                        "(python -m trainers.composites; needs --cache)")
    parser.add_argument("--composite-repeats", type=int, default=2, help="draws of each composite per epoch")
    parser.add_argument("--paired-questions", action="store_true", help="draw each composite of a batch twice, with "
                        "questions naming different tiles (counterfactual pairs)")
    parser.add_argument("--text-swaps", action="store_true", help="with --paired-questions: also each pair's second "
                        "answer under the first question, the mask taught to follow it (the text not taught)")
    parser.add_argument("--pointing-weight", type=float, default=1.0, help="text-loss weight of a composite's "
                        "pointing sentence (the panel the question names)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--version", default=None, help="model version name (default: sft-<date>)")
    args = parser.parse_args(argv)
    if args.text_swaps and not args.paired_questions:
        parser.error("--text-swaps swaps the answers of --paired-questions' pairs: give both")

    from accelerate import Accelerator, DistributedDataParallelKwargs

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    # the decoder's IoU head (and, per batch, the prompt paths) get no gradient from this loss
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    bf16 = use_bf16(args.precision, accelerator.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = args.sets.split(",")
    with_images = args.profile == "full" or _full_checkpoint(args.init) or (
        args.resume and _full_checkpoint(out / "last"))  # Qwen reads the image itself
    if args.db:
        from trainers.feedback import load_feedback_cases, snapshot_store, split_held_out

        if not args.init:
            parser.error("--db needs --init CKPT (the model the feedback was collected on)")
        cases, val = split_held_out(load_feedback_cases(snapshot_store(args.db, out / "snapshots")))
    elif args.data:
        cases = load_cases(args.data, args.cache, sets, "train", args.limit, with_images=with_images)
        if args.composites:
            if not args.cache:
                parser.error("--composites needs --cache")
            composites = training_composites(args.cache, args.data, args.composites, args.dev_every)
            dev_composites = development_composites(args.cache)
        cases, val = held_out(cases, args.dev_every)
        val = val[::max(1, len(val) // max(1, args.val_limit))][:args.val_limit]
        if args.composites:  # each composite is drawn `composite_repeats` times an epoch, each time another question
            cases += composites * args.composite_repeats
            val += dev_composites[:max(1, args.val_limit // 4)]
    else:
        parser.error("give --data (labelled images) or --db (feedback)")
    if not cases:
        raise SystemExit("no training cases: run python -m trainers.features first (or collect accepted feedback)")
    accelerator.print(f"{len(cases)} training cases, {len(val)} validation cases ({', '.join(sets)})")

    state_file = out / "trainer_state.pt"
    start_epoch, step = 0, 0
    if args.resume and state_file.exists():
        model, _ = load_checkpoint(out / "last", device="cpu")
        state = torch.load(state_file, weights_only=False)
        start_epoch, step = state["epoch"] + 1, state["step"]
    else:
        torch.manual_seed(args.seed)
        model = build_model(args, cases)
        state = None
    attach_embeddings(cases + val, model)  # without a cache (or from feedback): the model's own encoder
    model.train()
    decoder = {id(p) for p in model.segmenter.mask_decoder.parameters()}
    groups = [{"params": [p for p in model.trainable_parameters() if id(p) not in decoder], "scale": 1.0},
              {"params": [p for p in model.trainable_parameters() if id(p) in decoder],
               "scale": args.decoder_lr / args.lr}]  # the pretrained decoder moves more gently
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    steps_per_epoch = math.ceil(len(cases) / accelerator.num_processes / args.batch_size)
    total = steps_per_epoch * args.epochs

    def learning_rate(s: int) -> float:
        """Linear warm-up (50 steps, or a tenth of a short run), then cosine decay to a tenth."""
        warmup = min(50, max(1, total // 10))
        return args.lr * min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / max(1, total)))))
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    image_size = core.segmenter.image_size
    version = args.version or f"sft-{time.strftime('%Y%m%d-%H%M')}"
    parent = read_info(args.init).model_version if args.init else None  # a version, not this machine's path
    # one writer: under `accelerate launch` only the main process keeps the log
    log = (out / "log.csv").open("a", newline="") if accelerator.is_main_process else open(os.devnull, "w")
    writer = csv.writer(log)
    if step == 0 and accelerator.is_main_process:
        writer.writerow(["step", "epoch", "loss", "lm", "mask", "lr", "val_lm", "val_dice", "box"])

    for epoch in range(start_epoch, args.epochs):
        rng = random.Random(args.seed * 1000 + epoch)
        order = shard(rng.sample(cases, len(cases)), accelerator.process_index, accelerator.num_processes)
        bar = tqdm(range(0, len(order), args.batch_size), desc=f"sft epoch {epoch + 1}/{args.epochs}",
                   disable=not accelerator.is_main_process)
        for i in bar:
            drawn = draw_samples(order[i:i + args.batch_size], rng, core.config.box_frame, args.paired_questions,
                                 args.text_swaps)
            batch = [case for case, _ in drawn]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step) * group["scale"]
            questions, completions, targets = encode_batch(core, drawn)
            weights = token_weights(core, drawn, args.pointing_weight)
            if hasattr(core.reasoner, "drafter"):  # its sampling's first guesses: the phrasing it is taught
                for completion in completions:
                    core.reasoner.drafter.learn(completion)
            boxes, points = prompt_mix(list(targets[:, None]), rng, image_size, args.prompt_share)
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=bf16):
                result = model([c.image for c in batch], torch.cat([c.embedding for c in batch]).to(accelerator.device),
                               questions, completions, targets.to(accelerator.device),
                               boxes=None if boxes is None else boxes.to(accelerator.device),
                               points=None if points is None else tuple(p.to(accelerator.device) for p in points),
                               box_weight=args.box_weight, token_weights=weights,
                               answer_boxes=[sample.boxes for _, sample in drawn])
            accelerator.backward(result["loss"])
            accelerator.clip_grad_norm_(core.trainable_parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.set_postfix(lm=f"{float(result['lm']):.3f}", mask=f"{float(result['mask']):.3f}",
                            box=f"{float(result['box']):.3f}")
            if step % 10 == 0:
                writer.writerow([step, epoch, f"{float(result['loss']):.4f}", f"{float(result['lm']):.4f}",
                                 f"{float(result['mask']):.4f}", f"{learning_rate(step):.2e}", "", "",
                                 f"{float(result['box']):.4f}"])
                log.flush()
        if accelerator.is_main_process:
            metrics = validate(core, val, args.batch_size)
            writer.writerow([step, epoch, "", "", "", "", f"{metrics['val_lm']:.4f}", f"{metrics['val_dice']:.4f}", ""])
            log.flush()
            accelerator.print(f"epoch {epoch + 1}: " + json.dumps(metrics))
            for name in (f"epoch-{epoch + 1}", "last"):  # each save is atomic: a kill keeps the previous `last`
                save_checkpoint(core, out / name, f"{version}-e{epoch + 1}", metrics=metrics, parent=parent)
            torch.save({"epoch": epoch, "step": step, "optimizer": optimizer.state_dict()}, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)
        accelerator.wait_for_everyone()
    log.close()


if __name__ == "__main__":
    main()
