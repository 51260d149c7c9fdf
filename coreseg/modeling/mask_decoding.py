"""SAM's mask decoder (segment-anything's `MaskDecoder` + `TwoWayTransformer`), evaluated faster with the
same weights and the same numbers (max |Δ| of the logits ≈ 1e-5, tested against the upstream forward).

Why: a click costs one decoder pass on the cached embedding, and 4 candidates cost four; upstream spends a
third of that on two transposed convolutions run as convolutions, recomputes the image side per prompt and
computes four masks to return one. Here:
- the image side (embedding + dense prompt, positional encoding, the first layer's keys and values and its
  image→token queries) is computed once per image (`ImageSide`, laid out pixel-major: strided views made every
  elementwise pass over the image ~10× slower) and shared by every prompt of a batch, and by every click when
  the caller keeps it;
- the attentions between tokens and the image fold their image-sized projections into the few token rows
  (`_tokens_to_image`, `_image_to_tokens`): products of heads × tokens rows (≈ 90) instead of 128 projected
  channels per pixel, without the head transposes that copied image-sized tensors;
- each 2 × 2 / stride-2 transposed convolution is one matrix product (its kernel never overlaps);
- only the first mask token's mask is drawn (`multimask_output=False`, the only output this project uses), and the
  final attention runs for the two tokens read after it (IoU and that mask token).
It is differentiable, so training takes the same path.
"""
from __future__ import annotations

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
    first_q: torch.Tensor    # 1 × heads × HW × d: layer 1's image→token queries
    size: tuple[int, int]    # h, w of the embedding grid


def _split(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection's weight (heads·d × C) as heads × d × C."""
    return weight.view(heads, weight.shape[0] // heads, weight.shape[1])


def _by_image(rows: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """rows (B × R × K) @ image (B or 1 × K × N): with one image shared by B prompts its rows are stacked into one
    product instead of copying the image B times."""
    if image.shape[0] == 1 and rows.shape[0] > 1:
        return (rows.reshape(1, -1, rows.shape[-1]) @ image).view(*rows.shape[:2], image.shape[-1])
    return rows @ image


def _tokens_to_image(attn: nn.Module, queries: torch.Tensor, keys_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`Attention(q=queries, k=keys_pe, v=keys)` for T token queries over HW image keys, with the image-sized
    projections folded into the few token rows: a head's scores are (q_h W_k,h) · x (k_proj's bias adds the same
    q_h · b_k to every score of a query, which the softmax drops) and its output (P_h x) W_v,h^T + b_v (each P_h row
    sums to 1). Products of B·heads·T rows instead of 128 projected channels, and no image-sized head transposes."""
    batch, count, channels = queries.shape
    heads = attn.num_heads
    q = attn.q_proj(queries).view(batch, count, heads, -1)
    scale = q.shape[-1] ** -0.5
    folded = torch.einsum("bthd,hdc->bhtc", q, _split(attn.k_proj.weight, heads)).reshape(batch, -1, channels)
    weights = torch.softmax(_by_image(folded * scale, keys_pe.transpose(-1, -2)), dim=-1)   # B × heads·T × HW
    pooled = _by_image(weights, keys).view(batch, heads, count, channels)
    out = torch.einsum("bhtc,hdc->bthd", pooled, _split(attn.v_proj.weight, heads)).reshape(batch, count, -1)
    return attn.out_proj(out + attn.v_proj.bias)


def _image_to_tokens(attn: nn.Module, keys_pe: torch.Tensor, tokens_pe: torch.Tensor, tokens: torch.Tensor,
                     residual: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
    """`residual + Attention(q=keys_pe, k=tokens_pe, v=tokens)` for HW image queries over T token keys, folded the
    same way: scores (W_q,h^T k_h) · x + b_q,h · k_h, output Σ_h P_h (v_h W_o,h^T + b_o / heads) (each P_h row sums to
    1, so the bias rides in the product), added to the residual by the product itself. The scores are laid out
    keys × pixels: a softmax over a last axis of ~12 ran 15× slower here than over the other one. `queries`: the
    image's projected queries already computed (1 × heads × HW × d, layer 1's `ImageSide.first_q`), which make the
    scores a product of d instead of C columns."""
    batch, count, channels = tokens.shape
    heads = attn.num_heads
    k = attn.k_proj(tokens_pe).view(batch, count, heads, -1)
    v = attn.v_proj(tokens).view(batch, count, heads, -1)
    scale = k.shape[-1] ** -0.5
    if queries is None:
        folded = torch.einsum("bthd,hdc->bhtc", k, _split(attn.q_proj.weight, heads)).reshape(batch, -1, channels)
        shift = torch.einsum("bthd,hd->bht", k, attn.q_proj.bias.view(heads, -1)).reshape(batch, -1, 1)
        scores = _by_image(folded * scale, keys_pe.transpose(-1, -2)) + shift * scale    # B × heads·T × HW
    else:
        scores = torch.einsum("bthd,hpd->bhtp", k * scale, queries[0]).reshape(batch, heads * count, -1)
    weights = torch.softmax(scores.view(batch, heads, count, -1), dim=-2).view(batch, heads * count, -1)
    out_weight = attn.out_proj.weight.view(channels, heads, -1)
    mixed = torch.einsum("bthd,chd->bhtc", v, out_weight).reshape(batch, -1, channels) + attn.out_proj.bias / heads
    return torch.baddbmm(residual.expand(batch, -1, -1), weights.transpose(-1, -2), mixed)   # B × HW × C


def _attend_cached(attn: nn.Module, queries: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Token queries (B × T × C) over one image's keys and values already projected (1 × heads × HW × d): the
    B prompts' rows are stacked per head, so the image's keys are not copied B times."""
    batch, count, _ = queries.shape
    heads, d = k.shape[1], k.shape[-1]
    q = attn.q_proj(queries).view(batch, count, heads, d).permute(2, 0, 1, 3).reshape(heads, batch * count, d)
    weights = torch.softmax((q * d ** -0.5) @ k[0].transpose(-1, -2), dim=-1)
    out = (weights @ v[0]).view(heads, batch, count, d).permute(1, 2, 0, 3).reshape(batch, count, heads * d)
    return attn.out_proj(out)


def _project(attn: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """A projection of the image (1 × HW × C) split into heads: 1 × heads × HW × d (contiguous)."""
    b, n, _ = x.shape
    return attn(x).reshape(b, n, heads, -1).transpose(1, 2).contiguous()


def prepare_image(decoder: nn.Module, embedding: torch.Tensor, pe: torch.Tensor,
                  dense: torch.Tensor) -> ImageSide:
    """The prompt-independent part of a decoder pass for one image (embedding 1 × C × h × w; `pe` the prompt
    encoder's dense positional encoding; `dense` its dense prompt, 1 × C × h × w, `no_mask_embed` without a mask)."""
    _, c, h, w = embedding.shape
    keys = (embedding + dense).flatten(2).transpose(1, 2).contiguous()
    pe = pe.flatten(2).transpose(1, 2).contiguous()
    first = decoder.transformer.layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    keys_pe = keys + pe
    first_k, first_v = _project(t2i.k_proj, keys_pe, t2i.num_heads), _project(t2i.v_proj, keys, t2i.num_heads)
    first_q = _project(i2t.q_proj, keys_pe, i2t.num_heads)
    return ImageSide(keys, pe, first_k, first_v, first_q, (h, w))


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
    x = act1(F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps))
    x = act2(torch.addmm(b2, x, w2)).reshape(b, n * 16, -1)                   # (b, hw·2·2·2·2, C/8)
    masks = (x @ hyper[:, :, None]).reshape(b, h, w, 2, 2, 2, 2)              # i, j, a, b, c, d
    return masks.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, 1, 4 * h, 4 * w)     # row 4i+2a+c, column 4j+2b+d


def decode(decoder: nn.Module, image: ImageSide, sparse: torch.Tensor,
           runner=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits (B × 1 × 4h × 4w) and predicted IoU (B × 1) for B prompts (`sparse` B × T × C) on one image:
    `MaskDecoder.predict_masks` with `multimask_output=False`. On a CPU the prompts run one at a time: a prompt's
    image-sized tensors (4 MB each) then stay in the cache, and 4 prompts took 135 ms instead of 177 batched; there a
    `runner` (`coreseg.modeling.decoder_backend.DecoderRunner`) runs each prompt's pass where it can."""
    if sparse.device.type != "cpu":
        return _decode(decoder, image, sparse)
    passes = [(runner and runner(image, sparse[i:i + 1])) or _decode(decoder, image, sparse[i:i + 1])
              for i in range(sparse.shape[0])]
    logits, iou = zip(*passes)
    return torch.cat(logits), torch.cat(iou)


def _decode(decoder: nn.Module, image: ImageSide, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        if index == 0:  # the image side is the cached one: its projections are ready
            keys_pe = None
            attended = _attend_cached(layer.cross_attn_token_to_image, queries + point_pe, image.first_k, image.first_v)
        else:
            keys_pe = keys + pe  # the keys change only at norm4: one sum serves both cross attentions
            attended = _tokens_to_image(layer.cross_attn_token_to_image, queries + point_pe, keys_pe, keys)
        queries = layer.norm2(queries + attended)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(_image_to_tokens(layer.cross_attn_image_to_token, keys_pe, queries + point_pe, queries, keys,
                                            image.first_q if index == 0 else None))
    # only the IoU token and the first mask token are read after the final attention: it runs for those two
    queries = queries[:, :2]
    queries = transformer.norm_final_attn(
        queries + _tokens_to_image(transformer.final_attn_token_to_image, queries + point_pe[:, :2], keys + pe, keys))
    hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1])
    iou = decoder.iou_prediction_head(queries[:, 0])[:, :1]
    keys = keys.expand(batch, -1, -1)
    return _draw(decoder, keys, image.size, hyper), iou
