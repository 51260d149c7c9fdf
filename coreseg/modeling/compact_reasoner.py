"""The compact reasoner: a small transformers causal LM (Qwen2 architecture, built from a config)
that reads the segmenter's frozen image embedding as `grid × grid` image tokens and writes the
answer. It runs on a CPU; trained from scratch by `trainers.sft`."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from coreseg.answer import ANSWER_CLOSE
from coreseg.config import ReasonerConfig
from coreseg.modeling.tokenizer import IM_END, IM_START
from coreseg.modeling.box_pointer import ImageStates
from coreseg.modeling.drafting import DRAFT_LENGTH, NgramDrafter
from coreseg.modeling.kv_decoder import KVDecoder
from coreseg.modeling.sampling import Sampled, first_difference, sample_tokens

EMBEDDING_DIM = 256  # SAM image embeddings have 256 channels


class CompactReasoner(nn.Module):
    def __init__(self, cfg: ReasonerConfig, tokenizer: PreTrainedTokenizerFast):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        head_dim = cfg.hidden_size // cfg.num_heads
        config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, max_position_embeddings=2048, tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=self.stop_ids,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, head_dim=head_dim)
        self.lm = Qwen2ForCausalLM(config)
        grid = cfg.image_grid
        self.image_proj = nn.Sequential(nn.LayerNorm(EMBEDDING_DIM), nn.Linear(EMBEDDING_DIM, cfg.hidden_size))
        self.image_pos = nn.Parameter(torch.randn(grid * grid, cfg.hidden_size) * 0.02)
        self.drafter = NgramDrafter()  # guesses for speculative sampling: what training taught it (checkpoint's drafts)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden_size

    @property
    def stop_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(ANSWER_CLOSE), self.tokenizer.convert_tokens_to_ids(IM_END)]

    def _prompt_embeds(self, embeddings: torch.Tensor, questions: list[str]) -> list[torch.Tensor]:
        """`<|im_start|>user` [image tokens] question `<|im_end|><|im_start|>assistant` → embeddings."""
        grid = self.cfg.image_grid
        pooled = F.adaptive_avg_pool2d(embeddings.float(), grid).flatten(2).transpose(1, 2)
        image = self.image_proj(pooled) + self.image_pos
        embed = self.lm.get_input_embeddings()
        device = image.device
        head = embed(torch.tensor(self.tokenizer.encode(f"{IM_START}user\n"), device=device))
        out = []
        for i, question in enumerate(questions):
            tail_ids = self.tokenizer.encode(f"\n{question.strip()}{IM_END}\n{IM_START}assistant\n")
            out.append(torch.cat([head, image[i], embed(torch.tensor(tail_ids, device=device))]))
        return out

    def forward_completions(self, images: list[np.ndarray], embeddings: torch.Tensor, questions: list[str],
                            completions: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[ImageStates]]:
        """Teacher-forced pass. For each sample: logits predicting each completion token (T × V), the
        last layer's hidden state at each completion token (T × H) and at the image tokens (the box pointer's)."""
        prompts = self._prompt_embeds(embeddings, questions)
        embed = self.lm.get_input_embeddings()
        device = prompts[0].device
        seqs = [torch.cat([p, embed(torch.tensor(c, device=device, dtype=torch.long))]) for p, c in
                zip(prompts, completions)]
        length = max(s.shape[0] for s in seqs)
        inputs = torch.zeros(len(seqs), length, self.hidden_size, device=device, dtype=seqs[0].dtype)
        attention = torch.zeros(len(seqs), length, dtype=torch.long, device=device)
        for i, s in enumerate(seqs):
            inputs[i, :s.shape[0]] = s
            attention[i, :s.shape[0]] = 1
        out = self.lm(inputs_embeds=inputs, attention_mask=attention, output_hidden_states=True)
        logits, hidden, image = [], [], []
        first, grid = self._image_offset(), self.cfg.image_grid
        for i, (p, c) in enumerate(zip(prompts, completions)):
            start, end = p.shape[0], p.shape[0] + len(c)
            logits.append(out.logits[i, start - 1:end - 1])
            hidden.append(out.hidden_states[-1][i, start:end])
            image.append(ImageStates(out.hidden_states[-1][i, first:first + grid * grid], grid, grid))
        return logits, hidden, image

    @torch.no_grad()
    def sample(self, image: np.ndarray, embedding: torch.Tensor, question: str, n: int, temperature: float,
               top_p: float, generator: torch.Generator, writer=None, lookup=None) -> Sampled:
        """Sample `n` completions as one batch, keeping the states the adapter and the box pointer read.
        `writer`: (image states, embedding) → the box writer's sampling hook (`CoreSeg.box_writing`), or None (boxes
        spelt by the reasoner); `lookup`: the panel lookup for this question (`CoreSeg.panel_lookup`), or None."""
        prompt = self._prompt_embeds(embedding, [question])[0]
        decoder = KVDecoder(self.lm, n, prompt.shape[0] + self.cfg.max_new_tokens + DRAFT_LENGTH)
        first_logits = decoder.prefill(prompt)
        first, grid = self._image_offset(), self.cfg.image_grid
        image_states = ImageStates(decoder.prompt_states[first:first + grid * grid], grid, grid)
        hook = None if writer is None else writer(image_states, embedding)
        ids, logps, states, _ = sample_tokens(decoder, first_logits, self.stop_ids, self.cfg.max_new_tokens,
                                              temperature, top_p, generator, self.drafter, writer=hook, lookup=lookup)
        return Sampled(ids, logps, states, [image_states] * n, None if hook is None else [hook.drawn_for(c) for c in ids],
                       decoder)

    @torch.no_grad()
    def forward_continued(self, sampled: Sampled, rows: list[int],
                          completions: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[ImageStates]]:
        """`forward_completions`' outputs for completions that replace rows `rows` of `sampled` (which kept its
        decoder and states), computed from the first token where each differs from its row's sampled tokens: the
        prompt and the tokens before are read from sampling's keys, values and states."""
        decoder, prompt = sampled.decoder, sampled.decoder.prompt_states
        starts = [min(first_difference(sampled.ids[r], c), len(c) - 1, sampled.hidden[r].shape[0])
                  for r, c in zip(rows, completions)]
        tails = [c[k:] for c, k in zip(completions, starts)]
        width = max(len(t) for t in tails)
        branch = decoder.branch(rows, [prompt.shape[0] + k for k in starts], prompt.shape[0] + max(starts) + width)
        tokens = torch.tensor([t + t[-1:] * (width - len(t)) for t in tails], device=prompt.device)
        _, states = branch.run(tokens)
        logits, hidden = [], []
        for j, (r, k, tail) in enumerate(zip(rows, starts, tails)):
            seq = torch.cat([sampled.hidden[r][:k], states[j, :len(tail)]])
            hidden.append(seq)
            logits.append(self.lm.lm_head(torch.cat([prompt[-1:], seq[:-1]])))
        return logits, hidden, [sampled.image[r] for r in rows]

    def generate(self, image: np.ndarray, embedding: torch.Tensor, question: str, n: int, temperature: float,
                 top_p: float, generator: torch.Generator) -> tuple[list[list[int]], list[list[float]]]:
        """Sample `n` completions as one batch; returns token ids and their log-probabilities."""
        sampled = self.sample(image, embedding, question, n, temperature, top_p, generator)
        return sampled.ids, sampled.logps

    def _image_offset(self) -> int:
        """Where the image tokens start in the prompt (after `<|im_start|>user`)."""
        return len(self.tokenizer.encode(f"{IM_START}user\n"))
