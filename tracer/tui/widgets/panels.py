"""The explain panel (what a step computes) and the next-token panel (top-k bars)."""

from __future__ import annotations

from rich.text import Text

from textual.containers import VerticalScroll
from textual.widgets import Static

from tracer.trace import Step, Trace
from tracer.tui.explain import Explanation
from tracer.tui.picture import format_number

BAR_WIDTH = 12


def explanation_text(explanation: Explanation, step: Step) -> Text:
    """Title, plain words, formula, inputs, stats — as Text (user tokens are never markup)."""
    text = Text()
    text.append(explanation.title, style="bold")
    text.append(f"   {step.id}\n", style="dim")
    text.append(explanation.words + "\n")
    text.append("formula  ", style="bold cyan")
    text.append(explanation.formula + "\n")
    text.append("from     ", style="bold cyan")
    text.append(", ".join(explanation.inputs) if explanation.inputs else "(the input itself)", style="" if explanation.inputs else "dim")
    text.append("\n")
    stats = step.stats
    text.append("stats    ", style="bold cyan")
    if stats.get("min") is None:
        text.append("no finite values", style="dim")
    else:
        text.append(
            f"min {format_number(stats['min'])}  max {format_number(stats['max'])}  "
            f"mean {format_number(stats['mean'])}  std {format_number(stats['std'])}"
        )
    if stats.get("nonfinite"):
        text.append(f"  non-finite {stats['nonfinite']}", style="yellow")
    text.append(f"  shape {' × '.join(map(str, step.shape))} {step.dtype}", style="dim")
    return text


class ExplainPanel(VerticalScroll, can_focus=False):
    """Scrolls when the explanation is taller than the room left at small sizes."""

    DEFAULT_CSS = """
    ExplainPanel > Static { width: 1fr; }
    """

    def compose(self):
        yield Static(id="explain-text")

    def show(self, explanation: Explanation, step: Step) -> None:
        self.query_one("#explain-text", Static).update(explanation_text(explanation, step))
        self.scroll_home(animate=False)


def bar(prob: float, width: int = BAR_WIDTH) -> str:
    eighths = round(max(0.0, min(1.0, prob)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + ("" if part == 0 else " ▏▎▍▌▋▊▉"[part])


def top_k_text(top_k: list[dict], chosen: dict | None, heading: str) -> Text:
    text = Text()
    text.append(heading + "\n", style="bold")
    width = max((len(item["token"]) for item in top_k), default=1)
    width = min(width, 12)
    for item in top_k:
        is_chosen = chosen is not None and item["id"] == chosen.get("id")
        token = item["token"]
        token = token if len(token) <= width else token[: width - 1] + "…"
        style = "bold green" if is_chosen else ""
        text.append("▶ " if is_chosen else "  ", style=style)
        text.append(token.ljust(width), style=style)
        text.append(f" {item['prob']:.3f} ", style=style)
        text.append(bar(item["prob"]), style="green" if is_chosen else "blue")
        text.append("\n")
    return text


def next_token_text(trace: Trace, step: Step) -> Text | None:
    """What the panel shows for this step, or None where there is no prediction to show."""
    if trace.arch == "encoder":
        probs = trace.find(kind="probs")
        if not probs or not probs[-1].extra.get("predictions"):
            return None
        text = Text()
        for item in probs[-1].extra["predictions"]:
            heading = f'position {item["pos"]} "{item["token"]}" → "{(item.get("chosen") or {}).get("token", "?")}"'
            text.append_text(top_k_text(item["top_k"], item.get("chosen"), heading))
        return text
    t = step.decode_step
    if t is None:
        return None
    probs = trace.find(kind="probs", decode_step=t)
    if not probs or "top_k" not in probs[0].extra:
        return None
    extra = probs[0].extra
    chosen = extra.get("chosen")
    heading = f"next token, step {t}"
    if chosen:
        heading += f': ▶ "{chosen["token"]}" chosen'
    return top_k_text(extra["top_k"], chosen, heading)


class NextTokenPanel(VerticalScroll, can_focus=False):
    """Top-k candidates as bars, the chosen one marked; hidden where nothing is predicted."""

    DEFAULT_CSS = """
    NextTokenPanel > Static { width: 1fr; }
    """

    def compose(self):
        yield Static(id="next-token-text")

    _shown: tuple | None = None

    def show(self, trace: Trace, step: Step) -> None:
        # Steps of one decoding step share a prediction: skip the update (and its relayout).
        key = (id(trace), step.decode_step if trace.arch != "encoder" else "all")
        if key == self._shown:
            return
        self._shown = key
        text = next_token_text(trace, step)
        if self.display != (text is not None):
            self.display = text is not None
        if text is not None:
            self.query_one("#next-token-text", Static).update(text)
