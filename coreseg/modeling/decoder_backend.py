"""The mask decoder's inference pass run by ONNX Runtime, checked against PyTorch.

A click is one decoder pass on the cached image, and 4 candidates take several (the boxes written, the masks drawn,
claim revision): after the image encoder, the decoder is the cost of a request. `coreseg.modeling.mask_decoding`
computes one prompt's pass from the image's prepared side; ONNX Runtime runs that same graph (exported once per
decoder weights, prompt length dynamic) about 1.5× faster on this CPU (46–54 against 79–80 ms a prompt, measured in
one process; `bench/bench_encoder.py` reports the click and candidate ratios with it).

`DecoderRunner` is used only for inference on the CPU (no gradient: training takes the PyTorch path), only after an
equality check on this machine (max |Δ| of the logits against PyTorch under `TOLERANCE`, on a fixed random image side
and prompts of two lengths; the verdict is cached beside the export), and only while the decoder's weights are those it
exported: a weight changed in place (an optimiser step) sends every later pass back to PyTorch.
"""
from __future__ import annotations

import json
import logging
import os
from itertools import chain

import numpy as np
import torch
from torch import nn

from coreseg.modeling.encoder_backend import weights_key, cache_dir, runtime_version
from coreseg.modeling.mask_decoding import ImageSide, _decode, prepare_image

TOLERANCE = 1e-3      # max |Δ| of the mask logits against PyTorch (logits are O(10))
INPUTS = ("keys", "pe", "first_k", "first_v", "first_q", "sparse")

log = logging.getLogger(__name__)


class _OnePrompt(nn.Module):
    """`mask_decoding`'s pass for one prompt, as a module of tensors alone (what an ONNX export traces)."""

    def __init__(self, decoder: nn.Module, size: tuple[int, int]):
        super().__init__()
        self.decoder, self.size = decoder, size

    def forward(self, keys, pe, first_k, first_v, first_q, sparse):
        return _decode(self.decoder, ImageSide(keys, pe, first_k, first_v, first_q, self.size), sparse)


def _weights_version(module: nn.Module) -> int:
    """A number that changes whenever one of the module's parameters or buffers is modified in place."""
    return sum(t._version for t in chain(module.parameters(), module.buffers()))


class DecoderRunner:
    """`runner(side, sparse)` → (logits 1 × 1 × 4h × 4w, IoU 1 × 1) for one prompt (`sparse` 1 × T × C), or None
    where PyTorch must run it (gradients on, weights changed, the runtime failed)."""

    def __init__(self, decoder: nn.Module, size: tuple[int, int], threads: int | None = None):
        self.decoder, self.size = decoder, size
        self.threads = threads or torch.get_num_threads()
        self.version = _weights_version(decoder)
        self.path = self._export()
        self.session = self._open()
        self.check = self._verdict()
        if not self.check["passed"]:
            raise RuntimeError(f"the ONNX decoder differs from PyTorch by {self.check['max_abs_diff']:.3g} "
                               f"(tolerance {TOLERANCE})")

    def _export(self):
        path = cache_dir() / f"decoder-{weights_key(self.decoder, self.size[0], 1)}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            was_training = self.decoder.training
            try:
                with torch.no_grad():
                    torch.onnx.export(_OnePrompt(self.decoder.eval(), self.size), self._example(9), str(tmp),
                                      opset_version=17, input_names=list(INPUTS), output_names=["logits", "iou"],
                                      dynamic_axes={"sparse": {1: "tokens"}}, dynamo=False)
                os.replace(tmp, path)
            finally:
                self.decoder.train(was_training)
                tmp.unlink(missing_ok=True)
        return path

    def _example(self, tokens: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """A fixed random image side and prompt (the export's and the check's inputs)."""
        g = torch.Generator().manual_seed(seed)
        h, w = self.size
        embedding, pe = torch.randn(1, 256, h, w, generator=g), torch.randn(1, 256, h, w, generator=g)
        with torch.no_grad():
            side = prepare_image(self.decoder, embedding, pe, torch.zeros(1, 256, 1, 1))
        return (side.keys, side.pe, side.first_k, side.first_v, side.first_q, torch.randn(1, tokens, 256, generator=g))

    def _open(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # its threads must not spin after a pass: PyTorch runs the sampler's and the decoder's other work between
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def _verdict(self) -> dict:
        version = runtime_version("onnxruntime")
        verdict_path = self.path.with_suffix(f".onnxruntime-{version}.json")
        if verdict_path.exists():
            return json.loads(verdict_path.read_text())
        diff = 0.0
        for tokens in (9, 4):
            example = self._example(tokens, seed=tokens)
            with torch.no_grad():
                reference = _OnePrompt(self.decoder, self.size)(*example)[0].numpy()
            got = self.session.run(None, {n: t.numpy() for n, t in zip(INPUTS, example)})[0]
            diff = max(diff, float(np.abs(got - reference).max()))
        verdict = {"backend": "onnxruntime", "version": version, "max_abs_diff": diff, "passed": diff < TOLERANCE}
        tmp = verdict_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verdict))
        os.replace(tmp, verdict_path)
        return verdict

    def __call__(self, side: ImageSide, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if (self.session is None or torch.is_grad_enabled() or sparse.device.type != "cpu"
                or tuple(side.size) != tuple(self.size)):
            return None
        if _weights_version(self.decoder) != self.version:
            log.warning("the mask decoder's weights changed: its ONNX export is no longer used")
            self.session = None
            return None
        feeds = {n: np.ascontiguousarray(t.detach().float().numpy()) for n, t in
                 zip(INPUTS, (side.keys, side.pe, side.first_k, side.first_v, side.first_q, sparse))}
        try:
            logits, iou = self.session.run(None, feeds)
        except Exception as error:
            log.warning("the ONNX decoder failed (%s: %s); PyTorch runs it from now on", type(error).__name__, error)
            self.session = None
            return None
        return torch.from_numpy(logits), torch.from_numpy(iou)
