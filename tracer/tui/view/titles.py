"""The two title lines as (text, style) parts, fitted to a width: the sentence gives way, the
indicators (trace 2/3, ▶ playing, ★ bookmark, head 2/4) never do. No Textual here."""

from __future__ import annotations

from rich.cells import cell_len

from tracer.text import visible
from tracer.trace import Trace

Part = tuple[str, str]      # (text, rich style)
ELLIPSIS = "…"
MIN_SHOWN = 10              # cells of each text kept before a shorter wording or the model's name gives way


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` cells, its end replaced by … when cut."""
    if cell_len(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = "", 0
    for ch in text:
        if used + cell_len(ch) > width - 1:
            break
        out += ch
        used += cell_len(ch)
    return out + ELLIPSIS


def share(texts: list[str], room: int) -> list[str]:
    """Shorten several texts to fit `room` cells together: short ones stay whole, long ones share the rest."""
    room = max(0, room)
    sizes = [cell_len(t) for t in texts]
    if sum(sizes) <= room:
        return texts
    widths = [0] * len(texts)
    left, pending = room, sorted(range(len(texts)), key=lambda i: sizes[i])
    while pending:
        fair = left // len(pending)
        i = pending.pop(0)
        widths[i] = min(sizes[i], fair)
        left -= widths[i]
    return [shorten(t, w) for t, w in zip(texts, widths)]


def width_of(parts: list[Part]) -> int:
    return sum(cell_len(text) for text, _ in parts)


def model_label(trace: Trace) -> str:
    """The model and where it came from (the header's `model.source`): `de-en-tiny` for a bundled
    model; `tiny-llama (llama folder, sha256:1a2b3c4d)`, `ORG/NAME (llama, hub, sha256:…)` otherwise."""
    name = str(trace.model.get("name", "?"))
    source = trace.model.get("source")
    if not isinstance(source, dict) or source.get("source") not in ("folder", "hub"):
        return name
    model_type = source.get("model_type")
    digest = source.get("digest")
    short = f", {digest[:15]}" if isinstance(digest, str) and digest.startswith("sha256:") else ""
    if source["source"] == "hub":
        return f"{source.get('hub') or name} ({model_type}, hub{short})"
    kind = "folder" if model_type in (None, "tracer") else f"{model_type} folder"
    return f"{name} ({kind}{short})"


def device_label(trace: Trace) -> str:
    """Where the trace ran, and how it was stored when not as computed: `cpu`, `cpu · float16 storage`
    (`tracer run --store-dtype float16`: every float rounded to 11 bits, which a learner reading the
    numbers should know)."""
    store = (trace.capture or {}).get("store_dtype")
    return f"{trace.device} · {store} storage" if isinstance(store, str) and store != "float32" else str(trace.device)


def screen_title(trace: Trace, trace_number: int, traces: int, playing: list[str] | None, width: int,
                 comparing: int | None = None) -> list[Part]:
    """`tracer · model · device · "input" → "output"   trace 2/3   ▶ playing…` in `width` cells.

    `playing` holds the autoplay indicator, longest wording first (None: not playing); the first
    that leaves the sentence MIN_SHOWN cells is used. `width` <= 0: not laid out yet, nothing shortened.
    `comparing`: in compare mode, the number of the trace this one is compared with.
    """
    source = visible(trace.input.get("text", ""))
    output = trace.output.get("text")
    if trace.arch == "encoder":
        output = " ".join(trace.output["tokens"]) if trace.output.get("tokens") else None
    sentence = [source] if output is None else [source, visible(output)]
    frame = 2 * len(sentence) + (3 if output is not None else 0)  # the quotes and " → "
    heads = [
        [("tracer", "bold"), (visible(f" · {model_label(trace)} · {device_label(trace)} · "), "")],
        [("tracer", "bold"), (visible(f" · {trace.model.get('name', '?')} · {device_label(trace)} · "), "")],
        [("tracer", "bold"), (" · ", "")],
    ]
    wordings = playing or [None]
    indicators: list[Part] = []
    head = heads[0]
    if width > 0:
        for head in heads:  # the model's name gives way only once every playing wording was tried
            for wording in wordings:
                indicators = _indicators(trace_number, traces, wording, comparing)
                if width - width_of(head) - width_of(indicators) - frame >= MIN_SHOWN * len(sentence):
                    break
            else:
                continue
            break
        sentence = share(sentence, width - width_of(head) - width_of(indicators) - frame)
    else:
        indicators = _indicators(trace_number, traces, wordings[0], comparing)
    parts = list(head)
    parts.append((f'"{sentence[0]}"', ""))
    if len(sentence) > 1:
        parts.append((" → ", ""))
        parts.append((f'"{sentence[1]}"', ""))
    return parts + indicators


def _indicators(trace_number: int, traces: int, playing: str | None, comparing: int | None = None) -> list[Part]:
    parts: list[Part] = []
    if traces > 1:
        parts.append((f"   trace {trace_number}/{traces}", "dim"))
    if comparing is not None:
        parts.append((f"   vs trace {comparing}", "bold magenta"))
    if playing:
        parts.append((f"   {playing}", "bold green"))
    return parts


def fit_parts(parts: list[tuple[str, str, bool]], width: int) -> list[Part]:
    """Parts marked shrinkable (True) share what the others leave of `width`; the others stay whole."""
    if width <= 0:
        return [(text, style) for text, style, _ in parts]
    fixed = sum(cell_len(text) for text, _, shrinks in parts if not shrinks)
    shrinkable = [text for text, _, shrinks in parts if shrinks]
    fitted = iter(share(shrinkable, width - fixed))
    return [(next(fitted) if shrinks else text, style) for text, style, shrinks in parts]


def fit_label(label: str, width: int) -> str:
    """An outline label in `width` cells, keeping what follows its arrow: `Decoder step 2 → "am"`
    becomes `step 2 → "am"`, then `2 → "am"`, then `…→ "am"` — the chosen token is the point."""
    if cell_len(label) <= width:
        return label
    head, arrow, tail = label.partition(" → ")
    if not arrow:
        return shorten(label, width)
    words = head.split(" ")
    for start in range(1, len(words)):  # drop leading words first: "Decoder step 2" → "step 2" → "2"
        shorter = " ".join(words[start:]) + arrow + tail
        if cell_len(shorter) <= width:
            return shorter
    room = width - cell_len(arrow + tail)
    if room >= 2:
        return shorten(words[-1], room) + arrow + tail
    return shorten(arrow.lstrip() + tail, width)
