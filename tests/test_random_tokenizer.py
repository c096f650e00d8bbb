"""The BPE tokenizer tracer trains (random test models, `tracer train`) is the same on every run.

The `tokenizers` trainer numbers characters in hash-map order, which Rust seeds per process, so
the check runs the training in fresh processes."""

from __future__ import annotations

import subprocess
import sys

TRAIN = """
from tracer.nn.config import ModelConfig
from tracer.nn.random_model import SAMPLE_TEXT
from tracer.nn.tokenizer import train_tokenizer
print(train_tokenizer(SAMPLE_TEXT * 3, 120, ModelConfig()).to_str())
"""


def test_training_the_same_texts_gives_the_same_tokenizer_in_every_process():
    outputs = {subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True, check=True).stdout
               for _ in range(4)}
    assert len(outputs) == 1


def test_the_sorted_alphabet_is_plain_vocabulary_not_added_tokens():
    """The characters registered to fix the numbering must not be matched as added tokens in raw text."""
    from tracer.nn.config import ModelConfig
    from tracer.nn.random_model import SAMPLE_TEXT
    from tracer.nn.tokenizer import train_tokenizer

    cfg = ModelConfig()
    tokenizer = train_tokenizer(SAMPLE_TEXT, 120, cfg)
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    assert added == {cfg.pad_token, cfg.bos_token, cfg.eos_token, cfg.unk_token, cfg.mask_token}
    assert "".join(t.removeprefix("##") for t in tokenizer.encode("katze").tokens) == "katze"
