"""Text for people: user text shown literally, sizes in readable units."""

from __future__ import annotations


def visible(text: object) -> str:
    """`"a\\x1b[31mb"` -> `"a\\\\x1b[31mb"`: nothing a terminal would act on survives; spaces stay."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def json_for_terminal(data: object, **options) -> str:
    """`json.dumps(data, ensure_ascii=False, **options)` with every character a terminal could act on
    (C1 controls such as U+009B CSI, bidi overrides, …; JSON escapes only those below U+0020) written as
    a `\\uXXXX` escape: the same JSON to a parser, inert on a screen. Outside strings JSON has
    only spaces and newlines, which stay."""
    import json

    text = json.dumps(data, ensure_ascii=False, **options)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch in " \n" else json.dumps(ch)[1:-1] for ch in text)


def human_size(n: int) -> str:
    """1536 -> "1.5 KB"; sizes under a kilobyte in bytes."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
