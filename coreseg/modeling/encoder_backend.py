"""Faster runtimes for the frozen image encoder, each checked against the eager PyTorch module.

The encoder is the cost of every upload and of every training image, and it is frozen, so it can be
exported once and run by an inference runtime. `EncoderRunner` wraps one backend:

* `eager`: the PyTorch module itself (the reference, and the fallback);
* `onnxruntime`: the module exported to ONNX (cached under `$CORESEG_CACHE/encoders/`, default
  `~/.cache/coreseg`, keyed by a hash of its weights, input size and batch), run by ONNX Runtime's CPU
  provider;
* `openvino`: the same ONNX file compiled by OpenVINO (f32; optional: `pip install openvino==2026.4.1`).

A backend is used only after it passed an equality check on this machine: the maximum absolute
difference of its embedding against eager on a fixed input stays under `TOLERANCE` (the verdict is
cached beside the export, per runtime version). `auto` takes the first of `AUTO_ORDER` that is installed
and passes (ONNX Runtime measured fastest on an AVX2 EPYC: `bench/bench_encoder.py`), else eager; if it
later fails at run time (e.g. exporting a new batch size), `auto` falls back to eager for good. An
explicit backend that cannot be used raises instead. CUDA always runs eager.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKENDS = ("auto", "eager", "onnxruntime", "openvino")
AUTO_ORDER = ("onnxruntime", "openvino")   # fastest first, as measured by bench/bench_encoder.py
TOLERANCE = 1e-3          # max |Δ| of the embedding against eager (embeddings are O(1))

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("CORESEG_CACHE", Path.home() / ".cache" / "coreseg")) / "encoders"


def weights_key(module: nn.Module, image_size: int, batch: int) -> str:
    """A short hash of a module's weights, the export's input size and batch and torch's version: an export's name."""
    digest = hashlib.sha256(f"{type(module).__name__}:{image_size}:{batch}:{torch.__version__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def export_onnx(module: nn.Module, image_size: int, batch: int = 1) -> Path:
    """The module as an ONNX file for a fixed batch (exported once, atomically; needs the `onnx` package)."""
    path = cache_dir() / f"encoder-{weights_key(module, image_size, batch)}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        example = torch.zeros(batch, 3, image_size, image_size)
        was_training = module.training
        try:
            with torch.no_grad():
                torch.onnx.export(module.eval(), example, str(tmp), opset_version=17, input_names=["image"],
                                  output_names=["embedding"], dynamo=False)
            os.replace(tmp, path)
        finally:
            module.train(was_training)
            tmp.unlink(missing_ok=True)
    return path


def runtime_version(name: str) -> str:
    """The installed version of a runtime (ImportError when it is not installed)."""
    if name == "onnxruntime":
        import onnxruntime

        return onnxruntime.__version__
    if name == "openvino":
        os.environ.setdefault("OV_TELEMETRY_DISABLE", "1")
        import openvino

        return openvino.__version__.split("-")[0]
    raise ValueError(f"not an exported backend: {name!r}")


class EncoderRunner:
    """Runs the encoder with one backend: `runner(x)` for x (B × 3 × S × S, normalised) → embedding."""

    def __init__(self, module: nn.Module, image_size: int, backend: str = "auto", threads: int | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {BACKENDS}, got {backend!r}")
        self.module = module
        self.image_size = image_size
        self.threads = threads or torch.get_num_threads()
        self.requested = backend
        self.check: dict | None = None   # the equality verdict of the backend in use
        self._sessions: dict[tuple[str, int], object] = {}
        self.backend = self._choose(backend)

    # -- choosing -------------------------------------------------------------------------------
    def _choose(self, backend: str) -> str:
        on_cpu = next(self.module.parameters()).device.type == "cpu"
        if backend == "eager" or not on_cpu:
            return "eager"
        for name in (AUTO_ORDER if backend == "auto" else (backend,)):
            try:
                verdict = self._verdict(name)
            except Exception as error:  # a runtime that fails to import or export is not used
                if backend != "auto":
                    raise RuntimeError(f"encoder backend {name} is not usable here: {error}") from error
                log.info("encoder backend %s not usable (%s: %s)", name, type(error).__name__, error)
                continue
            if verdict["passed"]:
                self.check = verdict
                return name
            if backend != "auto":
                raise RuntimeError(f"encoder backend {name} differs from eager by {verdict['max_abs_diff']:.3g} "
                                   f"(tolerance {TOLERANCE})")
            log.warning("encoder backend %s differs from eager by %.3g: not used", name, verdict["max_abs_diff"])
        return "eager"

    def _verdict(self, name: str) -> dict:
        """The cached (or now measured) equality check of backend `name` against eager."""
        version = runtime_version(name)
        path = export_onnx(self.module, self.image_size, 1)
        verdict_path = path.with_suffix(f".{name}-{version}.json")
        if verdict_path.exists():
            return json.loads(verdict_path.read_text())
        x = torch.from_numpy(np.random.default_rng(0).random((1, 3, self.image_size, self.image_size),
                                                             dtype=np.float32))
        with torch.no_grad():
            reference = self.module(x).numpy()
        diff = float(np.abs(self._run(name, x.numpy()) - reference).max())
        verdict = {"backend": name, "version": version, "max_abs_diff": diff, "passed": diff < TOLERANCE}
        tmp = verdict_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verdict))
        os.replace(tmp, verdict_path)
        return verdict

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
                # no spinning after a pass: it held the cores from the PyTorch work that follows an upload (a click
                # right after an encode took 90 ms against 61, the encode itself 1.13 s either way)
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        if self.backend != "eager":
            try:
                return torch.from_numpy(self._run(self.backend, np.ascontiguousarray(x.detach().float().cpu().numpy())))
            except Exception as error:
                if self.requested != "auto":
                    raise
                log.warning("encoder backend %s failed (%s: %s); using eager from now on", self.backend,
                            type(error).__name__, error)
                self.backend, self.check = "eager", None
                self._sessions.clear()
        return self.module(x)
