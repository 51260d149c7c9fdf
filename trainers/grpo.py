"""Stage 2, GRPO: sample a group of answers per case, reward them, push the policy toward the
better ones, keep a supervised anchor on the mask path (DiceCE, the probe's box and pointer).

Ground-truth mode (labelled images):
    python -m trainers.grpo --data ../shared/data --cache runs/features --base CKPT --out DIR \
        [--steps 100] [--group-size 4] [--beta 0.01] [--lr 2e-5] [--resume]

A step, as plain as we could write it:
  1. for each case, sample G completions from the current policy (their log-probs are recorded);
  2. teacher-force them through the frozen reference (the policy as training started: the SFT
     model) and the policy (log-probs with grad, re-scored with each completion's own sampling
     temperature and top-p; `<seg>` probes → masks, no `<seg>` → empty mask); the completions of
     one image share one vision pass;
  3. rewards = format + detect (soft F1 of Hungarian-matched boxes) + adaptive dual-granularity segment
     against the truth, + self-consistency (claims and boxes against the completion's own mask), see
     `trainers.rewards`; group-normalised advantages (groups may differ in size); groups whose rewards
     span less than `min_reward_spread` of the reward range are dropped and counted (`groups_dropped`);
  4. loss = clipped-ratio policy term + β·KL (k3) per token, normalised over all kept tokens (DAPO),
     + DiceCE of every completion's mask against the truth + `--box-weight` × its probe box's and box pointer's
     loss, so that pointing is trained on the texts the policy writes (measured from compact-sft7, 150 steps:
     with it absent kinds 91.4 % empty against 62.9 % without, probe box IoU 0.503 against 0.455; neither run
     kept sft7's referring accuracy, README).
Writes `DIR/log.csv`, `DIR/curves.png` (reward and KL), a checkpoint `DIR/last` (and `DIR/final`).
The engine (config, groups, loss, loop) is `trainers.grpo_loop`, shared with `trainers.feedback`.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from coreseg.allocator import keep_freed_memory
from coreseg.checkpoint import load_checkpoint, save_checkpoint
from coreseg.datasets import DEV_EVERY, held_out
from coreseg.precision import add_precision_argument
from trainers.grpo_loop import (GRPOConfig, Group, ReferencePolicy, StepLog, _advantages,  # noqa: F401
                                _token_logps, case_index, decoder_bf16, grpo_loss, plot_curves,
                                relative_human_term, sample_group, train_groups)
from trainers.rewards import RewardWeights


def ground_truth_groups(cases, cfg: GRPOConfig, batch_cases: int, seed: int):
    """`make_groups` for labelled images: each step takes the next `batch_cases` cases."""
    order = random.Random(seed).sample(cases, len(cases))

    def make(step, predictor, generator):
        groups = []
        for j in range(batch_cases):
            index = case_index(step, j, batch_cases)
            case = order[index % len(order)]
            frame = predictor.model.config.box_frame
            rng = random.Random(f"{seed}-{step}-{index}")  # per case: the same wording however processes split a step
            sample = case.sample(rng, frame)
            embedding = case.embedding.to(predictor.device)
            ids, logps = sample_group(predictor, case.image, embedding, sample.question, cfg, generator, case.size)
            columns = {**consistency_columns(case, len(ids)), "pointing": [sample.pointing] * len(ids)}
            written = predictor.model.encode_target(sample.answer) if cfg.text_weight else None  # only when trained on
            anchors = None
            if cfg.anchor_follows_text and hasattr(case, "named_in") and sample.targets:  # an absent kind: empty
                picked = [case.named_in(predictor.decode_text(c)) for c in ids]
                anchors = torch.cat([sample.target if named is None else case.target(named) for named in picked])
            groups.append(Group(case.image, case.embedding, sample.target, sample.boxes, sample.question, ids, logps,
                                columns, target_ids=written, anchor_targets=anchors, size=case.size))
        return groups

    return make


def consistency_columns(case, n: int) -> dict:
    """Where the self-consistency reward measures an answer's claims: the aspect-preserving thumbnail
    frame the training reasoning was measured on (not the squashed box frame), with the case's modality."""
    from trainers.reasoning import MODALITY_OF

    thumb = getattr(case, "thumb", None)
    size = getattr(case, "thumb_size", None) or (tuple(thumb.shape[:2]) if thumb is not None else None)
    return {"measure_size": [size] * n, "modality": [MODALITY_OF.get(getattr(case, "set_name", None))] * n}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="labelled data folder (ground-truth mode)")
    parser.add_argument("--cache", default=None, help="feature cache (trainers.features); default: encode here")
    parser.add_argument("--db", help="feedback database (feedback mode; see trainers.feedback)")
    parser.add_argument("--base", default=None, help="checkpoint to start from (--db: default the model the "
                        "store's latest feedback was collected on, else the shipped model; --data: required)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--composites", type=int, default=0, help="mix in up to N cached training composites")
    parser.add_argument("--dev-every", type=int, default=DEV_EVERY, help="skip the images and composites SFT held out "
                        "(its development set; `python -m coreseg.eval --split dev` scores the images)")
    parser.add_argument("--steps", type=int, default=None, help="default: 100 (ground truth), 2 passes (feedback)")
    parser.add_argument("--batch-cases", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--freeze-reasoner", action="store_true", help="keep the language model as it is and train "
                        "the mask path (adapter, box pointer, decoder) by the supervised anchor on its own sampled texts")
    parser.add_argument("--freeze-mask-path", action="store_true", help="train the language model only: the "
                        "adapter, box pointer and decoder stay as the base left them (GRPO's mask path drifted back to "
                        "the salient lesion while the text still named the question's panel, grpo15)")
    parser.add_argument("--anchor-follows-text", action="store_true", help="composites: the supervised anchor "
                        "draws each completion's mask towards the tile its reasoning names, not the question's (an "
                        "anchor on the question's tile taught the mask path to overrule the text, grpo13/15)")
    parser.add_argument("--box-weight", type=float, default=0.3, help="the probe box's and pointer's loss in the "
                        "supervised anchor (beside DiceCE)")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--text-weight", type=float, default=0.0, help="add SFT's text loss on each case's written "
                        "answer (keeps the composite reasoning, which the rewards alone let drift)")
    parser.add_argument("--human-weight", type=float, default=0.5)
    parser.add_argument("--consistency-weight", type=float, default=1.0, help="weight of the self-consistency "
                        "reward (claims and boxes against the completion's own mask) beside format, detect, segment "
                        "and pointing at 1")
    add_precision_argument(parser)   # mask-decoder autocast: --precision auto|fp32|bf16; --bf16 alias
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-every", type=int, default=20, help="checkpoint (for --resume) every N steps")
    parser.add_argument("--version", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(args.seed)
    if args.db:
        from trainers.feedback import run_rounds

        run_rounds(args)
        return
    if not args.data:
        parser.error("give --data (ground-truth mode) or --db (feedback mode)")
    if not args.base:
        parser.error("--data needs --base CKPT (e.g. an SFT run's OUT/last)")
    from trainers.samples import attach_embeddings, load_cases

    cfg = GRPOConfig(group_size=args.group_size, beta=args.beta, lr=args.lr, temperature=args.temperature,
                     box_weight=args.box_weight, freeze_reasoner=args.freeze_reasoner,
                     freeze_mask_path=args.freeze_mask_path, text_weight=args.text_weight,
                     anchor_follows_text=args.anchor_follows_text,
                     weights=RewardWeights(consistency=args.consistency_weight),
                     bf16_decoder=decoder_bf16(args.precision))
    model, info = load_checkpoint(args.base, device="cpu")
    full = model.config.reasoner.kind != "compact"  # Qwen reads the image itself
    cases, _ = held_out(load_cases(args.data, args.cache, args.sets.split(","), "train", args.limit, with_images=full),
                        args.dev_every)
    if args.composites:  # without the development images, as SFT holds them out
        from trainers.composites import training_composites

        cases += training_composites(args.cache, args.data, args.composites, args.dev_every)
    if not cases:
        raise SystemExit(f"no training images under {args.data}" + (f" with features in {args.cache}" if args.cache
                                                                     else ""))
    attach_embeddings(cases, model)
    version = args.version or f"grpo-{time.strftime('%Y%m%d-%H%M')}"
    out = Path(args.out)
    (out).mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"base": str(args.base), "base_version": info.model_version,
                                              "config": asdict(cfg), "args": vars(args)}, indent=1, default=str))
    last = train_groups(model, ground_truth_groups(cases, cfg, args.batch_cases, args.seed), args.steps or 100, cfg, out,
                        version, resume=args.resume, save_every=args.save_every, parent=info.model_version)
    model, _ = load_checkpoint(last, device="cpu")
    final = save_checkpoint(model, out / "final", version, parent=info.model_version)
    print(f"wrote {final} ({version}) and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
