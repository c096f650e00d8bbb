"""Corpus -> tokenizer -> padded id tensors, exactly as `tracer.capture.run` feeds the models.

- encoder-decoder: source = the German ids, no special tokens; the decoder reads
  [bos] + English ids and is trained to predict English ids + [eos].
- decoder (GPT): [bos] + English ids + [eos], next-token prediction.
- encoder (BERT): English ids, no special tokens, some replaced by [MASK].
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from tracer.nn.config import ModelConfig
from tracer.nn.tokenizer import train_tokenizer
from tracer.train.corpus import Corpus
from tracer.train.language import LEXICON

TOKENIZER_VOCAB = 450
# Each word of the language counts this many extra times when the tokenizer is trained, so
# BPE spends its merges on whole words first (ich | bin | piyush reads better than i | ##ch)
# and names split into short, common pieces the model sees often enough to learn to copy.
LEXICON_WEIGHT = 2000
IGNORE = -100


def build_tokenizer(corpus: Corpus, cfg: ModelConfig, path: Path) -> Tokenizer:
    texts = [german for german, _ in corpus.train] + [english for _, english in corpus.train]
    texts += [" ".join([word] * LEXICON_WEIGHT) for word in sorted(LEXICON)]
    tokenizer = train_tokenizer(texts, TOKENIZER_VOCAB, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


def encode_all(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded on the right, and the (B, T) bool mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    return ids, torch.arange(width)[None, :] < lengths[:, None]


class Batches:
    """Seeded random batches over a list of examples (lists of ids or pairs of them)."""

    def __init__(self, examples: list, batch_size: int, seed: int):
        self.examples, self.batch_size = examples, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list:
        if len(self.order) < self.batch_size:
            self.order += torch.randperm(len(self.examples), generator=self.generator).tolist()
        chosen, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return [self.examples[i] for i in chosen]


def translation_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, bos: int, eos: int):
    src, src_mask = pad([s for s, _ in pairs], pad_id)
    tgt_in, tgt_mask = pad([[bos] + t for _, t in pairs], pad_id)
    target, _ = pad([t + [eos] for _, t in pairs], IGNORE)
    return src, src_mask, tgt_in, tgt_mask, target


def lm_batch(rows: list[list[int]], pad_id: int, bos: int, eos: int):
    ids, mask = pad([[bos] + r for r in rows], pad_id)
    target, _ = pad([r + [eos] for r in rows], IGNORE)
    return ids, mask, target


def mask_tokens(rows: list[list[int]], pad_id: int, mask_id: int, vocab: list[int], generator: torch.Generator,
                rate: float = 0.15):
    """BERT's recipe: pick `rate` of the tokens (at least one per row); of those 80% become
    [MASK], 10% a random token, 10% stay; the loss is on the picked positions only."""
    ids, mask = pad(rows, pad_id)
    picked = (torch.rand(ids.shape, generator=generator) < rate) & mask
    lengths = mask.sum(1)
    forced = (torch.rand(len(rows), generator=generator) * lengths).long()
    picked[torch.arange(len(rows)), forced] = True
    target = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    vocab_t = torch.tensor(vocab, dtype=torch.long)
    random_ids = vocab_t[torch.randint(len(vocab), ids.shape, generator=generator)]
    inputs = torch.where(picked & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, mask, target
