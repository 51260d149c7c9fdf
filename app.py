"""CORE-Seg Studio: upload a scan, ask, compare N reasoned answers, correct the mask, rate, submit, review.

    python app.py                 # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT), offline

Offline by default on a laptop (HF_HUB_OFFLINE=1: the embedded model needs no hub). On a Hugging Face
Space (SPACE_ID is set), or when the configured checkpoint's model is a hub id (the full profile's
Qwen2.5-VL by name), the hub is not forced off, so the weights can be fetched.

Settings come from the environment (`coreseg.config.AppConfig`): CORESEG_CHECKPOINT (default: the compact
model in assets/coreseg-compact, or the untrained compact model until one is trained), CORESEG_DB or
DATABASE_URL, CORESEG_USERS (users file; see `studio/users.py`), CORESEG_CANDIDATES, CORESEG_MAX_UPLOAD_BYTES,
CORESEG_MAX_PIXELS, GRADIO_TEMP_DIR (private; uploads are deleted once read), CORESEG_DEVICE,
CORESEG_MODEL_CONCURRENCY, CORESEG_ENCODER_BACKEND (auto: the fastest image-encoder runtime that matches
eager on this machine, see coreseg/modeling/encoder_backend.py; or eager | onnxruntime | openvino).

Named API for `gradio_client` (see studio/API.md): `/predict`, `/refine`, `/submit`, `/session`.
"""
from __future__ import annotations

import logging
import os
import sys

# No analytics, no version check, no telemetry; no hub calls unless the model must come from the hub.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def needs_hub(environ=os.environ) -> bool:
    """Whether the hub must stay reachable: on a Space, or when the checkpoint's model is a hub id
    (a `pretrained` that is no folder on this machine)."""
    if environ.get("SPACE_ID"):
        return True
    from pathlib import Path

    checkpoint = Path(environ.get("CORESEG_CHECKPOINT") or Path(__file__).resolve().parent / "assets" / "coreseg-compact")
    try:
        import json

        reasoner = json.loads((checkpoint / "coreseg.json").read_text())["config"]["reasoner"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return reasoner.get("kind") != "compact" and not Path(str(reasoner.get("pretrained", ""))).exists()


def offline_env(environ=os.environ) -> dict[str, str]:
    """The settings to apply: OFFLINE_ENV, without HF_HUB_OFFLINE when `needs_hub`."""
    return {k: v for k, v in OFFLINE_ENV.items() if not (k == "HF_HUB_OFFLINE" and needs_hub(environ))}


for _key, _value in offline_env().items():  # set before gradio (or huggingface_hub) is imported anywhere
    os.environ.setdefault(_key, _value)

from coreseg.allocator import keep_freed_memory  # noqa: E402
from coreseg.config import AppConfig  # noqa: E402

log = logging.getLogger("coreseg.studio")


def build_app(config: AppConfig, predictor=None, store=None, users=None):
    """The Gradio Blocks for `config` (a predictor and store may be passed in, e.g. a small model and a
    temporary database in tests). Launch it with `launch_app`, which adds sign-in and upload limits."""
    from studio.handlers import Studio, private_temp_dir

    # Gradio's uploads and outputs go to a private folder, nowhere else (set before any component exists)
    os.environ["GRADIO_TEMP_DIR"] = str(private_temp_dir(config))
    from studio.ui import build_ui

    studio = Studio(config, predictor=predictor, store=store, users=users)
    demo = build_ui(studio)
    demo.queue(default_concurrency_limit=8, max_size=256)
    demo.coreseg_studio = studio
    return demo


def launch_kwargs(demo, **overrides) -> dict:
    """What `demo.launch` needs besides host and port: sign-in from the users file, the upload limit, no SSR."""
    studio = demo.coreseg_studio
    kwargs = {"server_name": studio.config.host, "server_port": studio.config.port,
              "max_file_size": studio.config.max_upload_bytes, "ssr_mode": False, "show_error": True,
              "footer_links": ["api", "settings"]}
    if studio.users is not None and studio.users.has_passwords:
        kwargs["auth"] = studio.users.authenticate
        kwargs["auth_message"] = "CORE-Seg Studio: sign in with the account your admin gave you."
    from starlette.middleware import Middleware

    from studio.guard import Guard

    # per-person file access and per-client sign-in throttling, before Gradio sees the request
    kwargs["app_kwargs"] = {"middleware": [Middleware(Guard, studio=studio)]}
    kwargs.update(overrides)
    return kwargs


def launch_app(demo, **overrides):
    """`demo.launch` with `launch_kwargs` (tests pass a free port and `prevent_thread_lock=True`)."""
    return demo.launch(**launch_kwargs(demo, **overrides))


def main(argv: list[str] | None = None) -> int:
    for key, value in offline_env().items():
        os.environ[key] = value
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = AppConfig.from_env()
    keep_freed_memory()  # a click's decoder pass without fresh pages (coreseg.allocator)
    try:
        demo = build_app(config)
    except ValueError as exc:  # a bad users file or database URL
        print(f"error: {exc}", file=sys.stderr)
        return 2
    studio = demo.coreseg_studio
    segmenter = studio.predictor.model.segmenter
    log.info("serving model %s (%s, encoder backend %s, mask decoder %s) on %s:%s", studio.predictor.model_version,
             "trained" if studio.predictor.trained else "UNTRAINED", segmenter.encoder_backend,
             segmenter.decoder_backend, config.host, config.port)
    launch_app(demo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
