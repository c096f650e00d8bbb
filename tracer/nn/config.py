"""ModelConfig: every choice that shapes the transformer, read from a model folder's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from tracer.errors import BadInput

ARCHS = ("encoder-decoder", "encoder", "decoder")
POSITIONALS = ("sinusoidal", "learned", "rotary")
NORMS = ("post", "pre")
ACTIVATIONS = ("relu", "gelu", "swiglu")


@dataclass
class ModelConfig:
    name: str = "model"
    arch: str = "encoder-decoder"  # encoder-decoder (the paper), encoder (BERT) or decoder (GPT)
    vocab_size: int = 1000
    d_model: int = 64              # width of the residual stream
    n_heads: int = 4               # attention heads; d_head = d_model / n_heads
    d_ff: int = 256                # width of the feed-forward hidden layer
    n_layers: int = 2              # encoder layers (or the single stack's layers)
    n_decoder_layers: int = 2      # decoder layers (encoder-decoder only)
    max_positions: int = 128       # longest sequence the positional encoding covers
    positional: str = "sinusoidal" # sinusoidal (paper) / learned (GPT, BERT) / rotary (RoPE)
    norm: str = "post"             # post: x = LN(x + f(x)) (paper, BERT); pre: x = x + f(LN(x)) (GPT)
    activation: str = "relu"       # FFN: relu (paper) / gelu / swiglu
    scale_embeddings: bool = True  # multiply token embeddings by sqrt(d_model), as the paper does
    tie_embeddings: bool = True    # the output projection reuses the token embedding matrix
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0           # training only; tracing always runs in eval mode
    rotary_base: float = 10000.0
    pad_token: str = "<pad>"
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    mask_token: str = "[MASK]"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> "ModelConfig":
        """Refuse configs the model cannot be built from, naming the field."""
        for field, allowed in (("arch", ARCHS), ("positional", POSITIONALS), ("norm", NORMS), ("activation", ACTIVATIONS)):
            if getattr(self, field) not in allowed:
                raise BadInput(f"config: {field} must be one of {', '.join(allowed)}, not {getattr(self, field)!r}")
        for field in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_positions"):
            value = getattr(self, field)
            if type(value) is not int or value < 1:
                raise BadInput(f"config: {field} must be a positive integer, not {value!r}")
        if self.arch == "encoder-decoder" and (type(self.n_decoder_layers) is not int or self.n_decoder_layers < 1):
            raise BadInput(f"config: n_decoder_layers must be a positive integer, not {self.n_decoder_layers!r}")
        if self.d_model % self.n_heads:
            raise BadInput(f"config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.positional == "rotary" and self.d_head % 2:
            raise BadInput(f"config: rotary positions need an even d_head, not {self.d_head}")
        return self

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

    def to_dict(self) -> dict:
        return asdict(self)
