"""A plain key/value-cached forward of the compact reasoner's Qwen2 LM, for sampling.

The same computation as transformers' forward (RMSNorm, rotary embedding, attention, SwiGLU MLP, tied head),
reading the LM's own modules, weights and rotary helpers, over preallocated key/value tensors: the prompt is
run once and its keys and values copied to every sampled row, q/k/v and gate/up are one product each, and a
new token's attention is two plain products (SDPA's CPU kernel took 0.2 ms a call for one query). Measured
with the machine otherwise idle: 4.2 against 7–8 ms a token for transformers' forward at one thread (issue 12);
what remains is small matrix products (4 rows × 256 wide) at 20–30 GFLOP/s. Each row keeps its own length, so a
pass may feed a row several tokens (its pending token and guessed ones, `coreseg.modeling.drafting`) and keep
only those the sampler accepts. It returns the last layer's states, so the `<seg>` state and the image tokens'
states come out of sampling itself. Tests hold its logits and states to the transformers forward's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv


class KVDecoder:
    """Runs `lm` (a `Qwen2ForCausalLM`) over `rows` sequences of at most `max_length` tokens: first the prompt
    (`prefill`, copied to every row), then a few tokens per row per `run`, of which `advance` keeps a number per
    row (the rest are overwritten by the next run)."""

    def __init__(self, lm, rows: int, max_length: int):
        config = lm.config
        self.lm = lm
        self.layers = lm.model.layers
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.groups = config.num_attention_heads // config.num_key_value_heads  # query heads per key/value head
        weight = lm.model.embed_tokens.weight
        shape = (len(self.layers), rows, config.num_key_value_heads, max_length, self.head_dim)
        self.keys = weight.new_zeros(shape)
        self.values = weight.new_zeros(shape)
        self.rows = rows
        self.lengths = torch.zeros(rows, dtype=torch.long, device=weight.device)  # kept positions per row
        self.prompt_states: torch.Tensor | None = None  # the prompt's last-layer states (T × H)
        # one matrix product for q, k, v and one for the MLP's gate and up: half the calls of small products
        self.qkv = [(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                     torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
                    for a in (layer.self_attn for layer in self.layers)]
        self.gate_up = [torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]) for layer in self.layers]
        self.sizes = (config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim)

    def _forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x (B × T × H, input embeddings at `positions`, B × T) → the last layer's normed states (B × T × H).
        A position sees every position of its row up to itself."""
        batch, chunk, _ = x.shape
        end = int(positions.max()) + 1
        if end > self.keys.shape[3]:
            raise ValueError(f"the decoder holds {self.keys.shape[3]} positions, asked for {end}")
        causal_prompt = batch == 1 and end == chunk  # the prompt from position 0: SDPA's causal kernel
        if not causal_prompt:  # plain products beat SDPA's CPU kernel 10× for a few queries
            hidden = torch.arange(end, device=x.device) > positions[..., None]  # B × T × end
            bias = torch.zeros(hidden.shape, dtype=x.dtype, device=x.device).masked_fill(hidden, float("-inf"))[:, None]
        cos, sin = self.lm.model.rotary_emb(x, positions)
        q_size, kv_size = self.sizes
        for i, layer in enumerate(self.layers):
            q, k, v = F.linear(layer.input_layernorm(x), *self.qkv[i]).split([q_size, kv_size, kv_size], dim=-1)
            q, k, v = (t.view(batch, chunk, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            index = positions[:, None, :, None].expand(-1, k.shape[1], -1, self.head_dim)
            self.keys[i, :batch].scatter_(2, index, k)
            self.values[i, :batch].scatter_(2, index, v)
            keys = repeat_kv(self.keys[i, :batch, :, :end], self.groups)
            values = repeat_kv(self.values[i, :batch, :, :end], self.groups)
            if causal_prompt:
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            else:
                weights = torch.softmax((q @ keys.transpose(-1, -2)) * self.head_dim ** -0.5 + bias, dim=-1)
                out = weights @ values
            x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(batch, chunk, -1))
            gate, up = F.linear(layer.post_attention_layernorm(x), self.gate_up[i]).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        return self.lm.model.norm(x)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """One prompt's embeddings (T × H) → its next-token logits for every row (rows × V)."""
        if int(self.lengths.max()):
            raise ValueError("prefill starts an empty decoder")
        length = prompt.shape[0]
        states = self._forward(prompt[None], torch.arange(length, device=prompt.device)[None])
        self.keys[:, 1:, :, :length] = self.keys[:, :1, :, :length]
        self.values[:, 1:, :, :length] = self.values[:, :1, :, :length]
        self.lengths[:] = length
        self.prompt_states = states[0]
        return self.lm.lm_head(states[:, -1]).expand(self.rows, -1)

    def run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (rows × T), placed after each row's kept positions → the logits after each of them
        (rows × T × V) and their last-layer states (rows × T × H). Nothing is kept until `advance`."""
        positions = self.lengths[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        states = self._forward(self.lm.model.embed_tokens(tokens), positions)
        return self.lm.lm_head(states), states

    def branch(self, rows: list[int], lengths: list[int], max_length: int) -> "KVDecoder":
        """A decoder over rows `rows` of this one, row j keeping its first `lengths[j]` positions (their keys and
        values copied), holding `max_length` positions: a teacher-forced pass over tokens that replace a sampled
        row's from some position on reads what sampling computed before it."""
        other = KVDecoder(self.lm, len(rows), max_length)
        index = torch.tensor(rows, device=self.keys.device)
        end = min(max(lengths), self.keys.shape[3])
        other.keys[:, :, :, :end] = self.keys[:, index, :, :end]
        other.values[:, :, :, :end] = self.values[:, index, :, :end]
        other.lengths = torch.tensor(lengths, dtype=torch.long, device=self.keys.device)
        other.prompt_states = self.prompt_states
        return other

    def advance(self, counts: torch.Tensor) -> None:
        """Keep the first `counts[r]` tokens of the last `run` in row r."""
        self.lengths += counts.to(self.lengths)
