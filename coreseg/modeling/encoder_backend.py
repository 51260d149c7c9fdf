"""Faster runtimes for the frozen image encoder, each checked against the eager PyTorch module.

The encoder is the cost of every upload and of every training image, and it is frozen, so it can be
exported once and run by an inference runtime. `EncoderRunner` wraps one backend:

* `eager`: the PyTorch module itself (the reference, and the fallback);
* `onnxruntime`: the module exported to ONNX (cached under `~/.cache/coreseg/encoders/`, keyed by a
  hash of its weights, input size and batch), run by ONNX Runtime's CPU provider;
* `openvino`: the same ONNX file compiled by OpenVINO (f32).

A backend is used only after it passed an equality check on this machine: the maximum absolute
difference of its embedding against eager on a fixed input stays under `TOLERANCE` (the result is
cached beside the export). `auto` picks ONNX Runtime on a CPU when it is installed and passes, else
eager; CUDA always runs eager. `bench/bench_encoder.py` measures every backend against the machine's
GEMM rate and checks final masks on real images.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKENDS = ("auto", "eager", "onnxruntime", "openvino")
TOLERANCE = 1e-3          # max |Δ| of the embedding against eager (embeddings are O(1))


def cache_dir() -> Path:
    return Path(os.environ.get("CORESEG_CACHE", Path.home() / ".cache" / "coreseg")) / "encoders"


def _weights_key(module: nn.Module, image_size: int, batch: int) -> str:
    digest = hashlib.sha256(f"{type(module).__name__}:{image_size}:{batch}:{torch.__version__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def export_onnx(module: nn.Module, image_size: int, batch: int = 1) -> Path:
    """The module as an ONNX file for a fixed batch (exported once, atomically)."""
    path = cache_dir() / f"encoder-{_weights_key(module, image_size, batch)}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        example = torch.zeros(batch, 3, image_size, image_size)
        with torch.no_grad():
            torch.onnx.export(module.eval(), example, str(tmp), opset_version=17, input_names=["image"],
                              output_names=["embedding"], dynamo=False)
        os.replace(tmp, path)
    return path


class EncoderRunner:
    """Runs the encoder with one backend: `runner(x)` for x (B × 3 × S × S, normalised) → embedding."""

    def __init__(self, module: nn.Module, image_size: int, backend: str = "auto", threads: int | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {BACKENDS}, got {backend!r}")
        self.module = module
        self.image_size = image_size
        self.threads = threads or torch.get_num_threads()
        self.requested = backend
        self._sessions: dict[tuple[str, int], object] = {}
        self.backend = self._choose(backend)

    # -- choosing -------------------------------------------------------------------------------
    def _choose(self, backend: str) -> str:
        on_cpu = next(self.module.parameters()).device.type == "cpu"
        if backend == "eager" or not on_cpu:
            return "eager"
        candidates = ["onnxruntime"] if backend == "auto" else [backend]
        for name in candidates:
            try:
                if self._passes_check(name):
                    return name
            except Exception as error:  # a runtime that fails to import or export is not used
                if backend != "auto":
                    raise RuntimeError(f"encoder backend {name} is not usable here: {error}") from error
        if backend != "auto":
            raise RuntimeError(f"encoder backend {backend} differs from eager by more than {TOLERANCE}")
        return "eager"

    def _passes_check(self, name: str) -> bool:
        path = export_onnx(self.module, self.image_size, 1)
        verdict_path = path.with_suffix(f".{name}.json")
        if verdict_path.exists():
            return bool(json.loads(verdict_path.read_text())["passed"])
        x = torch.from_numpy(np.random.default_rng(0).random((1, 3, self.image_size, self.image_size),
                                                             dtype=np.float32))
        with torch.no_grad():
            reference = self.module(x).numpy()
        got = self._run(name, x.numpy())
        diff = float(np.abs(got - reference).max())
        verdict_path.write_text(json.dumps({"backend": name, "max_abs_diff": diff, "passed": diff < TOLERANCE}))
        return diff < TOLERANCE

    # -- running --------------------------------------------------------------------------------
    def _session(self, name: str, batch: int):
        key = (name, batch)
        if key not in self._sessions:
            path = str(export_onnx(self.module, self.image_size, batch))
            if name == "onnxruntime":
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
                self._sessions[key] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            else:
                os.environ.setdefault("OV_TELEMETRY_DISABLE", "1")
                import openvino as ov

                self._sessions[key] = ov.Core().compile_model(path, "CPU", {
                    "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "f32"})
        return self._sessions[key]

    def _run(self, name: str, x: np.ndarray) -> np.ndarray:
        session = self._session(name, x.shape[0])
        if name == "onnxruntime":
            return session.run(None, {"image": x})[0]
        return session(x)[0]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "eager":
            return self.module(x)
        return torch.from_numpy(self._run(self.backend, x.float().cpu().numpy().astype(np.float32)))
