"""CoreSeg: reasoner → Semantic-Guided Prompt Adapter → segmenter, as one module.

The answer's boxes are *not* fed to the decoder by default (the paper's point against cascades):
the mask comes from the image embedding and the semantic probe of the `<seg>` hidden state.

A completion without `<seg>` has no probe and an empty mask: the absent-target answer ("No … is
visible.") by design, any other one because it is unparsable (a failure for every metric and
reward). No other token stands in for `<seg>`.
"""
from __future__ import annotations

import torch
from torch import nn

from coreseg.answer import SEG_TOKEN
from coreseg.config import ModelConfig
from coreseg.geometry import LOW_RES
from coreseg.modeling.losses import dice_ce_loss, token_cross_entropy
from coreseg.modeling.prompt_adapter import SemanticPromptAdapter
from coreseg.modeling.segmenter import Segmenter

EMPTY_LOGIT = -20.0  # the decoder-frame logit of "no mask": sigmoid ≈ 2e-9, thresholded empty


class CoreSeg(nn.Module):
    def __init__(self, config: ModelConfig, reasoner: nn.Module, segmenter: Segmenter):
        super().__init__()
        self.config = config
        self.reasoner = reasoner
        self.segmenter = segmenter
        self.adapter = SemanticPromptAdapter(reasoner.hidden_size, config.adapter)
        self.seg_ids = reasoner.tokenizer.encode(SEG_TOKEN, add_special_tokens=False)
        if len(self.seg_ids) != 1:
            raise ValueError(f"{SEG_TOKEN} is {len(self.seg_ids)} tokens of the reasoner's tokenizer, not one: "
                             "add it with coreseg.modeling.tokenizer.add_answer_tokens")

    @classmethod
    def build(cls, config: ModelConfig, tokenizer=None, pretrained_segmenter: bool = True) -> "CoreSeg":
        """A fresh model of `config` (compact: an untrained reasoner over `tokenizer`; full: Qwen2.5-VL
        with `tokenizer`, a checkpoint's, or the base's own plus the answer tokens)."""
        segmenter = Segmenter(config.segmenter, pretrained=pretrained_segmenter)
        if config.reasoner.kind == "compact":
            from coreseg.modeling.compact_reasoner import CompactReasoner
            from coreseg.modeling.tokenizer import build_tokenizer

            reasoner = CompactReasoner(config.reasoner, tokenizer or build_tokenizer())
        else:
            from coreseg.modeling.qwen_reasoner import QwenReasoner

            reasoner = QwenReasoner(config.reasoner, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                                    tokenizer=tokenizer)
        return cls(config, reasoner, segmenter)

    def encode_target(self, answer: str) -> list[int]:
        """An SFT target: the answer's tokens followed by the end-of-turn token, so that stopping is trained."""
        from coreseg.modeling.tokenizer import END_OF_TURN

        return self.reasoner.tokenizer.encode(answer + END_OF_TURN, add_special_tokens=False)

    # -- the `<seg>` probe ------------------------------------------------------------------
    def seg_position(self, completion: list[int]) -> int | None:
        """Index of the first `<seg>` token in a completion; None if absent."""
        (seg,) = self.seg_ids
        return completion.index(seg) if seg in completion else None

    def probe(self, hidden: list[torch.Tensor], completions: list[list[int]]) -> tuple[torch.Tensor | None, list[int]]:
        """Semantic prompt tokens (R × K × 256) from the `<seg>` hidden states of the R completions that
        have one, and their indices; (None, []) when none has."""
        rows = [i for i, c in enumerate(completions) if self.seg_position(c) is not None]
        if not rows:
            return None, []
        states = torch.stack([hidden[i][self.seg_position(completions[i])] for i in rows])
        return self.adapter(states), rows

    def decode_masks(self, embeddings: torch.Tensor, hidden: list[torch.Tensor], completions: list[list[int]],
                     points=None, boxes: torch.Tensor | None = None) -> dict:
        """Mask logits (B × 1 × 256 × 256) for each completion: its probe (with the optional prompts,
        B-batched) through the decoder; a completion without `<seg>` gets `EMPTY_LOGIT` everywhere (an
        empty mask) and score 0. Returns logits, scores, `probes` (per completion K × 256 or None) and
        `rows` (the completions with a probe, whose masks the DiceCE may train)."""
        n = len(completions)
        probe, rows = self.probe(hidden, completions)
        device = embeddings.device
        if not rows:
            return {"logits": torch.full((n, 1, LOW_RES, LOW_RES), EMPTY_LOGIT, device=device),
                    "scores": torch.zeros(n, 1, device=device), "probes": [None] * n, "rows": []}
        index = torch.tensor(rows, device=device)
        emb = embeddings if embeddings.shape[0] == 1 else embeddings[index]
        pick = (lambda t: t if t is None or t.shape[0] == 1 else t[index.to(t.device)])
        pts = None if points is None else (pick(points[0]), pick(points[1]))
        logits, scores = self.segmenter.decode(emb, probe=probe, points=pts, boxes=pick(boxes))
        if len(rows) < n:
            logits = logits.new_full((n, *logits.shape[1:]), EMPTY_LOGIT).index_copy(0, index, logits)
            scores = scores.new_zeros((n, *scores.shape[1:])).index_copy(0, index, scores)
        probes = [None] * n
        for j, i in enumerate(rows):
            probes[i] = probe[j]
        return {"logits": logits, "scores": scores, "probes": probes, "rows": rows}

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: every trainable tensor (LoRA or compact reasoner, adapter, decoder)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in names}

    def forward(self, images: list, embeddings: torch.Tensor, questions: list[str], completions: list[list[int]],
                target_masks: torch.Tensor, boxes: torch.Tensor | None = None, points=None,
                mask_weight: float = 1.0) -> dict:
        """The SFT loss (a module's forward, so DDP under `accelerate launch` sees it): text
        cross-entropy + DiceCE of the probe's mask (targets B × 1 × 256 × 256). Optional user-style
        `boxes`/`points` teach the decoder to combine the probe with refinement prompts."""
        logits, hidden = self.reasoner.forward_completions(images, embeddings, questions, completions)
        lm = token_cross_entropy(logits, completions)
        masks = self.decode_masks(embeddings, hidden, completions, points=points, boxes=boxes)
        mask_logits, rows = masks["logits"], masks["rows"]
        if rows:  # a target without <seg> (absent target) trains the text only
            index = torch.tensor(rows, device=mask_logits.device)
            mask = dice_ce_loss(mask_logits[index], target_masks.to(mask_logits.device)[index])
        else:
            mask = lm.new_zeros(())
        return {"loss": lm + mask_weight * mask, "lm": lm.detach(), "mask": mask.detach(), "mask_logits": mask_logits}
