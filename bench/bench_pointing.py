"""Does the reasoner read the panel from the question? A counterfactual over the question's place word.

    python bench/bench_pointing.py --cache ~/.cache/coreseg/features [--checkpoint DIR] [--composites 40]

For each validation composite and each of its panels, the model answers "Outline the finding in the <place>
panel." greedily up to "… points to the"; then, teacher-forced on that prefix, the probability of each panel's
place word as the next token(s). A reasoner that reads the question puts its mass on the asked place whatever the
image; one that writes its image prior gives every question of a composite the same distribution. Prints, per
layout, the mean probability of the asked place, of the most likely other place, and the share of questions whose
most likely place is the asked one. (This diagnosed compact-grpo19: two-panel left/right 0.69 on "left" for both
questions; upper/lower 0.95 on the asked word.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PREFIX_END = "points to the"


def place_probability(reasoner, embedding: torch.Tensor, question: str, prefix: list[int], place: str) -> float:
    """P(the tokens of " <place>") after `prefix`, teacher-forced (the product over the place's tokens)."""
    tokenizer = reasoner.tokenizer
    place_ids = tokenizer.encode(f" {place}", add_special_tokens=False)
    logits, _, _ = reasoner.forward_completions([None], embedding, [question], [prefix + place_ids])
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    return float(sum(logp[len(prefix) + k, t] for k, t in enumerate(place_ids)).exp())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="feature cache with composites/val (trainers.composites)")
    parser.add_argument("--checkpoint", default="assets/coreseg-compact")
    parser.add_argument("--composites", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from coreseg.checkpoint import load_checkpoint
    from coreseg.composites import load_composites

    model, info = load_checkpoint(args.checkpoint, device="cpu")
    reasoner = model.eval().reasoner
    rows = defaultdict(list)
    with torch.no_grad():
        for scan in load_composites(args.cache, "val", args.composites):
            places = [t["place"] for t in scan.tiles]
            layout = "two panels, left/right" if "left" in places else "two panels, upper/lower" \
                if "upper" in places else "quadrants"
            for asked in places:
                question = f"Outline the finding in the {asked} panel."
                ids = reasoner.sample(None, scan.embedding, question, 1, 0.0, 1.0, torch.Generator().manual_seed(0)).ids[0]
                cut = next((k for k in range(len(ids)) if reasoner.tokenizer.decode(ids[:k]).endswith(PREFIX_END)), None)
                if cut is None:
                    rows[layout].append((0.0, 0.0, False, False))
                    continue
                p = {place: place_probability(reasoner, scan.embedding, question, ids[:cut], place) for place in places}
                other = max(v for k, v in p.items() if k != asked)
                rows[layout].append((p[asked], other, p[asked] > other, True))
    print(f"model {info.model_version}, {args.composites} validation composites; question: "
          "\"Outline the finding in the <place> panel.\"\n")
    print("| layout | questions | wrote the sentence | P(asked place) | P(likeliest other) | asked place likeliest |")
    print("|---|---|---|---|---|---|")
    for layout, values in sorted(rows.items()):
        wrote = [v for v in values if v[3]]
        mean = (lambda k: statistics.mean(v[k] for v in wrote) if wrote else float("nan"))
        print(f"| {layout} | {len(values)} | {len(wrote)} | {mean(0):.2f} | {mean(1):.2f} | "
              f"{sum(v[2] for v in wrote) / max(1, len(values)):.0%} |")


if __name__ == "__main__":
    main()
