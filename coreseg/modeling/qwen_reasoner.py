"""The full reasoner: Qwen2.5-VL (hub id or local folder) with frozen base weights and LoRA on the
language model's attention projections, through peft. It sees the image through its own vision
tower; `<seg>` is located as its token sequence in the completion."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from coreseg.answer import ANSWER_CLOSE
from coreseg.config import ReasonerConfig


class QwenReasoner(nn.Module):
    def __init__(self, cfg: ReasonerConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        from peft import LoraConfig, get_peft_model
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.cfg = cfg
        self.processor = AutoProcessor.from_pretrained(cfg.pretrained, max_pixels=cfg.max_pixels)
        self.tokenizer = self.processor.tokenizer
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.pretrained, dtype=dtype)
        base.requires_grad_(False)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules=r".*language_model.*\.(" + "|".join(cfg.lora_targets) + ")")
        self.lm = get_peft_model(base, lora)

    @property
    def hidden_size(self) -> int:
        return self.lm.base_model.model.config.text_config.hidden_size

    @property
    def stop_ids(self) -> list[int]:
        stops = [self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
        close = self.tokenizer.convert_tokens_to_ids(ANSWER_CLOSE)
        if isinstance(close, int) and close != self.tokenizer.unk_token_id:
            stops.append(close)
        return [s for s in stops if s is not None]

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
                            completions: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher-forced pass; per sample the logits predicting each completion token and the last
        layer's hidden state at each completion token."""
        device = next(self.lm.parameters()).device
        logits, hidden = [], []
        for image, question, completion in zip(images, questions, completions):  # one at a time: image sizes differ
            prompt = self._prompts([image], [question]).to(device)
            vision = set(self.vision_ids)
            completion = [self.tokenizer.pad_token_id if t in vision else t for t in completion]
            ids = torch.cat([prompt["input_ids"], torch.tensor([completion], device=device)], dim=1)
            out = self.lm(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt["pixel_values"],
                          image_grid_thw=prompt["image_grid_thw"], output_hidden_states=True)
            start = prompt["input_ids"].shape[1]
            logits.append(out.logits[0, start - 1:ids.shape[1] - 1])
            hidden.append(out.hidden_states[-1][0, start:])
        return logits, hidden

    @torch.no_grad()
    def generate(self, image: np.ndarray, embedding: torch.Tensor | None, question: str, n: int, temperature: float,
                 top_p: float, generator: torch.Generator) -> tuple[list[list[int]], list[list[float]]]:
        device = next(self.lm.parameters()).device
        prompt = self._prompts([image] * n, [question] * n).to(device)
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(int(generator.initial_seed()))
            out = self.lm.generate(**prompt, do_sample=temperature > 0, temperature=temperature or None,
                                   top_p=top_p if temperature > 0 else None, top_k=None,
                                   max_new_tokens=self.cfg.max_new_tokens, eos_token_id=self.stop_ids,
                                   pad_token_id=self.tokenizer.pad_token_id, output_logits=True,
                                   suppress_tokens=self.vision_ids,
                                   return_dict_in_generate=True)
        new = out.sequences[:, prompt["input_ids"].shape[1]:]
        ids, logps = [], []
        for i in range(n):
            row_ids, row_logps = [], []
            for step, token in enumerate(new[i].tolist()):
                scaled = out.logits[step][i].float() / (temperature if temperature > 0 else 1.0)
                row_ids.append(token)
                row_logps.append(float(torch.log_softmax(scaled, -1)[token]))
                if token in self.stop_ids:
                    break
            ids.append(row_ids)
            logps.append(row_logps)
        return ids, logps
