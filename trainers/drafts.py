"""Guesses for a checkpoint's speculative sampling (`coreseg.modeling.drafting`), learned from its own answers.

    python -m trainers.drafts --checkpoint assets/coreseg-compact --data ../shared/data \
        --cache ~/.cache/coreseg/features --limit 40

samples the model's answers (greedy, and four at the app's temperature) to training questions about training
images and writes `drafts.json` into the checkpoint; the weights are untouched, and the answers the model gives
are the same with or without it (only how many tokens a forward pass yields changes). SFT and GRPO checkpoints
carry the table they learned while training; this builds one for a checkpoint written before there were drafts,
or refreshes it from the model's own phrasing.
"""
from __future__ import annotations

import argparse
import random

import torch
from tqdm import tqdm

from coreseg.checkpoint import existing_checkpoint, load_checkpoint
from coreseg.modeling.drafting import NgramDrafter


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True, help="feature cache (trainers.features)")
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--limit", type=int, default=40, help="training images per set")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from trainers.samples import load_cases

    torch.set_num_threads(args.threads)
    path = existing_checkpoint(args.checkpoint)
    model, info = load_checkpoint(path, device="cpu")
    reasoner = model.reasoner
    if not hasattr(reasoner, "drafter"):
        raise SystemExit(f"{path} is a {info.config.reasoner.kind} checkpoint: only the compact reasoner drafts")
    reasoner.drafter = NgramDrafter()  # its own answers only
    cases = load_cases(args.data, args.cache, args.sets.split(","), "train", args.limit)
    rng, generator = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for case in tqdm(cases, desc="answers"):
            question = case.sample(rng, model.config.box_frame).question
            for n, temperature in ((1, 0.0), (4, args.temperature)):
                for completion in reasoner.sample(None, case.embedding, question, n, temperature, args.top_p,
                                                  generator).ids:
                    reasoner.drafter.learn(completion)
    reasoner.drafter.save(path / "drafts.json")
    print(f"wrote {path / 'drafts.json'}: {len(reasoner.drafter)} contexts from {len(cases)} images")


if __name__ == "__main__":
    main()
