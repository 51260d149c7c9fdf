"""GRPO rewards (format, detect, segment, self-consistency, pointing, human) in TRL's signature, plus group advantages.

Every reward is `f(prompts, completions, **columns) -> list[float | None]`, so it plugs into TRL's
`GRPOTrainer(reward_funcs=[...])` and into our own loop. `completions` may be plain strings or TRL's
conversational form (a list of messages; the last assistant message's content is used). Columns are
lists aligned with `completions`:

    image_size    (H, W) of the frame the answer's boxes are written in (falls back to gt_mask.shape;
                  None → no in-image check)
    gt_boxes      list of [x1, y1, x2, y2] boxes, that frame, exclusive ends ([] = the target is absent)
    gt_mask       bool array (H, W) (all False = the target is absent)
    pred_mask     bool array: the mask the model's seg path drew for this completion, or None
    image, measure_size, modality   optional, for the self-consistency checker (see `consistency_score`)
    pointing      composites: the sentence with which the reasoning picks the target (None elsewhere)
    human_rank, human_rating        optional human feedback (see `human_reward`)

`None` means "not applicable" (TRL skips it when summing); it is only returned when the *ground
truth* (or human data, or the model's mask) is missing, never because the model failed: a failure
scores the floor. An absent-target answer (`No {target} is visible.`, see `coreseg.answer`) is a
first-class answer: it states no box and stands for an empty mask, whatever the probe drew.

Decisions (see the tests in tests/test_rewards.py, which pin each one down):

- format: binary, 1.0 iff `parse_answer(text, image_size).ok` (strict). No partial credit: a 0.5 for
  "parseable but broken" would pay for text after </answer>, a second <seg> or boxes outside the image.
- detect: soft F1 of Hungarian-matched boxes, 2·ΣIoU(matched) / (#pred + #truth)
  (`coreseg.metrics.soft_box_f1`), in [0, 1]. No IoU-0.5 cliff (the paper's mIoU × F1 gave 0 to 30 of 32
  sampled completions): every pixel of improvement counts, 1 only for the exact boxes, extra boxes
  dilute it (a hundred boxes ≤ 2/101), a whole-image box scores about the lesion's share of the image.
  Boxes the parser rejects (outside the image, x1 ≥ x2) count as predictions matching nothing.
  Absent target (no true box): the absent answer scores 1, any present answer 0; an absent answer on a
  present lesion scores 0. Unparsable → 0.
- segment: adaptive dual granularity. Dice ≥ 0.05 → fine, 1 + 2·Dice ∈ [1.1, 3]; Dice < 0.05 → coarse,
  1 / (1 + W / r) ∈ (0, 1], W the 2-Wasserstein distance between Gaussians with the masks' centroids and
  covariances (`coreseg.metrics.mask_wasserstein`) and r = √(|truth| / π) the truth's equivalent radius:
  a same-shaped mask one radius off scores 0.5. Deviation from the paper (GIoU for the coarse branch):
  GIoU, and the 1 + GIoU this project used before, barely sees size, so for a lesion of 1 % of the image
  a whole-image mask scored +1.01 and a correctly sized mask 4 px away −0.07; W ranks by position AND
  size, so the near miss wins (≈ 0.33 vs ≈ 0.13 on a 256 × 256 frame) and the coarse branch (≤ 1) never
  reaches a mask with Dice ≥ 0.05 (≥ 1.1). No mask (None or empty) on a present lesion → −1, the floor.
  Absent target (empty truth): an empty mask (or an absent answer) → 3, the top; any mask → −1.
  A text without `<seg>` is not punished here again (format does that): its mask, drawn from the last
  token's state, is scored like any other so the signal stays dense.
- consistency: does the answer agree with its OWN mask? The share of its claims that
  `coreseg.findings.check_answer` finds agreeing (1 when it states none) × the soft F1 between the
  stated boxes and the boxes of the own mask's parts (`coreseg.mask_boxes`), in [0, 1]. A stated box
  far from the mask or a hundred boxes score ≈ 0 whatever else agrees; a present answer with an empty
  own mask scores 0; an absent answer's mask is empty, so it is consistent (whether it is *right* is
  detect's and segment's business). Unparsable → 0; None without a `pred_mask` column.
- pointing: composites only, binary: 1 iff the reasoning says the sentence that picks the named panel ("…; it points
  to the upper-left panel, a colonoscopy view.", "…; none of the panels is a colonoscopy view.", see
  `trainers.composites`). Without it GRPO (grpo13) dropped the composite reasoning altogether: it answered
  composites like single scans (the panel named right in 2.6 % of one-panel questions, against 50 % before).
- human: see `human_reward`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import cv2
import numpy as np

from coreseg.answer import Answer, parse_answer, render_answer
from coreseg.findings import check_answer, claim_agreement
from coreseg.geometry import scale_boxes
from coreseg.mask_boxes import mask_boxes
from coreseg.metrics import dice, mask_wasserstein, soft_box_f1

COARSE_DICE_THRESHOLD = 0.05
SEGMENT_FLOOR = -1.0
SEGMENT_TOP = 3.0
TERM_RANGES = {"format": (0.0, 1.0), "detect": (0.0, 1.0), "segment": (SEGMENT_FLOOR, SEGMENT_TOP),
               "consistency": (0.0, 1.0), "pointing": (0.0, 1.0), "human": (0.0, 1.0)}


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

def _scored(completions, columns: dict, column: str, score) -> list[float | None]:
    """`score(text, value, i)` for each completion whose sample has `column`; None for the others."""
    texts = [completion_text(c) for c in completions]
    values = _column(columns, column, len(texts))
    return [None if v is None else float(score(t, v, i)) for i, (t, v) in enumerate(zip(texts, values))]


def format_reward(prompts, completions, **columns) -> list[float | None]:
    """1.0 when the completion is strictly valid (`parse_answer(...).ok`), else 0.0."""
    texts = [completion_text(c) for c in completions]
    sizes = _image_sizes(columns, len(texts))
    return [1.0 if parse_answer(t, s).ok else 0.0 for t, s in zip(texts, sizes)]


def detect_score(answer: Answer | None, truth, rejected: int = 0) -> float:
    """The detect reward of one parsed answer against the true boxes (see the module doc)."""
    if answer is None:
        return 0.0
    truth = _as_boxes(truth)
    if not truth:  # absent target: only the absent answer is right
        return 1.0 if not answer.present else 0.0
    return soft_box_f1(list(answer.boxes), truth, rejected)


def detect_reward(prompts, completions, **columns) -> list[float | None]:
    """Soft F1 of Hungarian-matched boxes, 2·ΣIoU / (#pred + #truth); rejected boxes are predictions.

    0.0 when no answer could be read; None when the sample has no `gt_boxes`.
    """
    sizes = _image_sizes(columns, len(completions))

    def score(text, truth, i):
        parsed = parse_answer(text, sizes[i])
        return detect_score(parsed.answer, truth, parsed.rejected_boxes)

    return _scored(completions, columns, "gt_boxes", score)


def coarse_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """1 / (1 + W / r) ∈ (0, 1]: W the Gaussian 2-Wasserstein distance of the masks (position and size),
    r = √(|gt| / π). Both masks non-empty."""
    radius = float(np.sqrt(np.asarray(gt).sum() / np.pi))
    return 1.0 / (1.0 + mask_wasserstein(pred, gt) / radius)


def segment_score(pred_mask, gt_mask) -> float:
    """The adaptive dual-granularity mask reward for one sample (see the module doc)."""
    gt = np.asarray(gt_mask).astype(bool)
    pred = np.zeros_like(gt) if pred_mask is None else np.asarray(pred_mask).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred_mask {pred.shape} and gt_mask {gt.shape} differ; resize at the model boundary")
    if not gt.any():  # absent target: nothing to find
        return SEGMENT_TOP if not pred.any() else SEGMENT_FLOOR
    if not pred.any():
        return SEGMENT_FLOOR
    d = dice(pred, gt)
    if d >= COARSE_DICE_THRESHOLD:
        return 1.0 + 2.0 * d
    return coarse_score(pred, gt)


def _answer_mask(text: str, pred_mask):
    """The mask an answer stands for: empty when it says the target is absent (as `CoreSegPredictor`)."""
    answer = parse_answer(text).answer
    if answer is not None and not answer.present and pred_mask is not None:
        return np.zeros(np.shape(pred_mask), dtype=bool)
    return pred_mask


def segment_reward(prompts, completions, **columns) -> list[float | None]:
    """Dice ≥ 0.05 → 1 + 2·Dice; else 1 / (1 + W/r) (position and size); no mask → −1; absent target:
    empty → 3, any mask → −1.

    None when the sample has no `gt_mask`. The mask is scored whatever the text, except that an absent
    answer stands for an empty mask; a missing `<seg>` is the format reward's business (one failure, one
    penalty), and the mask signal stays dense early in training.
    """
    preds = _column(columns, "pred_mask", len(completions))

    def score(text, gt, i):
        pred = _answer_mask(text, preds[i])
        return segment_score(pred if pred is not None else np.zeros(np.shape(gt), bool), gt)

    return _scored(completions, columns, "gt_mask", score)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(size):
        return mask
    return cv2.resize(mask.astype(np.uint8), (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST) > 0


def consistency_score(text: str, pred_mask, image_size=None, image=None, measure_size=None,
                      modality: str | None = None) -> float:
    """How far an answer agrees with its own mask, in [0, 1] (see the module doc).

    `image_size` is the frame of the answer's boxes (default: the mask's); claims are measured in the
    frame of `image` when given, else `measure_size` (e.g. the aspect-preserving thumbnail the training
    reasoning was measured on), else the mask's own frame; mask and boxes are brought to it first.
    """
    parsed = parse_answer(text, image_size)
    answer = parsed.answer
    if answer is None:
        return 0.0
    own = np.zeros((1, 1), bool) if pred_mask is None else np.asarray(pred_mask).astype(bool)
    text_frame = tuple(image_size) if image_size is not None else own.shape
    frame = (tuple(np.shape(image)[:2]) if image is not None else
             tuple(measure_size) if measure_size is not None else text_frame)
    own = np.zeros(frame, bool) if pred_mask is None or not answer.present else _resize_mask(own, frame)
    boxes = scale_boxes(answer.boxes, text_frame, frame) if answer.boxes else []
    parts = mask_boxes(own)
    if answer.present:
        box_term = soft_box_f1(boxes, parts, parsed.rejected_boxes) if boxes else 0.0
    else:
        box_term = 1.0 if not parts else 0.0
    if box_term == 0.0:
        return 0.0
    share = claim_agreement(check_answer(render_answer(answer.reasoning, answer.target, boxes), own, image, modality))
    return float(box_term * (1.0 if share is None else share))


def consistency_reward(prompts, completions, **columns) -> list[float | None]:
    """The share of the answer's claims that agree with its own mask × soft F1 of its stated boxes against
    the mask's parts (`consistency_score`); None when there is no `pred_mask` column."""
    texts = [completion_text(c) for c in completions]
    n = len(texts)
    if columns.get("pred_mask") is None:
        return [None] * n
    preds, sizes = _column(columns, "pred_mask", n), _image_sizes(columns, n)
    images, measures = _column(columns, "image", n), _column(columns, "measure_size", n)
    modalities = _column(columns, "modality", n)
    return [consistency_score(t, p, s, i, m, mod)
            for t, p, s, i, m, mod in zip(texts, preds, sizes, images, measures, modalities)]


def pointing_reward(prompts, completions, **columns) -> list[float | None]:
    """1 when the reasoning picks the composite's named panel in the words its training text uses, else 0;
    None for single scans (no `pointing` column entry)."""
    return _scored(completions, columns, "pointing", lambda text, sentence, i: sentence in text)


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
    "consistency": consistency_reward,
    "pointing": pointing_reward,
    "human": human_reward,
}


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the summed reward (the paper does not publish any; equal weights, human off).
    `consistency` is ours: it trains the reasoning to say what its own mask shows."""

    format: float = 1.0
    detect: float = 1.0
    segment: float = 1.0
    consistency: float = 1.0
    pointing: float = 1.0
    human: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def reward_range(weights: dict | RewardWeights | None = None) -> float:
    """Highest minus lowest possible total under `weights` (Σ |w|·(top − floor) per term): the reward scale
    that `GRPOConfig.min_reward_spread` is a fraction of."""
    return float(sum(abs(w) * (TERM_RANGES[k][1] - TERM_RANGES[k][0]) for k, w in _weights(weights).items()))


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
    keep_mask: np.ndarray    # (n_groups,) bool; False for groups without a usable reward difference
    frac_zero_std: float     # fraction of groups dropped (TRL's frac_reward_zero_std, here below the floor too)


def group_advantages(rewards, scale: str = "group", eps: float = 1e-4, min_spread: float = 0.0) -> GroupAdvantages:
    """A = (r − mean_group) / (std + eps), std Bessel-corrected (ddof=1), as TRL.

    scale: "group" → std of the group; "batch" → std of all rewards; "none" → A = r − mean_group (Dr. GRPO).
    Groups with zero std (or a single member), or whose rewards span less than `min_spread`
    (max − min, reward units), carry no signal: keep_mask False, advantages 0. Without the floor,
    std normalisation turns pixel noise (a segment reward differing by 2e-4 inside a group) into
    advantages of ±1.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be (n_groups, G), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite (sum the terms with None as 0 first)")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', not {scale!r}")
    if not min_spread >= 0:
        raise ValueError(f"min_spread must be ≥ 0, not {min_spread!r}")
    n_groups, size = r.shape
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True) if size > 1 else np.zeros((n_groups, 1))
    spread = r.max(axis=1) - r.min(axis=1) if size else np.zeros(n_groups)
    keep = ~np.isclose(std[:, 0], 0.0) & (spread >= min_spread)
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
    "COARSE_DICE_THRESHOLD", "SEGMENT_FLOOR", "SEGMENT_TOP", "TERM_RANGES", "REWARD_FUNCS", "RewardWeights",
    "GroupAdvantages", "completion_text", "format_reward", "detect_reward", "detect_score", "coarse_score",
    "segment_score", "segment_reward", "consistency_score", "consistency_reward", "human_reward",
    "combined_reward", "score_completions", "reward_range", "group_advantages",
]
