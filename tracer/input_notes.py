"""One-line notes on what a trace's model made of its input, for the summary and the UI alike
(plain strings: no Rich, no Textual, no torch)."""

from __future__ import annotations

from pathlib import Path

from tracer.text import visible

SHOWN_WORDS = 6


def unfamiliar_note(trace) -> str | None:
    """When most of the input's words are new to the model (the header's `input.unfamiliar`,
    recorded at capture time): say so, what the model knows, and what to do instead."""
    words = trace.input.get("unfamiliar")
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        return None
    name = visible(trace.model.get("name", "this model"))
    source = trace.model.get("source")
    card = "its MODEL.md"
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        card = visible(_shorter(Path(source["path"]) / "MODEL.md"))
    shown = ", ".join(f'"{visible(w)}"' for w in words[:SHOWN_WORDS]) + (" …" if len(words) > SHOWN_WORDS else "")
    return (f"{name} does not know the words {shown}: it knows only the small language of {card}, so the "
            "output means little; for other text, use --model with a real checkpoint")


def unmasked_note(trace) -> str | None:
    """A BERT-style input without its mask token: every position is predicted, not a gap."""
    if trace.arch != "encoder":
        return None
    mask = trace.model.get("config", {}).get("mask_token", "[MASK]")
    tokens = trace.input.get("tokens", [])
    if mask in tokens or not trace.predictions():
        return None
    return (f"no {visible(mask)} in the input: the model predicts every position (what it would put back "
            f"there); write {visible(mask)} where a word should be guessed")


def input_notes(trace) -> list[str]:
    return [note for note in (unfamiliar_note(trace), unmasked_note(trace)) if note]


def _shorter(path: Path) -> str:
    """A path relative to the working folder when it lies inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
