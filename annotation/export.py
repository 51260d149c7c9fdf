"""Datasets out of the feedback store, each with a manifest that makes it a version.

    python -m annotation.export --db PATH --out DIR --format sft|groups|preferences|coco|masks|summary
        [--status submitted] [--min-raters N] [--since DATE] [--until DATE] [--model-version NAME]

Every export first takes a `VACUUM INTO` snapshot of the database and reads only from it (the app keeps
writing meanwhile); the manifest records the snapshot's sha256, the filters, the counts and the code version.
Filters select feedback rows (status, date range, the run's model version, runs with at least N raters).
A case enters `sft`, `coco` and `masks` when its accepted mask (latest accepted correction) comes from a
selected feedback row.

- `sft`: TRL conversational JSONL (`messages`: system, user [image, question], assistant
  `render_answer(edited or proposal reasoning, target, boxes of the accepted mask's connected components)`),
  with `images/` and `masks/` beside it.
- `groups`: one GRPO record per run: prompt, image, candidates (text, mask, score, token ids and log-probs,
  human ranks and ratings), accepted mask.
- `preferences`: `prompt` / `chosen` / `rejected` pairs from rankings (better rank chosen, ties give no pair)
  and from edits (edited reasoning chosen over the original).
- `coco`: COCO instances JSON with compressed RLE masks; `masks`: PNG masks, plus NIfTI with the source
  geometry for NIfTI scans.
- `summary`: pandas tables: per annotator, per model version, proposal-vs-accepted Dice, ratings, agreement.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from annotation import codec
from annotation.filters import ExportFilters, human_signal
from annotation.schema import RATING_SCALES, SCHEMA_VERSION, Status, utcnow
from annotation.store import FeedbackError, FeedbackStore
from annotation.summary import (export_summary, kendall_tau_b, krippendorff_alpha_interval,  # noqa: F401
                                summary_tables)  # re-exported: the summary is one of the export formats
from coreseg.mask_boxes import mask_boxes
from coreseg.answer import parse_answer, render_answer
from coreseg.scan_io import to_png_bytes, write_nifti_mask

# Qwen2.5-VL's chat template inserts exactly this system turn when none is given, which is how the model is
# prompted at inference (coreseg.modeling.qwen_reasoner): training data must show it the same prompt.
SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_TARGET = "lesion"
FORMATS = ("sft", "groups", "preferences", "coco", "masks", "summary")


# ---------------------------------------------------------------------------------------------- helpers
def code_version() -> str:
    """`git describe` of this checkout, else the installed package's version, else 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version
        return version("coreseg-studio")
    except Exception:
        return "unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prompt_messages(image_ref: str, question: str) -> list[dict]:
    """The system and user turns, exactly as the model is prompted (image first, then the question)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image", "image": image_ref},
                                         {"type": "text", "text": question.strip()}]}]


class _Writer:
    """Writes each image and mask file once under the export folder and remembers its relative path."""

    def __init__(self, store: FeedbackStore, out: Path):
        self.store, self.out = store, out
        self.scans: dict[str, dict] = {}
        self.written: dict[str, str] = {}

    def load_scans(self, hashes) -> None:
        missing = set(hashes) - set(self.scans)
        if missing:
            self.scans.update(self.store.scans_for(missing))

    def _put(self, rel: str, data: bytes) -> str:
        if rel not in self.written:
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.written[rel] = rel
        return rel

    def image(self, scan_hash: str) -> str:
        """images/<hash>.png: the uint8 RGB image the model and the clinician saw."""
        rel = f"images/{scan_hash}.png"
        if rel in self.written:
            return rel
        self.load_scans([scan_hash])
        data = self.scans[scan_hash].get("display_png")
        if data is None:  # a scan stored without its display image: render the pixels plainly
            pixels = self.store.get_scan_pixels(scan_hash).astype(np.float64)
            low, high = float(pixels.min()), float(pixels.max())
            grey = np.zeros(pixels.shape[:2], np.uint8) if high <= low else \
                np.rint((pixels - low) / (high - low) * 255).astype(np.uint8)
            if grey.ndim == 3:
                grey = grey[..., :3] if grey.shape[2] >= 3 else grey[..., 0]
            data = to_png_bytes(grey)
        return self._put(rel, data)

    def mask(self, rel: str, png: bytes) -> str:
        return self._put(rel, png)


def _accepted_selection(store: FeedbackStore, rows: list[dict]) -> tuple[dict[int, dict], dict[str, int]]:
    """case id → accepted correction, for cases whose accepted correction is one of the selected rows."""
    selected = {r["id"] for r in rows}
    accepted = store.accepted_corrections({r["case_id"] for r in rows})
    chosen = {case: acc for case, acc in accepted.items() if acc["feedback_id"] in selected}
    cases_with_feedback = len({r["case_id"] for r in rows})
    return chosen, {"cases_with_feedback": cases_with_feedback, "cases_with_accepted_mask": len(chosen),
                    "cases_without_accepted_mask": cases_with_feedback - len(chosen)}


def _target(case: dict, candidate: dict | None) -> str:
    if case.get("target"):
        return case["target"]
    if candidate and candidate.get("target"):
        return candidate["target"]
    return DEFAULT_TARGET


def _write_jsonl(path: Path, records) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=True) + "\n")
            count += 1
    return count


# ---------------------------------------------------------------------------------------------- formats
def export_sft(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """sft.jsonl: one TRL conversational record per case with an accepted mask."""
    rows = filters.rows(store)
    accepted, counts = _accepted_selection(store, rows)
    cases = store.cases_for(accepted)
    candidates = {c["id"]: c for group in store.candidates_for_runs({a["run_id"] for a in accepted.values()}).values()
                  for c in group}
    runs = store.runs_for({a["run_id"] for a in accepted.values()})
    writer = _Writer(store, out)
    writer.load_scans({c["scan_hash"] for c in cases.values()})
    skipped = {"empty_mask": 0, "no_reasoning": 0, "invalid_answer": 0}
    records = []
    for case_id in sorted(accepted):
        acc, case = accepted[case_id], cases[case_id]
        mask = codec.decode_mask(acc["mask_png"])
        boxes = mask_boxes(mask)
        if not boxes:
            skipped["empty_mask"] += 1
            continue
        proposal = candidates.get(acc["proposal_candidate_id"])
        if acc["edited_reasoning"]:
            reasoning, source = acc["edited_reasoning"], "edited"
        else:
            reasoning, source = (proposal or {}).get("reasoning", ""), "model"
        if not reasoning.strip():
            skipped["no_reasoning"] += 1
            continue
        scan = writer.scans[case["scan_hash"]]
        answer = render_answer(reasoning, _target(case, proposal), boxes)
        if not parse_answer(answer, (scan["height"], scan["width"])).ok:
            skipped["invalid_answer"] += 1
            continue
        image = writer.image(case["scan_hash"])
        mask_rel = writer.mask(f"masks/case-{case_id}.png", acc["mask_png"])
        records.append({
            "id": f"case-{case_id}", "case_id": case_id, "feedback_id": acc["feedback_id"],
            "scan_hash": case["scan_hash"], "model_version": runs[acc["run_id"]]["model_version"],
            "reasoning_source": source, "images": [image], "mask": mask_rel, "boxes": [list(b) for b in boxes],
            "messages": prompt_messages(image, case["question"]) + [{"role": "assistant", "content": answer}],
        })
    written = _write_jsonl(out / "sft.jsonl", records)
    return {"feedback_rows": len(rows), **counts, "records": written, "edited_reasoning":
            sum(r["reasoning_source"] == "edited" for r in records), **{f"skipped_{k}": v for k, v in skipped.items()}}


def export_groups(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """groups.jsonl: one record per run (a GRPO group) with the candidates and every human signal on them."""
    rows = filters.rows(store)
    by_run: dict[int, list[dict]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    ranks, ratings = human_signal(store, rows)
    runs = store.runs_for(by_run)
    groups = store.candidates_for_runs(by_run)
    cases = store.cases_for({run["case_id"] for run in runs.values()})
    accepted = store.accepted_corrections(cases)
    writer = _Writer(store, out)
    writer.load_scans({c["scan_hash"] for c in cases.values()})
    records, n_candidates = [], 0
    for run_id in sorted(by_run):
        run, feedback = runs[run_id], by_run[run_id]
        case = cases[run["case_id"]]
        scan = writer.scans[case["scan_hash"]]
        image = writer.image(case["scan_hash"])
        acc = accepted.get(case["id"])
        candidates = []
        for cand in groups.get(run_id, []):
            human_ranks = [{"annotator": f["annotator"], "feedback_id": f["id"], "rank": ranks[f["id"]][cand["id"]]}
                           for f in feedback if cand["id"] in ranks.get(f["id"], {})]
            human_ratings = [{"annotator": f["annotator"], "feedback_id": f["id"], "scale": scale, "value": value}
                             for f in feedback for scale, value in ratings.get(f["id"], {}).get(cand["id"], {}).items()]
            mean_ratings = {scale: float(np.mean([h["value"] for h in human_ratings if h["scale"] == scale]))
                            for scale in RATING_SCALES if any(h["scale"] == scale for h in human_ratings)}
            candidates.append({
                "candidate_id": cand["id"], "index": cand["group_index"], "text": cand["text"],
                "reasoning": cand["reasoning"], "target": cand["target"], "boxes": cand["boxes"],
                "parse_errors": cand["parse_errors"],
                "mask": writer.mask(f"masks/candidates/{cand['id']}.png", cand["mask_png"]),
                "mask_area": cand["mask_area"], "mask_score": cand["mask_score"], "token_ids": cand["token_ids"],
                "token_logprobs": cand["token_logprobs"], "sampling": cand["sampling"], "trained": cand["trained"],
                "ranks": human_ranks, "ratings": human_ratings,
                "mean_rank": float(np.mean([h["rank"] for h in human_ranks])) if human_ranks else None,
                "mean_ratings": mean_ratings,
                "chosen_by": [f["annotator"] for f in feedback if f["chosen_candidate_id"] == cand["id"]],
            })
        n_candidates += len(candidates)
        records.append({
            "group_id": run_id, "case_id": case["id"], "scan_hash": case["scan_hash"], "image": image,
            "height": scan["height"], "width": scan["width"], "question": case["question"],
            "target": case.get("target"), "prompt": prompt_messages(image, case["question"]),
            "model_version": run["model_version"], "sampling": run["sampling"], "candidates": candidates,
            "accepted_mask": writer.mask(f"masks/accepted/case-{case['id']}.png", acc["mask_png"]) if acc else None,
            "accepted_feedback_id": acc["feedback_id"] if acc else None,
            "raters": sorted({f["annotator"] for f in feedback}), "n_raters": len({f["annotator_id"] for f in feedback}),
            "feedback_ids": [f["id"] for f in feedback],
        })
    written = _write_jsonl(out / "groups.jsonl", records)
    return {"feedback_rows": len(rows), "records": written, "candidates": n_candidates,
            "with_accepted_mask": sum(r["accepted_mask"] is not None for r in records)}


def export_preferences(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """preferences.jsonl: chosen/rejected pairs from rankings (strictly better rank) and from edited reasoning."""
    rows = filters.rows(store)
    ranks, _ = human_signal(store, rows)
    groups = store.candidates_for_runs({r["run_id"] for r in rows})
    candidates = {c["id"]: c for group in groups.values() for c in group}
    cases = store.cases_for({r["case_id"] for r in rows})
    corrections = store.correction_pngs(r["id"] for r in rows if r["proposal_candidate_id"] is not None)
    writer = _Writer(store, out)
    writer.load_scans({c["scan_hash"] for c in cases.values()})
    counts = {"from_ranking": 0, "from_edit": 0, "skipped_ties": 0, "skipped_same_text": 0, "skipped_edit_no_boxes": 0}
    records = []
    for fb in rows:
        case = cases[fb["case_id"]]
        image = writer.image(case["scan_hash"])
        base = {"images": [image], "prompt": prompt_messages(image, case["question"]), "feedback_id": fb["id"],
                "annotator": fb["annotator"], "case_id": fb["case_id"], "run_id": fb["run_id"],
                "model_version": fb["model_version"]}
        ranking = ranks.get(fb["id"], {})
        for (a, rank_a), (b, rank_b) in itertools.combinations(sorted(ranking.items()), 2):
            if rank_a == rank_b:
                counts["skipped_ties"] += 1
                continue
            (win, win_rank), (lose, lose_rank) = sorted([(a, rank_a), (b, rank_b)], key=lambda item: item[1])
            if candidates[win]["text"] == candidates[lose]["text"]:
                counts["skipped_same_text"] += 1
                continue
            records.append({**base, "source": "ranking",
                            "chosen": [{"role": "assistant", "content": candidates[win]["text"]}],
                            "rejected": [{"role": "assistant", "content": candidates[lose]["text"]}],
                            "chosen_candidate_id": win, "rejected_candidate_id": lose,
                            "chosen_rank": win_rank, "rejected_rank": lose_rank})
            counts["from_ranking"] += 1
        if fb["edited_reasoning"]:
            original = candidates[fb["edited_candidate_id"]]
            if fb["id"] in corrections:
                boxes = mask_boxes(codec.decode_mask(corrections[fb["id"]]))
            else:
                boxes = [tuple(b) for b in original["boxes"]]
            if not boxes:
                counts["skipped_edit_no_boxes"] += 1
                continue
            chosen = render_answer(fb["edited_reasoning"], _target(case, original), boxes)
            if chosen == original["text"]:
                counts["skipped_same_text"] += 1
                continue
            records.append({**base, "source": "edit", "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": original["text"]}],
                            "chosen_candidate_id": None, "rejected_candidate_id": original["id"],
                            "chosen_rank": None, "rejected_rank": None})
            counts["from_edit"] += 1
    written = _write_jsonl(out / "preferences.jsonl", records)
    return {"feedback_rows": len(rows), "records": written, **counts}


def _accepted_cases(store: FeedbackStore, filters: ExportFilters):
    rows = filters.rows(store)
    accepted, counts = _accepted_selection(store, rows)
    cases = store.cases_for(accepted)
    runs = store.runs_for({a["run_id"] for a in accepted.values()})
    proposals = {c["id"]: c for g in store.candidates_for_runs(runs).values() for c in g}
    return rows, accepted, counts, cases, runs, proposals


def export_coco(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """coco.json: one image per case with an accepted mask, one annotation with its compressed RLE."""
    from pycocotools import mask as mask_utils

    rows, accepted, counts, cases, runs, proposals = _accepted_cases(store, filters)
    writer = _Writer(store, out)
    writer.load_scans({c["scan_hash"] for c in cases.values()})
    targets = sorted({_target(cases[c], proposals.get(a["proposal_candidate_id"])) for c, a in accepted.items()})
    category = {name: i for i, name in enumerate(targets, start=1)}
    images, annotations = [], []
    for case_id in sorted(accepted):
        acc, case = accepted[case_id], cases[case_id]
        scan = writer.scans[case["scan_hash"]]
        mask = codec.decode_mask(acc["mask_png"])
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        images.append({"id": case_id, "file_name": writer.image(case["scan_hash"]), "height": scan["height"],
                       "width": scan["width"], "scan_hash": case["scan_hash"], "question": case["question"],
                       "modality": scan.get("modality")})
        annotations.append({
            "id": len(annotations) + 1, "image_id": case_id,
            "category_id": category[_target(case, proposals.get(acc["proposal_candidate_id"]))],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h], "iscrowd": 0,
            "feedback_id": acc["feedback_id"], "model_version": runs[acc["run_id"]]["model_version"],
            "proposal_dice": acc["proposal_dice"],
        })
    coco = {"info": {"description": "CORE-Seg Studio accepted masks", "version": code_version(),
                     "date_created": utcnow().isoformat()},
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name, "supercategory": "lesion"} for name, i in category.items()]}
    (out / "coco.json").write_text(json.dumps(coco, ensure_ascii=False))
    return {"feedback_rows": len(rows), **counts, "images": len(images), "annotations": len(annotations),
            "categories": len(category)}


def export_masks(store: FeedbackStore, out: Path, filters: ExportFilters) -> dict:
    """masks/case-<id>.png (0/255) for every case with an accepted mask, and .nii.gz for NIfTI scans."""
    rows, accepted, counts, cases, runs, _ = _accepted_cases(store, filters)
    writer = _Writer(store, out)
    writer.load_scans({c["scan_hash"] for c in cases.values()})
    index, nifti = [], 0
    for case_id in sorted(accepted):
        acc, case = accepted[case_id], cases[case_id]
        scan = writer.scans[case["scan_hash"]]
        entry = {"case_id": case_id, "feedback_id": acc["feedback_id"], "scan_hash": case["scan_hash"],
                 "model_version": runs[acc["run_id"]]["model_version"],
                 "png": writer.mask(f"masks/case-{case_id}.png", acc["mask_png"]), "nifti": None}
        if scan.get("source_format") == "nifti":
            rel = f"masks/case-{case_id}.nii.gz"
            write_nifti_mask(codec.decode_mask(acc["mask_png"]), scan["meta"], out / rel)
            entry["nifti"] = rel
            nifti += 1
        index.append(entry)
    _write_jsonl(out / "masks.jsonl", index)
    return {"feedback_rows": len(rows), **counts, "png": len(index), "nifti": nifti}


EXPORTERS: dict[str, Callable[[FeedbackStore, Path, ExportFilters], dict]] = {
    "sft": export_sft, "groups": export_groups, "preferences": export_preferences, "coco": export_coco,
    "masks": export_masks, "summary": export_summary}


# ---------------------------------------------------------------------------------------------- entry point
def export(db: str, out_dir: str | Path, fmt: str, filters: ExportFilters | None = None,
           keep_snapshot: bool = False) -> dict:
    """Snapshot the database, export `fmt` from the snapshot into `out_dir` (new or empty), write
    manifest.json and return it."""
    if fmt not in EXPORTERS:
        raise FeedbackError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FeedbackError(f"{out} is not empty; export into a new folder so that a dataset is never mixed")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    live = FeedbackStore(db)
    database: dict[str, Any] = {"backend": live.engine.dialect.name}
    snapshot_path = None
    try:
        if live.is_sqlite:
            snapshot_path = live.snapshot(out / ".snapshot.sqlite")
            database.update(snapshot_sha256=file_sha256(snapshot_path), snapshot_bytes=snapshot_path.stat().st_size)
            store = FeedbackStore(snapshot_path, read_only=True)
        else:  # no file to hash: record the row counts the export saw
            store, database["snapshot_sha256"] = live, None
        try:
            database["row_counts"] = store.counts()
            counts = EXPORTERS[fmt](store, out, filters)
        finally:
            if store is not live:
                store.close()
    finally:
        live.close()
    if snapshot_path is not None:
        if keep_snapshot:
            snapshot_path.rename(out / "snapshot.sqlite")
            database["snapshot_file"] = "snapshot.sqlite"
        else:
            snapshot_path.unlink()
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    listing = hashlib.sha256()
    for path in files:
        listing.update(f"{path.relative_to(out).as_posix()}\0{file_sha256(path)}\n".encode())
    manifest = {
        "format": fmt, "created_at": utcnow().isoformat(), "code_version": code_version(),
        "schema_version": SCHEMA_VERSION, "database": database, "filters": filters.to_json(), "counts": counts,
        "files": len(files), "files_sha256": listing.hexdigest(), "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def _parse_moment(text: str, end: bool) -> datetime:
    """ISO date or datetime (naive = UTC); a bare date as `--until` means the end of that day."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (YYYY-MM-DD) or datetime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if end and len(text.strip()) == 10:
        moment += timedelta(days=1)
    return moment


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotation.export",
                                     description="Export datasets from the feedback store (see module docstring).")
    parser.add_argument("--db", default=None, help="database path or URL (default: $DATABASE_URL)")
    parser.add_argument("--out", required=True, help="a new or empty folder")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--status", action="append", choices=[s.value for s in Status],
                        help="feedback status to include (repeatable; default submitted)")
    parser.add_argument("--min-raters", type=int, default=None, help="keep runs with at least N distinct raters")
    parser.add_argument("--since", type=lambda t: _parse_moment(t, False), default=None, help="from (inclusive)")
    parser.add_argument("--until", type=lambda t: _parse_moment(t, True), default=None,
                        help="to (a date includes that whole day)")
    parser.add_argument("--model-version", action="append", default=None, help="repeatable")
    parser.add_argument("--keep-snapshot", action="store_true", help="keep the database snapshot beside the data")
    args = parser.parse_args(argv)
    filters = ExportFilters(status=tuple(args.status or [Status.submitted.value]), min_raters=args.min_raters,
                            since=args.since, until=args.until,
                            model_versions=tuple(args.model_version) if args.model_version else None)
    try:
        manifest = export(args.db, args.out, args.format, filters, keep_snapshot=args.keep_snapshot)
    except FeedbackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format != "summary":
        print(json.dumps({k: manifest[k] for k in ("format", "counts", "files", "seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
