"""Whether bfloat16 pays on this machine: decided by a measurement, never by a blanket claim.

On some CPUs (AMX or native AVX-512 BF16) bf16 autocast roughly halves a training step; on others
(AVX2 only) it emulates bf16 and was measured 17× slower on the image encoder. `bf16_pays` times a
small transformer-shaped workload (matmuls, layer norm, GELU) forward and backward in fp32 and under
bf16 autocast on the device, and says yes only when bf16 is at least `MIN_SPEEDUP` faster. On CUDA
it asks the driver (`torch.cuda.is_bf16_supported`). The CPU verdict is cached per processor, torch
version and thread count in `$CORESEG_CACHE/precision.json` (default `~/.cache/coreseg`).
`native_bf16` says whether the processor has bf16 instructions at all (AVX-512 BF16, AMX, Arm BF16).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

MIN_SPEEDUP = 1.2
PRECISIONS = ("auto", "fp32", "bf16")


def _cache_path() -> Path:
    return Path(os.environ.get("CORESEG_CACHE", Path.home() / ".cache" / "coreseg")) / "precision.json"


NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}   # x86 AVX-512 BF16 / AMX; "bf16" on Arm (Features)
KEY_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16"}


def _cpu_info() -> tuple[str, set[str]]:
    """(model name, instruction-set flags) from /proc/cpuinfo (the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


def native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (without them autocast emulates bf16, slowly)."""
    return bool(_cpu_info()[1] & NATIVE_BF16_FLAGS)


def _cpu_key() -> str:
    model, flags = _cpu_info()
    return f"{model}|{','.join(sorted(flags & KEY_FLAGS))}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def measure_bf16_speedup(repeats: int = 3) -> float:
    """fp32 time / bf16-autocast time of one forward+backward of a small MLP block on the CPU."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.LayerNorm(256), torch.nn.Linear(256, 1024), torch.nn.GELU(),
                                torch.nn.Linear(1024, 256))
    x = torch.randn(8, 256, 256)

    def step(bf16: bool) -> float:
        best = float("inf")
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = block(x).float().square().mean()
            loss.backward()
            best = min(best, time.perf_counter() - start)
        return best

    return step(False) / step(True)


def cpu_verdict() -> dict:
    """{"speedup": fp32 time / bf16 time, "bf16": pays?} for this CPU, measured once and cached."""
    path, key = _cache_path(), _cpu_key()
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key not in verdicts:
        speedup = measure_bf16_speedup()
        verdicts[key] = {"speedup": round(speedup, 3), "bf16": speedup >= MIN_SPEEDUP}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verdicts, indent=1))
        os.replace(tmp, path)
    return verdicts[key]


def bf16_pays(device: torch.device | str = "cpu") -> bool:
    """True when bf16 autocast is measurably faster than fp32 on `device` (see module notes)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(cpu_verdict()["bf16"])


def add_precision_argument(parser) -> None:
    """`--precision auto|fp32|bf16` (default auto: bf16 only where `bf16_pays`) and the old `--bf16`
    flag, kept as an alias of `--precision bf16` so existing commands still run."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 autocast only where it measured faster on this machine (coreseg.precision)")
    parser.add_argument("--bf16", dest="precision", action="store_const", const="bf16",
                        help="alias of --precision bf16")


def use_bf16(precision: str, device: torch.device | str = "cpu") -> bool:
    """A `--precision auto|fp32|bf16` choice → whether to autocast to bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and bf16_pays(device))
