"""The transformer, written to be read: every intermediate passes through a named HookPoint.

One set of modules builds all three architectures:
- encoder-decoder (the paper, "Attention Is All You Need"): `encoder.L.*` and `decoder.L.*`;
- decoder-only (GPT) and encoder-only (BERT): TransformerLens's `blocks.L.*` names.
Attention is computed explicitly (no fused kernel) because the scores are what we show.
Every tap sees a batch axis first; tracing runs with batch 1 and drops it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tracer.errors import BadInput
from tracer.nn.config import GATED_ACTIVATIONS, ModelConfig
from tracer.nn.hooks import HookPoint


def sinusoidal_table(n_positions: int, d_model: int, layout: str = "interleaved") -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), as in the paper.

    layout "halves" (Marian): every frequency's sin in the first half, its cos in the second."""
    if layout == "halves":
        return halves_sinusoidal_table(n_positions, d_model)
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]             # (P, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)                                        # (P, d)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


def halves_sinusoidal_table(n_positions: int, d_model: int) -> torch.Tensor:
    """Marian's table, as transformers builds it (`MarianSinusoidalPositionalEmbedding`): angles in float64,
    sin of frequency i in column i, its cos in column d/2 + i, rounded to float32."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]             # (P, 1)
    exponent = 2 * (torch.arange(d_model, dtype=torch.float64) // 2) / d_model
    angle = position / torch.pow(10000.0, exponent)                                  # (P, d), column j: i = j // 2
    half = (d_model + 1) // 2
    table = torch.empty(n_positions, d_model, dtype=torch.float32)
    table[:, :half] = torch.sin(angle[:, 0::2]).float()
    table[:, half:] = torch.cos(angle[:, 1::2]).float()
    return table


def relative_position_bucket(relative: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key − query), op for op as transformers' `_relative_position_bucket`.

    Bidirectional (the encoder): half the buckets for keys before the query, half for keys after. One-directional
    (the decoder): every bucket for keys before it, and the keys after it (masked anyway) in bucket 0. Of each
    direction's buckets, half are exact distances; the rest are log-spaced up to `max_distance`."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets += (relative > 0).to(torch.long) * n_buckets
        distance = relative.abs()
    else:
        distance = -torch.min(relative, torch.zeros_like(relative))
    max_exact = n_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                         * (n_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, n_buckets - 1))
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5's position information: one learned bias per (bucket of key − query distance, head), added to the
    attention scores of every self-attention layer of its stack."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.n_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        self.W_rel = nn.Embedding(cfg.relative_buckets, cfg.n_heads)

    def forward(self, n_queries: int, n_keys: int) -> torch.Tensor:
        """(1, head, query, key); the queries are the last `n_queries` of the keys' positions."""
        device = self.W_rel.weight.device
        query = torch.arange(n_keys - n_queries, n_keys, dtype=torch.long, device=device)[:, None]
        key = torch.arange(n_keys, dtype=torch.long, device=device)[None, :]
        buckets = relative_position_bucket(key - query, self.bidirectional, self.n_buckets, self.max_distance)
        return self.W_rel(buckets).permute(2, 0, 1)[None]


def llama3_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1's RoPE rescaling: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.

    Written op for op as transformers' `_compute_llama3_parameters`, in float32, so the angles agree bit for bit.
    """
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_positions"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE): rotates pairs of q/k features by a position-dependent angle.

    Angles are computed in float32 and cast to the model's dtype, as transformers does."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        half = cfg.d_head // 2
        inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(half, dtype=torch.float32) / half))
        if cfg.rotary_scaling is not None:
            inv_freq = llama3_frequencies(inv_freq, cfg.rotary_scaling)
        angles = torch.arange(cfg.max_positions, dtype=torch.float32)[:, None] * inv_freq[None]  # (P, dh/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:           # x: (B, T, H, dh)
        T = x.shape[1]                                   # positions start … start + T − 1
        cos = self.cos[start:start + T][None, :, None, :].to(x.dtype)              # (1, T, 1, dh/2)
        sin = self.sin[start:start + T][None, :, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class LayerNorm(nn.Module):
    """Layer norm; `hook_normalized` is its output (after the learned scale and shift)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(cfg.d_model))
        self.bias = nn.Parameter(torch.zeros(cfg.d_model))
        self.eps = cfg.layer_norm_eps
        self.hook_normalized = HookPoint()  # [pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps))


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama): x / √(mean(x²) + ε), times a learned weight; no mean, no bias.

    As transformers computes it: the normalisation in float32 whatever the model's dtype, the
    weight applied after casting back. `hook_normalized` is the output (after the weight)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(cfg.d_model))
        self.eps = cfg.layer_norm_eps
        self.hook_normalized = HookPoint()  # [pos, d_model]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = x.to(torch.float32)
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.hook_normalized(self.weight * wide.to(x.dtype))


class T5RMSNorm(RMSNorm):
    """T5's RMS norm (T5LayerNorm): only the mean square is computed in float32, x scaled by it in the wider
    of the two dtypes; in a half-precision model the result is cast to the weight's dtype before the weight
    multiplies it (in a float32 model the same as RMSNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.hook_normalized(self.weight * x)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm_type == "rmsnorm_t5":
        return T5RMSNorm(cfg)
    return RMSNorm(cfg) if cfg.norm_type == "rmsnorm" else LayerNorm(cfg)


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The non-linearity of an (ungated) FFN or of BERT's MLM transform."""
    if activation == "relu":
        return F.relu(x)
    if activation in ("silu", "swiglu"):
        return F.silu(x)
    if activation in ("gelu_tanh", "gated_gelu_tanh"):
        return gelu_tanh(x)
    return F.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation written out op by op, as transformers' `gelu_new` (GPT-2, T5 v1.1) computes
    it: in bfloat16 each op rounds, and torch's fused `gelu(approximate="tanh")` rounds once, which differs."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class KVCache:
    """Keys and values a decode has already computed, so each later pass computes only its new positions'.

    One entry per attention module: its K and V so far, (B, T, Hkv, dh), after RoPE. `seen` is how
    many positions the decoder has run (the next pass's first position). Cross-attention's keys and
    values come from the encoder's output, which does not change: they are computed once. Under a
    sliding window every key stays cached; the mask hides those older than the window.

    `capacity` (the most positions the decode will run, where the caller knows it): a self-attention's
    keys and values go into buffers of that many positions at its first pass, and every later pass
    writes its new ones into them in place. Such a buffer is never replaced and what is written in it
    never changes, so a trace may keep views of it rather than copies (`holds`). Without a capacity
    (or past it) each extension allocates the whole cache anew, a little longer, as `torch.cat`
    would: each pass then holds the old copy and the new, and in a long decode the freed copies
    fragment the heap (BENCHMARKS.md)."""

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.kv: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}       # the cached K and V
        self.buffers: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}  # what they are views of
        self.lasting: set[int] = set()  # the storages of buffers sized at `capacity` (see `holds`)
        self.seen = 0

    def length(self, attention: nn.Module) -> int:
        """How many positions of this attention's keys and values are cached."""
        return self.kv[attention][0].shape[1] if attention in self.kv else 0

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` lies in a buffer sized at `capacity`: one that is never replaced, whose
        positions are each written once, by the pass that computes them."""
        return tensor.untyped_storage().data_ptr() in self.lasting

    def extend(self, attention: nn.Module, k: torch.Tensor, v: torch.Tensor,
               grows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached keys and values followed by the new ones (which join the cache). `grows`: later
        passes add positions (self-attention; a cross-attention's are the source's, computed once)."""
        if attention not in self.kv and not (grows and self.capacity):
            self.kv[attention] = (k, v)  # no buffer: the first pass's own keys and values are the cache
            return k, v
        old_k, old_v = self.kv.get(attention, (k[:, :0], v[:, :0]))
        cached, total = old_k.shape[1], old_k.shape[1] + k.shape[1]
        if total == cached:              # nothing new: cross-attention after its first pass
            return old_k, old_v
        buffers = self.buffers.get(attention)
        if buffers is None or buffers[0].shape[1] < total:
            if buffers is not None:      # past the capacity: the old buffers are no longer the cache
                self.lasting.difference_update(buffer.untyped_storage().data_ptr() for buffer in buffers)
            size = max(total, self.capacity or 0)
            buffers = self.buffers[attention] = (grown(old_k, size), grown(old_v, size))
            if size == self.capacity:
                self.lasting.update(buffer.untyped_storage().data_ptr() for buffer in buffers)
        keys, values = buffers                                                    # (B, size, Hkv, dh)
        keys[:, cached:total] = k
        values[:, cached:total] = v
        self.kv[attention] = (keys[:, :total], values[:, :total])
        return self.kv[attention]


def grown(cached: torch.Tensor, size: int) -> torch.Tensor:
    """A new buffer of `size` positions (axis 1) whose first ones are a copy of `cached`."""
    buffer = cached.new_empty((cached.shape[0], size, *cached.shape[2:]))
    buffer[:, :cached.shape[1]] = cached
    return buffer


class Attention(nn.Module):
    """Multi-head attention: softmax(Q·Kᵀ/√d_k + mask)·V, one explicit step at a time.

    With grouped-query attention (n_kv_heads < n_heads) each key/value head serves a group of
    n_heads / n_kv_heads consecutive query heads: K and V are recorded once per key/value head,
    and repeated across their group only to compute the scores and weights·V."""

    def __init__(self, cfg: ModelConfig, rotary: Rotary | None = None, position_bias: bool = False,
                 cross: bool = False):
        super().__init__()
        self.cross = cross                    # keys and values from the encoder's output, not from x_q's stream
        self.n_heads, self.n_kv_heads, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.d_head
        self.softmax_fp32, self.scale = cfg.softmax_fp32, cfg.attn_scale
        inner, kv_inner = cfg.n_heads * cfg.d_head, cfg.kv_heads * cfg.d_head
        self.W_Q = nn.Linear(cfg.d_model, inner, bias=cfg.qkv_bias)
        self.W_K = nn.Linear(cfg.d_model, kv_inner, bias=cfg.qkv_bias)
        self.W_V = nn.Linear(cfg.d_model, kv_inner, bias=cfg.qkv_bias)
        self.W_O = nn.Linear(inner, cfg.d_model, bias=cfg.attn_out_bias)
        self.rotary = rotary
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_q = HookPoint()             # [pos, head, d_head]
        self.hook_k = HookPoint()             # [pos, kv_head, d_head] (kv_head = head without GQA)
        self.hook_v = HookPoint()             # [pos, kv_head, d_head]
        if rotary is not None:
            self.hook_rot_q = HookPoint()     # [pos, head, d_head] after rotation
            self.hook_rot_k = HookPoint()     # [pos, kv_head, d_head]
        self.hook_attn_raw = HookPoint()      # [head, query, key]  Q·Kᵀ
        if self.scale:
            self.hook_attn_scaled = HookPoint()  # [head, query, key]  ÷ √d_head
        if position_bias:
            self.hook_attn_bias = HookPoint()   # [head, query, key]  T5's relative position bias, added before the mask
        self.hook_mask = HookPoint()          # [query, key] bool, true = may attend
        self.hook_attn_scores = HookPoint()   # [head, query, key]  masked, pre-softmax
        self.hook_pattern = HookPoint()       # [head, query, key]  softmax over keys
        self.hook_z = HookPoint()             # [pos, head, d_head] weights·V
        self.hook_concat = HookPoint()        # [pos, head·d_head]  heads side by side

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, mask: torch.Tensor,
                bias: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """With a cache, x_q and x_kv hold only the positions not yet seen; the earlier keys and values
        come from the cache, so the scores are the new queries' rows over every key."""
        B, Tq, _ = x_q.shape
        Tk = x_kv.shape[1]
        H, Hkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        start = cache.seen if cache is not None else 0                              # the first new position
        q = self.W_Q(x_q).view(B, Tq, H, dh)                                        # (B, Tq, H, dh)
        k = self.W_K(x_kv).view(B, Tk, Hkv, dh)                                     # (B, Tk, Hkv, dh)
        v = self.W_V(x_kv).view(B, Tk, Hkv, dh)                                     # (B, Tk, Hkv, dh)
        rot_q, rot_k = (self.rotary(q, start), self.rotary(k, start)) if self.rotary is not None else (q, k)
        keys, values = rot_k, v                                                     # every key and value read
        if cache is not None:  # the taps below see the cache's copies of the new ones (a trace shares them)
            keys, values = cache.extend(self, rot_k, v, grows=not self.cross)      # (B, cached + Tk, Hkv, dh)
            rot_k, v = keys[:, keys.shape[1] - Tk:], values[:, values.shape[1] - Tk:]
        q = self.hook_q(q)
        self.hook_k(k if self.rotary is not None else rot_k)
        self.hook_v(v)
        if self.rotary is not None:
            q = self.hook_rot_q(rot_q)
            self.hook_rot_k(rot_k)
        k, v = keys, values
        if Hkv != H:                      # grouped-query: query head h reads key/value head h // (H / Hkv)
            k = k.repeat_interleave(H // Hkv, dim=2)                                # (B, Tk, H, dh)
            v = v.repeat_interleave(H // Hkv, dim=2)
        raw = self.hook_attn_raw(q.transpose(1, 2) @ k.permute(0, 2, 3, 1))        # (B, H, Tq, Tk)
        # times dh^-0.5 rather than ÷ √dh, as transformers does: the two round differently in bfloat16
        scaled = self.hook_attn_scaled(raw * dh ** -0.5) if self.scale else raw    # (B, H, Tq, Tk)
        if bias is not None:                                                        # (1, H, Tq, Tk)
            scaled = scaled + self.hook_attn_bias(bias.expand(B, -1, -1, -1))
        mask = self.hook_mask(mask)                                                 # (B, Tq, Tk)
        scores = self.hook_attn_scores(scaled.masked_fill(~mask[:, None], float("-inf")))
        if self.softmax_fp32:
            pattern = scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
        else:
            pattern = scores.softmax(dim=-1)
        pattern = self.hook_pattern(pattern)                                        # (B, H, Tq, Tk)
        z = self.hook_z((self.dropout(pattern) @ v.transpose(1, 2)).transpose(1, 2))  # (B, Tq, H, dh)
        concat = self.hook_concat(z.reshape(B, Tq, H * dh))                         # (B, Tq, H·dh)
        return self.W_O(concat)


class MLP(nn.Module):
    """Position-wise feed-forward network: linear, activation, linear (SwiGLU: gated)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.activation = cfg.activation
        self.W_in = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.gated = self.activation in GATED_ACTIVATIONS
        if self.gated:
            self.W_gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
            self.hook_pre_linear = HookPoint()  # [pos, d_ff] the ungated branch
        self.W_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.hook_pre = HookPoint()             # [pos, d_ff] before the activation
        self.hook_post = HookPoint()            # [pos, d_ff] after it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            pre = self.hook_pre(self.W_gate(x))                                     # (B, T, d_ff)
            post = self.hook_post(activate(pre, self.activation) * self.hook_pre_linear(self.W_in(x)))
        else:
            pre = self.hook_pre(self.W_in(x))                                       # (B, T, d_ff)
            post = self.hook_post(activate(pre, self.activation))
        return self.W_out(post)


class Block(nn.Module):
    """One layer: self-attention, (cross-attention,) FFN, each with a residual add and a norm.

    Post-norm (paper, BERT): x = LN(x + f(x)).  Pre-norm (GPT): x = x + f(LN(x)).
    Norms are numbered in the order they are used: ln1 self-attention, ln2 the next
    sub-layer (cross-attention in a decoder, else the FFN), ln3 a decoder's FFN.
    """

    def __init__(self, cfg: ModelConfig, cross: bool, rotary: Rotary | None):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_pre = HookPoint()        # [pos, d_model]
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg, rotary, position_bias=cfg.positional == "relative")
        self.hook_attn_out = HookPoint()         # [pos, d_model]
        self.hook_resid_mid = HookPoint()        # [pos, d_model]
        self.ln2 = make_norm(cfg)
        self.cross = cross
        if cross:
            self.cross_attn = Attention(cfg, cross=True)
            self.hook_cross_attn_out = HookPoint()    # [pos, d_model]
            self.hook_resid_mid_cross = HookPoint()   # [pos, d_model]
            self.ln3 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.hook_mlp_out = HookPoint()          # [pos, d_model]
        self.hook_resid_post = HookPoint()       # [pos, d_model]

    def sublayer(self, x, norm: nn.Module, f, hook_out: HookPoint, hook_sum: HookPoint):
        """Residual connection around f, with the norm before (pre) or after (post) it."""
        out = hook_out(f(norm(x) if self.pre_norm else x))
        total = hook_sum(x + self.dropout(out))
        return total if self.pre_norm else norm(total)

    def forward(self, x, mask, memory=None, cross_mask=None, bias=None, cache: KVCache | None = None):
        x = self.hook_resid_pre(x)
        x = self.sublayer(x, self.ln1, lambda h: self.attn(h, h, mask, bias, cache), self.hook_attn_out,
                          self.hook_resid_mid)
        ffn_norm = self.ln2
        if self.cross:
            if cache is not None:  # the source's keys and values are computed once, then read from the cache
                memory = memory[:, cache.length(self.cross_attn):]
            x = self.sublayer(
                x, self.ln2, lambda h: self.cross_attn(h, memory, cross_mask, cache=cache),
                self.hook_cross_attn_out, self.hook_resid_mid_cross,
            )
            ffn_norm = self.ln3
        return self.sublayer(x, ffn_norm, self.mlp, self.hook_mlp_out, self.hook_resid_post)


class Pooler(nn.Module):
    """BertModel's pooled output: the first token's ([CLS]) final vector through a dense layer and tanh."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.hook_pooler_out = HookPoint()       # [d_model] tanh(W·h[CLS] + b), TransformerLens's name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_pooler_out(torch.tanh(self.dense(x[:, 0])))             # (B, d)


class Stack(nn.Module):
    """Token embedding, positions, N blocks, a final norm (pre-norm only) and an optional output head.

    The head is the vocabulary logits (optionally after BERT's MLM transform, plus a bias), or
    for an encoder a single vector: BERT's pooled [CLS] or a sentence-transformers embedding.

    `numbered=True` names blocks `0, 1, …` directly under the stack (`encoder.0.attn`);
    otherwise under `blocks` (`blocks.0.attn`, TransformerLens's names).
    """

    def __init__(self, cfg: ModelConfig, *, n_layers: int, causal: bool, cross: bool, head: bool, numbered: bool,
                 vocab_size: int | None = None):
        super().__init__()
        self.cfg, self.causal, self.head = cfg, causal, head
        vocab_size = vocab_size or cfg.vocab_size                 # a decoder's own vocabulary (Marian, unshared)
        self.W_E = nn.Embedding(vocab_size, cfg.d_model)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.hook_tokens = HookPoint()           # [pos] token ids
        self.hook_embed = HookPoint()            # [pos, d_model]
        if cfg.token_types:
            self.W_token_type = nn.Embedding(cfg.token_types, cfg.d_model)
            self.hook_token_type_embed = HookPoint()  # [pos, d_model] type 0's row at every position
        rotary = None
        if cfg.positional == "learned":
            self.W_pos = nn.Embedding(cfg.max_positions, cfg.d_model)
        elif cfg.positional == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_positions, cfg.d_model, cfg.sinusoid_layout),
                                 persistent=False)
        elif cfg.positional == "relative":
            self.rel_pos = RelativePositionBias(cfg, bidirectional=not causal)  # one table for the stack's layers
        else:
            rotary = Rotary(cfg)
        if cfg.positional in ("learned", "sinusoidal"):
            self.hook_pos_embed = HookPoint()    # [pos, d_model]
        if cfg.embed_norm:
            self.ln_embed = LayerNorm(cfg)       # BERT: the summed embeddings are normalised before layer 0
        self.dropout = nn.Dropout(cfg.dropout)
        blocks = [Block(cfg, cross, rotary) for _ in range(n_layers)]
        if numbered:
            for index, block in enumerate(blocks):
                self.add_module(str(index), block)
            self.layers = blocks                 # a plain list: the blocks are registered above
        else:
            self.blocks = nn.ModuleList(blocks)
            self.layers = list(self.blocks)
        if cfg.norm == "pre":
            self.ln_final = make_norm(cfg)
        if head and cfg.output == "pooled":
            self.pooler = Pooler(cfg)
        elif head and cfg.output == "sentence":
            self.hook_mean_pooled = HookPoint()  # [d_model] mean of the last hidden states over the tokens
            self.hook_sentence_embedding = HookPoint()  # [d_model] divided by its length (L2 norm 1)
        elif head:
            if cfg.mlm_head:                     # BERT's MLM transform: dense, activation, layer norm
                self.mlm_dense = nn.Linear(cfg.d_model, cfg.d_model)
                self.hook_mlm_dense = HookPoint()  # [pos, d_model]
                self.hook_mlm_act = HookPoint()  # [pos, d_model] after the activation
                self.ln_mlm = LayerNorm(cfg)
            if not cfg.tie_embeddings:
                self.W_U = nn.Linear(cfg.d_model, vocab_size, bias=False)
            if cfg.logits_bias:
                self.b_U = nn.Parameter(torch.zeros(vocab_size))
            self.hook_logits = HookPoint()       # [vocab] next token ([pos, vocab] encoder-only)
            self.hook_probs = HookPoint()        # softmax of the logits

    def positions(self, start: int, T: int, like: torch.Tensor) -> torch.Tensor | None:
        """The position vectors of positions start … T − 1 (None: RoPE rotates q and k instead)."""
        if self.cfg.positional == "learned":
            return self.W_pos.weight[start:T]
        if self.cfg.positional == "sinusoidal":
            return self.pos_table[start:T].to(like.dtype)
        return None

    def forward(self, ids, memory=None, padding=None, memory_padding=None, all_positions=False,
                cache: KVCache | None = None):
        """ids (B, T) -> logits (B, vocab) for the next token, (B, T, vocab) if encoder-only or
        all_positions; a pooled or sentence output (B, d); a stack without a head its hidden states (B, T, d).

        With a KV `cache` (decoding), ids are only the positions after the `cache.seen` already run."""
        B, Tn = ids.shape
        start = cache.seen if cache is not None else 0
        T = start + Tn                                                              # every position so far
        if T > self.cfg.max_positions:
            raise BadInput(f"{T} tokens is longer than the model's {self.cfg.max_positions} positions")
        ids = self.hook_tokens(ids)
        x = self.hook_embed(self.W_E(ids) * self.embed_scale)                      # (B, T, d)
        if self.cfg.token_types:
            x = x + self.hook_token_type_embed(self.W_token_type(torch.zeros_like(ids)))
        pos = self.positions(start, T, x)
        if pos is not None:
            x = x + self.hook_pos_embed(pos.expand(B, Tn, -1))
        if self.cfg.embed_norm:
            x = self.ln_embed(x)
        x = self.dropout(x)
        valid = torch.ones(B, T, dtype=torch.bool, device=ids.device) if padding is None else padding
        mask = valid[:, None, :].expand(B, Tn, T)                                   # (B, Tn, T): new queries, all keys
        windowed = None
        if self.causal:
            query = torch.arange(start, T, device=ids.device)[:, None]            # (Tn, 1) the new queries' positions
            key = torch.arange(T, device=ids.device)[None, :]                      # (1, T)
            if self.cfg.sliding_window is not None:   # the last w keys only, as transformers: key > query − w
                windowed = mask & (key <= query) & (key > query - self.cfg.sliding_window)
            mask = mask & (key <= query)
        cross_mask = None
        if memory is not None:
            S = memory.shape[1]
            memory_valid = torch.ones(B, S, dtype=torch.bool, device=ids.device) if memory_padding is None else memory_padding
            cross_mask = memory_valid[:, None, :].expand(B, Tn, S)                  # (B, Tn, S)
        bias = self.rel_pos(Tn, T) if self.cfg.positional == "relative" else None  # the new queries' rows
        for layer, block in enumerate(self.layers):
            layer_mask = windowed if windowed is not None and self.cfg.windowed(layer) else mask
            x = block(x, layer_mask, memory, cross_mask, bias, cache)
        if cache is not None:
            cache.seen = T
        if self.cfg.norm == "pre":
            x = self.ln_final(x)
        if not self.head:
            return x
        if self.cfg.output == "pooled":
            return self.pooler(x)                                                   # (B, d)
        if self.cfg.output == "sentence":
            return self.sentence_embedding(x, valid)                                # (B, d)
        if self.causal and not all_positions:
            x = x[:, -1]                                                            # (B, d) last position
        logits = self.hook_logits(self.unembed(x))
        self.hook_probs(logits.softmax(dim=-1))
        return logits

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """The output head on final hidden states: (BERT's MLM transform,) the unembedding and the
        logits bias. The logit lens calls it on earlier layers' outputs too."""
        if self.cfg.mlm_head:
            x = self.hook_mlm_act(activate(self.hook_mlm_dense(self.mlm_dense(x)), self.cfg.activation))
            x = self.ln_mlm(x)
        if self.cfg.head_scale != 1.0:
            x = x * self.cfg.head_scale                                             # T5 v1.0's tied head
        weight = self.W_E.weight if self.cfg.tie_embeddings else self.W_U.weight
        if self.cfg.mlm_head and self.cfg.logits_bias:
            return F.linear(x, weight, self.b_U)   # BERT's decoder: one linear layer, the bias added in the matmul
        logits = x @ weight.T                                                       # (B, [T,] vocab)
        if self.cfg.logits_bias:
            logits = logits + self.b_U     # Marian: the final_logits_bias added to the head's output
        return logits

    def sentence_embedding(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """sentence-transformers' mean pooling over the real tokens, then L2 normalisation
        (written as its `Pooling` and `Normalize` modules compute them)."""
        weights = valid[..., None].to(x.dtype)                                      # (B, T, 1)
        mean = self.hook_mean_pooled((x * weights).sum(1) / weights.sum(1).clamp(min=1e-9))
        return self.hook_sentence_embedding(F.normalize(mean, p=2, dim=1))


class EncoderDecoder(nn.Module):
    """The paper's model: the encoder reads the source once; the decoder, at each step,
    reads everything generated so far and attends to the encoder's output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Stack(cfg, n_layers=cfg.n_layers, causal=False, cross=False, head=False, numbered=True)
        self.decoder = Stack(cfg, n_layers=cfg.n_decoder_layers, causal=True, cross=True, head=True, numbered=True,
                             vocab_size=cfg.decoder_vocab_size)

    def encode(self, src, padding=None):
        return self.encoder(src, padding=padding)                                    # (B, S, d)

    def decode(self, tgt, memory, padding=None, memory_padding=None, all_positions=False, cache=None):
        return self.decoder(tgt, memory, padding, memory_padding, all_positions, cache)

    def forward(self, src, tgt, src_padding=None, tgt_padding=None):
        """Teacher-forced logits for every target position (training)."""
        memory = self.encode(src, src_padding)
        return self.decode(tgt, memory, tgt_padding, src_padding, all_positions=True)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "encoder-decoder":
        return EncoderDecoder(cfg)
    return Stack(cfg, n_layers=cfg.n_layers, causal=cfg.arch == "decoder", cross=False, head=True, numbered=False)
