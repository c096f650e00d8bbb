"""The recipes of the three bundled models: architecture and training schedule."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.nn.config import ModelConfig


@dataclass(frozen=True)
class Recipe:
    cfg: ModelConfig
    objective: str        # translate (German -> English), next-token or masked-lm (English side)
    steps: int            # optimizer steps of the full recipe
    batch_size: int
    lr: float             # peak learning rate (AdamW), after linear warm-up, then cosine decay
    warmup: int
    weight_decay: float = 0.01
    summary: str = ""


RECIPES = {
    "de-en-tiny": Recipe(
        ModelConfig(
            name="de-en-tiny", arch="encoder-decoder", d_model=128, n_heads=4, d_ff=256, n_layers=2,
            n_decoder_layers=2, max_positions=128, positional="sinusoidal", norm="post", activation="relu",
            scale_embeddings=True, tie_embeddings=True,
        ),
        objective="translate", steps=3000, batch_size=64, lr=1e-3, warmup=300,
        summary="The encoder-decoder of \"Attention Is All You Need\" in miniature: sinusoidal positions, "
                "post-norm, ReLU feed-forward, embeddings scaled by sqrt(d_model) and tied to the output layer.",
    ),
    "en-gpt-tiny": Recipe(
        ModelConfig(
            name="en-gpt-tiny", arch="decoder", d_model=128, n_heads=4, d_ff=512, n_layers=2,
            max_positions=64, positional="learned", norm="pre", activation="gelu",
            scale_embeddings=False, tie_embeddings=True,
        ),
        objective="next-token", steps=1500, batch_size=64, lr=1e-3, warmup=150,
        summary="A GPT-style decoder-only model: learned positions, pre-norm with a final layer norm, "
                "GELU feed-forward, output layer tied to the token embeddings.",
    ),
    "en-bert-tiny": Recipe(
        ModelConfig(
            name="en-bert-tiny", arch="encoder", d_model=128, n_heads=4, d_ff=512, n_layers=2,
            max_positions=64, positional="learned", norm="post", activation="gelu",
            scale_embeddings=False, tie_embeddings=True,
        ),
        objective="masked-lm", steps=2000, batch_size=64, lr=1e-3, warmup=200,
        summary="A BERT-style encoder-only masked-language model: learned positions, post-norm, GELU "
                "feed-forward, output layer tied to the token embeddings.",
    ),
}
