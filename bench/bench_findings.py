"""How long checking one candidate's claims against its own mask takes (`coreseg.findings.check_answer`).

    python bench/bench_findings.py [--repeats 30]

Realistic sizes: a 512 × 512 scan and a 1920 × 1080 frame, masks of 1, 2 and 4 elliptical parts, an
answer stating every box, a location, a size, a shape and the number of parts, checked with the image
(as `CoreSegPredictor` does) and without. Prints a Markdown table of the median per candidate, as CPU
time of this process (what the check costs; robust when the machine is shared) and as wall time,
beside the stages it is made of. Target (issue 9): < 20 ms a candidate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from coreseg.answer import render_answer  # noqa: E402
from coreseg.findings import check_answer, read_statements, unsupported_claims  # noqa: E402
from coreseg.lesion_facts import describe_lesion, thumbnail  # noqa: E402
from coreseg.mask_boxes import lesion_parts, mask_boxes  # noqa: E402

TARGET_MS = 20.0
SIZES = [(512, 512), (1080, 1920)]
PARTS = [1, 2, 4]


def scene(height: int, width: int, parts: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A speckled RGB frame and a mask of `parts` ellipses of different sizes, one per quadrant."""
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), bool)
    for k in range(parts):
        cy, cx = height * (0.27 + 0.46 * (k // 2)), width * (0.27 + 0.46 * (k % 2))
        ry, rx = height * (0.12 - 0.02 * k), width * (0.09 - 0.015 * k)
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image[mask] //= 3
    return image, mask


def answer_for(mask: np.ndarray) -> str:
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    boxes = mask_boxes(mask)
    reasoning = (f"An oval, moderate-sized hypoechoic lesion in the upper left part of the image, in "
                 f"{words[len(boxes)]} separate parts. The features favour a benign process.")
    return render_answer(reasoning, "lesion", boxes)


def cost(fn, repeats: int) -> tuple[float, float]:
    """(median CPU ms, median wall ms) of `fn()`."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    print("| frame | parts | claims | check_answer CPU ms (with image / without) | wall ms (with image) "
          "| full-size parts | thumbnail | describe_lesion | reading text | < 20 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for height, width in SIZES:
        for parts in PARTS:
            image, mask = scene(height, width, parts)
            text = answer_for(mask)
            findings = check_answer(text, mask, image)
            with_image, wall = cost(lambda: (check_answer(text, mask, image), unsupported_claims(text)), args.repeats)
            without, _ = cost(lambda: check_answer(text, mask), args.repeats)
            small_image, small_mask = thumbnail(image, mask)
            stages = [cost(lambda: lesion_parts(mask), args.repeats)[0],
                      cost(lambda: thumbnail(image, mask), args.repeats)[0],
                      cost(lambda: describe_lesion(small_image, small_mask), args.repeats)[0],
                      cost(lambda: (read_statements(text), unsupported_claims(text)), args.repeats)[0]]
            worst = max(worst, with_image, without)
            ok = "yes" if max(with_image, without) < TARGET_MS else "NO"
            print(f"| {width}×{height} | {parts} | {len(findings)} | {with_image:.1f} / {without:.1f} | {wall:.1f} | "
                  + " | ".join(f"{s:.1f}" for s in stages) + f" | {ok} |")
    print(f"\nworst median per candidate: {worst:.1f} ms CPU (target < {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
