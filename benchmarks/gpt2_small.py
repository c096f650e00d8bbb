"""A GPT-2-small-shaped decoder with random weights, and a 128-token input for it (benchmarks only)."""

from __future__ import annotations

from pathlib import Path

import torch

from tracer.nn import ModelConfig, build_model
from tracer.nn.loading import LoadedModel
from tracer.nn.random_model import SAMPLE_TEXT
from tracer.nn.tokenizer import TextTokenizer, train_tokenizer

GPT2_SMALL = dict(
    name="gpt2-small-shaped", arch="decoder", vocab_size=50257, d_model=768, n_heads=12, d_ff=3072,
    n_layers=12, max_positions=1024, positional="learned", norm="pre", activation="gelu",
    scale_embeddings=False, tie_embeddings=True,
)


def gpt2_small(device: str = "cpu", seed: int = 0) -> LoadedModel:
    cfg = ModelConfig(**GPT2_SMALL).validate()
    torch.manual_seed(seed)
    model = build_model(cfg).to(device).eval()
    tokenizer = TextTokenizer(train_tokenizer(SAMPLE_TEXT, vocab_size=200, cfg=cfg), cfg)
    return LoadedModel(cfg, model, tokenizer, Path("<random>"), torch.device(device))


def text_of_tokens(loaded: LoadedModel, n_tokens: int = 128) -> str:
    """A text that encodes to exactly n_tokens - 1 tokens (the BOS makes n_tokens)."""
    words = "the cat drank the milk the dog sees a book".split()
    text = " ".join(words[i % len(words)] for i in range(n_tokens - 1))
    ids, _ = loaded.tokenizer.encode(text)
    assert len(ids) == n_tokens - 1, len(ids)
    return text
