"""Show user text literally: control characters (ANSI escapes, NUL, bell) become visible escapes."""

from __future__ import annotations


def visible(text: object) -> str:
    """`"a\\x1b[31mb"` -> `"a\\\\x1b[31mb"`: nothing a terminal would act on survives; spaces stay."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)
