"""Bench the app through its server, as users see it (gradio_client against the app started here).

    python bench/bench_app.py --model small              # the tests' small compact model (real LiteMedSAM)
    python bench/bench_app.py --model default            # assets/coreseg-compact, or the untrained compact model
    python bench/bench_app.py --model default --seconds 120 --users 4

Prints a Markdown table:
- upload → N candidates shown: a fresh scan each time (no cached embedding), file upload included;
- click → mask round trip through the server (`/refine`, PNG download included); target ≤ 300 ms median;
- U simulated users for S seconds doing predict → 3 refines → submit on fresh scans: median and 95th-percentile
  latency per call, errors (target 0), and rows stored = rows submitted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "TRANSFORMERS_OFFLINE": "1"}.items():
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

QUESTION = "Where is the lesion? Find it and identify its boundaries."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_predictor(kind: str):
    from coreseg.config import AppConfig, ModelConfig, ReasonerConfig
    from coreseg.predictor import CoreSegPredictor

    if kind == "small":
        from coreseg.modeling.core_seg import CoreSeg

        model = CoreSeg.build(ModelConfig(reasoner=ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2,
                                                                  intermediate_size=128, max_new_tokens=40))).eval()
        return CoreSegPredictor(model, "bench-small", trained=False)
    return CoreSegPredictor.from_checkpoint(AppConfig().checkpoint, "cpu")


class Scans:
    """Fresh scans: the bundled examples with a little noise, so that no upload hits the embedding cache."""

    def __init__(self, folder: Path, seed: int = 0):
        from studio.handlers import examples

        self.images = [np.asarray(Image.open(e["path"]).convert("RGB")) for e in examples()]
        if not self.images:
            raise SystemExit("no bundled examples under assets/examples")
        self.folder = folder
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.lock = threading.Lock()

    def next(self) -> str:
        with self.lock:
            self.count += 1
            n = self.count
            base = self.images[n % len(self.images)].astype(np.int16)
            noise = self.rng.integers(-2, 3, size=base.shape, dtype=np.int16)
        path = self.folder / f"scan-{n}.png"
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)
        return str(path)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(v: float) -> str:
    return "n/a" if v != v else f"{v * 1000:,.0f} ms"


def raw_refine(http, url: str, fn_index: int, session_hash: str, data: list) -> float:
    """One /refine the way the page's own JS client does it (join the queue, read the event stream, fetch the
    mask PNG), timed: gradio_client adds ~50 ms polling steps of its own, the browser does not."""
    started = time.perf_counter()
    joined = http.post(url + "gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                            "session_hash": session_hash, "event_data": None,
                                                            "trigger_id": None})
    joined.raise_for_status()
    output = None
    with http.stream("GET", url + "gradio_api/queue/data", params={"session_hash": session_hash}) as response:
        buffer = b""
        for chunk in response.iter_bytes():
            buffer += chunk
            while b"\n\n" in buffer and output is None:
                line, buffer = buffer.split(b"\n\n", 1)
                line = line.decode()
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        output = message["output"]
            if output is not None:
                break
    if not output or "data" not in output:
        raise RuntimeError(f"refine failed: {output}")
    http.get(output["data"][0]["url"]).raise_for_status()
    return time.perf_counter() - started


def one_user(url: str, scans: Scans, stop_at: float, n: int, log: dict, index: int) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rng = np.random.default_rng(index)
    while time.monotonic() < stop_at:
        try:
            t = time.perf_counter()
            result, _ = client.predict(handle_file(scans.next()), QUESTION, n, "", api_name="/predict")
            log["predict"].append(time.perf_counter() - t)
            ids = result["candidate_ids"]
            height = width = None
            clicks = []
            for k in range(3):
                if height is None:
                    x, y = 60, 60
                else:
                    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
                clicks.append([x, y, 1 if k != 1 else 0])
                t = time.perf_counter()
                _, summary = client.predict(result["case_id"], ids[0], json.dumps(clicks), "", api_name="/refine")
                log["refine"].append(time.perf_counter() - t)
                height, width = summary["height"], summary["width"]
            ranking = {str(c): r + 1 for r, c in enumerate(ids)}
            ratings = {str(ids[0]): {"correctness": 3, "completeness": 3, "clinical_relevance": 3}}
            t = time.perf_counter()
            client.predict(result["case_id"], result["run_id"], json.dumps(ranking), json.dumps(ratings), None, "",
                           "submitted", 0, "", api_name="/submit")
            log["submit"].append(time.perf_counter() - t)
            with log["lock"]:
                log["submitted"] += 1
        except Exception as exc:  # counted, and the user goes on
            with log["lock"]:
                log["errors"].append(f"{type(exc).__name__}: {str(exc)[:120]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["small", "default"], default="small")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=3, help="single-user upload → candidates repetitions")
    parser.add_argument("--clicks", type=int, default=20, help="single-user click → mask repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import app
    from annotation.store import FeedbackStore
    from coreseg.config import AppConfig
    from gradio_client import Client, handle_file

    work = Path(tempfile.mkdtemp(prefix="bench-app-"))
    started = time.perf_counter()
    predictor = build_predictor(args.model)
    build_s = time.perf_counter() - started
    config = AppConfig(database_url=f"sqlite:///{work / 'feedback.db'}", temp_dir=str(work / "gradio-tmp"),
                       n_candidates=args.candidates)
    store = FeedbackStore(work / "feedback.db")
    demo = app.build_app(config, predictor=predictor, store=store)
    port = free_port()
    app.launch_app(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    scans = Scans(work)
    rows = []
    try:
        client = Client(url, verbose=False)
        # 1. upload → N candidates shown (fresh scans; the first call also warms the model up)
        uploads = []
        for _ in range(args.uploads + 1):
            t = time.perf_counter()
            result, gallery = client.predict(handle_file(scans.next()), QUESTION, args.candidates, "",
                                             api_name="/predict")
            uploads.append(time.perf_counter() - t)
            assert len(gallery) == args.candidates
        uploads = uploads[1:]
        # 2. click → mask through the server
        ids, clicks, refines = result["candidate_ids"], [], []
        rng = np.random.default_rng(1)
        for k in range(args.clicks):
            clicks.append([int(rng.integers(20, 200)), int(rng.integers(20, 200)), int(k % 3 != 2)])
            t = time.perf_counter()
            client.predict(result["case_id"], ids[0], json.dumps(clicks[-5:]), "", api_name="/refine")
            refines.append(time.perf_counter() - t)
        import httpx

        fn_index = client._infer_fn_index("/refine", None)
        raw = []
        with httpx.Client(timeout=60) as http:
            for k in range(args.clicks):
                raw.append(raw_refine(http, url, fn_index, client.session_hash,
                                      [result["case_id"], ids[0], json.dumps(clicks[max(0, k - 4):k + 1]), "", None]))
        # 3. U users at once
        log = {"predict": [], "refine": [], "submit": [], "errors": [], "submitted": 0, "lock": threading.Lock()}
        stop_at = time.monotonic() + args.seconds
        threads = [threading.Thread(target=one_user, args=(url, scans, stop_at, args.candidates, log, i))
                   for i in range(args.users)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        stored = len(store.feedback_rows(status="submitted"))
    finally:
        demo.close()

    p = predictor
    print(f"\n### App bench — model `{p.model_version}` ({'trained' if p.trained else 'untrained'}, "
          f"{args.model}), {platform.machine()} CPU, torch threads {args.threads}\n")
    print("| measure | median | p95 | n | notes |")
    print("| --- | --- | --- | --- | --- |")
    rows.append(("model build/load", build_s, float("nan"), 1, ""))
    rows.append((f"upload → {args.candidates} candidates shown", statistics.median(uploads), pct(uploads, 0.95),
                 len(uploads), "fresh scan each time, via /predict"))
    rows.append(("click → mask round trip (/refine, as the page does it)", statistics.median(raw), pct(raw, 0.95),
                 len(raw), "target ≤ 300 ms median " + ("✅" if statistics.median(raw) <= 0.3 else "❌")))
    rows.append(("click → mask round trip (/refine via gradio_client)", statistics.median(refines),
                 pct(refines, 0.95), len(refines), "includes gradio_client's own 50 ms polling"))
    for name in ("predict", "refine", "submit"):
        values = log[name]
        rows.append((f"{args.users} users × {args.seconds:.0f} s: /{name}", statistics.median(values) if values else
                     float("nan"), pct(values, 0.95), len(values), ""))
    for name, median, p95, n, note in rows:
        print(f"| {name} | {ms(median) if name != 'model build/load' else f'{median:.1f} s'} | {ms(p95)} | {n} | {note} |")
    print(f"| {args.users} users: errors | {len(log['errors'])} | | | target 0 {'✅' if not log['errors'] else '❌'} |")
    ok = stored == log["submitted"]
    print(f"| {args.users} users: rows stored / submitted | {stored} / {log['submitted']} | | | "
          f"{'equal ✅' if ok else 'MISMATCH ❌'} ({wall:.0f} s wall) |")
    if log["errors"]:
        print("\nerrors (first 5):", *log["errors"][:5], sep="\n- ")
    store.close()
    return 0 if ok and not log["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
