"""Simulated annotators: fill a feedback store the way clinicians would, from a labelled set.

    python -m trainers.simulate --data ../shared/data --db runs/sim.db --cases 200 [--sets busbra]
        [--split train] [--seed 0] [--checkpoint CKPT] [--candidates 4] [--cache runs/features]

For each case: the scan goes in through scan_io (de-identified), the model samples candidates, the
run is stored, and the "annotator" submits the expert mask as the correction, a ranking by each
candidate's Dice (ties share a rank) and ratings derived from it; a "reviewer" accepts. Serves
demos, benchmarks and the tests.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from annotation.store import FeedbackStore
from coreseg.datasets import load_split, read_mask
from coreseg.embedding_cache import pixel_key
from coreseg.metrics import dice
from coreseg.predictor import CoreSegPredictor
from coreseg.scan_io import read_scan

ANNOTATOR, REVIEWER = "simulated-annotator", "simulated-reviewer"


def rating_from_dice(value: float) -> int:
    """Dice 0 → 1 … Dice ≥ 0.9 → 5: how a clinician might grade a proposal by its overlap."""
    return int(np.clip(1 + np.floor(value / 0.9 * 4 + 1e-9), 1, 5))


def ranks_by_dice(dices: list[float]) -> list[int]:
    """Competition ranks (1 = best); equal Dice (to 3 decimals) share a rank."""
    rounded = [round(d, 3) for d in dices]
    return [1 + sum(other > mine for other in rounded) for mine in rounded]


def simulate(predictor: CoreSegPredictor, store: FeedbackStore, items, n_candidates: int = 4, seed: int = 0,
             cache_dir: str | None = None, question_for=None) -> list[int]:
    """Run the model on `items` and store accepted feedback for each; returns the feedback ids."""
    from coreseg.eval import question_for as default_question

    question_for = question_for or (lambda item: default_question(item, None))
    store.add_annotator(ANNOTATOR, "annotator")
    store.add_annotator(REVIEWER, "reviewer")
    store.add_model_version(predictor.model_version)
    feedback_ids = []
    for k, item in enumerate(tqdm(items, desc="simulate")):
        scan = read_scan(item.image_path)
        truth = read_mask(item)
        if cache_dir:
            cached = Path(cache_dir) / item.set_name / f"{item.image_id}.npz"
            if cached.exists():
                with np.load(cached) as f:
                    embedding = torch.from_numpy(f["embedding"].astype(np.float32))[None].to(predictor.device)
                predictor.cache.put(pixel_key(scan.display, predictor.model_version), embedding)
        question = question_for(item)
        case_id = store.add_case(store.put_scan(scan), question, ANNOTATOR)
        candidates = predictor.predict(scan.display, question, n_candidates, seed=seed * 100003 + k)
        run_id, ids = store.add_run(case_id, predictor.model_version, candidates[0].sampling, candidates)
        dices = [dice(c.mask, truth) for c in candidates]
        ranks = ranks_by_dice(dices)
        best = ids[int(np.argmax(dices))]
        ratings = {cid: {"correctness": rating_from_dice(d), "completeness": rating_from_dice(d),
                         "clinical_relevance": 5 if c.parsed.ok else 1}
                   for cid, d, c in zip(ids, dices, candidates)}
        fb = store.submit_feedback(case_id, run_id, ANNOTATOR, ranking=dict(zip(ids, ranks)), ratings=ratings,
                                   chosen_candidate_id=best, mask=truth, status="submitted",
                                   submission_id=f"simulate-{seed}-{item.set_name}-{item.image_id}-{run_id}")
        store.review(fb, REVIEWER, "accept", "simulated: expert mask")
        feedback_ids.append(fb)
    return feedback_ids


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--sets", default="busbra")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--cache", default=None, help="feature cache to skip encoding")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from coreseg.config import DEFAULT_CHECKPOINT

    items = [i for s in args.sets.split(",") for i in load_split(args.data, s, args.split)]
    items = random.Random(args.seed).sample(items, min(args.cases, len(items)))
    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    ids = simulate(predictor, FeedbackStore(args.db), items, args.candidates, args.seed, args.cache)
    print(f"stored {len(ids)} accepted submissions from {predictor.model_version} in {args.db}")


if __name__ == "__main__":
    main()
