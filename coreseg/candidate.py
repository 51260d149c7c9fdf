"""One model answer: what `CoreSegPredictor.predict` returns and what the store keeps."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coreseg.answer import ParseResult, parse_answer


@dataclass
class Candidate:
    """A sampled answer with its mask.

    `text` is the answer in original-image pixels (what users see and the store keeps);
    `token_ids` / `token_logprobs` are the generated tokens in the model's own frame with the
    log-probability the sampling policy gave each (GRPO needs them for importance weights).
    """

    text: str
    mask: np.ndarray                      # bool, the scan's height × width
    mask_score: float                     # the decoder's predicted IoU
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    probe: np.ndarray | None = None       # K×256 semantic prompt tokens from the `<seg>` state (kept for refinement)
    model_version: str = ""
    sampling: dict = field(default_factory=dict)  # temperature, top_p, seed, index in the group
    trained: bool = True                  # False when the model's weights are untrained (said in the UI/CLI)

    @property
    def parsed(self) -> ParseResult:
        return parse_answer(self.text, self.mask.shape[:2])

    def to_json(self) -> dict:
        """A JSON-ready summary (no arrays): reasoning, target, boxes, score, parse errors."""
        result = self.parsed
        answer = result.answer
        return {
            "text": self.text,
            "reasoning": answer.reasoning if answer else "",
            "target": answer.target if answer else "",
            "boxes": [list(b) for b in answer.boxes] if answer else [],
            "present": answer.present if answer else None,
            "mask_score": round(float(self.mask_score), 4),
            "mask_area": int(self.mask.sum()),
            "parse_errors": list(result.errors),
            "model_version": self.model_version,
            "trained": self.trained,
            "sampling": self.sampling,
        }
