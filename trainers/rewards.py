"""GRPO rewards (format, detect, segment, human) in TRL's signature, plus group advantages.

Every reward is `f(prompts, completions, **columns) -> list[float | None]`, so it plugs into TRL's
`GRPOTrainer(reward_funcs=[...])` and into our own loop. `completions` may be plain strings or TRL's
conversational form (a list of messages; the last assistant message's content is used). Columns are
lists aligned with `completions`:

    image_size  (H, W) per sample (falls back to gt_mask.shape; None → no in-image check)
    gt_boxes    list of [x1, y1, x2, y2] boxes, original pixels, exclusive ends
    gt_mask     bool array (H, W)
    pred_mask   bool array (H, W): the mask the model's seg path drew for this completion, or None
    human_rank, human_rating   optional human feedback (see `human_reward`)

`None` means "not applicable" (TRL skips it when summing); it is only returned when the *ground
truth* (or human data) is missing, never because the model failed: a failure scores the floor.

Decisions (see the tests in tests/test_rewards.py, which pin each one down):

- format: binary, 1.0 iff `parse_answer(text, image_size).ok` (strict). No partial credit: a 0.5 for
  "parseable but broken" would pay for text after </answer>, a second <seg> or boxes outside the image.
- detect: mean IoU of Hungarian-matched pairs × F1. Boxes the parser rejects (outside the image,
  x1 ≥ x2) are not silently dropped: each counts as a false positive. Unparsable → 0.0.
- segment: adaptive dual granularity. Dice ≥ 0.05 → 1 + 2·Dice ∈ [1.1, 3]; Dice < 0.05 → GIoU of
  the masks. Deviation from the literal formula: an overlapping mask with Dice < 0.05 scores
  1 + GIoU ∈ (0, 1.03) instead of GIoU, because GIoU alone can be negative for a barely-touching mask
  (e.g. corner overlap) and would then lose to an adjacent non-overlapping one (GIoU ≈ 0); with the
  shift, every overlapping mask beats every non-overlapping one (GIoU ≤ 0) and stays below the fine
  branch (1.1). No mask (pred_mask None or empty) → −1.0, the GIoU floor, so failing to segment is never
  neutral. A text without `<seg>` is not punished here again (format does that): its mask, drawn from
  the last token's state, is scored like any other so the signal stays dense.
- human: see `human_reward`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from coreseg.answer import parse_answer
from coreseg.metrics import detect_score, dice, mask_giou

COARSE_DICE_THRESHOLD = 0.05
SEGMENT_FLOOR = -1.0


# --------------------------------------------------------------------------- helpers

def completion_text(completion: Any) -> str:
    """A completion as text: a string, or TRL's conversational list of {"role", "content"} messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        return _content_text(chosen[-1].get("content", "")) if chosen else ""
    return "" if completion is None else str(completion)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):  # multimodal content parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def _column(columns: dict, name: str, n: int) -> list:
    values = columns.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} entries for {n} completions")
    return values


def _image_sizes(columns: dict, n: int) -> list:
    sizes = _column(columns, "image_size", n)
    masks = _column(columns, "gt_mask", n)
    out = []
    for size, mask in zip(sizes, masks):
        if size is None and mask is not None:
            size = np.shape(mask)[:2]
        out.append(None if size is None else (int(size[0]), int(size[1])))
    return out


def _as_boxes(boxes) -> list[tuple[int, int, int, int]]:
    return [tuple(int(round(float(v))) for v in b) for b in boxes]


# --------------------------------------------------------------------------- rewards

def format_reward(prompts, completions, **columns) -> list[float | None]:
    """1.0 when the completion is strictly valid (`parse_answer(...).ok`), else 0.0."""
    texts = [completion_text(c) for c in completions]
    sizes = _image_sizes(columns, len(texts))
    return [1.0 if parse_answer(t, s).ok else 0.0 for t, s in zip(texts, sizes)]


def detect_score_with_rejects(pred: Sequence, truth: Sequence, rejected: int = 0) -> float:
    """Mean IoU of the matched pairs × F1, with `rejected` extra false positives: `coreseg.metrics.detect_score`,
    the one detect score (evaluation and reward agree)."""
    return detect_score(_as_boxes(pred), _as_boxes(truth), rejected)


def detect_reward(prompts, completions, **columns) -> list[float | None]:
    """Hungarian matching on IoU: mean IoU of matched pairs × F1; rejected boxes are false positives.

    0.0 when no answer could be read; None when the sample has no `gt_boxes`.
    """
    texts = [completion_text(c) for c in completions]
    n = len(texts)
    sizes, truths = _image_sizes(columns, n), _column(columns, "gt_boxes", n)
    out: list[float | None] = []
    for text, size, truth in zip(texts, sizes, truths):
        if truth is None:
            out.append(None)
            continue
        parsed = parse_answer(text, size)
        if parsed.answer is None:
            out.append(0.0)
            continue
        accepted = list(parsed.answer.boxes)
        out.append(float(detect_score_with_rejects(accepted, truth, parsed.rejected_boxes)))
    return out


def segment_score(pred_mask, gt_mask) -> float:
    """The adaptive dual-granularity mask reward for one sample (see the module doc)."""
    gt = np.asarray(gt_mask).astype(bool)
    if pred_mask is None:
        return SEGMENT_FLOOR
    pred = np.asarray(pred_mask).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask {pred.shape} and gt_mask {gt.shape} differ; resize at the model boundary")
    if not pred.any():
        return 1.0 + 2.0 * 1.0 if not gt.any() else SEGMENT_FLOOR
    d = dice(pred, gt)
    if d >= COARSE_DICE_THRESHOLD:
        return 1.0 + 2.0 * d
    giou = mask_giou(pred, gt)
    return 1.0 + giou if (pred & gt).any() else giou


def segment_reward(prompts, completions, **columns) -> list[float | None]:
    """Dice ≥ 0.05 → 1 + 2·Dice; else GIoU (lifted by +1 when the masks overlap); no mask → −1.

    None when the sample has no `gt_mask`. The mask is scored whatever the text: a missing `<seg>` is the
    format reward's business (one failure, one penalty), and the mask signal stays dense early in training.
    """
    texts = [completion_text(c) for c in completions]
    n = len(texts)
    gts, preds = _column(columns, "gt_mask", n), _column(columns, "pred_mask", n)
    out: list[float | None] = []
    for text, gt, pred in zip(texts, gts, preds):
        if gt is None:
            out.append(None)
        else:
            out.append(float(segment_score(pred, gt)))
    return out


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


def _mean_rating(rating) -> float | None:
    if isinstance(rating, dict):
        rating = list(rating.values())
    values = [rating] if np.isscalar(rating) or rating is None else list(rating)
    values = [float(v) for v in values if not _missing(v)]
    return None if not values else float(np.mean(values))


def _same(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # arrays, images with no plain equality
        return False


def _groups(keys: list) -> list[int]:
    ids: list[int] = []
    reps: list = []
    for key in keys:
        for gid, rep in enumerate(reps):
            if _same(key, rep):
                ids.append(gid)
                break
        else:
            reps.append(key)
            ids.append(len(reps) - 1)
    return ids


def human_reward(prompts, completions, human_rank=None, human_rating=None, **columns) -> list[float | None]:
    """Human feedback in [0, 1]; None for a sample without any.

    - `human_rank` (1 = best, ties allowed, any style: 1,1,3 or 1,1,2) is normalised within the group:
      (worst − rank) / (worst − best) over the ranked samples of the group; 0.5 when they all tie.
    - `human_rating` (a 1–5 score, or several: list/dict, averaged) maps absolutely: (mean − 1) / 4,
      clipped to [0, 1]; it is already on a fixed scale, and the advantage step normalises per group.
    - Both present → their mean; one present → that one.

    Groups: the `group_id` column when given, else completions whose prompts are equal (TRL repeats
    each prompt G times).
    """
    n = len(completions)
    ranks = [None] * n if human_rank is None else list(human_rank)
    ratings = [None] * n if human_rating is None else list(human_rating)
    if len(ranks) != n or len(ratings) != n:
        raise ValueError("human_rank / human_rating must align with completions")
    keys = list(columns["group_id"]) if columns.get("group_id") is not None else (
        list(prompts) if prompts is not None else [0] * n)
    groups = _groups(keys)
    rank_score: list[float | None] = [None] * n
    for g in set(groups):
        members = [i for i in range(n) if groups[i] == g and not _missing(ranks[i])]
        if not members:
            continue
        values = [float(ranks[i]) for i in members]
        best, worst = min(values), max(values)
        for i, r in zip(members, values):
            rank_score[i] = 0.5 if worst == best else (worst - r) / (worst - best)
    out: list[float | None] = []
    for i in range(n):
        parts = []
        if rank_score[i] is not None:
            parts.append(rank_score[i])
        mean = _mean_rating(ratings[i])
        if mean is not None:
            parts.append(float(np.clip((mean - 1.0) / 4.0, 0.0, 1.0)))
        out.append(float(np.mean(parts)) if parts else None)
    return out


# --------------------------------------------------------------------------- registry and total

RewardFunc = Callable[..., list]

REWARD_FUNCS: dict[str, RewardFunc] = {
    "format": format_reward,
    "detect": detect_reward,
    "segment": segment_reward,
    "human": human_reward,
}


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the summed reward (the paper does not publish any; equal weights, human off)."""

    format: float = 1.0
    detect: float = 1.0
    segment: float = 1.0
    human: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _weights(weights) -> dict[str, float]:
    if weights is None:
        return RewardWeights().as_dict()
    if isinstance(weights, RewardWeights):
        return weights.as_dict()
    unknown = set(weights) - set(REWARD_FUNCS)
    if unknown:
        raise ValueError(f"unknown reward terms {sorted(unknown)}; known: {sorted(REWARD_FUNCS)}")
    return {**{k: 0.0 for k in REWARD_FUNCS}, **{k: float(v) for k, v in weights.items()}}


def score_completions(prompts, completions, weights: dict | RewardWeights | None = None,
                      **columns) -> list[dict[str, float | None]]:
    """Per completion: every term (None = not applicable or weight 0) and `total`, the weighted sum
    of the applicable terms (None terms contribute 0, as in TRL). For the trainer's logs."""
    w = _weights(weights)
    n = len(completions)
    terms = {name: (REWARD_FUNCS[name](prompts, completions, **columns) if w[name] != 0 else [None] * n)
             for name in REWARD_FUNCS}
    rows = []
    for i in range(n):
        row = {name: terms[name][i] for name in REWARD_FUNCS}
        row["total"] = float(sum(w[k] * v for k, v in row.items() if v is not None))
        rows.append(row)
    return rows


def combined_reward(prompts, completions, weights: dict | RewardWeights | None = None, **columns) -> list[float]:
    """The weighted sum of the rewards per completion (TRL signature; see `score_completions`)."""
    return [row["total"] for row in score_completions(prompts, completions, weights, **columns)]


# --------------------------------------------------------------------------- GRPO advantages

class GroupAdvantages(NamedTuple):
    advantages: np.ndarray   # (n_groups, G); 0 for dropped groups
    keep_mask: np.ndarray    # (n_groups,) bool; False for groups whose rewards are all equal
    frac_zero_std: float     # fraction of groups dropped (TRL's frac_reward_zero_std)


def group_advantages(rewards, scale: str = "group", eps: float = 1e-4) -> GroupAdvantages:
    """A = (r − mean_group) / (std + eps), std Bessel-corrected (ddof=1), as TRL.

    scale: "group" → std of the group; "batch" → std of all rewards; "none" → A = r − mean_group (Dr. GRPO).
    Groups with zero std (or a single member) carry no signal: keep_mask False, advantages 0.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (n_groups, G), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite (sum the terms with None as 0 first)")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', not {scale!r}")
    n_groups, size = r.shape
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if size > 1 else np.zeros((n_groups, 1))
    keep = ~np.isclose(std[:, 0], 0.0)
    centred = r - mean
    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        adv = centred / ((r.std(ddof=1) if r.size > 1 else 0.0) + eps)
    else:
        adv = centred
    adv = np.where(keep[:, None], adv, 0.0)
    frac = float(1.0 - keep.mean()) if n_groups else 0.0
    return GroupAdvantages(adv, keep, frac)


__all__ = [
    "COARSE_DICE_THRESHOLD", "SEGMENT_FLOOR", "REWARD_FUNCS", "RewardWeights", "GroupAdvantages",
    "completion_text", "format_reward", "detect_reward", "detect_score_with_rejects", "segment_score",
    "segment_reward", "human_reward", "combined_reward", "score_completions", "group_advantages",
]
