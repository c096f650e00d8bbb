"""ModelConfig: every choice that shapes the transformer, read from a model folder's config.json."""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import asdict, dataclass, fields

from tracer.errors import BadInput

ARCHS = ("encoder-decoder", "encoder", "decoder")
POSITIONALS = ("sinusoidal", "learned", "rotary", "relative")
SINUSOID_LAYOUTS = ("interleaved", "halves")
NORMS = ("post", "pre")
NORM_TYPES = ("layernorm", "rmsnorm", "rmsnorm_t5")
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "gated_gelu_tanh")
GATED_ACTIVATIONS = ("swiglu", "gated_gelu_tanh")  # activation(W_gate·x) * (W_in·x)
OUTPUTS = ("logits", "pooled", "sentence")
ROTARY_SCALINGS = ("llama3",)
LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_positions")

# The ranges a model folder's numbers must fall in (inclusive; None: unbounded). Wide enough for
# every published transformer, narrow enough that nothing absurd reaches torch's allocator.
# A field not named here is checked for its type only.
RANGES = {
    "vocab_size": (1, 2**22), "d_model": (1, 65536), "n_heads": (1, 4096), "d_ff": (1, 2**20),
    "n_layers": (1, 1024), "n_decoder_layers": (0, 1024), "max_positions": (1, 2**24),
    "head_dim": (1, 65536), "n_kv_heads": (1, 4096), "token_types": (0, 1024),
    "decoder_vocab_size": (1, 2**22), "relative_buckets": (1, 4096), "relative_max_distance": (1, 2**24),
    "layer_norm_eps": (0.0, 1.0), "dropout": (0.0, 1.0), "rotary_base": (0.0, 1e12),
    "sliding_window": (1, 2**24),
}
EXCLUSIVE_LOW = {"layer_norm_eps", "rotary_base"}   # must be above the low end, not at it
EXCLUSIVE_HIGH = {"dropout"}
MAX_TEXT = 1000                 # a name or a special token's string
MEMORY_ENV = "TRACER_MAX_MODEL_BYTES"


@dataclass
class ModelConfig:
    name: str = "model"
    arch: str = "encoder-decoder"  # encoder-decoder (the paper), encoder (BERT) or decoder (GPT)
    vocab_size: int = 1000
    decoder_vocab_size: int | None = None  # an encoder-decoder's decoder vocabulary when it has its own (Marian
                                   # without shared embeddings); None = vocab_size
    d_model: int = 64              # width of the residual stream
    n_heads: int = 4               # attention heads (query heads)
    n_kv_heads: int | None = None  # key/value heads; fewer than n_heads is grouped-query attention (Llama); None = n_heads
    head_dim: int | None = None    # width of one head; None = d_model / n_heads (Llama and Qwen2 may set it apart)
    d_ff: int = 256                # width of the feed-forward hidden layer
    n_layers: int = 2              # encoder layers (or the single stack's layers)
    n_decoder_layers: int = 2      # decoder layers (encoder-decoder only)
    max_positions: int = 128       # longest sequence the positional encoding covers
    positional: str = "sinusoidal" # sinusoidal (paper) / learned (GPT, BERT) / rotary (RoPE) / relative (T5: a
                                   # learned bias on the attention scores per distance bucket, no positional encoding)
    sinusoid_layout: str = "interleaved"  # interleaved: sin, cos, sin, cos … (paper) / halves: every frequency's sin
                                   # in the first half, its cos in the second (Marian)
    relative_buckets: int = 32     # relative positions: buckets per stack (encoder: half per direction)
    relative_max_distance: int = 128  # relative positions: distances from here on share the last bucket
    norm: str = "post"             # post: x = LN(x + f(x)) (paper, BERT); pre: x = x + f(LN(x)) (GPT)
    norm_type: str = "layernorm"   # layernorm (mean, variance, weight, bias) / rmsnorm (root mean square, weight only,
                                   # computed in float32 as transformers' Llama family does) / rmsnorm_t5 (the same,
                                   # but only the variance in float32, as T5LayerNorm)
    activation: str = "relu"       # FFN: relu (paper) / gelu (exact, erf) / gelu_tanh (GPT-2's gelu_new) / silu
                                   # (Marian's swish) / swiglu / gated_gelu_tanh (T5 v1.1: gelu_tanh(W_gate·x) * W_in·x)
    qkv_bias: bool = True          # biases on the Q, K, V projections (Llama, Mistral: none; Qwen2: these only)
    attn_out_bias: bool = True     # bias on the attention output projection W_O
    mlp_bias: bool = True          # biases on the FFN's linear layers
    attn_scale: bool = True        # divide the scores by √d_head (T5: no, its init absorbs it)
    softmax_fp32: bool = False     # attention softmax in float32, cast back (transformers' Llama family); no-op in float32
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model), as the paper does
    tie_embeddings: bool = True    # the output projection reuses the token embedding matrix
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0           # training only; tracing always runs in eval mode
    rotary_base: float = 10000.0   # RoPE base θ: the slowest rotation has wavelength ~2π·θ
    rotary_scaling: dict | None = None  # RoPE frequency rescaling: {"type": "llama3", "factor", "low_freq_factor",
                                   # "high_freq_factor", "original_max_positions"} (Llama 3.1/3.2); None = plain RoPE
    sliding_window: int | None = None  # a decoder's attention window: each query attends to itself and the
                                   # w − 1 keys before it, key j > query i − w (Mistral, Qwen2); None = all earlier keys
    sliding_layers: list[int] | None = None  # the layers (0-based) that use the window (Qwen2's layer_types);
                                   # None = every layer
    token_types: int = 0           # rows of a token-type (segment) embedding, BERT; every token is type 0; 0 = none
    embed_norm: bool = False       # a layer norm on the summed embeddings before layer 0 (BERT)
    mlm_head: bool = False         # BERT's MLM transform before the tied decoder: dense, activation, layer norm
    logits_bias: bool = False      # a learned bias added to the logits (BERT's cls.predictions.bias, Marian's
                                   # final_logits_bias)
    head_scale: float = 1.0        # the last hidden state is multiplied by this before the vocabulary head
                                   # (T5 v1.0: d_model^-0.5, as its tied head expects)
    output: str = "logits"         # what the model returns: logits over the vocabulary / pooled (BERT's pooler:
                                   # tanh(W·h[CLS] + b)) / sentence (mean over tokens, L2-normalised: sentence-transformers)
    pad_token: str = "<pad>"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    mask_token: str = "[MASK]"

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """How many key/value heads; each serves n_heads / kv_heads query heads."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    def validate(self) -> "ModelConfig":
        """Refuse configs the model cannot be built from, naming the field: every field's type and
        range, the choices, and a parameter memory estimate over the limit (nothing is allocated)."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name), hints[f.name])
        self.check_memory()  # before the upper bounds: an absurd width is refused with its size
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name), hints[f.name], upper=True)
        for field, allowed in (("arch", ARCHS), ("positional", POSITIONALS), ("norm", NORMS), ("norm_type", NORM_TYPES),
                               ("activation", ACTIVATIONS), ("output", OUTPUTS), ("sinusoid_layout", SINUSOID_LAYOUTS)):
            if getattr(self, field) not in allowed:
                raise BadInput(f"config: {field} must be one of {', '.join(allowed)}, not {getattr(self, field)!r}")
        if self.arch == "encoder-decoder" and self.n_decoder_layers < 1:
            raise BadInput(f"config: n_decoder_layers must be a positive integer, not {self.n_decoder_layers!r}")
        if self.decoder_vocab_size is not None and self.arch != "encoder-decoder":
            raise BadInput(f"config: decoder_vocab_size needs an encoder-decoder, not {self.arch!r}")
        for field in ("n_kv_heads", "head_dim", "decoder_vocab_size"):
            value = getattr(self, field)
            if value is not None and (type(value) is not int or value < 1):
                raise BadInput(f"config: {field} must be a positive integer or null, not {value!r}")
        if type(self.token_types) is not int or self.token_types < 0:
            raise BadInput(f"config: token_types must be a non-negative integer, not {self.token_types!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise BadInput(f"config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise BadInput(f"config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}")
        if self.output != "logits" and self.arch != "encoder":
            raise BadInput(f"config: output {self.output!r} needs an encoder, not {self.arch!r}")
        self._validate_rotary_scaling()
        self._validate_sliding_window()
        if self.positional == "rotary" and self.d_head % 2:
            raise BadInput(f"config: rotary positions need an even d_head, not {self.d_head}")
        return self

    def _validate_rotary_scaling(self) -> None:
        scaling = self.rotary_scaling
        if scaling is None:
            return
        if not isinstance(scaling, dict) or scaling.get("type") not in ROTARY_SCALINGS:
            kind = scaling.get("type") if isinstance(scaling, dict) else scaling
            raise BadInput(f"config: rotary_scaling type must be one of {', '.join(ROTARY_SCALINGS)}, not {kind!r}")
        for key in LLAMA3_SCALING_KEYS:
            if not isinstance(scaling.get(key), (int, float)) or isinstance(scaling.get(key), bool):
                raise BadInput(f"config: rotary_scaling needs a number {key}, not {scaling.get(key)!r}")
        unknown = sorted(set(scaling) - {"type", *LLAMA3_SCALING_KEYS})
        if unknown:
            raise BadInput(f"config: rotary_scaling has unknown key(s) {', '.join(unknown)}")

    def _validate_sliding_window(self) -> None:
        if self.sliding_window is not None and self.arch != "decoder":
            raise BadInput(f"config: sliding_window needs a decoder, not {self.arch!r}")
        layers = self.sliding_layers
        if layers is None:
            return
        if self.sliding_window is None:
            raise BadInput("config: sliding_layers needs a sliding_window")
        if not isinstance(layers, list) or any(type(i) is not int or not 0 <= i < self.n_layers for i in layers):
            raise BadInput(f"config: sliding_layers must be a list of layer numbers 0…{self.n_layers - 1}, "
                           f"not {_shown(layers)}")

    def windowed(self, layer: int) -> bool:
        """Whether this layer's self-attention is restricted to the sliding window."""
        return self.sliding_window is not None and (self.sliding_layers is None or layer in self.sliding_layers)

    def parameter_estimate(self) -> int:
        """About how many float values building this model allocates: weights plus the position
        tables (an upper-side estimate from the widths; biases and norms included)."""
        d, ff, v, p = self.d_model, self.d_ff, self.vocab_size, self.max_positions
        d_head = getattr(self, "head_dim", None) or self.d_head
        kv = (getattr(self, "n_kv_heads", None) or self.n_heads) * d_head
        attention = d * self.n_heads * d_head * 2 + d * kv * 2 + 4 * d
        ffn = (3 if self.activation in GATED_ACTIVATIONS else 2) * d * ff + ff + d
        layer = attention + ffn + 4 * d
        layers = self.n_layers * layer
        if self.arch == "encoder-decoder":
            layers += self.n_decoder_layers * (layer + attention + 2 * d)
        embeddings = v * d * (1 if self.tie_embeddings else 2) + v
        embeddings += (self.decoder_vocab_size or 0) * (d + 1)   # a decoder's own vocabulary (Marian, unshared)
        positions = p * d if self.positional != "rotary" else p * d_head
        return layers + embeddings + positions

    def check_memory(self) -> None:
        """Refuse a model whose parameters would not fit the limit: $TRACER_MAX_MODEL_BYTES, else
        this machine's memory. Built in float32, 4 bytes a value."""
        if self.n_heads < 1 or type(self.n_heads) is not int:
            return  # refused by the caller's own checks
        need = 4 * self.parameter_estimate()
        limit = memory_limit()
        if need > limit:
            raise BadInput(
                f"config: this model would need about {_gigabytes(need)} for its parameters "
                f"({self.parameter_estimate():,} values in float32), more than the {_gigabytes(limit)} limit "
                f"(this machine's memory, or ${MEMORY_ENV}); not building it"
            )

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise BadInput("config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInput(f"config: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise BadInput(f"config: {exc}") from None
        except (OverflowError, ValueError) as exc:  # a number too large for the arithmetic above
            raise BadInput(f"config: {str(exc)[:200]}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _check_field(name: str, value, hint, upper: bool = False) -> None:
    """One field against its annotation (int, float, bool, str, X | None) and the low end of its
    RANGES entry; with `upper`, the high end only."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in allowed:
        return
    expected = next((t for t in allowed if t is not type(None)), object)
    origin = typing.get_origin(expected) or expected
    if origin is float:
        ok = type(value) in (int, float) and math.isfinite(value)
    elif origin is int:
        ok = type(value) is int
    elif isinstance(origin, type):
        ok = isinstance(value, origin) and not (origin is not bool and type(value) is bool)
    else:
        ok = True
    if not ok:
        raise BadInput(f"config: {name} must be {_type_name(origin)}, not {_shown(value)}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise BadInput(f"config: {name} is {len(value)} characters long (at most {MAX_TEXT})")
    if name in RANGES:
        low, high = RANGES[name]
        below = value <= low if name in EXCLUSIVE_LOW else value < low
        above = value >= high if name in EXCLUSIVE_HIGH else value > high
        if (above if upper else below):
            left, right = "(" if name in EXCLUSIVE_LOW else "[", ")" if name in EXCLUSIVE_HIGH else "]"
            raise BadInput(f"config: {name} must be in {left}{low:,}, {high:,}{right}, not {_shown(value)}")


def _type_name(kind) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, f"a {kind.__name__}")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def memory_limit() -> int:
    """Bytes a model's parameters may take: $TRACER_MAX_MODEL_BYTES, else the machine's memory."""
    raw = os.environ.get(MEMORY_ENV)
    if raw:
        try:
            return int(float(raw))
        except ValueError:
            raise BadInput(f"${MEMORY_ENV} must be a number of bytes, not {raw!r}") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 64 * 1024**3


def _gigabytes(n: int) -> str:
    return f"{n / 1024**3:,.1f} GB" if n >= 1024**3 else f"{n / 1024**2:,.0f} MB"
