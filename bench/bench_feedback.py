"""The feedback loop on real data: simulated annotators on BUS-BRA training cases (expert masks as
corrections, ratings from Dice), then GRPO rounds from the shipped compact checkpoint.

    python bench/bench_feedback.py --data ../shared/data [--cases 200] [--rounds 2] [--steps N]
        [--val-limit 100] [--out runs/bench-feedback] [--cache runs/features]

Prints a Markdown table: time per round, and BUS-BRA validation mean Dice and failure rate before and
after each round (issue 6 target: a round ≤ 20 minutes on this CPU).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per round (default: two passes)")
    parser.add_argument("--val-limit", type=int, default=100)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--cache", default="runs/features")
    parser.add_argument("--out", default="runs/bench-feedback")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from coreseg.config import DEFAULT_CHECKPOINT
    from trainers import grpo, simulate

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db = out / "feedback.db"
    base = args.checkpoint or str(DEFAULT_CHECKPOINT)
    t = time.time()
    simulate.main(["--data", args.data, "--db", str(db), "--cases", str(args.cases), "--sets", "busbra",
                   "--checkpoint", base, "--cache", args.cache, "--threads", str(args.threads)])
    simulate_s = time.time() - t
    rows = []
    for k in range(1, args.rounds + 1):
        t = time.time()
        grpo.main(["--db", str(db), "--base", base, "--out", str(out / "rounds"), "--rounds", str(k),
                   "--data", args.data, "--sets", "busbra", "--limit", str(args.val_limit), "--bf16", "--resume",
                   "--threads", str(args.threads), *(["--steps", str(args.steps)] if args.steps else [])])
        seconds = time.time() - t
        result = json.loads((out / "rounds" / f"round-{k}" / "done.json").read_text())
        rows.append((k, seconds, result))
    print(f"simulated {args.cases} BUS-BRA training cases from {base} in {simulate_s / 60:.1f} min")
    print("| round | minutes | base → new | registered | val Dice before → after | val failure before → after |"
          " held-out Dice before → after |")
    print("|---|---|---|---|---|---|---|")
    for k, seconds, r in rows:
        val, held = r["eval"]["val"], r["eval"]["held_out"]
        print(f"| {k} | {seconds / 60:.1f} | {r['base_version']} → {r['new_version']} | {r['registered']} | "
              f"{val['base']['dice']:.3f} → {val['new']['dice']:.3f} | "
              f"{val['base']['failure_rate']:.3f} → {val['new']['failure_rate']:.3f} | "
              f"{held['base']['dice']:.3f} → {held['new']['dice']:.3f} |")


if __name__ == "__main__":
    main()
