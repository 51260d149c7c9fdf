"""Model speed and memory on this machine (CPU, compact profile, a 512-px image).

    python bench/bench_model.py [--checkpoint DIR] [--repeats 5] [--threads 2] [--encoder-backend auto]

Prints a Markdown table: encode; 1 and 4 candidates; one click refinement with the cached
embedding; peak RSS. Targets (issue 2): refinement ≤ 100 ms median, 4 candidates ≤ 5 s median,
peak RSS ≤ 3 GB. `--encoder-backend` as in the app (auto: the fastest runtime that matches eager here;
bench/bench_encoder.py compares them all).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-backend", default="auto", choices=["auto", "eager", "onnxruntime", "openvino"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from coreseg.config import DEFAULT_CHECKPOINT
    from coreseg.predictor import CoreSegPredictor

    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, "cpu")
    backend = predictor.model.segmenter.use_encoder_backend(args.encoder_backend, args.threads)
    rng = np.random.default_rng(0)
    images = [(rng.random((512, 512, 3)) * 255).astype(np.uint8) for _ in range(args.repeats)]
    it = iter(images)
    encode = timed(lambda: predictor.embedding(next(it)), args.repeats)
    image = images[0]
    q = "Outline the suspicious lesion."
    one = timed(lambda: predictor.predict(image, q, 1, temperature=0.0), args.repeats)
    seeds = iter(range(100))
    four = timed(lambda: predictor.predict(image, q, 4, seed=next(seeds)), args.repeats)
    candidate = predictor.predict(image, q, 1, temperature=0.0)[0]
    clicks = iter([(100 + 10 * i, 200, i % 2) for i in range(100)])
    refine = timed(lambda: predictor.refine(image, candidate, [next(clicks)]), max(args.repeats, 10))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    med = lambda xs: statistics.median(xs) * 1000  # noqa: E731
    print(f"model {predictor.model_version} ({'trained' if predictor.trained else 'untrained'}), "
          f"{args.threads} threads, 512×512 image, {args.repeats} repeats, encoder backend {backend}")
    print("| step | median ms | max ms | target |")
    print("|---|---|---|---|")
    print(f"| encode (LiteMedSAM, once per image) | {med(encode):.0f} | {max(encode) * 1000:.0f} | — |")
    print(f"| 1 candidate (cached embedding) | {med(one):.0f} | {max(one) * 1000:.0f} | — |")
    print(f"| 4 candidates (one batch) | {med(four):.0f} | {max(four) * 1000:.0f} | ≤ 5000 |")
    print(f"| click refinement (cached embedding) | {med(refine):.0f} | {max(refine) * 1000:.0f} | ≤ 100 |")
    print(f"| peak RSS | {rss_gb:.2f} GB | | ≤ 3 GB |")


if __name__ == "__main__":
    main()
