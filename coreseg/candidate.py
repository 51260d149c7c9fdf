"""One model answer: what `CoreSegPredictor.predict` returns and what the store keeps."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coreseg.answer import ParseResult, parse_answer
from coreseg.findings import Finding, check_answer, claim_agreement, unsupported_claims


@dataclass
class Candidate:
    """A sampled answer with its mask.

    `text` is the answer in original-image pixels (what users see and the store keeps);
    `token_ids` / `token_logprobs` are the generated tokens in the model's own frame with the
    log-probability the sampling policy gave each (GRPO needs them for importance weights).
    `findings` are the answer's claims checked against this candidate's OWN mask and `unsupported`
    the phrases claiming what no image shows (`coreseg.findings`): set once by `check` (the
    predictor calls it; a refined mask is checked anew), so that a clinician sees where text and mask
    disagree.
    """

    text: str
    mask: np.ndarray                      # bool, the scan's height × width
    mask_score: float                     # the decoder's predicted IoU
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    probe: np.ndarray | None = None       # K×256 semantic prompt tokens from the `<seg>` state (kept for refinement)
    probe_box: tuple[int, int, int, int] | None = None  # where the probe aimed (its box tokens), image pixels
    model_version: str = ""
    sampling: dict = field(default_factory=dict)  # temperature, top_p, seed, index in the group
    trained: bool = True                  # False when the model's weights are untrained (said in the UI/CLI)
    findings: list[Finding] | None = None  # None until `check`
    unsupported: list[str] | None = None

    @property
    def parsed(self) -> ParseResult:
        return parse_answer(self.text, self.mask.shape[:2])

    def check(self, image: np.ndarray | None = None, modality: str | None = None) -> "Candidate":
        """Check the text's claims against this candidate's own mask (and `image`, the scan's pixels,
        when given); returns self."""
        self.findings = check_answer(self.text, self.mask, image, modality)
        self.unsupported = unsupported_claims(self.text)
        return self

    def to_json(self) -> dict:
        """A JSON-ready summary (no arrays): reasoning, target, boxes, score, parse errors, and the
        checked findings (checked here, without the image, when `check` was not called)."""
        if self.findings is None or self.unsupported is None:
            self.check()
        result = self.parsed
        answer = result.answer
        agreement = claim_agreement(self.findings)
        return {
            "text": self.text,
            "reasoning": answer.reasoning if answer else "",
            "target": answer.target if answer else "",
            "boxes": [list(b) for b in answer.boxes] if answer else [],
            "present": answer.present if answer else None,
            "mask_score": round(float(self.mask_score), 4),
            "mask_area": int(self.mask.sum()),
            "probe_box": None if self.probe_box is None else list(self.probe_box),
            "parse_errors": list(result.errors),
            "findings": [f.to_json() for f in self.findings],
            "unsupported": list(self.unsupported),
            "claim_agreement": None if agreement is None else round(agreement, 4),
            "model_version": self.model_version,
            "trained": self.trained,
            "sampling": self.sampling,
        }
