"""A thin wrapper around a `tokenizers` tokenizer.json, with the model's special tokens."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig


class TextTokenizer:
    """Text <-> ids, and the strings the trace shows for each id."""

    def __init__(self, tokenizer: Tokenizer, cfg: ModelConfig):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if self.vocab_size > cfg.vocab_size:
            raise BadInput(f"tokenizer has {self.vocab_size} tokens but the model only {cfg.vocab_size}")
        self.pad_id = tokenizer.token_to_id(cfg.pad_token)
        self.bos_id = tokenizer.token_to_id(cfg.bos_token)
        self.eos_id = tokenizer.token_to_id(cfg.eos_token)
        self.unk_id = tokenizer.token_to_id(cfg.unk_token)
        self.mask_id = tokenizer.token_to_id(cfg.mask_token)

    @classmethod
    def from_file(cls, path: str | Path, cfg: ModelConfig) -> "TextTokenizer":
        try:
            return cls(Tokenizer.from_file(str(path)), cfg)
        except Exception as exc:  # the Rust side raises plain Exceptions for bad files
            if isinstance(exc, BadInput):
                raise
            raise BadInput(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]})") from None

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Ids and their token strings, without special tokens added."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [self.token(i) for i in encoding.ids]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token(self, token_id: int) -> str:
        """The token's string as the tokenizer knows it (`<id 123>` for ids it does not)."""
        text = self.tokenizer.id_to_token(int(token_id))
        return text if text is not None else f"<id {int(token_id)}>"


def train_tokenizer(texts, vocab_size: int, cfg: ModelConfig) -> Tokenizer:
    """A lowercasing BPE tokenizer trained on `texts`, with the config's special tokens.

    Characters it never saw become the unknown token, which the trace shows as such.
    """
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    specials = [cfg.pad_token, cfg.bos_token, cfg.eos_token, cfg.unk_token, cfg.mask_token]
    tokenizer = Tokenizer(models.BPE(unk_token=cfg.unk_token, continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, continuing_subword_prefix="##", show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer
