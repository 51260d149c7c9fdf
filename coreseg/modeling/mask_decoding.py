"""SAM's mask decoder (segment-anything's `MaskDecoder` + `TwoWayTransformer`), evaluated faster with the
same weights and the same numbers (max |Δ| of the logits ≈ 1e-5, tested against the upstream forward).

Why: a click costs one decoder pass on the cached embedding, and 4 candidates cost four; upstream spends a
third of that on two transposed convolutions run as convolutions, recomputes the image side per prompt and
computes four masks to return one. Here:
- the image side (embedding + dense prompt, positional encoding, the first layer's keys and values) is
  computed once per image (`ImageSide`) and shared by every prompt of a batch, and by every click when the
  caller keeps it;
- each 2 × 2 / stride-2 transposed convolution is one matrix product (its kernel never overlaps);
- only the first mask token's mask is drawn (`multimask_output=False`, the only output this project uses).
It is differentiable, so training takes the same path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ImageSide:
    """What a decoder pass needs from one image, independent of the prompts (batch 1)."""
    keys: torch.Tensor       # 1 × HW × C: image embedding + dense prompt, flattened
    pe: torch.Tensor         # 1 × HW × C: the dense positional encoding
    first_k: torch.Tensor    # 1 × heads × HW × d: layer 1's token→image keys
    first_v: torch.Tensor    # 1 × heads × HW × d: and values
    size: tuple[int, int]    # h, w of the embedding grid


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's `Attention.forward` with keys/values already projected and split into heads."""
    q = _heads(attn.q_proj(q), attn.num_heads) / math.sqrt(k.shape[-1])
    if q.shape[-2] > k.shape[-2]:  # image → tokens: a softmax over a last axis of ~12 runs 15× slower here,
        weights = torch.softmax(k @ q.transpose(-1, -2), dim=-2)  # so the scores are laid out keys × queries
        return attn.out_proj(_merge(weights.transpose(-1, -2) @ v))
    return attn.out_proj(_merge(torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v))


def _project(attn: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _heads(attn.k_proj(k), attn.num_heads), _heads(attn.v_proj(v), attn.num_heads)


def prepare_image(decoder: nn.Module, embedding: torch.Tensor, pe: torch.Tensor,
                  dense: torch.Tensor) -> ImageSide:
    """The prompt-independent part of a decoder pass for one image (embedding 1 × C × h × w; `pe` the prompt
    encoder's dense positional encoding; `dense` its dense prompt, 1 × C × h × w, `no_mask_embed` without a mask)."""
    _, c, h, w = embedding.shape
    keys = (embedding + dense).flatten(2).transpose(1, 2)
    pe = pe.flatten(2).transpose(1, 2)
    first = decoder.transformer.layers[0].cross_attn_token_to_image
    first_k, first_v = _project(first, keys + pe, keys)
    return ImageSide(keys, pe, first_k, first_v, (h, w))


def _upscale_matrices(decoder: nn.Module) -> tuple[torch.Tensor, ...]:
    """The two transposed convolutions as (C_in × 2·2·C_out) matrices, output laid out (a, b, C_out)."""
    up1, _, _, up2, _ = decoder.output_upscaling
    w1 = up1.weight.permute(0, 2, 3, 1).reshape(up1.in_channels, -1)
    w2 = up2.weight.permute(0, 2, 3, 1).reshape(up2.in_channels, -1)
    return w1, up1.bias.repeat(4), w2, up2.bias.repeat(4)


def _draw(decoder: nn.Module, keys: torch.Tensor, size: tuple[int, int], hyper: torch.Tensor) -> torch.Tensor:
    """The upscaled embedding (B × HW × C) and the first mask token's hypernetwork output (B × C/8) → mask
    logits B × 1 × 4h × 4w: conv-transpose, LayerNorm2d, activation, conv-transpose, activation, dot product."""
    _, norm, act1, _, act2 = decoder.output_upscaling
    w1, b1, w2, b2 = _upscale_matrices(decoder)
    b, n, c = keys.shape
    h, w = size
    x = torch.addmm(b1, keys.reshape(b * n, c), w1).reshape(b * n * 4, -1)     # (b·hw·2·2, C/4), channel last
    x = act1(F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(torch.addmm(b2, x, w2)).reshape(b, n * 16, -1)                   # (b, hw·2·2·2·2, C/8)
    masks = (x @ hyper[:, :, None]).reshape(b, h, w, 2, 2, 2, 2)              # i, j, a, b, c, d
    return masks.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 1, 4 * h, 4 * w)     # row 4i+2a+c, column 4j+2b+d


def decode(decoder: nn.Module, image: ImageSide, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits (B × 1 × 4h × 4w) and predicted IoU (B × 1) for B prompts (`sparse` B × T × C) on one image:
    `MaskDecoder.predict_masks` with `multimask_output=False`."""
    transformer = decoder.transformer
    batch = sparse.shape[0]
    output = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).expand(batch, -1, -1)
    point_pe = torch.cat([output, sparse.to(output.dtype)], dim=1)
    queries, keys, pe = point_pe, image.keys, image.pe
    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + point_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_pe = keys + pe  # the keys change only at norm4: one sum serves both cross attentions
        if index == 0:
            k, v = image.first_k, image.first_v
        else:
            k, v = _project(layer.cross_attn_token_to_image, keys_pe, keys)
        queries = layer.norm2(queries + _attend(layer.cross_attn_token_to_image, queries + point_pe, k, v))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + point_pe
        k, v = _project(layer.cross_attn_image_to_token, q, queries)
        keys = layer.norm4(keys + _attend(layer.cross_attn_image_to_token, keys_pe, k, v))
    k, v = _project(transformer.final_attn_token_to_image, keys + pe, keys)
    queries = transformer.norm_final_attn(
        queries + _attend(transformer.final_attn_token_to_image, queries + point_pe, k, v))
    hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1])
    iou = decoder.iou_prediction_head(queries[:, 0])[:, :1]
    keys = keys.expand(batch, -1, -1)
    return _draw(decoder, keys, image.size, hyper), iou
