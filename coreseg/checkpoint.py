"""Checkpoints: one versioned folder for both profiles.

    coreseg.json            format, format_version, model_version, config, trained, parent, metrics
    trainable.safetensors   LoRA and the answer tokens' embedding rows, or the compact reasoner; adapter,
                            mask decoder
    tokenizer/              the reasoner's tokenizer with the answer tags (loads with AutoTokenizer)
    drafts.json             compact: the n-gram guesses its sampling checks (`coreseg.modeling.drafting`); optional:
                            they change how fast it samples, never what

Base weights (LiteMedSAM's encoder, Qwen2.5-VL, a SAM .pth) are not copied: the config says where
they come from.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from coreseg.config import ModelConfig, resolve_device

FORMAT = "coreseg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded, with the reason."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    model_version: str
    trained: bool
    parent: str | None
    metrics: dict
    config: ModelConfig


def read_info(path: str | Path) -> CheckpointInfo:
    path = existing_checkpoint(path)
    meta_file = path / "coreseg.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a CORE-Seg checkpoint (no coreseg.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')}; this code reads "
                              f"version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from e
    return CheckpointInfo(str(path), meta["model_version"], bool(meta.get("trained", False)), meta.get("parent"),
                          meta.get("metrics", {}), config)


def save_checkpoint(model, path: str | Path, model_version: str, trained: bool = True, parent: str | None = None,
                    metrics: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write `model`'s trainable parts (as `dtype`: fp16 keeps the shipped model under 30 MB) and
    config; the folder is complete or absent (written beside, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.trainable_state_dict().items()}
    save_file(state, str(tmp / "trainable.safetensors"))
    model.reasoner.tokenizer.save_pretrained(str(tmp / "tokenizer"))
    drafter = getattr(model.reasoner, "drafter", None)
    if drafter is not None and len(drafter):
        drafter.save(tmp / "drafts.json")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_version": model_version, "trained": trained,
            "parent": parent, "metrics": metrics or {}, "config": model.config.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "coreseg.json").write_text(json.dumps(meta, indent=2))
    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        path.rename(old)  # a kill from here on leaves `.old` complete: `existing_checkpoint` finds it
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def existing_checkpoint(path: str | Path) -> Path:
    """`path`, or the complete previous version left beside it by a save that was killed mid-swap."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    return old if not path.exists() and old.exists() else path


def load_checkpoint(path: str | Path, device: str = "auto"):
    """Rebuild the model a checkpoint describes and load its trainable weights. Returns (model, info)."""
    from coreseg.modeling.core_seg import CoreSeg

    path = existing_checkpoint(path)
    info = read_info(path)
    tokenizer = None
    tok_dir = Path(path) / "tokenizer"
    if tok_dir.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    elif info.config.reasoner.kind == "compact":
        raise CheckpointError(f"{path} is a compact checkpoint without its tokenizer/ folder")
    model = CoreSeg.build(info.config, tokenizer=tokenizer)
    weights = Path(path) / "trainable.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{path} has no trainable.safetensors")
    state = load_file(str(weights))
    expected = set(model.trainable_state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit its config: {len(missing)} missing tensors "
                              f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    model.load_state_dict(state, strict=False)
    if (Path(path) / "drafts.json").is_file() and hasattr(model.reasoner, "drafter"):
        from coreseg.modeling.drafting import NgramDrafter

        model.reasoner.drafter = NgramDrafter.load(Path(path) / "drafts.json")
    model.to(resolve_device(device)).eval()  # on CUDA the predictor runs under bf16 autocast
    return model, info


def load_or_build(path: str | Path | None, device: str = "auto"):
    """The app's and CLI's entry: the checkpoint at `path`, or — when none was trained yet — the
    untrained compact model (LiteMedSAM + a fresh reasoner and adapter), flagged `trained=False`."""
    if path is not None and Path(path).exists():
        return load_checkpoint(path, device)
    from coreseg.modeling.core_seg import CoreSeg

    config = ModelConfig()
    model = CoreSeg.build(config).to(resolve_device(device)).eval()
    info = CheckpointInfo(str(path), "compact-untrained", False, None, {}, config)
    return model, info
