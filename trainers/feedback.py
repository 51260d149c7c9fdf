"""Training on collected feedback: what closes the loop from the app back to a new model version.

    python -m trainers.grpo --db PATH --out DIR [--base CKPT] [--rounds N] [--group-size G] [--beta B]
        [--lr LR] [--human-weight W] [--data DIR] [--force] [--resume]
    python -m trainers.sft --db PATH --init CKPT --out DIR …   (SFT on accepted and edited reasoning)

A round:
  1. a consistent snapshot of the store (`VACUUM INTO`): the app may keep writing meanwhile;
  2. each accepted case: its stored candidates with the log-probs recorded when they were generated
     (off-policy, importance-weighted; re-scored with the temperature and top-p each was sampled
     with), plus fresh samples from the current policy; rewards against the accepted mask and its
     boxes + a human term. The human term compares the stored candidates among themselves (rank and
     rating, centred over the stored ones by trainers.grpo); fresh samples have no human opinion, so
     they get none (None: their reward is the other terms only, which equals the stored candidates'
     mean human term): identical completions then get no advantage from being stored or fresh.
     Groups may differ in size (the app's slider sets the candidates per case); ranks may tie;
  3. GRPO updates (trainers.grpo), DiceCE against the accepted mask;
  4. the new checkpoint is evaluated against its base on held-out accepted cases (every fifth case)
     and on the training cases (and on `--data DIR --split val` when given); it is registered as a
     model version only when the held-out Dice is not worse (`--force` overrides);
  5. a report (Markdown, reward/KL curves) beside the checkpoint; the app lists the new version.

Without `--base` a round starts from the model the store's latest accepted feedback was collected
on (the version the app was serving; its registered checkpoint), else the shipped model.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from annotation import codec
from annotation.store import FeedbackStore
from coreseg.answer import render_answer
from coreseg.mask_boxes import mask_boxes
from coreseg.checkpoint import load_checkpoint, save_checkpoint
from coreseg.geometry import mask_to_low_res, scale_boxes
from coreseg.metrics import dice, is_failure
from coreseg.predictor import CoreSegPredictor
from trainers.grpo_loop import (GRPOConfig, Group, case_index, decoder_bf16, process_state, sample_group,
                                train_groups)
from trainers.rewards import RewardWeights, score_completions, segment_score


@dataclass
class FeedbackCase:
    """An accepted case read from a snapshot of the store."""

    case_id: int
    feedback_id: int
    question: str
    image: np.ndarray                # display image (uint8 RGB)
    mask: np.ndarray                 # the accepted mask
    target_name: str
    reasoning: str                   # the edited reasoning, else the chosen candidate's
    stored: list[dict] = field(default_factory=list)  # text, token_ids, token_logprobs, rank, rating
    embedding: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return mask_boxes(self.mask)

    @property
    def target(self) -> torch.Tensor:
        return mask_to_low_res(self.mask)

    def sample_text(self, rng, frame: int) -> tuple[str, str]:
        """(question, the accepted answer in the model's frame): the SFT target."""
        return self.question, render_answer(self.reasoning or "The lesion differs from the tissue around it.",
                                            self.target_name, scale_boxes(self.boxes, self.size, (frame, frame)))

    def sample(self, rng, frame: int):
        """The accepted answer as an SFT sample (question, answer in the model's frame, target)."""
        from trainers.samples import Sample

        question, answer = self.sample_text(rng, frame)
        return Sample(question, answer, self.target, scale_boxes(self.boxes, self.size, (frame, frame)))


def snapshot_store(db: str, folder: Path) -> FeedbackStore:
    """A read-only store over a fresh `VACUUM INTO` copy of `db`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}-{random.randrange(1 << 30):x}.db"
    FeedbackStore(db).snapshot(path)
    return FeedbackStore(path, read_only=True)


def _mean_rating(ratings: dict | None) -> float | None:
    return float(np.mean(list(ratings.values()))) if ratings else None


def load_feedback_cases(store: FeedbackStore, log=print) -> list[FeedbackCase]:
    """Every case with an accepted correction; bad ones are skipped with a message, never a crash."""
    cases = []
    for case_id, accepted in sorted(store.accepted_corrections().items()):
        case = store.get_case(case_id)
        display_png = store.get_scan_display_png(case["scan_hash"])
        image = codec.from_png_bytes(display_png) if display_png else store.get_scan_pixels(case["scan_hash"])
        if image.dtype != np.uint8:
            log(f"case {case_id}: no 8-bit display image stored; skipped")
            continue
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        mask = codec.decode_mask(accepted["mask_png"])
        if mask.shape != image.shape[:2]:
            log(f"case {case_id}: accepted mask is {mask.shape} but the scan is {image.shape[:2]}; skipped")
            continue
        if not mask.any():
            log(f"case {case_id}: accepted mask is empty; skipped")
            continue
        fb = accepted["feedback_id"]
        ranks = store.rankings_for([fb]).get(fb, {})
        ratings = store.ratings_for([fb]).get(fb, {})
        candidates = store.get_candidates(accepted["run_id"], with_masks=False)
        chosen = accepted.get("chosen_candidate_id") or accepted.get("proposal_candidate_id")
        chosen_row = next((c for c in candidates if c["id"] == chosen), candidates[0] if candidates else None)
        reasoning = accepted.get("edited_reasoning") or (chosen_row or {}).get("reasoning", "")
        target = (chosen_row or {}).get("target") or case.get("target") or "lesion"
        stored = [{"text": c["text"], "token_ids": c["token_ids"], "token_logprobs": c["token_logprobs"],
                   "rank": ranks.get(c["id"]), "rating": _mean_rating(ratings.get(c["id"])),
                   "temperature": (c.get("sampling") or {}).get("temperature"),
                   "top_p": (c.get("sampling") or {}).get("top_p", 1.0)} for c in candidates]
        if len(stored) < 2:
            log(f"case {case_id}: {len(stored)} stored candidate(s); fresh samples complete its group")
        cases.append(FeedbackCase(case_id, fb, case["question"], image, mask, target, reasoning, stored))
    return cases


def serving_checkpoint(store: FeedbackStore) -> Path:
    """The checkpoint of the model version that the store's latest accepted feedback was collected on
    (what the app served; its registered checkpoint, when it is on this machine), else the shipped model."""
    from coreseg.config import DEFAULT_CHECKPOINT

    accepted = store.accepted_corrections()
    runs = store.runs_for({a["run_id"] for a in accepted.values()})
    paths = {v["name"]: v.get("checkpoint_path") for v in store.list_model_versions()}
    for run_id in sorted(runs, reverse=True):
        path = paths.get(runs[run_id].get("model_version"))
        if path and Path(path).exists():
            return Path(path)
    return DEFAULT_CHECKPOINT


def split_held_out(cases: list[FeedbackCase], every: int = 5) -> tuple[list[FeedbackCase], list[FeedbackCase]]:
    """Every `every`-th case (by id) is held out for evaluation; at least one when there are two or more."""
    ordered = sorted(cases, key=lambda c: c.case_id)
    held = [c for i, c in enumerate(ordered) if i % every == every - 1]
    if not held and len(ordered) >= 2:
        held = ordered[-1:]
    train = [c for c in ordered if c not in held]
    return train, held


def reusable_completion(predictor: CoreSegPredictor, stored: dict, size) -> bool:
    """Stored token ids can be importance-weighted only if they decode, with this model's
    tokenizer, to the stored text (same tokenizer lineage), carry one log-prob per token and the
    temperature they were sampled at (re-scoring needs the sampling distribution)."""
    ids, logps = stored["token_ids"], stored["token_logprobs"]
    if not ids or len(ids) != len(logps) or max(ids) >= len(predictor.model.reasoner.tokenizer):
        return False
    if stored.get("temperature") is None:
        return False
    return predictor.to_image_frame(predictor.decode_text(ids), size) == stored["text"]


def feedback_groups(cases: list[FeedbackCase], cfg: GRPOConfig, batch_cases: int, seed: int, stats: dict):
    """`make_groups` for trainers.grpo_loop.train_groups: stored candidates (off-policy) + fresh samples."""
    order = random.Random(seed).sample(cases, len(cases))

    def make(step, predictor, generator):
        frame = predictor.model.config.box_frame
        groups = []
        for j in range(batch_cases):
            case = order[case_index(step, j, batch_cases) % len(order)]
            if case.embedding is None:
                case.embedding = predictor.embedding(case.image)
            ids, logps, ranks, ratings, sampling = [], [], [], [], []
            for s in case.stored:
                if reusable_completion(predictor, s, case.size):
                    ids.append(s["token_ids"]), logps.append(s["token_logprobs"])
                    ranks.append(s["rank"]), ratings.append(s["rating"])
                    sampling.append((float(s["temperature"]), float(s.get("top_p") or 1.0)))
                    stats["stored_used"] = stats.get("stored_used", 0) + 1
                else:
                    stats["stored_unusable"] = stats.get("stored_unusable", 0) + 1
            fresh_ids, fresh_logps = sample_group(predictor, case.image, case.embedding, case.question, cfg, generator,
                                                   case.size)
            ids += fresh_ids
            logps += fresh_logps
            ranks += [None] * len(fresh_ids)  # fresh samples: no human term (see the module docstring)
            ratings += [None] * len(fresh_ids)
            sampling += [(cfg.temperature, cfg.top_p)] * len(fresh_ids)
            groups.append(Group(case.image, case.embedding, case.target,
                                scale_boxes(case.boxes, case.size, (frame, frame)), case.question, ids, logps,
                                {"human_rank": ranks, "human_rating": ratings, "group_id": [case.case_id] * len(ids)},
                                sampling=sampling, size=case.size))
        return groups

    return make


@torch.no_grad()
def evaluate_cases(predictor: CoreSegPredictor, cases: list[FeedbackCase], weights: RewardWeights) -> dict:
    """Greedy answer per case against the accepted mask: mean Dice, failure rate, rewards."""
    if not cases:
        return {"n": 0}
    dices, failed, segment, total = [], [], [], []
    for case in cases:
        c = predictor.predict(case.image, case.question, 1, temperature=0.0)[0]
        d = dice(c.mask, case.mask)
        dices.append(d)
        failed.append(is_failure(d, c.parsed.ok))
        segment.append(segment_score(c.mask, case.mask))
        total.append(score_completions([case.question], [c.text], weights, image_size=[case.size],
                                       gt_boxes=[case.boxes], gt_mask=[case.mask], pred_mask=[c.mask])[0]["total"])
    return {"n": len(cases), "dice": float(np.mean(dices)), "failure_rate": float(np.mean(failed)),
            "segment_reward": float(np.mean(segment)), "reward": float(np.mean(total))}


def _write_report(path: Path, info: dict) -> None:
    lines = [f"# Feedback round {info['round']}: {info['base_version']} → {info['new_version']}", "",
             f"- feedback used: {len(info['feedback_ids'])} accepted cases ({info['n_train']} train, "
             f"{info['n_held_out']} held out); snapshot `{info['snapshot']}`",
             f"- registered: **{info['registered']}** ({info['decision']})",
             f"- GRPO: {json.dumps(info['config'])}", f"- stored candidates reused / unusable: "
             f"{info['stored'].get('stored_used', 0)} / {info['stored'].get('stored_unusable', 0)}", "",
             "| cases | model | n | mean Dice | failure | segment reward | reward |", "|---|---|---|---|---|---|---|"]
    for split in ("held_out", "train", "val"):
        for who in ("base", "new"):
            m = info["eval"].get(split, {}).get(who)
            if m and m.get("n"):
                cells = [f"{m[k]:.3f}" if m.get(k) is not None else "—"
                         for k in ("dice", "failure_rate", "segment_reward", "reward")]
                lines.append(f"| {split} | {who} | {m['n']} | " + " | ".join(cells) + " |")
    lines += ["", "![reward and KL](curves.png)", ""]
    path.write_text("\n".join(lines))


def _val_eval(predictor: CoreSegPredictor, data: str, limit: int, sets: str) -> dict:
    """The probe path on the labelled validation split (first `limit` images of each set)."""
    from coreseg.datasets import load_split
    from coreseg.eval import evaluate, summarise

    items = [i for s in sets.split(",") for i in load_split(data, s, "val")[:limit]]
    records, _ = evaluate(predictor, items, methods=("probe",))
    return summarise(records).get("overall", {}).get("probe", {"n": 0})


def run_rounds(args) -> list[dict]:
    """`python -m trainers.grpo --db …`: N rounds, each from the previous round's registered model."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = GRPOConfig(group_size=args.group_size, beta=args.beta, lr=args.lr, temperature=args.temperature,
                     weights=RewardWeights(human=args.human_weight), bf16_decoder=decoder_bf16(args.precision))
    base_path = Path(args.base) if args.base else serving_checkpoint(FeedbackStore(args.db, read_only=True))
    results = []
    for k in range(1, args.rounds + 1):
        folder = out / f"round-{k}"
        done = folder / "done.json"
        if done.exists():
            info = json.loads(done.read_text())
            print(f"round {k}: already done ({info['new_version']}, registered={info['registered']})")
            base_path = Path(info["checkpoint"]) if info["registered"] else base_path
            results.append(info)
            continue
        resumed = args.resume and (folder / "trainer_state.pt").exists()
        snapshot_path = (folder / "snapshot.json")
        if resumed and snapshot_path.exists():
            snap = FeedbackStore(json.loads(snapshot_path.read_text())["path"], read_only=True)
        else:
            if folder.exists():
                shutil.rmtree(folder)
            snap = snapshot_store(args.db, folder)
            snapshot_path.write_text(json.dumps({"path": str(snap.url.replace("sqlite:///", ""))}))
        cases = load_feedback_cases(snap)
        if len(cases) < 2:
            raise SystemExit(f"round {k}: {len(cases)} accepted case(s) in {args.db}; need at least two")
        train, held = split_held_out(cases)
        model, info = load_checkpoint(base_path, device="cpu")
        base_version = info.model_version
        base_predictor = CoreSegPredictor(model, base_version, info.trained)
        for case in cases:   # encoded once: the round trains with the image encoder frozen
            case.embedding = base_predictor.embedding(case.image)
        before_path = folder / "before.json"   # the base's scores, kept so that a resumed round does not redo them
        if resumed and before_path.exists():
            before = json.loads(before_path.read_text())
        else:
            before = {"held_out": evaluate_cases(base_predictor, held, cfg.weights),
                      "train": evaluate_cases(base_predictor, train, cfg.weights)}
            if args.data:
                before["val"] = _val_eval(base_predictor, args.data, args.limit or 20, args.sets)
            partial = before_path.with_suffix(".partial")
            partial.write_text(json.dumps(before))
            partial.replace(before_path)
        new_version = args.version or f"{base_version}+fb{k}"
        steps = args.steps or 2 * math.ceil(len(train) / args.batch_cases)
        stats: dict = {}
        last = train_groups(model, feedback_groups(train, cfg, args.batch_cases, args.seed + k, stats), steps, cfg,
                            folder, new_version, resume=resumed, save_every=args.save_every, desc=f"feedback round {k}",
                            parent=base_version)
        model, _ = load_checkpoint(last, device="cpu")
        checkpoint = save_checkpoint(model, folder / "checkpoint", new_version, parent=base_version)
        new_predictor = CoreSegPredictor(model, new_version)
        new_predictor.reuse_embeddings(base_predictor)
        after = {"held_out": evaluate_cases(new_predictor, held, cfg.weights),
                 "train": evaluate_cases(new_predictor, train, cfg.weights)}
        if args.data:
            after["val"] = _val_eval(new_predictor, args.data, args.limit or 20, args.sets)
        key = "held_out" if held else "train"
        not_worse = after[key]["dice"] >= before[key]["dice"] - 1e-9
        registered = bool(not_worse or args.force)
        decision = (f"{key} Dice {before[key]['dice']:.3f} → {after[key]['dice']:.3f}: "
                    + ("not worse" if not_worse else "worse") + (", forced" if args.force and not not_worse else ""))
        evaluation = {s: {"base": before[s], "new": after[s]} for s in before}
        feedback_ids = [c.feedback_id for c in cases]
        main_process = process_state().is_main_process  # under `accelerate launch` one process writes
        if registered and main_process:
            live = FeedbackStore(args.db)
            live.add_model_version(base_version)
            live.add_model_version(new_version, checkpoint.resolve(), parent=base_version,
                                   metrics=evaluation, notes=f"feedback round {k}")
            if not any(r["out_version"] == new_version for r in live.list_training_rounds()):
                live.add_training_round(base_version, new_version, feedback_ids, evaluation, folder / "report.md")
        result = {"round": k, "base_version": base_version, "new_version": new_version, "registered": registered,
                  "decision": decision, "checkpoint": str(checkpoint.resolve()), "feedback_ids": feedback_ids,
                  "n_train": len(train), "n_held_out": len(held), "snapshot": str(snap.url), "eval": evaluation,
                  "config": {**asdict(cfg), "weights": asdict(cfg.weights)}, "stored": stats}
        if main_process:
            _write_report(folder / "report.md", result)
            done.write_text(json.dumps(result, indent=1, default=str))
            print(f"round {k}: {decision}; registered={registered}; report {folder / 'report.md'}")
        process_state().wait_for_everyone()
        if registered:
            base_path = checkpoint
        results.append(result)
    return results
