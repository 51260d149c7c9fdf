"""Command-line prediction for newcomers.

    python -m coreseg.predict IMAGE --question "Outline the breast mass." [--candidates N]
        [--checkpoint DIR] [--out DIR] [--seed S] [--frame F] [--slice K] [--window soft_tissue]

Reads PNG/JPEG/TIFF/BMP, DICOM or NIfTI through coreseg.scan_io (de-identified), prints the
reasoning, boxes, scores and findings (each claim checked against the candidate's own mask) as JSON on
stdout and a summary with ✔/✘ per claim on stderr, and writes per candidate `mask-K.png` and `overlay-K.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def summary(report: dict) -> str:
    """The human-readable account of a report: per candidate its answer, then ✔/✘ per claim checked
    against its own mask, and any claim no image can support."""
    lines = [f"model {report['model_version']}" + ("" if report["trained"] else " (UNTRAINED: placeholders)")]
    for k, c in enumerate(report["candidates"], 1):
        if c["parse_errors"]:
            head = "unparsable answer: " + "; ".join(c["parse_errors"])
        elif not c["present"]:
            head = f"no {c['target']} is visible (empty mask)"
        else:
            head = f"{c['target']}, {len(c['boxes'])} box(es), mask {c['mask_area']} px, score {c['mask_score']:.2f}"
        agreed = sum(f["agrees"] for f in c["findings"])
        revised = "; words measured on a first look" if c["sampling"].get("revised_from") is not None else ""
        lines.append(f"candidate {k}: {head}; claims agreeing with its mask: {agreed}/{len(c['findings'])}{revised}")
        lines += [f"  {'✔' if f['agrees'] else '✘'} {f['claim']}: stated {f['stated']}, measured {f['measured']}"
                  for f in c["findings"]]
        lines += [f"  ⚠ unsupported: {u}" for u in c["unsupported"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--question", required=True)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped compact model in assets/")
    parser.add_argument("--out", default=None, help="folder for mask and overlay PNGs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for one candidate, 0.7 else")
    parser.add_argument("--frame", type=int, default=None, help="DICOM multi-frame / NIfTI 4D volume index")
    parser.add_argument("--slice", type=int, default=None, help="NIfTI slice index")
    parser.add_argument("--axis", type=int, default=2, help="NIfTI axis (0 sagittal, 1 coronal, 2 axial)")
    parser.add_argument("--window", default=None, help="CT window preset (brain, soft_tissue, liver, lung, bone)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--encoder-backend", default="auto", choices=["auto", "eager", "onnxruntime", "openvino"],
                        help="image-encoder runtime (auto: the fastest that matches eager here)")
    args = parser.parse_args(argv)

    import torch

    from coreseg.allocator import keep_freed_memory
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.overlay import COLOURS, draw_overlay
    from coreseg.predictor import CoreSegPredictor
    from coreseg.scan_io import ScanError, read_scan

    torch.set_num_threads(min(4, os.cpu_count() or 1))
    keep_freed_memory()
    try:
        scan = read_scan(args.image, frame=args.frame, slice_index=args.slice, axis=args.axis, window=args.window)
    except ScanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, args.device,
                                                 encoder_backend=args.encoder_backend)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.candidates == 1 else 0.7)
    candidates = predictor.predict(scan.display, args.question, args.candidates, temperature=temperature,
                                   seed=args.seed)
    report = {"model_version": predictor.model_version, "trained": predictor.trained,
              "scan": {k: scan.meta[k] for k in ("source_format", "modality", "height", "width") if k in scan.meta},
              "question": args.question, "candidates": []}
    if not predictor.trained:
        report["warning"] = "this model is UNTRAINED: its answers and masks are placeholders"
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for k, candidate in enumerate(candidates):
        entry = candidate.to_json()
        if out:
            Image.fromarray(candidate.mask.astype(np.uint8) * 255).save(out / f"mask-{k}.png")
            overlay = draw_overlay(scan.display, candidate.mask, entry["boxes"], colour=COLOURS[k % len(COLOURS)])
            Image.fromarray(overlay).save(out / f"overlay-{k}.png")
            entry["files"] = {"mask": str(out / f"mask-{k}.png"), "overlay": str(out / f"overlay-{k}.png")}
        report["candidates"].append(entry)
    print(json.dumps(report, indent=2))
    print(summary(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
