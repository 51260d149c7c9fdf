"""The predictor façade, after segment-anything's SamPredictor: it caches the image embedding so
that sampling candidates and every refinement click reuse one encoding.

Coordinates: callers speak original-image pixels; the model writes boxes in its own square
`box_frame` and the segmenter takes prompts in its `image_size` frame. The predictor converts at
this boundary with `coreseg.geometry.Frames`, the one place frames are defined.
"""
from __future__ import annotations

import threading
from functools import partial

import numpy as np
import torch

from coreseg.answer import ANSWER_CLOSE, SEG_TOKEN, parse_answer, render_answer
from coreseg.cache import LRU
from coreseg.candidate import Candidate
from coreseg.claim_revision import disagreeing, revise_claims
from coreseg.embedding_cache import EmbeddingCache, pixel_key
from coreseg.findings import panel_region, read_panel
from coreseg.geometry import Frames
from coreseg.modeling.sampling import Sampled, first_difference


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Any uint8 grey/RGB/RGBA array → H×W×3 uint8 (the display image of a scan)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"the model takes 8-bit display images, got {image.dtype}; use scan_io.read_scan first")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an H×W, H×W×3 or H×W×4 image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


class CoreSegPredictor:
    """predict(image, question) → candidates; refine(image, candidate, clicks, box) → a new candidate.

    One instance is shared by all users of the app: it holds no per-user state, only the
    embedding cache (thread-safe) and `concurrency` model slots: at most that many model calls
    (encode, predict, score, refine) run at once, the rest wait (the app passes
    `AppConfig.model_concurrency`, i.e. CORESEG_MODEL_CONCURRENCY; inference does not change the
    model, so calls may overlap).
    """

    def __init__(self, model, model_version: str, trained: bool = True, cache_size: int = 16,
                 concurrency: int = 1):
        if int(concurrency) < 1:
            raise ValueError(f"model concurrency must be at least 1, not {concurrency}")
        self.model = model
        self.model_version = model_version
        self.trained = trained
        self.cache = EmbeddingCache(cache_size)
        self.encoder_version = model_version   # what the cached embeddings are keyed by (`reuse_embeddings`)
        self.decoder_images = LRU(4)  # the decoder's image side (15 MB each) of the latest images
        self.concurrency = int(concurrency)
        self._slots = threading.BoundedSemaphore(self.concurrency)

    @classmethod
    def from_checkpoint(cls, path, device: str = "auto", concurrency: int = 1,
                        encoder_backend: str = "eager") -> "CoreSegPredictor":
        """`encoder_backend`: how the frozen image encoder runs (`coreseg.modeling.encoder_backend`;
        "auto" = the fastest runtime that matches eager on this machine, eager on CUDA)."""
        from coreseg.checkpoint import load_or_build

        model, info = load_or_build(path, device)
        model.segmenter.use_encoder_backend(encoder_backend)
        return cls(model, info.model_version, info.trained, concurrency=concurrency)

    def reuse_embeddings(self, other: "CoreSegPredictor") -> bool:
        """Share `other`'s embedding cache where both models' image encoders hold the same weights: training keeps
        the encoder frozen, so a feedback round's new version need not encode what its base encoded. Returns
        whether they are shared."""
        mine, theirs = (p.model.segmenter.image_encoder.state_dict() for p in (self, other))
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k].to(mine[k].device)) for k in mine):
            return False
        self.cache, self.encoder_version = other.cache, other.encoder_version
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.segmenter.mask_decoder.parameters()).device

    def _model_context(self):
        """A model slot (one of `concurrency`), and bf16 autocast on CUDA (fp32 on the CPU)."""
        from contextlib import ExitStack

        stack = ExitStack()
        stack.enter_context(self._slots)
        stack.enter_context(torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"))
        return stack

    def embedding(self, image: np.ndarray) -> torch.Tensor:
        """The cached image embedding; encoding a new image takes a model slot like any model call."""
        key = pixel_key(image, self.encoder_version)
        cached = self.cache.get(key)
        if cached is None:
            with self._model_context():
                cached = self._embedding(image, key)
        return cached

    def _embedding(self, image: np.ndarray, key: str | None = None) -> torch.Tensor:
        """The cached image embedding, computed on first use (the caller holds a model slot)."""
        key = key or pixel_key(image, self.encoder_version)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.model.segmenter.encode(image)
            self.cache.put(key, cached)
        return cached

    def _embedding_and_side(self, image: np.ndarray):
        """The cached embedding and the decoder's image side of it (`Segmenter.image_side`), which every decoder
        pass of a request (boxes written, masks drawn, claims revised) and later clicks share (the caller holds a
        model slot)."""
        key = pixel_key(image, self.encoder_version)
        embedding = self._embedding(image, key)
        return embedding, self.decoder_images.get_or_put(key, lambda: self.model.segmenter.image_side(embedding))

    # -- candidates ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: np.ndarray, question: str, n_candidates: int = 4, temperature: float = 0.7,
                top_p: float = 0.95, seed: int = 0, box_prompt: str | None = None) -> list[Candidate]:
        """Sample `n_candidates` answers as one batch over one image encoding, and draw each mask
        from its semantic probe, with the answer's first box as a box prompt as `box_prompt` says ("never",
        "panel", "always"; default: the model's `ModelConfig.box_prompt`).

        With `ModelConfig.revise_claims` each answer's measurable words are first revised to the mask the segmenter
        drew in the boxes the box writer wrote (`_first_looks`: drawn while sampling, so this costs no decoder
        pass), before its mask is drawn; then, up to `ModelConfig.revision_passes` times, to the mask drawn, where
        its checked words disagree with it (answers without a first look: where any measurable word differs), each
        time drawn again, so the mask shown is drawn from the words shown."""
        image = to_rgb(image)
        if not question or not question.strip():
            raise ValueError("ask a question, e.g. 'Outline the lesion.'")
        height, width = image.shape[:2]
        with self._model_context():
            embedding, side = self._embedding_and_side(image)
            generator = torch.Generator().manual_seed(int(seed))
            writer = None if self.model.box_writer is None else partial(self.model.box_writing, image_side=side)
            sampled = self.model.reasoner.sample(image, embedding, question, n_candidates, temperature, top_p,
                                                 generator, writer=writer,
                                                 lookup=self.model.panel_lookup(question, embedding, (height, width)))
            texts = [self.to_image_frame(self.decode_text(c), (height, width)) for c in sampled.ids]
            revise = self.model.config.revise_claims
            looks = self._first_looks(sampled, texts, (height, width)) if revise else [None] * len(texts)
            first = sampled
            rows, again, revised, starts = self._rewritten(image, embedding, question, first, sampled.ids,
                                                           sampled.logps, texts, looks)
            sampled = sampled.replaced(rows, again)
            for i, text in zip(rows, revised):
                texts[i] = text
            candidates = self._draw(image, embedding, side, question, sampled, texts, box_prompt,
                                    {"temperature": temperature, "top_p": top_p, "seed": seed})
            for i, start in zip(rows, starts):
                candidates[i].sampling["revised_from"] = start
            unlooked = {i for i, look in enumerate(looks) if look is None}
            for rerun in range(self.model.config.revision_passes if revise else 0):
                candidates, changed = self._revised(image, embedding, side, question, first, candidates, box_prompt,
                                                    unlooked if rerun == 0 else set())
                if not changed:
                    break
        return [c if c.findings is not None else c.check(image) for c in candidates]  # claims vs each own mask

    def _first_looks(self, sampled: Sampled, texts: list[str], size: tuple[int, int]) -> list[np.ndarray | None]:
        """Per answer, what its words are first measured on: the mask the segmenter drew in the boxes the box writer
        wrote while sampling (their union, under the answer's mask rules, `_answer_mask`); None where it drew none
        (no writer, no box)."""
        drawn = sampled.drawn or [[] for _ in texts]
        return [self._answer_mask(text, torch.stack(d).amax(0), *size) if d else None for d, text in zip(drawn, texts)]

    def _rewritten(self, image, embedding, question, first: Sampled, ids: list[list[int]], logps: list[list[float]],
                   texts: list[str], looks: list[np.ndarray | None]) -> tuple[list[int], Sampled, list[str], list[int]]:
        """The answers (`ids`, `logps`, `texts`) whose mask-measurable words differ from what their `looks` (a mask
        each, or None: kept) show, revised (`coreseg.claim_revision`) and read again in one teacher-forced pass
        (from where each first differs from its sampled tokens, `first`, where the reasoner kept its decoder): their
        rows, their tokens, log-probabilities and states (a `Sampled`), texts, and the index of each one's first
        changed token. Tokens before it keep their log-probabilities; from there on each carries the model's own
        (untempered) one, as the sampler gives the tokens it wrote instead of drawing."""
        size = image.shape[:2]
        revised = {i: revise_claims(texts[i], look) for i, look in enumerate(looks) if look is not None}
        rows = [i for i, text in revised.items() if text != texts[i]]
        if not rows:
            return [], Sampled([], []), [], []
        new_ids = [self.model.encode_target(self.to_model_frame(revised[i], size)) for i in rows]
        if first.decoder is not None and first.hidden is not None:
            logits, hidden, states = self.model.reasoner.forward_continued(first, rows, new_ids)
        else:
            logits, hidden, states = self.model.reasoner.forward_completions(
                [image] * len(rows), embedding.expand(len(rows), -1, -1, -1), [question] * len(rows), new_ids)
        new_logps, starts = [], []
        for i, new, step in zip(rows, new_ids, logits):
            start = first_difference(ids[i], new)
            plain = torch.log_softmax(step.float(), dim=-1).gather(-1, torch.tensor(new, device=step.device)[:, None])
            new_logps.append(logps[i][:start] + plain[start:, 0].tolist())
            starts.append(start)
        new_texts = [self.to_image_frame(self.decode_text(c), size) for c in new_ids]
        return rows, Sampled(new_ids, new_logps, hidden, states), new_texts, starts

    def _revised(self, image, embedding, side, question, first: Sampled, candidates: list[Candidate], box_prompt,
                 always: set[int]) -> tuple[list[Candidate], bool]:
        """The candidates whose checked words (`claim_revision.disagreeing`) disagree with their drawn mask, and those
        in `always` whose measurable words differ from it at all, revised (`_rewritten`) and drawn again; the others
        as they are; and whether any was revised. `sampling["revised_from"]` says where a candidate's tokens first
        differ from the sampled ones."""
        looks = [c.mask if i in always or disagreeing(c.check(image).findings) else None
                 for i, c in enumerate(candidates)]
        rows, again, texts, starts = self._rewritten(image, embedding, question, first,
                                                     [c.token_ids for c in candidates],
                                                     [c.token_logprobs for c in candidates],
                                                     [c.text for c in candidates], looks)
        if not rows:
            return candidates, False
        drawn = self._draw(image, embedding, side, question, again, texts, box_prompt, {})
        out = list(candidates)
        for i, start, candidate in zip(rows, starts, drawn):
            earlier = candidates[i].sampling.get("revised_from", start)
            candidate.sampling = {**candidates[i].sampling, "revised_from": min(start, earlier)}
            out[i] = candidate
        return out, True

    def score_completions(self, image: np.ndarray, question: str, completions: list[list[int]],
                          box_prompt: str | None = None) -> list[Candidate]:
        """Masks for given completions (e.g. stored ones, or the ground-truth answer), no sampling."""
        image = to_rgb(image)
        with self._model_context(), torch.no_grad():
            embedding, side = self._embedding_and_side(image)
            texts = [self.to_image_frame(self.decode_text(c), image.shape[:2]) for c in completions]
            candidates = self._draw(image, embedding, side, question, Sampled(completions, [[] for _ in completions]),
                                    texts, box_prompt, {"forced": True})
        return [c.check(image) for c in candidates]

    def _draw(self, image, embedding, side, question, sampled: Sampled, texts, box_prompt,
              sampling) -> list[Candidate]:
        height, width = image.shape[:2]
        ids, logps, hidden, states = sampled.ids, sampled.logps, sampled.hidden, sampled.image
        if hidden is None or any((at := self.model.seg_position(c)) is not None and at >= len(h)
                                 for c, h in zip(ids, hidden)):  # states not kept while sampling: a teacher-forced pass
            _, hidden, states = self.model.reasoner.forward_completions(
                [image] * len(ids), embedding.expand(len(ids), -1, -1, -1), [question] * len(ids), ids)
        masks = self.model.decode_masks(embedding, hidden, ids, image=states,  # no <seg>: no probe, empty mask
                                        image_side=side)
        low_res, scores, probes = masks["logits"], masks["scores"], masks["probes"]
        prompts = self._box_prompts(texts, (height, width), box_prompt or self.model.config.box_prompt)
        if prompts:  # those masks again, with the answer's first box beside the probe
            pick = lambda seq: [seq[i] for i in prompts]
            again = self.model.decode_masks(embedding, pick(hidden), pick(ids), image=None if states is None else pick(states),
                                            boxes=torch.tensor(list(prompts.values()), dtype=torch.float32, device=self.device),
                                            image_side=side)
            index = torch.tensor(list(prompts), device=low_res.device)
            low_res = low_res.index_copy(0, index, again["logits"])
            scores = scores.index_copy(0, index, again["scores"])
        probe_boxes = [None] * len(ids)
        if masks["probe_boxes"] is not None:
            frames, side = self.frames((height, width)), self.model.segmenter.image_size
            for j, i in enumerate(masks["rows"]):
                probe_boxes[i] = frames.box(tuple(float(v) * side for v in masks["probe_boxes"][j]), "segmenter", "image")
        return [Candidate(text=texts[i], mask=self._answer_mask(texts[i], low_res[i], height, width),
                          mask_score=float(scores[i, 0]), token_ids=list(ids[i]), token_logprobs=list(logps[i]),
                          probe=None if probes[i] is None else probes[i].float().cpu().numpy(),
                          probe_box=probe_boxes[i],
                          model_version=self.model_version, sampling={**sampling, "index": i}, trained=self.trained)
                for i in range(len(ids))]

    def _answer_mask(self, text: str, low_res: torch.Tensor, height: int, width: int) -> np.ndarray:
        """The mask an answer stands for: empty when it says the target is absent, or has no `<seg>`
        (unparsable: no probe, a failure); cut to the panel where its reasoning names a composite's panel
        (`ModelConfig.mask_within_panel`: a decoded mask may spill over the border onto the next tile)."""
        answer = parse_answer(text, (height, width)).answer
        if (answer is not None and not answer.present) or SEG_TOKEN not in text:
            return np.zeros((height, width), dtype=bool)
        mask = Frames((height, width)).mask(low_res)
        place = read_panel(answer.reasoning) if answer is not None and self.model.config.mask_within_panel else None
        return mask & panel_region(place, mask.shape) if place is not None else mask

    def frames(self, size: tuple[int, int]) -> Frames:
        """The coordinate frames of an image of `size` (height, width) for this model."""
        return Frames.of(self.model, size)

    def _box_prompts(self, texts: list[str], size: tuple[int, int], rule: str) -> dict[int, tuple]:
        """The answers whose first box also prompts the mask, with that box in the segmenter frame: none ("never"),
        those whose reasoning names a composite's panel ("panel": their boxes were written on it,
        `ModelConfig.box_writer_follows_panel`), or all with a box and a `<seg>` ("always")."""
        if rule not in ("never", "panel", "always"):
            raise ValueError(f"box_prompt is 'never', 'panel' or 'always', not {rule!r}")
        frames, out = self.frames(size), {}
        for i, text in enumerate(texts if rule != "never" else []):
            answer = parse_answer(text, size).answer
            if answer is not None and answer.boxes and SEG_TOKEN in text and (rule == "always" or read_panel(text)):
                out[i] = frames.box(answer.boxes[0], "image", "segmenter")
        return out

    def decode_text(self, ids: list[int]) -> str:
        """Generated ids → the answer text in the model's frame, cut after `</answer>`."""
        text = self.model.reasoner.tokenizer.decode(ids, skip_special_tokens=False)
        end = text.find(ANSWER_CLOSE)
        return text[:end + len(ANSWER_CLOSE)] if end >= 0 else text.replace("<|im_end|>", "").strip()

    def to_image_frame(self, text: str, size: tuple[int, int]) -> str:
        """Re-render a model-frame answer with its boxes in original pixels; unparsable text is kept as is."""
        frames = self.frames(size)
        result = parse_answer(text, frames.frame("box"))
        if result.answer is None or not result.ok:
            return text
        answer = result.answer
        return render_answer(answer.reasoning, answer.target, frames.boxes(answer.boxes, "box", "image"))

    def to_model_frame(self, text: str, size: tuple[int, int]) -> str:
        """The inverse: an answer in original pixels → the text the model is trained to write."""
        answer = parse_answer(text, size).answer
        if answer is None:
            raise ValueError(f"cannot convert an unparsable answer: {text[:80]!r}")
        return render_answer(answer.reasoning, answer.target, self.frames(size).boxes(answer.boxes, "image", "box"))

    # -- refinement ---------------------------------------------------------------------------
    @torch.no_grad()
    def refine(self, image: np.ndarray, candidate: Candidate, clicks: list[tuple[float, float, int]] = (),
               box: tuple[float, float, float, float] | None = None) -> Candidate:
        """A new mask from the cached embedding: the candidate's semantic probe together with the
        user's clicks (x, y, 1 = positive / 0 = negative, original pixels) and a box.

        Without a drawn box the box prompt is the extent of the current mask and the positive
        clicks: medical SAMs (LiteMedSAM) are trained on boxes and drift on points alone, and the
        decoder is trained with probe + box + points together. Earlier logits are not fed back:
        LiteMedSAM never saw `mask_input`. An untrained adapter's probe is noise and is left out.
        """
        image = to_rgb(image)
        height, width = image.shape[:2]
        frames = self.frames((height, width))
        if box is None:
            box = _extent(candidate.mask, [(x, y) for x, y, label in clicks if label])
        with self._model_context():
            embedding, side = self._embedding_and_side(image)
            points = None
            if clicks:
                coords = torch.tensor([frames.points([(x, y) for x, y, _ in clicks], "image", "segmenter")],
                                      dtype=torch.float32, device=self.device)
                labels = torch.tensor([[int(l) for _, _, l in clicks]], dtype=torch.int64, device=self.device)
                points = (coords, labels)
            boxes = None
            if box is not None:
                boxes = torch.tensor([frames.box(box, "image", "segmenter")], dtype=torch.float32, device=self.device)
            probe = None
            if self.trained and candidate.probe is not None:
                probe = torch.from_numpy(candidate.probe)[None].to(self.device)
            low_res, scores = self.model.segmenter.decode(embedding, probe=probe, points=points, boxes=boxes, image_side=side)
        mask = enforce_clicks(frames.mask(low_res[0]), clicks)
        return Candidate(text=candidate.text, mask=mask, mask_score=float(scores[0, 0]),
                         token_ids=candidate.token_ids, token_logprobs=candidate.token_logprobs, probe=candidate.probe,
                         model_version=self.model_version,
                         sampling={**candidate.sampling, "refined_clicks": len(clicks)},
                         trained=self.trained).check(image)  # the same text against the refined mask


def _extent(mask: np.ndarray, points: list[tuple[float, float]]) -> tuple[int, int, int, int] | None:
    """The box around a mask and some points (None when both are empty)."""
    from coreseg.metrics import mask_box

    boxes = [b for b in [mask_box(mask)] if b is not None] + [(int(x), int(y), int(x) + 1, int(y) + 1)
                                                              for x, y in points]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def enforce_clicks(mask: np.ndarray, clicks, radius_fraction: float = 0.02) -> np.ndarray:
    """A click is an instruction, not a hint: a positive click's pixel ends up inside the mask and a
    negative one's outside, even where the decoder disagrees (a small disc is added or cut)."""
    if not clicks:
        return mask
    mask = mask.copy()
    height, width = mask.shape
    radius = max(2, int(round(radius_fraction * max(height, width))))
    for x, y, label in clicks:
        cx, cy = int(round(min(max(x, 0), width - 1))), int(round(min(max(y, 0), height - 1)))
        if bool(mask[cy, cx]) != bool(label):
            y0, x0 = max(cy - radius, 0), max(cx - radius, 0)  # the disc's window, not the whole image
            yy, xx = np.ogrid[y0:min(cy + radius + 1, height), x0:min(cx + radius + 1, width)]
            window = mask[y0:y0 + yy.shape[0], x0:x0 + xx.shape[1]]
            window[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = bool(label)
    return mask
