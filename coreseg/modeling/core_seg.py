"""CoreSeg: reasoner → Semantic-Guided Prompt Adapter → segmenter, as one module.

The answer's boxes are *not* fed to the decoder by default (the paper's point against cascades):
the mask comes from the image embedding and the semantic probe of the `<seg>` hidden state.

A completion without `<seg>` has no probe and an empty mask: the absent-target answer ("No … is
visible.") by design, any other one because it is unparsable (a failure for every metric and
reward). No other token stands in for `<seg>`.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from coreseg.answer import SEG_TOKEN
from coreseg.config import ModelConfig
from coreseg.findings import panel_box
from coreseg.geometry import LOW_RES, Frames
from coreseg.metrics import mask_box
from coreseg.modeling.box_pointer import BoxPointer, ImageStates
from coreseg.modeling.box_writer import Brackets, BoxWriting
from coreseg.modeling.losses import box_loss, dice_ce_loss, pointer_loss, token_cross_entropy
from coreseg.modeling.panel_lookup import PanelLookup
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
        self.box_writer = (BoxPointer(reasoner.hidden_size, config.adapter.hidden_dim, config.box_writer_reads_text)
                           if config.box_writer else None)
        self.brackets = Brackets.of(reasoner.tokenizer) if config.box_writer else None
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

    def with_box_pointer(self) -> "CoreSeg":
        """This model grown by the probe's box tokens from the box pointer (a fresh pointer; every other
        weight kept, a regressed box head dropped): how a checkpoint written before them is warm-started into
        the current probe (`trainers.sft --init … --box-pointer`)."""
        from dataclasses import replace

        if self.config.adapter.box_tokens and self.config.adapter.box_pointer:
            return self
        config = replace(self.config, adapter=replace(self.config.adapter, box_tokens=True, box_pointer=True))
        grown = CoreSeg.build(config, tokenizer=self.reasoner.tokenizer)
        kept = {k: v for k, v in self.trainable_state_dict().items() if not k.startswith("adapter.box_head.")}
        grown.load_state_dict(kept, strict=False)
        return grown.to(next(self.parameters()).device)

    def with_box_writer(self, reads_text: bool = False) -> "CoreSeg":
        """This model with a box writer (a fresh one, started from the `<seg>` box pointer's weights where the model
        has that pointer, random otherwise; every other weight and the sampling guesses kept), and with a text reader
        when `reads_text` (a fresh one, which leaves the boxes as they were): `trainers.box_writer`'s start."""
        from dataclasses import replace

        reads_text = reads_text or self.config.box_writer_reads_text
        if self.box_writer is not None and reads_text == self.config.box_writer_reads_text:
            return self
        grown = CoreSeg.build(replace(self.config, box_writer=True, box_writer_reads_text=reads_text),
                              tokenizer=self.reasoner.tokenizer)
        grown.load_state_dict(self.trainable_state_dict(), strict=False)
        if hasattr(self.reasoner, "drafter"):  # the sampling guesses learned so far
            grown.reasoner.drafter = self.reasoner.drafter
        if self.box_writer is None and self.adapter.pointer is not None:
            grown.box_writer.load_state_dict(self.adapter.pointer.state_dict(), strict=False)
        return grown.to(next(self.parameters()).device)

    def panel_lookup(self, question: str, embedding: torch.Tensor | None = None,
                     size: tuple[int, int] | None = None) -> PanelLookup | None:
        """The sampling hook that copies a composite's panel after "points to the" (`ModelConfig.panel_lookup`; the
        compact reasoner only); with the image's `embedding` and `size` it measures a size question's two panels."""
        if not self.config.panel_lookup or self.config.profile != "compact":
            return None
        measure = None if embedding is None or size is None else partial(self.panel_lesion_area, embedding, size=size)
        return PanelLookup(self.reasoner.tokenizer, question, measure)

    @torch.no_grad()
    def panel_lesion_area(self, embedding: torch.Tensor, place: str, size: tuple[int, int]) -> float:
        """The pixels (decoder frame) of the lesion the segmenter draws in a composite's panel, prompted with the
        panel's box alone: how the panel lookup tells the larger of two findings of a kind from the smaller."""
        device = next(self.segmenter.mask_decoder.parameters()).device
        box = Frames.of(self, size).box(panel_box(place, size), "image", "segmenter")
        logits, _ = self.segmenter.decode(embedding.to(device), boxes=torch.tensor([box], dtype=torch.float32,
                                                                                   device=device))
        return float((logits[0, 0] > 0).sum())

    def box_writing(self, image: ImageStates, embedding: torch.Tensor, image_side=None) -> BoxWriting | None:
        """The sampling hook that writes answer boxes for one image (its reasoner states and its embedding,
        1 × 256 × 64 × 64; None without a box writer). `image_side`: the decoder's image side of that embedding
        where the caller has it (`Segmenter.image_side`); else prepared at the first box written (an absent answer
        writes none)."""
        if self.box_writer is None:
            return None
        sides = [] if image_side is None else [image_side]

        def refine(box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if not sides:
                sides.append(self.segmenter.image_side(embedding))
            return self.refined_box(embedding, box, sides[0])

        return BoxWriting(self.box_writer, self.reasoner.tokenizer, self.brackets, image, self.config.box_frame,
                          refine=refine, reach=self.config.box_writer_reach,
                          follows_panel=self.config.box_writer_follows_panel)

    @torch.no_grad()
    def refined_box(self, embedding: torch.Tensor, box: torch.Tensor,
                    image_side=None) -> tuple[torch.Tensor, torch.Tensor]:
        """A normalised box (4) given to the segmenter as a box prompt alone → the normalised box of the mask it
        draws there (the box itself where that mask is empty) and that mask's logits (1 × S × S)."""
        logits, _ = self.segmenter.decode(embedding, boxes=box[None].float() * self.segmenter.image_size,
                                          image_side=image_side)
        drawn = mask_box((logits[0, 0] > 0).cpu().numpy())
        refined = box if drawn is None else torch.tensor(drawn, dtype=torch.float32) / logits.shape[-1]
        return refined, logits[0]

    def box_writer_loss(self, hidden: list[torch.Tensor], completions: list[list[int]], image: list[ImageStates],
                        boxes: list[list], target_masks: torch.Tensor) -> torch.Tensor:
        """The box writer's loss on teacher-forced completions: the state at the k-th opening bracket of each
        completion's answer towards the k-th box written there (`boxes`, per completion, box frame): the box's
        DETR loss plus the pointer's cross-entropy towards the share of the target inside that box in each cell."""
        frame, size = self.config.box_frame, target_masks.shape[-1]
        states, texts, images, goals, shares = [], [], [], [], []
        for i, completion in enumerate(completions):
            for at, box in zip(self.brackets.openings(completion), boxes[i]):
                x1, y1, x2, y2 = (round(v * size / frame) for v in box)
                inside = torch.zeros_like(target_masks[i])
                inside[..., y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)] = 1
                share = target_masks[i].float() * inside
                states.append(hidden[i][at])
                texts.append(hidden[i][:at + 1])
                images.append(image[i])
                goals.append(torch.tensor(box, dtype=torch.float32) / frame)
                shares.append(share if share.sum() > 0 else inside)  # the box itself where the mask misses it
        if not states:
            return hidden[0].new_zeros(()).float()
        pred, logits = self.box_writer(torch.stack(states), images, texts=texts)
        grids = [(im.rows, im.cols) for im in images]
        return (box_loss(pred.float(), torch.stack(goals).to(pred.device))
                + pointer_loss(logits, torch.stack(shares).to(pred.device), grids))

    def encode_target(self, answer: str) -> list[int]:
        """An SFT target: the answer's tokens followed by the end-of-turn token, so that stopping is trained."""
        from coreseg.modeling.tokenizer import END_OF_TURN

        return self.reasoner.tokenizer.encode(answer + END_OF_TURN, add_special_tokens=False)

    # -- the `<seg>` probe ------------------------------------------------------------------
    def seg_position(self, completion: list[int]) -> int | None:
        """Index of the first `<seg>` token in a completion; None if absent."""
        (seg,) = self.seg_ids
        return completion.index(seg) if seg in completion else None

    def probe(self, hidden: list[torch.Tensor], completions: list[list[int]], image: list | None = None):
        """The probe of the R completions that have a `<seg>`: their prompt tokens (R × K × 256; with box
        tokens the last two are the corners of the probe's own box), their indices, that box (R × 4,
        normalised x1 y1 x2 y2; None without box tokens) and the box pointer's cell logits (per row; None
        without a pointer, which reads `image`: each completion's `ImageStates`). (None, [], None, None)
        when no completion has one."""
        rows = [i for i, c in enumerate(completions) if self.seg_position(c) is not None]
        if not rows:
            return None, [], None, None
        states = torch.stack([hidden[i][self.seg_position(completions[i])] for i in rows])
        tokens, boxes, pointer = self.adapter(states, None if image is None else [image[i] for i in rows])
        if boxes is None:
            return tokens, rows, None, None
        corners = self.segmenter.embed_boxes(boxes * self.segmenter.image_size)
        return torch.cat([tokens, corners.to(tokens.dtype)], dim=1), rows, boxes, pointer

    def decode_masks(self, embeddings: torch.Tensor, hidden: list[torch.Tensor], completions: list[list[int]],
                     image: list | None = None, points=None, boxes: torch.Tensor | None = None,
                     image_side=None) -> dict:
        """Mask logits (B × 1 × 256 × 256) for each completion: its probe (with the optional prompts,
        B-batched) through the decoder; a completion without `<seg>` gets `EMPTY_LOGIT` everywhere (an
        empty mask) and score 0. Returns logits, scores, `probes` (per completion K × 256 or None) and
        `rows` (the completions with a probe, whose masks the DiceCE may train) with `probe_boxes` (R × 4 or None)
        and `pointer` (the box pointer's cell logits per row, or None). `image`: the reasoner's image states
        (its `forward_completions`' third output), which the box pointer reads. `image_side`: the decoder's image
        side of one image's embedding, where the caller keeps it (`Segmenter.decode`)."""
        n = len(completions)
        probe, rows, probe_boxes, pointer = self.probe(hidden, completions, image)
        device = embeddings.device
        if not rows:
            return {"logits": torch.full((n, 1, LOW_RES, LOW_RES), EMPTY_LOGIT, device=device),
                    "scores": torch.zeros(n, 1, device=device), "probes": [None] * n, "rows": [], "probe_boxes": None,
                    "pointer": None}
        index = torch.tensor(rows, device=device)
        one_image = embeddings.shape[0] == 1 or embeddings.stride(0) == 0  # decoded with one preparation
        emb = embeddings[:1] if one_image else embeddings[index]
        pick = (lambda t: t if t is None or t.shape[0] == 1 else t[index.to(t.device)])
        pts = None if points is None else (pick(points[0]), pick(points[1]))
        logits, scores = self.segmenter.decode(emb, probe=probe, points=pts, boxes=pick(boxes),
                                               image_side=image_side if one_image else None)
        if len(rows) < n:
            logits = logits.new_full((n, *logits.shape[1:]), EMPTY_LOGIT).index_copy(0, index, logits)
            scores = scores.new_zeros((n, *scores.shape[1:])).index_copy(0, index, scores)
        probes = [None] * n
        for j, i in enumerate(rows):
            probes[i] = probe[j]
        return {"logits": logits, "scores": scores, "probes": probes, "rows": rows, "probe_boxes": probe_boxes,
                "pointer": pointer}

    # -- training ---------------------------------------------------------------------------
    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: every trainable tensor (LoRA or compact reasoner, adapter, decoder)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in names}

    def forward(self, images: list, embeddings: torch.Tensor, questions: list[str], completions: list[list[int]],
                target_masks: torch.Tensor, boxes: torch.Tensor | None = None, points=None,
                mask_weight: float = 1.0, box_weight: float = 1.0,
                token_weights: list[torch.Tensor] | None = None, answer_boxes: list[list] | None = None) -> dict:
        """The SFT loss (a module's forward, so DDP under `accelerate launch` sees it): text
        cross-entropy + DiceCE of the probe's mask (targets B × 1 × 256 × 256) + the probe box's loss
        against the target's tight box (with box tokens). Optional user-style
        `boxes`/`points` teach the decoder to combine the probe with refinement prompts. With the box pointer
        its cell logits are also trained towards the target's share of each cell (`pointer_loss`). `token_weights`
        (per completion and token) weigh the text loss. With a box writer and `answer_boxes` (per completion, the
        boxes its text writes, box frame) the writer's loss joins the box term."""
        logits, hidden, image = self.reasoner.forward_completions(images, embeddings, questions, completions)
        lm = token_cross_entropy(logits, completions, token_weights)
        masks = self.decode_masks(embeddings, hidden, completions, image=image, points=points, boxes=boxes)
        mask, box = self.probe_losses(masks, target_masks, image)
        if self.box_writer is not None and answer_boxes is not None:
            box = box + self.box_writer_loss(hidden, completions, image, answer_boxes, target_masks)
        return {"loss": lm + mask_weight * mask + box_weight * box, "lm": lm.detach(), "mask": mask.detach(),
                "box": box.detach(), "mask_logits": masks["logits"]}

    def probe_losses(self, masks: dict, target_masks: torch.Tensor, image: list | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe's supervised losses for `decode_masks`' output against the targets (B × 1 × S × S; one
        target broadcasts to every completion): DiceCE of the masks of the completions with a `<seg>` (a target
        without it, an absent target, trains the text only) and the probe box's loss against the target's tight
        box plus, with the box pointer, the pointer's cross-entropy towards the target's share of each cell.
        Shared by SFT (`forward`) and GRPO (on its sampled completions, so that pointing is trained on the texts
        the policy writes). Zeros where nothing applies."""
        mask_logits, rows = masks["logits"], masks["rows"]
        # any resolution: DiceCE resizes, the box is normalised and the pointer pools to its cells
        targets = target_masks.to(mask_logits.device).float().expand(mask_logits.shape[0], -1, -1, -1)
        mask = box = mask_logits.new_zeros(()).float()
        if not rows:
            return mask, box
        index = torch.tensor(rows, device=mask_logits.device)
        mask = dice_ce_loss(mask_logits[index].float(), targets[index])
        if masks["probe_boxes"] is None:
            return mask, box
        truth = [mask_box(targets[i, 0].detach().cpu().numpy() > 0.5) for i in rows]
        keep = [j for j, t in enumerate(truth) if t is not None]
        if keep:
            size = targets.shape[-1]
            goal = torch.tensor([truth[j] for j in keep], dtype=torch.float32, device=mask_logits.device) / size
            box = box_loss(masks["probe_boxes"][keep].float(), goal)
            if masks["pointer"] is not None:
                index = torch.tensor([rows[j] for j in keep], device=mask_logits.device)
                grids = [(image[rows[j]].rows, image[rows[j]].cols) for j in keep]
                box = box + pointer_loss([masks["pointer"][j] for j in keep], targets[index], grids)
        return mask, box
