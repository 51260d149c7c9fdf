"""Feedback-store bench: sustained submissions per second with 1 and 8 writer processes, and export time
for 10,000 feedback rows. Prints a Markdown table.

    python bench/bench_store.py [--seconds 10] [--rows 10000] [--workdir DIR]

A submission is what the app sends: a ranking of 4 candidates, two ratings, a chosen candidate and a corrected
mask (Dice against the proposal computed), with a unique submission id.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # store_demo: the tests' scaffolding

import numpy as np  # noqa: E402

import store_demo as demo  # noqa: E402
from annotation.export import FORMATS, export  # noqa: E402
from annotation.store import FeedbackStore  # noqa: E402


def writes_per_second(workdir: Path, writers: int, seconds: float, size: int) -> tuple[float, int]:
    """(submissions per second, submissions) with `writers` processes writing for `seconds`."""
    path = str(workdir / f"writers-{writers}.db")
    with FeedbackStore(path) as store:
        made = demo.populate(store, n_cases=writers, annotators=("seed",), review=False, height=size, width=size)
        for i in range(writers):
            store.add_annotator(f"writer-{i}")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=demo.writer_process,
                         args=(path, i, made["cases"][i], made["runs"][i], f"writer-{i}", seconds, barrier, results, 0))
             for i in range(writers)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=seconds + 600) for _ in procs]
    for p in procs:
        p.join()
    errors = [e for r in reports for e in r["errors"]]
    if errors:
        raise RuntimeError(errors[0])
    total = sum(len(r["ids"]) for r in reports)
    return total / max(r["seconds"] for r in reports), total


def build_export_db(path: str, rows: int, size: int) -> None:
    """A store with `rows` feedback rows: 8 annotators rank, rate and correct every run; one correction per
    case accepted."""
    annotators = [f"ann-{i}" for i in range(8)]
    cases = rows // len(annotators)
    with FeedbackStore(path) as store:
        for name in annotators:
            store.add_annotator(name)
        store.add_annotator("rev", "reviewer")
        store.add_model_version("bench-v0", "/ck/bench-v0")
        rng = np.random.default_rng(0)
        for c in range(cases):
            scan_hash = store.put_scan(demo.make_scan(c, size, size, "uint16"))
            case_id = store.add_case(scan_hash, "Locate and segment the liver tumor.", annotators[0])
            run_id, cands = store.add_run(case_id, "bench-v0", {}, demo.make_candidates(size, size, 4, c,
                                                                                          model_version="bench-v0"))
            for a, name in enumerate(annotators):
                order = rng.permutation(4)
                y, x = int(rng.integers(size // 4, size // 2)), int(rng.integers(size // 4, size // 2))
                fid = store.submit_feedback(
                    case_id, run_id, name, ranking={cands[j]: int(r) + 1 for r, j in enumerate(order)},
                    ratings={cands[int(order[0])]: {"correctness": int(rng.integers(1, 6)),
                                                    "completeness": int(rng.integers(1, 6))}},
                    chosen_candidate_id=cands[int(order[0])],
                    edited_reasoning=f"Normal parenchyma is homogeneous; the lesion is darker ({name})." if a % 2 else None,
                    mask=demo.rect_mask(size, size, y, x, y + size // 3, x + size // 3), clicks=3, seconds=12.0)
                if a == 0:
                    store.review(fid, "rev", "accept")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the writers write")
    parser.add_argument("--rows", type=int, default=10_000, help="feedback rows for the export bench")
    parser.add_argument("--size", type=int, default=128, help="scan height and width")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for writers in (1, 8):
        rate, total = writes_per_second(workdir, writers, args.seconds, args.size)
        results.append((f"feedback writes/s, {writers} writer process{'es' if writers > 1 else ''} "
                        f"({args.seconds:.0f} s, {total} submissions)", f"{rate:.0f}"))
    db = str(workdir / "export.db")
    started = time.perf_counter()
    build_export_db(db, args.rows, args.size)
    results.append((f"building the export database ({args.rows} feedback rows, one process)",
                    f"{time.perf_counter() - started:.1f} s"))
    for fmt in FORMATS:
        with contextlib.redirect_stdout(io.StringIO()):  # the summary prints its tables
            manifest = export(db, workdir / f"out-{fmt}", fmt)
        results.append((f"export `{fmt}`, {args.rows} feedback rows ({manifest['files']} files)",
                        f"{manifest['seconds']:.1f} s"))
    cpu = os.cpu_count()
    print(f"\n## Feedback store bench ({cpu} CPU cores, load average {os.getloadavg()[0]:.1f})\n")
    print("| measure | result |\n| --- | --- |")
    for name, value in results:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
