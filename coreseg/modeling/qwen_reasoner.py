"""The full reasoner: Qwen2.5-VL (hub id or local folder) with frozen base weights and LoRA on the
language model's attention projections, through peft. It sees the image through its own vision
tower.

The answer tags (`<think>`, `</think>`, `<answer>`, `</answer>`, `<seg>`) are added to the base
tokenizer (`add_answer_tokens`), the embedding matrix grows when it has no spare rows, and the new
rows (input embedding, and the output head when it is not tied) are trained with the LoRA weights
through peft's `trainable_token_indices`; a checkpoint keeps the tokenizer beside them. Generation
stops on the end-of-turn token `<|im_end|>`, which every SFT target ends with.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from coreseg.config import ReasonerConfig
from coreseg.modeling.box_pointer import ImageStates
from coreseg.modeling.sampling import Sampled, sampling_logprobs
from coreseg.modeling.tokenizer import ANSWER_TOKENS, add_answer_tokens, end_of_turn_id


class QwenReasoner(nn.Module):
    def __init__(self, cfg: ReasonerConfig, dtype: torch.dtype = torch.float32, tokenizer=None):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.cfg = cfg
        self.processor = AutoProcessor.from_pretrained(cfg.pretrained, max_pixels=cfg.max_pixels)
        if tokenizer is not None:  # a checkpoint's own (already holds the answer tokens)
            self.processor.tokenizer = tokenizer
        self.tokenizer = self.processor.tokenizer
        pieces = {t: self.tokenizer.encode(t, add_special_tokens=False) for t in ANSWER_TOKENS}
        self.answer_ids = add_answer_tokens(self.tokenizer)
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.pretrained, dtype=dtype)
        base.requires_grad_(False)
        self._fit_embeddings(base, pieces)
        tied = bool(getattr(base.config, "tie_word_embeddings", False))
        tokens = list(self.answer_ids) if tied else {"embed_tokens": list(self.answer_ids),
                                                      "lm_head": list(self.answer_ids)}
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=r".*language_model.*\.(" + "|".join(cfg.lora_targets) + ")",
                          trainable_token_indices=tokens)
        self.lm = get_peft_model(base, lora)

    def _fit_embeddings(self, base, pieces: dict[str, list[int]]) -> None:
        """Grow the vocabulary to the tokenizer (Qwen's matrices often have spare rows already) and
        start each answer tag's rows at the mean of the rows of the pieces it used to be split into."""
        rows = base.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer) > rows:
            base.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        matrices = [base.get_input_embeddings().weight]
        head = base.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != matrices[0].data_ptr():
            matrices.append(head.weight)
        with torch.no_grad():
            for token, token_id in zip(ANSWER_TOKENS, self.answer_ids):
                old = [i for i in pieces[token] if i != token_id and i < rows]
                if old:
                    for weight in matrices:
                        weight[token_id] = weight[old].float().mean(0).to(weight.dtype)

    @property
    def hidden_size(self) -> int:
        return self.lm.base_model.model.config.text_config.hidden_size

    @property
    def stop_ids(self) -> list[int]:
        """The end-of-turn token only: the stop that SFT trains (targets end with it)."""
        return [end_of_turn_id(self.tokenizer)]

    @property
    def vision_ids(self) -> list[int]:
        """Tokens that only the processor may place: a sampled one would break the image alignment."""
        names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
        return [i for i in self.tokenizer.convert_tokens_to_ids(list(names)) if i is not None]

    def _prompts(self, images: list[np.ndarray], questions: list[str]):
        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q.strip()}]}],
            tokenize=False, add_generation_prompt=True) for q in questions]
        return self.processor(text=texts, images=[Image.fromarray(im) for im in images], return_tensors="pt",
                              padding=True)

    def forward_completions(self, images: list[np.ndarray], embeddings: torch.Tensor | None, questions: list[str],
                            completions: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[ImageStates]]:
        """Teacher-forced pass; per sample the logits predicting each completion token, the last layer's
        hidden state at each completion token and at the image tokens (`ImageStates`). Samples that share an
        image (the same array) and a question form one batch over one vision pass (the frozen tower runs
        without grad)."""
        groups: dict[tuple[int, str], list[int]] = {}
        for i, (image, question) in enumerate(zip(images, questions)):
            groups.setdefault((id(image), question), []).append(i)
        logits: list = [None] * len(completions)
        hidden: list = [None] * len(completions)
        image: list = [None] * len(completions)
        for rows in groups.values():
            out_logits, out_hidden, out_image = self._forward_group(images[rows[0]], questions[rows[0]],
                                                                    [completions[i] for i in rows])
            for j, i in enumerate(rows):
                logits[i], hidden[i], image[i] = out_logits[j], out_hidden[j], out_image[j]
        return logits, hidden, image

    def _forward_group(self, image: np.ndarray, question: str, completions: list[list[int]]):
        device = next(self.lm.parameters()).device
        prompt = self._prompts([image], [question]).to(device)
        with torch.no_grad():
            vision = self.lm.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"], return_dict=True)
        n, start = len(completions), prompt["input_ids"].shape[1]
        width = start + max(len(c) for c in completions)
        pad, banned = self.tokenizer.pad_token_id, set(self.vision_ids)
        ids = torch.full((n, width), pad, dtype=torch.long, device=device)
        attention = torch.zeros(n, width, dtype=torch.long, device=device)
        ids[:, :start] = prompt["input_ids"][0]
        attention[:, :start] = 1
        for i, c in enumerate(completions):
            ids[i, start:start + len(c)] = torch.tensor([pad if t in banned else t for t in c], device=device)
            attention[i, start:start + len(c)] = 1
        extra = {}
        if "mm_token_type_ids" in prompt:  # Qwen2.5-VL's 3-D rope positions need to know the image tokens
            types = torch.zeros(n, width, dtype=prompt["mm_token_type_ids"].dtype, device=device)
            types[:, :start] = prompt["mm_token_type_ids"][0]
            extra["mm_token_type_ids"] = types
        vision.pooler_output = tuple(vision.pooler_output) * n
        out = self.lm(input_ids=ids, attention_mask=attention, image_grid_thw=prompt["image_grid_thw"].repeat(n, 1),
                      mm_encoder_outputs={"image": vision}, output_hidden_states=True, **extra)
        logits = [out.logits[i, start - 1:start + len(c) - 1] for i, c in enumerate(completions)]
        hidden = [out.hidden_states[-1][i, start:start + len(c)] for i, c in enumerate(completions)]
        # the merged vision tokens tile the (resized) image row-major: rows × cols cells of the box pointer
        _, h, w = (int(v) for v in prompt["image_grid_thw"][0])
        merge = self.lm.config.vision_config.spatial_merge_size
        where = (prompt["input_ids"][0] == self.lm.config.image_token_id).nonzero().flatten()
        image = [ImageStates(out.hidden_states[-1][i, where], h // merge, w // merge) for i in range(n)]
        return logits, hidden, image

    def sample(self, image: np.ndarray, embedding: torch.Tensor | None, question: str, n: int, temperature: float,
               top_p: float, generator: torch.Generator, writer=None, lookup=None) -> Sampled:
        """`generate`'s completions; transformers' generate keeps no states, so a teacher-forced pass computes them
        (and no box writer can read them while sampling: the full profile spells its boxes; nor a panel lookup)."""
        if writer is not None or lookup is not None:
            raise NotImplementedError("the box writer and the panel lookup sample with the compact reasoner only")
        return Sampled(*self.generate(image, embedding, question, n, temperature, top_p, generator))

    @torch.no_grad()
    def generate(self, image: np.ndarray, embedding: torch.Tensor | None, question: str, n: int, temperature: float,
                 top_p: float, generator: torch.Generator) -> tuple[list[list[int]], list[list[float]]]:
        """Sample `n` completions; each call draws a fresh seed from `generator` (so repeated calls
        differ, and the same generator state gives the same samples)."""
        device = next(self.lm.parameters()).device
        prompt = self._prompts([image] * n, [question] * n).to(device)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            out = self.lm.generate(**prompt, do_sample=temperature > 0, temperature=temperature or None,
                                   top_p=top_p if temperature > 0 else None, top_k=None,
                                   max_new_tokens=self.cfg.max_new_tokens, eos_token_id=self.stop_ids,
                                   pad_token_id=self.tokenizer.pad_token_id, output_logits=True,
                                   suppress_tokens=self.vision_ids,
                                   return_dict_in_generate=True)
        new = out.sequences[:, prompt["input_ids"].shape[1]:]
        stops = set(self.stop_ids)
        ids, logps = [], []
        for i in range(n):
            row_ids = []
            for token in new[i].tolist():
                row_ids.append(token)
                if token in stops:
                    break
            steps = torch.stack([out.logits[step][i] for step in range(len(row_ids))])
            row_logps = sampling_logprobs(steps, torch.tensor(row_ids, device=steps.device), temperature, top_p)
            ids.append(row_ids)
            logps.append([float(v) for v in row_logps])
        return ids, logps
