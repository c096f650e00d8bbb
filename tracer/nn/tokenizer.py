"""A thin wrapper around a `tokenizers` tokenizer.json, with the model's special tokens.

Two policies for special tokens, recorded in the trace header (`model.tokenization`):
- tracer's own folders (`TextTokenizer`): `encode` adds none; the decoder path prepends BOS itself.
- Hugging Face folders (`HFTokenizer`): `encode` runs tokenizer.json's post-processor, as transformers
  does (`[CLS] … [SEP]` for BERT, BOS for Llama-2/3, nothing for GPT-2 or SmolLM), and nothing is
  prepended later; with `chat`, the folder's chat template is rendered first and, as transformers'
  `apply_chat_template` does, the result is encoded without the post-processor (the template writes
  its own special tokens).
- Marian folders (`MarianSPTokenizer`): no tokenizer.json exists; `source.spm` / `target.spm` and
  `vocab.json` are run as transformers' MarianTokenizer runs them, `</s>` appended to the source.

An encoder-decoder's decoder starts from `decoder_start_id` (Hugging Face: generation_config.json's or
config.json's `decoder_start_token_id`, the pad token for Marian and T5), and greedy decoding never
picks a `suppressed_ids` token (generation_config.json's one-token `bad_words_ids` and
`suppress_tokens`: Marian's pad).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig
from tracer.text import visible

if TYPE_CHECKING:
    from tracer.nn.hf_folder import HFFolder

SPECIAL_NAMES = ("pad", "bos", "eos", "unk", "mask")
# The named special tokens transformers passes to a chat template (its SPECIAL_TOKENS_ATTRIBUTES).
TEMPLATE_SPECIALS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


class TextTokenizer:
    """Text <-> ids, and the strings the trace shows for each id (tracer's own folders)."""

    def __init__(self, tokenizer: Tokenizer, cfg: ModelConfig):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if self.vocab_size > cfg.vocab_size:
            raise BadInput(f"tokenizer has {self.vocab_size} tokens but the model only {cfg.vocab_size}")
        check_id_range(tokenizer, cfg.vocab_size)
        self.pad_id = tokenizer.token_to_id(cfg.pad_token)
        self.bos_id = tokenizer.token_to_id(cfg.bos_token)
        self.eos_id = tokenizer.token_to_id(cfg.eos_token)
        self.unk_id = tokenizer.token_to_id(cfg.unk_token)
        self.mask_id = tokenizer.token_to_id(cfg.mask_token)
        self.stop_ids = {self.eos_id} - {None}   # decoding stops when it chooses one of these
        # the token an encoder-decoder's decoder starts from: BOS for tracer's own models (else id 0)
        self.decoder_start_id = self.bos_id if self.bos_id is not None else 0

    suppressed_ids: frozenset[int] = frozenset()  # greedy decoding never chooses these

    @property
    def decoder_bos_id(self) -> int | None:
        """The id a decoder-only run puts before the text's ids: BOS for tracer's own models (None when
        the tokenizer has none)."""
        return self.bos_id

    @classmethod
    def from_file(cls, path: str | Path, cfg: ModelConfig) -> "TextTokenizer":
        try:
            return cls(Tokenizer.from_file(str(path)), cfg)
        except BaseException as exc:  # the Rust side raises plain Exceptions for bad files, or panics
            if isinstance(exc, BadInput) or not _from_rust(exc):
                raise
            raise BadInput(f"{path}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]})") from None

    def encode(self, text: str, chat: bool = False) -> tuple[list[int], list[str]]:
        """Ids and their token strings, without special tokens added."""
        if chat:
            raise BadInput("--chat: this model has no chat template (tracer's own models are not chat models)")
        encoding = encode_or_refuse(self.tokenizer, text, add_special_tokens=False)
        return list(encoding.ids), [self.token(i) for i in encoding.ids]

    def policy(self, arch: str, chat: bool = False) -> dict:
        """How special tokens are added, for the trace header."""
        bos = self.token(self.bos_id) if self.bos_id is not None and arch != "encoder" else None
        return {"specials": "tracer", "bos": bos}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token(self, token_id: int) -> str:
        """The token's string as the tokenizer knows it (`<id 123>` for ids it does not)."""
        text = self.tokenizer.id_to_token(int(token_id))
        return text if text is not None else f"<id {int(token_id)}>"


class HFTokenizer(TextTokenizer):
    """A Hugging Face folder's tokenizer, run as transformers runs it: tokenizer.json's post-processor
    decides the special tokens; the named ones come from tokenizer_config.json (or the legacy
    special_tokens_map.json) and config.json's ids; decoding stops at generation_config.json's eos."""

    decoder_bos_id = None  # the post-processor (or the chat template) has already put in what the model expects
    decoder_start_id = 0   # replaced by the folder's decoder_start_token_id (from_folder)

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, specials: dict[str, str | None],
                 stop_ids: set[int], chat_template: str | None = None, chat_template_file: str | None = None):
        self.tokenizer = tokenizer
        # transformers encodes without padding or truncation unless asked; a tokenizer.json may enable both
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if self.vocab_size > vocab_size:
            raise BadInput(f"tokenizer has {self.vocab_size} tokens but the model only {vocab_size}")
        check_id_range(tokenizer, vocab_size)
        self.specials = specials
        ids = {name: tokenizer.token_to_id(token) if token else None for name, token in specials.items()}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id = (ids.get(name) for name in SPECIAL_NAMES)
        self.stop_ids = set(stop_ids) or ({self.eos_id} - {None})
        outside = sorted(i for i in self.stop_ids if not (type(i) is int and 0 <= i < vocab_size))
        if outside:
            raise BadInput(f"the model's stop token id {outside[0]!r} is outside its vocabulary of {vocab_size}")
        self.chat_template, self.chat_template_file = chat_template, chat_template_file

    @classmethod
    def from_folder(cls, folder: "HFFolder", vocab_size: int) -> "HFTokenizer":
        try:
            tokenizer = Tokenizer.from_file(str(folder.tokenizer_file))
        except BaseException as exc:  # the Rust side raises plain Exceptions for bad files, or panics
            if not _from_rust(exc):
                raise
            raise BadInput(f"{folder.tokenizer_file}: not a valid tokenizer.json ({str(exc).splitlines()[0][:120]})") from None
        specials = hf_special_tokens(folder, tokenizer)
        stop_ids = hf_stop_ids(folder)
        made = cls(tokenizer, vocab_size, specials, stop_ids, folder.chat_template, folder.chat_template_file)
        made.decoder_start_id, made.suppressed_ids = hf_decoder_start(folder, made.pad_id), hf_suppressed_ids(folder)
        return made

    def encode(self, text: str, chat: bool = False) -> tuple[list[int], list[str]]:
        """Ids and token strings as transformers' tokenizer(text) gives them (or apply_chat_template, with chat)."""
        if chat:
            text = self.render_chat(text)
        encoding = encode_or_refuse(self.tokenizer, text, add_special_tokens=not chat)
        return list(encoding.ids), [self.token(i) for i in encoding.ids]

    def render_chat(self, text: str) -> str:
        """The folder's chat template applied to one user message, with the generation prompt."""
        if self.chat_template is None:
            raise BadInput("--chat: this model's folder has no chat template (chat_template.jinja or "
                           "tokenizer_config.json's chat_template)")
        specials = {f"{name}_token": self.specials[name] for name in TEMPLATE_SPECIALS if self.specials.get(name)}
        return render_chat_template(self.chat_template, [{"role": "user", "content": text}], **specials)

    def policy(self, arch: str, chat: bool = False) -> dict:
        if chat:
            return {"specials": "chat-template", "template": self.chat_template_file, "stop": sorted(self.stop_ids)}
        probe = encode_or_refuse(self.tokenizer, "a", add_special_tokens=True)
        mask = list(probe.special_tokens_mask)
        lead = next((i for i, m in enumerate(mask) if not m), len(mask))
        tail = next((i for i, m in enumerate(reversed(mask)) if not m), 0)
        prefix, suffix = probe.tokens[:lead], probe.tokens[len(mask) - tail:] if tail else []
        bos = self.specials.get("bos")
        return {"specials": "post-processor", "prefix": prefix, "suffix": suffix,
                "bos": bos if bos is not None and bos in prefix else None, "stop": sorted(self.stop_ids),
                **generation_policy(self, arch)}


def generation_policy(tokenizer: TextTokenizer, arch: str) -> dict:
    """How a Hugging Face encoder-decoder decodes, for the trace header: its start token and the
    tokens it never chooses (greedy, one beam, always)."""
    if arch != "encoder-decoder":
        return {}
    return {"decoding": "greedy, num_beams=1", "decoder_start": tokenizer.token(tokenizer.decoder_start_id),
            "decoder_start_id": tokenizer.decoder_start_id, "suppressed": sorted(tokenizer.suppressed_ids)}


class MarianSPTokenizer(TextTokenizer):
    """Marian's tokenizer (no tokenizer.json exists): `source.spm` cuts the source text into SentencePiece
    pieces, `vocab.json` maps each piece to its id (a piece it lacks to `<unk>`), and `</s>` is appended —
    transformers' MarianTokenizer, id for id. A leading `>>xx<<` (a multi-target model's target language)
    is one token of its own. Output ids are turned back into text with `target.spm`; a model with separate
    vocabularies (`separate_vocabs`) names its output ids with `target_vocab.json`."""

    decoder_bos_id = None

    def __init__(self, folder: "HFFolder", vocab_size: int, decoder_vocab_size: int | None = None):
        import sentencepiece

        config = {**folder.special_tokens_map, **folder.tokenizer_config}
        vocab = read_vocab(folder.path / "vocab.json", vocab_size)
        target = read_vocab(folder.path / "target_vocab.json", decoder_vocab_size or vocab_size) \
            if config.get("separate_vocabs") else vocab
        self.encoder = vocab
        self.source_tokens = {i: piece for piece, i in vocab.items()}
        self.decoder = {i: piece for piece, i in target.items()}   # what the decoder reads and predicts
        self.vocab_size = max(target.values()) + 1
        self.spm = {}
        for side in ("source", "target"):
            path = folder.path / f"{side}.spm"
            try:
                self.spm[side] = sentencepiece.SentencePieceProcessor(model_file=str(path))
            except (OSError, RuntimeError) as exc:
                raise BadInput(f"{path}: not a SentencePiece model ({str(exc).splitlines()[0][:120]})") from None
        names = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
        self.specials = {name: token_content(config.get(f"{name}_token")) or default for name, default in names.items()}
        if self.specials["unk"] not in vocab:
            raise BadInput(f"{folder.path / 'vocab.json'}: has no unknown token {self.specials['unk']!r}")
        self.unk_id, self.source_eos_id = vocab[self.specials["unk"]], vocab.get(self.specials["eos"])
        self.pad_id, self.eos_id = (target.get(self.specials[name]) for name in ("pad", "eos"))
        self.bos_id = self.mask_id = None
        self.stop_ids = hf_stop_ids(folder) or ({self.eos_id} - {None})
        self.decoder_start_id = hf_decoder_start(folder, self.pad_id)
        self.suppressed_ids = hf_suppressed_ids(folder)
        self.decoder_unk_id = target.get(self.specials["unk"])
        self.language_codes = sorted(piece for piece in vocab if piece.startswith(">>") and piece.endswith("<<"))

    def encode(self, text: str, chat: bool = False) -> tuple[list[int], list[str]]:
        if chat:
            raise BadInput("--chat: a Marian translation model has no chat template")
        code = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:  # as MarianTokenizer.remove_language_code
            code, text = [text[: end + 2]], text[end + 2:]
        pieces = code + self.spm["source"].encode(text, out_type=str)
        ids = [self.encoder.get(piece, self.unk_id) for piece in pieces] + [self.source_eos_id]
        return ids, [self.source_tokens.get(i, f"<id {i}>") for i in ids]

    def decode(self, ids: list[int]) -> str:
        specials = {self.pad_id, self.eos_id, self.decoder_unk_id}
        pieces = [self.token(i) for i in ids if i not in specials]
        return self.spm["target"].decode_pieces(pieces).replace("\u2581", " ").strip()

    def token(self, token_id: int) -> str:
        return self.decoder.get(int(token_id), f"<id {int(token_id)}>")

    def policy(self, arch: str, chat: bool = False) -> dict:
        return {"specials": "marian", "suffix": [self.specials["eos"]], "bos": None, "stop": sorted(self.stop_ids),
                "language_codes": len(self.language_codes), **generation_policy(self, arch)}


def _from_rust(exc: BaseException) -> bool:
    """An error the tokenizer library raised: an Exception, or a Rust panic (pyo3's PanicException
    derives from BaseException); never Ctrl-C or an exit."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def check_id_range(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Every id the tokenizer can give is a row of the model's embedding (else an IndexError mid-run)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if vocab:
        token, top = max(vocab.items(), key=lambda item: item[1])
        if top >= vocab_size:
            raise BadInput(f"tokenizer gives token {visible(token)!r} the id {top}, "
                           f"outside the model's vocabulary of {vocab_size}")


def encode_or_refuse(tokenizer: Tokenizer, text: str, **options):
    """tokenizer.encode, its failures (an error, a panicking regex) as one BadInput line."""
    try:
        return tokenizer.encode(text, **options)
    except BaseException as exc:
        if not _from_rust(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BadInput(f"the tokenizer failed on this text ({first})") from None


def token_content(value) -> str | None:
    """A special token as the tokenizer files write it: a string, or an AddedToken object with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def hf_special_tokens(folder: "HFFolder", tokenizer: Tokenizer) -> dict[str, str | None]:
    """bos/eos/pad/unk/mask (and cls/sep for templates) as transformers' tokenizer names them.

    tokenizer_config.json first; special_tokens_map.json overrides it where transformers still reads it
    (a config without `added_tokens_decoder`, the older layout); config.json's `*_token_id` fills gaps."""
    names = sorted(set(SPECIAL_NAMES) | set(TEMPLATE_SPECIALS))
    found = {name: token_content(folder.tokenizer_config.get(f"{name}_token")) for name in names}
    if "added_tokens_decoder" not in folder.tokenizer_config:
        for name in names:
            found[name] = token_content(folder.special_tokens_map.get(f"{name}_token")) or found[name]
    for name in names:
        token_id = folder.config.get(f"{name}_token_id")
        if isinstance(token_id, list):
            token_id = token_id[0] if token_id else None
        if found[name] is None and isinstance(token_id, int):
            found[name] = tokenizer.id_to_token(token_id)
    return found


def hf_stop_ids(folder: "HFFolder") -> set[int]:
    """The ids decoding stops at: generation_config.json's eos_token_id, else config.json's (as transformers)."""
    for source in (folder.generation_config, folder.config):
        value = source.get("eos_token_id")
        values = value if isinstance(value, list) else [value]
        ids = {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
        if ids:
            return ids
    return set()


def read_vocab(path: Path, model_vocab_size: int) -> dict[str, int]:
    """A Marian vocab.json (piece -> id), checked against the model's vocabulary size."""
    from tracer.nn.hf_folder import read_json

    if not path.is_file():
        raise BadInput(f"{path} is missing (tokenizer_config.json says the vocabularies are separate)")
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not vocab or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
        raise BadInput(f"{path}: expected a JSON object of piece -> id")
    if max(vocab.values()) >= model_vocab_size:
        raise BadInput(f"{path.name} has ids up to {max(vocab.values())} but the model only {model_vocab_size} tokens")
    return vocab


def _generation_setting(folder: "HFFolder", key: str):
    """generation_config.json's value, else config.json's (as transformers' GenerationConfig.from_model_config)."""
    for source in (folder.generation_config, folder.config):
        if source.get(key) is not None:
            return source[key]
    return None


def hf_decoder_start(folder: "HFFolder", pad_id: int | None) -> int:
    """decoder_start_token_id (Marian: the pad token; T5: pad = 0); else the pad token; else 0."""
    value = _generation_setting(folder, "decoder_start_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return pad_id if pad_id is not None else 0


def hf_suppressed_ids(folder: "HFFolder") -> frozenset[int]:
    """The tokens generate() never picks: one-token `bad_words_ids` (Marian: [[pad]]) and `suppress_tokens`."""
    found = set(_generation_setting(folder, "suppress_tokens") or [])
    for words in _generation_setting(folder, "bad_words_ids") or []:
        if not isinstance(words, list) or len(words) != 1:
            raise BadInput(f"generation_config.json: bad_words_ids entry {words!r} is not supported (only single tokens)")
        found.add(words[0])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in found):
        raise BadInput("generation_config.json: bad_words_ids / suppress_tokens must be token ids")
    return frozenset(found)


def render_chat_template(template: str, messages: list[dict], **specials: str) -> str:
    """Render a chat template as transformers does (`render_jinja_template`): a sandboxed jinja2
    environment with trim_blocks/lstrip_blocks, loop controls, its `tojson`, `raise_exception` and
    `strftime_now`, the named special tokens, and `add_generation_prompt=True`."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}…{% endgeneration %}` (assistant-mask markers): rendered as their body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, tools=None, documents=None,
                                                add_generation_prompt=True, **specials)
    except jinja2.TemplateError as exc:
        raise BadInput(f"--chat: the chat template failed ({str(exc).splitlines()[0][:160]})") from None


def train_tokenizer(texts, vocab_size: int, cfg: ModelConfig) -> Tokenizer:
    """A lowercasing BPE tokenizer trained on `texts`, with the config's special tokens; the same
    ids and merges on every run.

    Characters it never saw become the unknown token, which the trace shows as such.
    The `tokenizers` BPE trainer numbers the characters it meets in hash-map order and breaks
    ties between equally frequent pairs by those numbers, so two runs on the same text can
    give different ids and merges. Registering every character (and its `##` form) up front,
    in sorted order, fixes the numbering and with it the tie-breaks; they are then taken off
    the added-token list, so they are ordinary vocabulary, not tokens matched in raw text.
    """
    import json

    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    texts = list(texts)
    specials = [cfg.pad_token, cfg.bos_token, cfg.eos_token, cfg.unk_token, cfg.mask_token]
    tokenizer = Tokenizer(models.BPE(unk_token=cfg.unk_token, continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    alphabet = sorted({c for text in texts for c in tokenizer.normalizer.normalize_str(text) if not c.isspace()})
    symbols = alphabet + [f"##{c}" for c in alphabet]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials + symbols,
                                  continuing_subword_prefix="##", show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    data = json.loads(tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in specials]
    return Tokenizer.from_str(json.dumps(data))
