"""The frozen image encoder on this CPU, per backend, against the machine's own fp32 GEMM rate (issue 12).

    python bench/bench_encoder.py --data ../shared/data [--images 2] [--repeats 3] [--threads 2]
        [--backends eager,channels_last,compile,onnxruntime,openvino,bf16] [--compile-timeout 300]

One run measures, and prints as Markdown tables:
1. the fp32 GEMM rate (a 2048² `torch.mm` loop) with `--threads` threads;
2. for each backend, at batch 1 and batch 4, on `--images` real val images of each set: seconds per image,
   GFLOP/s (FLOPs from `torch.utils.flop_counter`), the fraction of the GEMM rate, the max |Δ| of the
   embedding against eager, and the Dice of the final masks against eager's (the LiteMedSAM decoder with
   the truth box as prompt). A backend is *exact* when max |Δ| < `encoder_backend.TOLERANCE` and every
   Dice ≥ 0.99. `torch.compile` runs in a child process and is abandoned after `--compile-timeout` s;
   bf16 autocast runs only where `coreseg.precision.native_bf16()` (else the measured speedup is printed);
3. with the fastest exact backend that `EncoderRunner` can select (eager / onnxruntime / openvino), on the
   shipped model (assets/coreseg-compact): click refinement / encode, 4 candidates / encode (every image, as
   served and without claim revision, interleaved: how many revision passes a request takes depends on the image),
   and `trainers.features` images per minute (`encode_item` on the same images).
Setup time is the export or compile plus the first calls (ONNX exports are cached under $CORESEG_CACHE).
The load average is printed before and after: on a shared machine the numbers are only as quiet as it was.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing as mp
import os
import platform
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "openvino", "bf16")
SELECTABLE = ("eager", "onnxruntime", "openvino")   # what EncoderRunner (and so the app) can run
MIN_DICE = 0.99
QUESTION = "Outline the lesion."


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gemm_rate(threads: int, trials: int, n: int = 2048) -> float:
    """Best fp32 GFLOP/s of `torch.mm` on n × n matrices (4 products per trial)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(max(3, trials)):
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n ** 3 / best / 1e9


def encoder_flops(module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return counter.get_total_flops()


def load_images(data: str, sets: list[str], per_set: int) -> list[dict]:
    """`per_set` val images of each set with their truth mask and its box (x1, y1, x2, y2, exclusive)."""
    from coreseg.datasets import load_split, read_image, read_mask

    out = []
    for name in sets:
        for item in load_split(data, name, "val")[:per_set]:
            image, truth = read_image(item), read_mask(item)
            ys, xs = np.nonzero(truth)
            box = ((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs)
                   else (0, 0, truth.shape[1], truth.shape[0]))
            out.append({"item": item, "image": image, "truth": truth, "box": box})
    if not out:
        raise SystemExit(f"no val images under {data} for sets {sets}")
    return out


def box_masks(segmenter, embeddings: list[torch.Tensor], images: list[dict]) -> list[np.ndarray]:
    """The LiteMedSAM decoder's mask for each image, its truth box as the prompt."""
    from coreseg.geometry import Frames

    masks = []
    for emb, entry in zip(embeddings, images):
        frames = Frames(entry["truth"].shape, image_size=segmenter.image_size)
        box = torch.tensor([frames.box(entry["box"], "image", "segmenter")], dtype=torch.float32)
        with torch.no_grad():
            low_res, _ = segmenter.decode(emb.float(), boxes=box)
        masks.append(frames.mask(low_res[0]))
    return masks


def measure(fn, inputs: list[torch.Tensor], batch4: torch.Tensor, repeats: int) -> dict:
    """Warm-up (timed as setup), then `repeats` rounds at batch 1 over every input and at batch 4."""
    start = time.perf_counter()
    with torch.no_grad():
        fn(inputs[0])
        fn(batch4)
        setup = time.perf_counter() - start
        b1, b4, embeddings, emb4 = [], [], [], None
        for _ in range(repeats):
            for i, x in enumerate(inputs):
                t = time.perf_counter()
                emb = fn(x)
                b1.append(time.perf_counter() - t)
                if len(embeddings) < len(inputs):
                    embeddings.append(emb.float().clone())
            t = time.perf_counter()
            emb4 = fn(batch4)
            b4.append((time.perf_counter() - t) / batch4.shape[0])
    return {"setup": setup, "b1": statistics.median(b1), "b4": statistics.median(b4),
            "embeddings": embeddings, "emb4": emb4.float().clone()}


def _compile_child(results, threads: int, repeats: int, inputs, batch4) -> None:
    """torch.compile in its own process, so that a compile that never ends can be abandoned."""
    try:
        torch.set_num_threads(threads)
        inputs, batch4 = [torch.from_numpy(x) for x in inputs], torch.from_numpy(batch4)
        from coreseg.config import SegmenterConfig
        from coreseg.modeling.segmenter import Segmenter

        encoder = Segmenter(SegmenterConfig()).eval().image_encoder
        compiled = torch.compile(encoder, dynamic=False)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(inputs[0])
            compiled(batch4)
        compile_time = time.perf_counter() - start
        results.put(("compiled", compile_time))
        out = measure(compiled, inputs, batch4, repeats)
        out["setup"] += compile_time
        # numpy, not tensors: torch would share tensor memory with a process that is about to exit
        out["embeddings"] = [e.numpy() for e in out["embeddings"]]
        out["emb4"] = out["emb4"].numpy()
        results.put(("done", out))
    except Exception as error:  # reported as the backend's result
        results.put(("error", f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"))


def run_compile(args, inputs, batch4) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=_compile_child, args=(results, args.threads, args.repeats,
                                                     [x.numpy() for x in inputs], batch4.numpy()))
    child.start()
    try:
        kind, value = results.get(timeout=args.compile_timeout)
        if kind == "compiled":
            log(f"compile: compiled in {value:.0f} s")
            kind, value = results.get(timeout=max(600, 60 * args.repeats * len(inputs)))
    except queue.Empty:
        child.terminate()
        child.join()
        raise RuntimeError(f"compiling took more than {args.compile_timeout} s") from None
    child.join()
    if kind == "error":
        raise RuntimeError(value)
    value["embeddings"] = [torch.from_numpy(e) for e in value["embeddings"]]
    value["emb4"] = torch.from_numpy(value["emb4"])
    return value


def backend_fn(name: str, encoder, args):
    """A callable x → embedding for a backend measured in this process."""
    from coreseg import precision
    from coreseg.config import SegmenterConfig
    from coreseg.modeling.encoder_backend import EncoderRunner

    if name == "eager":
        return encoder
    if name == "channels_last":
        module = copy.deepcopy(encoder).to(memory_format=torch.channels_last)
        return lambda x: module(x.contiguous(memory_format=torch.channels_last))
    if name == "bf16":
        if not precision.native_bf16():
            speedup = precision.cpu_verdict()["speedup"]
            raise LookupError(f"skipped: no native bf16, measured speedup {speedup:.2f}×")

        def bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return encoder(x).float()
        return bf16
    return EncoderRunner(encoder, SegmenterConfig().image_size, name, args.threads)


def equality(result: dict, reference: dict, segmenter, images, ref_masks) -> None:
    """max |Δ| of the embeddings (batch 1 and batch 4) and the min Dice of the masks, against eager."""
    from coreseg.metrics import dice

    diffs = [float((a - b).abs().max()) for a, b in zip(result["embeddings"], reference["embeddings"])]
    n4 = result["emb4"].shape[0]
    diffs += [float((result["emb4"][i] - reference["embeddings"][i % len(images)][0]).abs().max()) for i in range(n4)]
    masks = box_masks(segmenter, result["embeddings"], images)
    result["max_diff"] = max(diffs)
    result["min_dice"] = min(dice(m, r) for m, r in zip(masks, ref_masks))


def ratios(best: str, images: list[dict], args) -> list[tuple[str, str, str]]:
    """Refinement, 4 candidates and feature extraction against one encode, with backend `best`."""
    from coreseg.config import DEFAULT_CHECKPOINT, SegmenterConfig
    from coreseg.modeling.drafting import NgramDrafter
    from coreseg.modeling.segmenter import Segmenter
    from coreseg.predictor import CoreSegPredictor
    from trainers.features import encode_item, feature_path

    predictor = CoreSegPredictor.from_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT, "cpu")
    used = predictor.model.segmenter.use_encoder_backend(best, args.threads)
    for entry in images:
        predictor.embedding(entry["image"])
    four, unrevised = [], []
    config = predictor.model.config
    for k in range(max(2, args.repeats)):  # every image, as served and without claim revision (interleaved)
        for entry in images:
            for revise, times in ((config.revise_claims, four), (False, unrevised)):
                predictor.model.config = dataclasses.replace(config, revise_claims=revise)
                t = time.perf_counter()
                predictor.predict(entry["image"], QUESTION, 4, seed=k)
                times.append(time.perf_counter() - t)
    predictor.model.config = config
    entry = images[0]
    image = entry["image"]
    embedding = predictor.embedding(image)
    reasoner = predictor.model.reasoner
    shipped_drafts = reasoner.drafter
    sampling = {}
    for label, drafter in (("with the checkpoint's guesses", shipped_drafts), ("without guesses", NgramDrafter())):
        reasoner.drafter = drafter  # the reasoner's share of the 4 candidates: sampling the answers
        sampling[label] = sample_speed(reasoner, image, embedding, max(2, args.repeats))
    reasoner.drafter = shipped_drafts
    candidate = predictor.predict(image, QUESTION, 1, temperature=0.0)[0]
    x1, y1, x2, y2 = entry["box"]
    encode, refine, click_ratios = [], [], []
    for k in range(max(5, args.repeats)):
        # interleaved: each encode (another pixel: a cache miss) is followed by 5 clicks on the cached image, and
        # the ratio is taken per round, so a busy minute slows both sides of the ratio it enters
        variant = image.copy()
        variant[0, 0, 0] ^= k + 1
        t = time.perf_counter()
        predictor.embedding(variant)
        encode.append(time.perf_counter() - t)
        clicks = []
        for j in range(5):
            click = ((x1 + x2) / 2 + j, (y1 + y2) / 2, 1)
            t = time.perf_counter()
            predictor.refine(image, candidate, [click])
            clicks.append(time.perf_counter() - t)
        refine += clicks
        click_ratios.append(statistics.median(clicks) / encode[-1])
    upstream, ours = decoder_pass(predictor, embedding, candidate, max(5, args.repeats))
    enc, ref, cand = (statistics.median(v) for v in (encode, refine, four))
    log(f"ratios: encode {enc:.2f} s, refine {ref * 1000:.0f} ms, 4 candidates {cand:.2f} s")

    segmenter = Segmenter(SegmenterConfig()).eval()
    segmenter.use_encoder_backend(best, args.threads)
    with tempfile.TemporaryDirectory() as out:
        encode_item(segmenter, images[0]["item"], feature_path(Path(out) / "warm", images[0]["item"]))
        start = time.perf_counter()
        for entry in images:
            encode_item(segmenter, entry["item"], feature_path(Path(out), entry["item"]))
        per_minute = 60 * len(images) / (time.perf_counter() - start)
    return [
        ("encode (shipped model, cache miss)", f"{enc:.2f} s", "—"),
        ("click refinement / encode (median of rounds: encode, then 5 clicks)",
         f"{statistics.median(click_ratios):.3f} ({ref * 1000:.0f} ms; rounds {min(click_ratios):.3f}–"
         f"{max(click_ratios):.3f})", "≤ 0.05"),
        (f"4 candidates / encode (median of {len(four)} requests on the {len(images)} images)",
         f"{cand / enc:.2f} ({cand:.2f} s; requests {min(four):.2f}–{max(four):.2f} s)", "≤ 1"),
        ("  the same without claim revision (`revise_claims=false`)",
         f"{statistics.median(unrevised) / enc:.2f} ({statistics.median(unrevised):.2f} s)", "—"),
        *((f"  of which sampling the 4 answers, {label}", f"{seconds:.2f} s ({tokens:.0f} tokens a row, {passes:.0f} "
           f"passes, {1000 * seconds / passes:.1f} ms a pass)", "—") for label, (seconds, tokens, passes) in sampling.items()),
        ("decoder pass, segment-anything's forward → coreseg's (1 prompt)",
         f"{upstream[0] * 1000:.0f} → {ours[0] * 1000:.0f} ms ({upstream[0] / ours[0]:.2f}×)", "—"),
        ("decoder pass, 4 prompts on one image", f"{upstream[1] * 1000:.0f} → {ours[1] * 1000:.0f} ms "
         f"({upstream[1] / ours[1]:.2f}×)", "—"),
        (f"trainers.features images per minute ({len(images)} images)", f"{per_minute:.1f}", "—"),
        ("encoder backend in use; the mask decoder's (`decoder_backend`)",
         f"{used}; {predictor.model.segmenter.decoder_backend}", "—"),
    ]


def sample_speed(reasoner, image, embedding: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """Median seconds, tokens of the longest row and decoder passes of sampling 4 answers (T 0.7, top-p 0.95)."""
    from coreseg.modeling.kv_decoder import KVDecoder

    passes, run = [], KVDecoder.run

    def counted(self, tokens):
        passes[-1] += 1
        return run(self, tokens)

    seconds, tokens = [], []
    KVDecoder.run = counted
    try:
        for k in range(repeats):
            passes.append(0)
            t = time.perf_counter()
            ids, _ = reasoner.generate(image, embedding, QUESTION, 4, 0.7, 0.95, torch.Generator().manual_seed(k))
            seconds.append(time.perf_counter() - t)
            tokens.append(max(len(i) for i in ids))
    finally:
        KVDecoder.run = run
    return statistics.median(seconds), statistics.median(tokens), statistics.median(passes)


def decoder_pass(predictor, embedding: torch.Tensor, candidate, repeats: int) -> tuple[tuple, tuple]:
    """Median time of one decoder pass (1 prompt; 4 prompts) through segment-anything's own forward (one prompt at
    a time, as upstream's predictor) and through `coreseg.modeling.mask_decoding` (the image side prepared once)."""
    segmenter = predictor.model.segmenter
    probe = torch.from_numpy(candidate.probe)[None]
    box = torch.tensor([[40.0, 40.0, 200.0, 200.0]])
    sparse, dense = segmenter.prompt_encoder(points=None, boxes=box, masks=None)
    sparse = torch.cat([probe, sparse], dim=1)

    def upstream(n):
        for _ in range(n):
            segmenter.mask_decoder(image_embeddings=embedding, image_pe=segmenter.prompt_encoder.get_dense_pe(),
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=False)

    def ours(n):
        segmenter.decode(embedding, probe=probe.expand(n, -1, -1), boxes=box.expand(n, -1))

    result = []
    for fn in (upstream, ours):
        times = []
        with torch.no_grad():
            for n in (1, 4):
                fn(n)
                runs = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn(n)
                    runs.append(time.perf_counter() - t)
                times.append(statistics.median(runs))
        result.append(tuple(times))
    return result[0], result[1]


def machine_line(threads: int) -> str:
    from coreseg.precision import _cpu_info

    model, flags = _cpu_info()
    isa = ",".join(sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16"})) or "?"
    versions = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino"):
        try:
            from coreseg.modeling.encoder_backend import runtime_version

            versions.append(f"{name} {runtime_version(name)}")
        except ImportError:
            versions.append(f"{name} not installed")
    return f"{model} ({isa}), {os.cpu_count()} CPUs, {threads} threads, {platform.python_version()}; " + ", ".join(
        versions)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with busbra/, kvasir-seg/, ph2/")
    parser.add_argument("--sets", default="busbra,kvasir,ph2")
    parser.add_argument("--images", type=int, default=2, help="val images per set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--compile-timeout", type=float, default=300, help="seconds before torch.compile is given up")
    parser.add_argument("--checkpoint", default=None, help="for the ratios; default: the shipped compact model")
    parser.add_argument("--no-ratios", action="store_true", help="skip the refinement / candidates / features ratios")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OV_TELEMETRY_DISABLE", "1")
    torch.set_num_threads(args.threads)
    from coreseg.allocator import keep_freed_memory

    keep_freed_memory()  # as the app does
    unknown = set(args.backends.split(",")) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    from coreseg.config import SegmenterConfig
    from coreseg.modeling.encoder_backend import TOLERANCE
    from coreseg.modeling.segmenter import Segmenter

    load_before = os.getloadavg()
    log("GEMM rate")
    gemm = gemm_rate(args.threads, args.repeats)
    segmenter = Segmenter(SegmenterConfig()).eval()
    encoder = segmenter.image_encoder
    images = load_images(args.data, args.sets.split(","), args.images)
    inputs = [segmenter.preprocess(e["image"]) for e in images]
    batch4 = torch.cat([inputs[i % len(inputs)] for i in range(4)])
    flops = encoder_flops(encoder, inputs[0])
    log(f"GEMM {gemm:.0f} GFLOP/s; encoder {flops / 1e9:.1f} GFLOPs per image; {len(images)} images")

    names = ["eager"] + [n for n in args.backends.split(",") if n != "eager"]
    results: dict[str, dict] = {}
    reference, ref_masks = None, None
    for name in names:
        log(f"{name} …")
        try:
            if name == "compile":
                result = run_compile(args, inputs, batch4)
            else:
                setup_start = time.perf_counter()
                fn = backend_fn(name, encoder, args)
                prepared = time.perf_counter() - setup_start
                result = measure(fn, inputs, batch4, args.repeats)
                result["setup"] += prepared
        except LookupError as skipped:
            results[name] = {"status": str(skipped)}
            continue
        except Exception as error:
            results[name] = {"status": f"failed: {type(error).__name__}: {error}"[:200]}
            continue
        if reference is None:
            reference, ref_masks = result, box_masks(segmenter, result["embeddings"], images)
        equality(result, reference, segmenter, images, ref_masks)
        result["exact"] = result["max_diff"] < TOLERANCE and result["min_dice"] >= MIN_DICE
        result["status"] = "exact" if result["exact"] else "NOT exact"
        results[name] = result
        log(f"{name}: {result['b1']:.2f} s/img (batch 1), {result['b4']:.2f} s/img (batch 4), "
            f"max|Δ| {result['max_diff']:.1e}, min Dice {result['min_dice']:.4f}")

    again = gemm_rate(args.threads, args.repeats)  # the machine's rate is its best: a slow minute once read 101 of 170
    log(f"GEMM again {again:.0f} GFLOP/s (before the backends {gemm:.0f})")
    gemm = max(gemm, again)
    print(f"\n{machine_line(args.threads)}")
    print(f"fp32 GEMM rate (2048² torch.mm): {gemm:.0f} GFLOP/s; encoder: {flops / 1e9:.1f} GFLOPs per "
          f"{SegmenterConfig().image_size}² image; {len(images)} val images "
          f"({args.images} per set: {args.sets}), {args.repeats} repeats; "
          f"load average {load_before[0]:.1f} before")
    print("\n| backend | setup s | s/img batch 1 | s/img batch 4 | GFLOP/s b1 / b4 | × GEMM (best) "
          "| max abs Δ | min Dice | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        if "b1" not in r:
            print(f"| {name} | | | | | | | | {r['status']} |")
            continue
        rate1, rate4 = flops / r["b1"] / 1e9, flops / r["b4"] / 1e9
        print(f"| {name} | {r['setup']:.1f} | {r['b1']:.2f} | {r['b4']:.2f} | {rate1:.0f} / {rate4:.0f} | "
              f"{max(rate1, rate4) / gemm:.2f} | {r['max_diff']:.1e} | {r['min_dice']:.4f} | {r['status']} |")
    exact = {n: r for n, r in results.items() if r.get("exact")}
    if not exact:
        print("\nno backend passed the equality check")
        return
    fastest = min(exact, key=lambda n: exact[n]["b1"])
    best = min((n for n in exact if n in SELECTABLE), key=lambda n: exact[n]["b1"], default="eager")
    rate = flops / exact[best]["b1"] / 1e9
    print(f"\nfastest exact backend: {fastest}; fastest selectable by EncoderRunner (auto/app): {best} — "
          f"encoder rate / GEMM rate = {rate:.0f} / {gemm:.0f} = {rate / gemm:.2f} (target ≥ 0.5); "
          f"speed-up over eager {results['eager']['b1'] / exact[best]['b1']:.2f}×")
    if not args.no_ratios:
        log(f"ratios with {best} …")
        rows = ratios(best, images, args)
        print(f"\nRatios measured in this run ({best} encoder, {args.threads} threads):\n")
        print("| measure | value | target |")
        print("|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    load_after = os.getloadavg()
    print(f"\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"(a quiet machine of {os.cpu_count()} CPUs reads about {args.threads})")


if __name__ == "__main__":
    main()
