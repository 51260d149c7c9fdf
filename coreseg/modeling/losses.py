"""Losses shared by SFT and GRPO."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy on mask logits (B × 1 × H × W) against a 0/1 target, per batch
    (the target is resized to the logits when a decoder emits another resolution)."""
    if target.shape[-2:] != logits.shape[-2:]:
        target = (F.interpolate(target.float(), size=logits.shape[-2:], mode="bilinear", align_corners=False) > 0.5)
    target = target.to(logits.dtype)
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (prob * target).sum(dims) + 1) / (prob.sum(dims) + target.sum(dims) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    return (dice + bce).mean()


def token_cross_entropy(logits: list[torch.Tensor], completions: list[list[int]],
                        weights: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over every completion token of the batch; with `weights` (one per
    completion and token) the weighted mean."""
    flat_logits = torch.cat(logits)
    targets = torch.tensor([t for c in completions for t in c], device=flat_logits.device)
    if weights is None:
        return F.cross_entropy(flat_logits.float(), targets)
    flat_weights = torch.cat(weights).to(flat_logits.device)
    losses = F.cross_entropy(flat_logits.float(), targets, reduction="none")
    return (losses * flat_weights).sum() / flat_weights.sum()


def box_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DETR's box loss on normalised x1, y1, x2, y2 boxes (B × 4): 5 · L1 + 2 · (1 − GIoU), per batch."""
    from torchvision.ops import generalized_box_iou_loss

    return 5 * F.l1_loss(pred, target) + 2 * generalized_box_iou_loss(pred, target, reduction="mean")


def pointer_loss(logits: list[torch.Tensor], targets: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
    """Cross-entropy of the box pointer's cell logits (per row, N = rows × cols) against the share of
    each target mask (B × 1 × H × W) in each cell: the pointer learns to point at the named finding."""
    losses = []
    for row_logits, target, (rows, cols) in zip(logits, targets, grids):
        share = F.adaptive_avg_pool2d(target.float()[None], (rows, cols)).flatten()
        share = share / share.sum().clamp_min(1e-8)
        losses.append(-(share * torch.log_softmax(row_logits.float(), dim=0)).sum())
    return torch.stack(losses).mean()
