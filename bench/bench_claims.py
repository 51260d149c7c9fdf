"""What the shipped model writes: unknowable claims in sampled answers, and how often its claims agree
with its own masks.

    python bench/bench_claims.py --data ../shared/data [--checkpoint DIR] [--images 100] [--candidates 4]

Samples `--candidates` answers (T = 0.7, top-p 0.95, as the app does) for the first `--images` validation
images spread over the three sets, and counts answers with a claim no image can support (histology,
biopsy or pathology results, a confirmed diagnosis: `coreseg.findings.unsupported_claims`), plus the
share of each answer's claims that agree with its own mask. Prints a table and the offending phrases.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coreseg.config import DEFAULT_CHECKPOINT  # noqa: E402
from coreseg.datasets import load_split, read_image  # noqa: E402
from coreseg.eval import question_for  # noqa: E402
from coreseg.findings import check_answer, claim_agreement, unsupported_claims  # noqa: E402
from coreseg.predictor import CoreSegPredictor  # noqa: E402
from coreseg.questions import KINDS  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint)
    predictor.model.segmenter.use_encoder_backend("auto", args.threads)
    per_set = -(-args.images // len(KINDS))
    items = [it for s in KINDS for it in load_split(args.data, s, "val")[:per_set]][:args.images]
    rows, phrases = [], Counter()
    for item in tqdm(items, desc="sample"):
        image = read_image(item)
        for c in predictor.predict(image, question_for(item, None), args.candidates, temperature=0.7, seed=0):
            found = unsupported_claims(c.text)
            phrases.update(f.split(" (")[0].lower() for f in found)
            rows.append({"set": item.set_name, "unsupported": bool(found), "parsed": c.parsed.ok,
                         "agreement": claim_agreement(check_answer(c.text, c.mask, image))})
    print(f"model {predictor.model_version}: {len(rows)} sampled answers on {len(items)} validation images\n")
    print("| set | answers | parsed | with an unknowable claim | claims agreeing with the own mask |")
    print("|---|---|---|---|---|")
    for set_name in list(KINDS) + ["all"]:
        mine = [r for r in rows if set_name == "all" or r["set"] == set_name]
        if not mine:
            continue
        agree = [r["agreement"] for r in mine if r["agreement"] is not None]
        print(f"| {set_name} | {len(mine)} | {np.mean([r['parsed'] for r in mine]):.3f} | "
              f"{sum(r['unsupported'] for r in mine)} | {np.mean(agree) if agree else float('nan'):.3f} |")
    if phrases:
        print("\nmost frequent unknowable phrases:", ", ".join(f"{p} ×{n}" for p, n in phrases.most_common(8)))


if __name__ == "__main__":
    main()
