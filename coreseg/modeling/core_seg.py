"""CoreSeg: reasoner → Semantic-Guided Prompt Adapter → segmenter, as one module.

The answer's boxes are *not* fed to the decoder by default (the paper's point against cascades):
the mask comes from the image embedding and the semantic probe of the `<seg>` hidden state.
"""
from __future__ import annotations

import torch
from torch import nn

from coreseg.answer import SEG_TOKEN
from coreseg.config import ModelConfig
from coreseg.modeling.losses import dice_ce_loss, token_cross_entropy
from coreseg.modeling.prompt_adapter import SemanticPromptAdapter
from coreseg.modeling.segmenter import Segmenter


class CoreSeg(nn.Module):
    def __init__(self, config: ModelConfig, reasoner: nn.Module, segmenter: Segmenter):
        super().__init__()
        self.config = config
        self.reasoner = reasoner
        self.segmenter = segmenter
        self.adapter = SemanticPromptAdapter(reasoner.hidden_size, config.adapter)
        self.seg_ids = reasoner.tokenizer.encode(SEG_TOKEN, add_special_tokens=False)

    @classmethod
    def build(cls, config: ModelConfig, tokenizer=None, pretrained_segmenter: bool = True) -> "CoreSeg":
        """A fresh model of `config` (compact: an untrained reasoner over `tokenizer`)."""
        segmenter = Segmenter(config.segmenter, pretrained=pretrained_segmenter)
        if config.reasoner.kind == "compact":
            from coreseg.modeling.compact_reasoner import CompactReasoner
            from coreseg.modeling.tokenizer import build_tokenizer

            reasoner = CompactReasoner(config.reasoner, tokenizer or build_tokenizer())
        else:
            from coreseg.modeling.qwen_reasoner import QwenReasoner

            reasoner = QwenReasoner(config.reasoner,
                                    dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        return cls(config, reasoner, segmenter)

    # -- the `<seg>` probe ------------------------------------------------------------------
    def seg_position(self, completion: list[int]) -> int | None:
        """Index of the last token of the first `<seg>` in a completion; None if absent."""
        n = len(self.seg_ids)
        for i in range(len(completion) - n + 1):
            if completion[i:i + n] == self.seg_ids:
                return i + n - 1
        return None

    def probe(self, hidden: list[torch.Tensor], completions: list[list[int]]) -> torch.Tensor:
        """Semantic prompt tokens (B × K × 256) from the `<seg>` hidden states. A completion
        without `<seg>` (an unparsable answer) uses its last token's state so a mask is still drawn."""
        states = []
        for h, c in zip(hidden, completions):
            pos = self.seg_position(c)
            states.append(h[pos if pos is not None else len(c) - 1])
        return self.adapter(torch.stack(states))

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
        mask_logits, _ = self.segmenter.decode(embeddings, probe=self.probe(hidden, completions), points=points,
                                               boxes=boxes)
        mask = dice_ce_loss(mask_logits, target_masks)
        return {"loss": lm + mask_weight * mask, "lm": lm.detach(), "mask": mask.detach(), "mask_logits": mask_logits}
