"""A plain key/value-cached forward of the compact reasoner's Qwen2 LM, for sampling.

The same computation as transformers' forward (RMSNorm, rotary embedding, attention, SwiGLU MLP, tied head),
reading the LM's own modules, weights and rotary helpers, over preallocated key/value tensors: the prompt is
run once and its keys and values copied to every sampled row, q/k/v and gate/up are one product each, and a
new token's attention is two plain products (SDPA's CPU kernel took 0.2 ms a call for one query). Measured
with the machine otherwise idle: 4.2 against 7–8 ms a token for transformers' forward at one thread (issue 12);
what remains is small matrix products (4 rows × 256 wide) at 20–30 GFLOP/s. It keeps the last layer's states, so
the `<seg>` state and the image tokens' states come out of sampling itself. Tests hold its logits and states to
the transformers forward's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv


class KVDecoder:
    """Runs `lm` (a `Qwen2ForCausalLM`) over `rows` sequences of at most `max_length` tokens, a chunk at
    a time: first the prompt (`prefill`), then one token per row per `step`."""

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
        self.rows, self.length = rows, 0
        self.states: list[torch.Tensor] = []  # the last layer's normed states of each chunk (B × T × H)
        # one matrix product for q, k, v and one for the MLP's gate and up: half the calls of small products
        self.qkv = [(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                     torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
                    for a in (layer.self_attn for layer in self.layers)]
        self.gate_up = [torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]) for layer in self.layers]
        self.sizes = (config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B × T × H, input embeddings at positions length … length + T − 1) → last-position logits (B × V)."""
        batch, chunk, _ = x.shape
        start = self.length
        if start + chunk > self.keys.shape[3]:
            raise ValueError(f"the decoder holds {self.keys.shape[3]} positions, asked for {start + chunk}")
        cos, sin = self.lm.model.rotary_emb(x, torch.arange(start, start + chunk, device=x.device)[None])
        q_size, kv_size = self.sizes
        for i, layer in enumerate(self.layers):
            q, k, v = F.linear(layer.input_layernorm(x), *self.qkv[i]).split([q_size, kv_size, kv_size], dim=-1)
            q, k, v = (t.view(batch, chunk, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.keys[i, :batch, :, start:start + chunk] = k
            self.values[i, :batch, :, start:start + chunk] = v
            keys = self.keys[i, :batch, :, :start + chunk]
            values = self.values[i, :batch, :, :start + chunk]
            keys, values = repeat_kv(keys, self.groups), repeat_kv(values, self.groups)
            if chunk > 1:  # the prompt: causal
                out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
            else:  # one new token sees every cached position; plain products beat SDPA's CPU kernel 10× here
                weights = torch.softmax((q @ keys.transpose(-1, -2)) * self.head_dim ** -0.5, dim=-1)
                out = weights @ values
            x = x + layer.self_attn.o_proj(out.transpose(1, 2).reshape(batch, chunk, -1))
            gate, up = F.linear(layer.post_attention_layernorm(x), self.gate_up[i]).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
        self.length = start + chunk
        states = self.lm.model.norm(x)
        self.states.append(states)
        return self.lm.lm_head(states[:, -1])

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """One prompt's embeddings (T × H) → its next-token logits for every row (rows × V)."""
        if self.length:
            raise ValueError("prefill starts an empty decoder")
        logits = self._forward(prompt[None])
        self.keys[:, 1:] = self.keys[:, :1]
        self.values[:, 1:] = self.values[:, :1]
        return logits.expand(self.rows, -1)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each row's next token (rows) → the logits after it (rows × V)."""
        return self._forward(self.lm.model.embed_tokens(tokens)[:, None])

    def prompt_states(self) -> torch.Tensor:
        """The prompt's last-layer states (T × H), as the teacher-forced forward's `hidden_states[-1]`."""
        return self.states[0][0]

    def token_states(self) -> torch.Tensor:
        """Each row's last-layer state at each token it was given by `step` (rows × steps × H): a sampled
        token's state, what the adapter reads at `<seg>`, without a second forward pass."""
        return torch.cat(self.states[1:], dim=1) if len(self.states) > 1 else self.states[0].new_zeros(
            self.rows, 0, self.states[0].shape[-1])
