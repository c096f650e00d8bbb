"""Build a model folder with random weights: for tests and benchmarks, never for users."""

from __future__ import annotations

from pathlib import Path

import torch

from tracer.nn.config import ModelConfig
from tracer.nn.loading import save_model
from tracer.nn.model import build_model
from tracer.nn.tokenizer import train_tokenizer

SAMPLE_TEXT = [
    "ich bin piyush", "du bist müde", "der hund sieht die katze", "die katze trank die milch",
    "i am piyush", "you are tired", "the dog sees the cat", "the cat drank the milk",
    "wir lesen ein buch", "we read a book", "the cat drank the [MASK]",
]


def make_random_model(folder: str | Path, cfg: ModelConfig, seed: int = 0, texts=SAMPLE_TEXT) -> Path:
    """Write config.json, model.safetensors and tokenizer.json for a random model of `cfg`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size, cfg=cfg)
    cfg.vocab_size = max(cfg.vocab_size, tokenizer.get_vocab_size())
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(seed)
    model = build_model(cfg.validate())
    return save_model(model, cfg, folder / "tokenizer.json", folder)
