"""The generated corpus: train / validation / test splits of (German, English) pairs.

Deterministic from a seed. Each split draws names from its own pool, so the validation and
test splits hold only names the models never saw in training, and no test or validation
sentence (compared without case and punctuation) occurs in the training split.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tracer.train.language import LanguageGenerator, make_names

DEFAULT_SEED = 1234
TRAIN_SIZE = 200_000
VAL_SIZE = 1_000
TEST_SIZE = 2_000


@dataclass
class Corpus:
    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    train_names: list[str]
    test_names: list[str]

    def english(self, split: str) -> list[str]:
        return [english for _, english in getattr(self, split)]


def normalize(german: str) -> str:
    """What the model sees of a sentence: case and punctuation do not count."""
    return " ".join(re.sub(r"[,.]", " ", german.lower()).split())


def _split(generator: LanguageGenerator, size: int, banned: set[str]) -> list[tuple[str, str]]:
    pairs, seen = [], set()
    while len(pairs) < size:
        german, english = generator.pair()
        key = normalize(german)
        if key in banned or key in seen:
            continue
        seen.add(key)
        pairs.append((german, english))
    return pairs


def build_test_split(seed: int = DEFAULT_SEED, test_size: int = TEST_SIZE) -> tuple[list[tuple[str, str]], list[str]]:
    """The test split and its names, without generating the rest (what the tests score on)."""
    test_names = make_names(random.Random(seed + 102), max(50, test_size // 4))
    return _split(LanguageGenerator(seed + 2, test_names), test_size, set()), test_names


def build_corpus(seed: int = DEFAULT_SEED, train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE,
                 test_size: int = TEST_SIZE) -> Corpus:
    # Held-out splits first, each from its own generator, so they do not depend on how big
    # the training split is (a short smoke run is scored on the same test sentences).
    test, test_names = build_test_split(seed, test_size)
    val_names = make_names(random.Random(seed + 101), max(50, val_size // 4), exclude=set(test_names))
    train_names = make_names(random.Random(seed + 100), max(200, train_size // 8),
                             exclude=set(test_names) | set(val_names))
    split = _split
    val = split(LanguageGenerator(seed + 1, val_names), val_size, {normalize(g) for g, _ in test})
    held_out = {normalize(g) for g, _ in test + val}
    train = split(LanguageGenerator(seed, train_names), train_size, held_out)
    return Corpus(train, val, test, train_names, test_names)
