"""The GRPO engine shared by ground-truth training (`trainers.grpo`) and feedback rounds
(`trainers.feedback`): configuration, groups, the loss, the step log and the training loop.

It lives apart from both entry points so that neither imports the other's module to reach it
(no import cycle); the step itself is described in `trainers.grpo`.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from coreseg.checkpoint import save_checkpoint
from coreseg.metrics import dice
from coreseg.modeling.core_seg import CoreSeg
from coreseg.modeling.losses import token_cross_entropy
from coreseg.modeling.panel_lookup import PanelLookup
from coreseg.modeling.sampling import sampling_logprobs
from coreseg.precision import use_bf16
from coreseg.predictor import CoreSegPredictor
from trainers.rewards import REWARD_FUNCS, RewardWeights, group_advantages, reward_range, score_completions


@dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4
    beta: float = 0.01            # KL weight; 0 → no reference model is run
    clip_low: float = 0.2
    clip_high: float = 0.28       # DAPO's asymmetric clip
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 2e-5
    mask_weight: float = 1.0
    box_weight: float = 0.3       # the probe box's loss (and the box pointer's) inside the supervised anchor
    freeze_reasoner: bool = False  # train the mask path only (adapter, pointer, decoder) on the policy's own texts
    freeze_mask_path: bool = False  # train the language model only: the mask path stays as SFT left it
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    bf16_decoder: bool = False    # bfloat16 autocast for the mask decoder only (the policy's log-probs stay fp32)
    weights: RewardWeights = field(default_factory=RewardWeights)
    text_weight: float = 0.0      # cross-entropy of the case's written answer (SFT's text loss) beside the policy
    #                               term: keeps what no reward pays for in the sampled texts (the composite reasoning)
    anchor_follows_text: bool = False  # composites: the anchor's target is the tile the completion's reasoning
    #                                    names, not the question's (a wrong pick is the text's fault, paid by the
    #                                    rewards); a question about a kind no tile shows keeps its empty target
    min_reward_spread: float = 0.01  # groups whose totals span less than this share of `reward_range(weights)`
    #                                  (0.08 with the default weights) are dropped: pixel noise is no signal


@dataclass
class Group:
    """One case's completions: what the loss needs. `old_logps` are the sampling policy's
    log-probabilities (fresh samples or stored ones: the importance ratio corrects for either)."""

    image: np.ndarray | None
    embedding: torch.Tensor
    target: torch.Tensor           # 1 × 1 × 256 × 256
    gt_boxes: list                 # in the model's box frame
    question: str
    completions: list[list[int]]
    old_logps: list[list[float]]
    columns: dict = field(default_factory=dict)   # extra reward columns (human_rank, human_rating)
    sampling: list[tuple[float, float]] | None = None  # per completion (temperature, top_p); None: the config's
    target_ids: list[int] | None = None  # the case's written answer (ground truth mode), for `text_weight`
    anchor_targets: torch.Tensor | None = None  # n × 1 × 256 × 256: each completion's own anchor target
    #                                             (`anchor_follows_text`); None: `target` for every completion
    size: tuple[int, int] | None = None  # the image's (H, W), where the panel lookup measured (`sample_group`)

    def sampling_of(self, i: int, cfg: "GRPOConfig") -> tuple[float, float]:
        """The distribution completion `i` was sampled from, for re-scoring it."""
        return self.sampling[i] if self.sampling else (cfg.temperature, cfg.top_p)


def sample_group(predictor: CoreSegPredictor, image, embedding, question: str, cfg: GRPOConfig,
                 generator: torch.Generator,
                 size: tuple[int, int] | None = None) -> tuple[list[list[int]], list[list[float]]]:
    """The group's completions and their log-probabilities; a compact reasoner's drafter learns the policy's
    phrasing from them (its checkpoint then samples as fast as the policy writes)."""
    model = predictor.model
    reasoner = model.reasoner
    size = size or (None if image is None else image.shape[:2])  # the image's (H, W): where the lookup measures
    lookup = model.panel_lookup(question, embedding, size)
    with torch.no_grad():
        if model.box_writer is not None or lookup is not None:  # boxes and panels written as the app writes them
            sampled = reasoner.sample(image, embedding, question, cfg.group_size, cfg.temperature, cfg.top_p,
                                      generator, writer=None if model.box_writer is None else model.box_writing,
                                      lookup=lookup)
            ids, logps = sampled.ids, sampled.logps
        else:
            ids, logps = reasoner.generate(image, embedding, question, cfg.group_size, cfg.temperature, cfg.top_p,
                                           generator)
    if hasattr(reasoner, "drafter"):
        for completion in ids:
            reasoner.drafter.learn(completion)
    return ids, logps


def _chosen_tokens(model: CoreSeg, ids: list[int], lookup: PanelLookup | None) -> list[int]:
    """The positions of a completion's tokens the policy chose: all but those the box writer and the panel lookup
    (the one it was sampled with, `CoreSeg.panel_lookup`) wrote."""
    written = [False] * len(ids) if model.box_writer is None else model.brackets.written(ids)
    if lookup is not None:
        written = [a or b for a, b in zip(written, lookup.written(ids))]
    return [k for k, w in enumerate(written) if not w]


def _token_logps(logits: torch.Tensor, ids: list[int], temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of `ids` under the sampling distribution (temperature, top-p) of `logits`."""
    return sampling_logprobs(logits, torch.tensor(ids, device=logits.device), temperature, top_p)


class ReferencePolicy:
    """The frozen reference: the policy as it was when training started (the SFT model, LoRA and
    answer-token rows included), not the bare base. A frozen snapshot of the reasoner's trainable
    tensors is swapped in for the reference pass; the frozen base weights are shared, so it costs
    the memory of the trainable tensors only."""

    def __init__(self, model: CoreSeg):
        self.reasoner = model.reasoner
        self.params = [p for p in model.reasoner.parameters() if p.requires_grad]
        self.frozen = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def logits(self, images, embeddings, questions, completions):
        current = [p.data for p in self.params]
        try:
            for p, frozen in zip(self.params, self.frozen):
                p.data = frozen
            return self.reasoner.forward_completions(images, embeddings, questions, completions)[0]
        finally:
            for p, data in zip(self.params, current):
                p.data = data


def relative_human_term(rows: list[dict], weight: float) -> list[dict]:
    """Make a group's human term relative: centred over the completions that have one (stored, rated
    or ranked candidates), so those without (fresh samples) stand at the rated ones' mean and neither
    kind gains advantage from its origin alone. `human` in the rows stays the raw value (for logs)."""
    rated = [r["human"] for r in rows if r.get("human") is not None]
    if not rated or weight == 0:
        return rows
    mean = float(np.mean(rated))
    return [{**r, "total": r["total"] - weight * mean} if r.get("human") is not None else r for r in rows]


def _advantages(all_rewards: list[list[float]], scale: str, min_spread: float = 0.0):
    """Group-normalised advantages of groups that may differ in size (stored + fresh candidates)."""
    per = [group_advantages(np.array([r], dtype=np.float64), "none" if scale == "batch" else scale,
                            min_spread=min_spread)
           for r in all_rewards]
    advantages = [a.advantages[0] for a in per]
    if scale == "batch":
        flat = np.concatenate([np.asarray(r, dtype=np.float64) for r in all_rewards])
        std = flat.std(ddof=1) if flat.size > 1 else 0.0
        advantages = [a / (std + 1e-4) for a in advantages]
    keep = [bool(a.keep_mask[0]) for a in per]
    return advantages, keep, float(1.0 - np.mean(keep)) if keep else 0.0


def grpo_loss(model: CoreSeg, reference: ReferencePolicy | None, groups: list[Group], cfg: GRPOConfig,
              predictor: CoreSegPredictor, world_counts=None) -> tuple[torch.Tensor, dict]:
    """The loss of one batch of groups and what to log (rewards per term, KL, dropped share, Dice).

    The policy term is normalised by the batch's completion tokens and the supervised anchor (DiceCE + the probe
    box's and pointer's loss, `CoreSeg.probe_losses`) by its groups with a mask; with `text_weight`, the mean text
    cross-entropy of the groups' written answers is added (per process: a mean over its own groups).
    Under `accelerate launch`, `world_counts([tokens, masks])` returns those counts summed over the processes
    and the process count; each process then scales its sums so that the mean of the processes' gradients is
    the gradient of the whole batch (a process whose groups all lack a mask no longer halves the others')."""
    frame = model.config.box_frame
    all_rewards, stats_rows, pg_terms, kl_terms, mask_losses, dices = [], [], [], [], [], []
    per_group, text_losses = [], []
    device = next(model.segmenter.mask_decoder.parameters()).device
    for g in groups:
        g = replace(g, embedding=g.embedding.to(device), target=g.target.to(device))  # cases may live on the CPU
        n = len(g.completions)
        images, embeddings, questions = [g.image] * n, g.embedding.expand(n, -1, -1, -1), [g.question] * n
        ref_logits = (reference.logits(images, embeddings, questions, g.completions)
                      if reference is not None and cfg.beta > 0 else None)  # before the policy's graph exists
        logits, hidden, states = model.reasoner.forward_completions(images, embeddings, questions, g.completions)
        with torch.autocast(g.embedding.device.type, dtype=torch.bfloat16, enabled=cfg.bf16_decoder):
            masks = model.decode_masks(g.embedding, hidden, g.completions, image=states)  # no <seg>: empty mask, no DiceCE
        mask_logits = masks["logits"].float()
        target = F.interpolate(g.target, size=mask_logits.shape[-2:], mode="bilinear", align_corners=False) > 0.5
        if masks["rows"]:  # the supervised anchor: DiceCE, and the probe's box and pointer on the policy's own texts
            anchor = target if g.anchor_targets is None else F.interpolate(
                g.anchor_targets.to(device), size=mask_logits.shape[-2:], mode="bilinear", align_corners=False) > 0.5
            mask_loss, box_loss = model.probe_losses(masks, anchor, states)
            mask_losses.append(mask_loss + cfg.box_weight * box_loss)
        pred = (mask_logits.detach() > 0)[:, 0].cpu().numpy()
        truth = target[0, 0].cpu().numpy()
        texts = [predictor.decode_text(c) for c in g.completions]
        rows = score_completions([g.question] * n, texts, cfg.weights, image_size=[(frame, frame)] * n,
                                 gt_boxes=[g.gt_boxes] * n, gt_mask=[truth] * n, pred_mask=list(pred), **g.columns)
        rows = relative_human_term(rows, cfg.weights.human)
        stats_rows += rows
        all_rewards.append([r["total"] for r in rows])
        dices += [dice(p, truth) for p in pred]
        per_group.append((logits, ref_logits, g))
        if cfg.text_weight > 0 and g.target_ids:
            target_logits, _, _ = model.reasoner.forward_completions([g.image], g.embedding, [g.question], [g.target_ids])
            text_losses.append(token_cross_entropy(target_logits, [g.target_ids]))
    advantage_rows, keep_mask, frac_zero_std = _advantages(all_rewards, cfg.scale_rewards,
                                                           cfg.min_reward_spread * reward_range(cfg.weights))
    tokens = 0
    for (logits, ref_logits, g), adv_row, keep in zip(per_group, advantage_rows, keep_mask):
        if not keep:
            continue
        lookup = model.panel_lookup(g.question, g.embedding, g.size)   # one a group: a size question is measured once
        for i, ids in enumerate(g.completions):
            temperature, top_p = g.sampling_of(i, cfg)
            at = _chosen_tokens(model, ids, lookup)  # the tokens the policy chose (not the writer's, the lookup's)
            picked = [ids[k] for k in at]
            new = _token_logps(logits[i][at], picked, temperature, top_p)
            old = torch.tensor([g.old_logps[i][k] for k in at], device=new.device, dtype=new.dtype)
            ratio = torch.exp(new - old)
            adv = float(adv_row[i])
            pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.clip_low, 1 + cfg.clip_high) * adv)
            if ref_logits is not None:
                ref = _token_logps(ref_logits[i][at], picked, temperature, top_p)
                kl = torch.exp(ref - new) - (ref - new) - 1  # k3, "low_var_kl"
                kl_terms.append(kl.detach().sum())
                pg = pg + cfg.beta * kl
            pg_terms.append(pg.sum())
            tokens += len(at)
    all_tokens, all_masks, world = (world_counts([tokens, len(mask_losses)]) if world_counts
                                    else (tokens, len(mask_losses), 1))
    policy = torch.stack(pg_terms).sum() * world / all_tokens if pg_terms else torch.zeros((), device=device)
    mask = torch.stack(mask_losses).sum() * world / all_masks if mask_losses else torch.zeros((), device=device)
    loss = policy + cfg.mask_weight * mask
    if text_losses:
        loss = loss + cfg.text_weight * torch.stack(text_losses).mean()
    flat_rewards = [r for rewards in all_rewards for r in rewards]  # groups may differ in size
    stats = {"reward": float(np.mean(flat_rewards)), "policy_loss": float(policy.detach()), "mask_loss": float(mask.detach()),
             "kl": float(torch.stack(kl_terms).sum() / max(1, tokens)) if kl_terms else 0.0,
             "frac_zero_std": frac_zero_std, "groups_dropped": len(keep_mask) - sum(keep_mask),
             "dice": float(np.mean(dices)),
             "text_loss": float(torch.stack(text_losses).mean().detach()) if text_losses else None}
    for term in REWARD_FUNCS:
        values = [r[term] for r in stats_rows if r[term] is not None]
        stats[term] = float(np.mean(values)) if values else None
    return loss, stats


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Reward (total and per term) and KL against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("reward", *REWARD_FUNCS):
        values = [float(r[key]) if r.get(key) not in (None, "", "None") else np.nan for r in rows]
        if not np.all(np.isnan(values)):
            a.plot(steps, values, label=key)
    a.set_xlabel("step"), a.set_title("reward (mean over the batch's completions)"), a.legend()
    b.plot(steps, [float(r["kl"]) for r in rows], color="tab:red")
    b.set_xlabel("step"), b.set_title("KL to the reference (per token)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)


class StepLog:
    """Append-only CSV of step statistics (survives a crash; --resume appends)."""

    FIELDS = ["step", "reward", *REWARD_FUNCS, "kl", "frac_zero_std", "groups_dropped", "dice", "policy_loss",
              "mask_loss", "text_loss", "seconds"]

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        fields = self.FIELDS
        if not new:  # a resumed run keeps its file's columns (one written before a reward term was added too)
            with path.open(newline="") as f:
                fields = next(csv.reader(f), None) or self.FIELDS
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=fields, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()


def train_groups(model: CoreSeg, make_groups, steps: int, cfg: GRPOConfig, out: Path, version: str,
                 resume: bool = False, save_every: int = 20, desc: str = "grpo", parent: str | None = None) -> Path:
    """The GRPO loop shared by both modes. `make_groups(step, predictor, generator)` returns the
    step's groups. Saves `out/last` every `save_every` steps with the optimizer state, so `--resume`
    continues from there; returns the final checkpoint path.

    Under `accelerate launch` each process samples its own groups (its own generator seed) and the
    gradients are averaged across processes before each step, so the update is the one of the
    union of the processes' groups; only the main process writes.
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = Accelerator()

    distributed = accelerator.num_processes > 1

    def world_counts(counts):
        total = accelerator.reduce(torch.tensor(counts, dtype=torch.float64, device=accelerator.device), "sum")
        return float(total[0]), float(total[1]), accelerator.num_processes
    model.to(accelerator.device)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "trainer_state.pt"
    reference = ReferencePolicy(model) if cfg.beta > 0 else None  # the start (SFT) policy, also when resuming
    if cfg.freeze_reasoner and cfg.freeze_mask_path:
        raise ValueError("freezing both the reasoner and the mask path leaves nothing to train")
    trained = [p for n, p in model.named_parameters() if p.requires_grad
               and not (cfg.freeze_reasoner and n.startswith("reasoner."))
               and not (cfg.freeze_mask_path and not n.startswith("reasoner."))]
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=0.0)
    start = 0
    if resume and state_file.exists():
        from safetensors.torch import load_file

        from coreseg.checkpoint import existing_checkpoint

        model.load_state_dict(load_file(str(existing_checkpoint(out / "last") / "trainable.safetensors")), strict=False)
        state = torch.load(state_file, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    model.train()
    predictor = CoreSegPredictor(model, version)
    log = StepLog(out / "log.csv") if accelerator.is_main_process else None
    generator = torch.Generator().manual_seed(1234 + start + 7919 * accelerator.process_index)
    for step in tqdm(range(start, steps), desc=desc, initial=start, total=steps,
                     disable=not accelerator.is_main_process):
        t0 = time.time()
        model.eval()  # sampling without dropout; the loss pass below is deterministic too
        groups = make_groups(step, predictor, generator)
        model.train()
        loss, stats = grpo_loss(model, reference, groups, cfg, predictor, world_counts if distributed else None)
        if loss.requires_grad:  # all groups dropped and no mask to train: nothing to learn this step
            loss.backward()
        if distributed:
            average_gradients(accelerator, trained)
            stats = merge_stats(gather_object([stats]))
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if log:
            log.write({"step": step + 1, **stats, "seconds": time.time() - t0})
        if accelerator.is_main_process and ((step + 1) % save_every == 0 or step + 1 == steps):
            save_checkpoint(model, out / "last", f"{version}-s{step + 1}", parent=parent)
            torch.save({"step": step + 1, "optimizer": optimizer.state_dict()}, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)  # atomic: a kill never leaves half a state
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        plot_curves(out / "log.csv", out / "curves.png")
    model.eval()
    return out / "last"


def merge_stats(per_process: list[dict]) -> dict:
    """One log row for the whole batch from each process's `grpo_loss` stats: dropped groups summed,
    the rest averaged over the processes that have a value (each process takes as many cases)."""
    merged = {}
    for key in per_process[0]:
        values = [s[key] for s in per_process if s[key] is not None]
        merged[key] = (sum(values) if key == "groups_dropped" else float(np.mean(values))) if values else None
    return merged


def average_gradients(accelerator, params: list[torch.Tensor]) -> None:
    """The mean of the processes' gradients, in place. A tensor no process has a gradient for stays
    without one, as in a single process: AdamW then leaves it alone, where a zero gradient would still
    move it by its momentum (two processes drifted from one on a step where nothing had a loss)."""
    device = params[0].device
    had = accelerator.reduce(torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device),
                             "sum")
    for p, count in zip(params, had.tolist()):  # the same order and the same skips on every process
        if count == 0:
            p.grad = None
        else:  # a process without a gradient for it contributes 0
            p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), reduction="mean")


def process_state():
    """This process's place in an `accelerate launch` (index, count, device), built as `Accelerator()` builds it.
    The first state made fixes it for the process, and a bare `PartialState()` ignores `--cpu` /
    ACCELERATE_USE_CPU: asked before the Accelerator existed, it made every CPU process of a launch a
    single-process run of its own (each took the same cases and wrote the same files)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def case_index(step: int, j: int, batch_cases: int) -> int:
    """Which case (of a shuffled order) the j-th group of a step takes: consecutive per step, and
    disjoint between the processes of an `accelerate launch`."""
    state = process_state()
    return (step * state.num_processes + state.process_index) * batch_cases + j


def decoder_bf16(precision: str) -> bool:
    """`--precision` → bf16 autocast for the decoder, decided on the device `Accelerator` will train on."""
    return use_bf16(precision, process_state().device)
