"""Does the model know the input's words? Recorded at capture time in the trace header.

A bundled model (and any model of tracer's own kind) is trained on a small generated language
whose every word is one token; a word it never saw comes out as `<unk>` or split into pieces,
and the translation is then garbage that a learner cannot tell from a tracer bug. Hugging Face
tokenizers split ordinary words into pieces all the time, so their models are not judged here.
"""

from __future__ import annotations


def unfamiliar_words(tokenizer, text: str) -> list[str]:
    """The input's unfamiliar words, in order, when most of them are: any word holding `<unk>`, or
    more than half of the words split into several pieces ([] when the model knows the input;
    names split too, but are copied, so one name among known words is fine)."""
    encoding = tokenizer.tokenizer.encode(text, add_special_tokens=False)
    words: dict[int, list] = {}  # word index -> [start, end, pieces, holds <unk>]
    for word, (start, end), token_id in zip(encoding.word_ids, encoding.offsets, encoding.ids):
        if word is None:
            continue
        entry = words.setdefault(word, [start, end, 0, False])
        entry[1] = max(entry[1], end)
        entry[2] += 1
        entry[3] |= token_id == tokenizer.unk_id
    unknown = [text[start:end] for start, end, _, unk in words.values() if unk]
    split = [text[start:end] for start, end, pieces, unk in words.values() if pieces > 1 or unk]
    if unknown or len(split) * 2 > len(words):
        return split
    return []


def familiarity(loaded, text: str) -> dict:
    """The input header's `unfamiliar` field, for a model with tracer's own tokenizer ({} otherwise)."""
    from tracer.nn.tokenizer import HFTokenizer

    if isinstance(loaded.tokenizer, HFTokenizer) or not hasattr(loaded.tokenizer, "tokenizer"):
        return {}
    words = unfamiliar_words(loaded.tokenizer, text)
    return {"unfamiliar": words} if words else {}
