"""The explain panel (what a step computes) and the next-token panel (top-k bars)."""

from __future__ import annotations

import math

from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tracer.trace import Step, Trace
from tracer.text import visible
from tracer.tui.view.explain import Explanation
from tracer.tui.view.heads import heads_held
from tracer.tui.view.outline import quoted
from tracer.tui.view.picture import format_number

BAR_WIDTH = 8
TOKEN_WIDTH = 8     # token, p, ln p and bar fit the panel's 32 cells at 120 columns
MARGIN = 1          # a column of space left of the text


def explanation_text(explanation: Explanation, step: Step) -> Text:
    """Title, plain words, formula, inputs, stats — as Text (user tokens are never markup)."""
    text = Text()
    text.append(explanation.title, style="bold")
    text.append(f"   {step.id}\n", style="dim")
    text.append(explanation.words + "\n")
    text.append("formula  ", style="bold cyan")
    text.append(explanation.formula + "\n")
    if explanation.worked:  # the formula with the selected cell's own numbers
        text.append("this cell ", style="bold cyan")
        text.append(explanation.worked + "\n")
    text.append("from     ", style="bold cyan")
    if explanation.inputs:  # links: a click (or f, F) goes to the step the value was computed from
        for number, step_id in enumerate(explanation.inputs):
            if number:
                text.append(", ")
            text.append(step_id, style=Style(underline=True, meta={"@click": f"screen.follow({number})"}))
    else:
        text.append("(the input itself)", style="dim")
    text.append("\n")
    stats = step.stats
    text.append("stats    ", style="bold cyan")
    if "head" in step.axes:  # the heat map's colours span one head; these numbers all of them
        held = heads_held(step)  # "12 heads", or a --heads trace's "2 of 12 heads (2, 4)"
        text.append(f"all {held}: " if held.endswith(" heads") else f"{held}: ", style="dim")
    if stats.get("min") is None:
        text.append("no finite values", style="dim")
    else:
        number = (lambda v: str(int(v))) if step.dtype.startswith(("int", "bool")) else format_number
        text.append(
            f"min {number(stats['min'])}  max {number(stats['max'])}  "
            f"mean {format_number(stats['mean'])}  std {format_number(stats['std'])}"
        )
    if stats.get("nonfinite"):
        text.append(f"  non-finite {stats['nonfinite']}", style="yellow")
    text.append(f"  shape {' × '.join(map(str, step.shape))} {step.dtype}", style="dim")
    return text


class TextPanel(ScrollView, can_focus=False):
    """A scrollable block of wrapped Text on the Line API.

    A container holding a Static would re-layout twice on every update (the Static's height,
    then the container's scroll size); here the text is wrapped once and the virtual size set
    in the same frame, so a step change repaints in one pass.
    """

    DEFAULT_CSS = """
    TextPanel {
        scrollbar-size-vertical: 1;
        scrollbar-gutter: stable;
        overflow-x: hidden;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text()
        self._strips: list[Strip] = []
        self._base: Style | None = None

    @property
    def plain(self) -> str:
        return self._text.plain

    def set_text(self, text: Text) -> None:
        self._text = text
        self._wrap()
        self.scroll_to(0, 0, animate=False, immediate=True)

    def _wrap(self) -> None:
        width = self.scrollable_content_region.width - MARGIN
        if width <= 0:
            self._strips = []
            return
        console = self.app.console
        lines = console.render_lines(self._text, console.options.update(width=width, height=None), pad=False)
        margin = Segment(" " * MARGIN)
        self._strips = [Strip([margin, *line]) for line in lines]
        self._base = None
        virtual_size = Size(width + MARGIN, len(self._strips))
        if virtual_size != self.virtual_size:
            # The panel's size is set by the layout, not by its text: no relayout needed,
            # only the scrollbar, sized in this frame (no public call does that; see TensorView.show).
            self.set_reactive(ScrollView.virtual_size, virtual_size)
            self._scroll_update(virtual_size)
        self.refresh()

    def on_resize(self) -> None:
        self._wrap()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None

    def render_line(self, y: int) -> Strip:
        if self._base is None:
            self._base = self.rich_style
        index = self.scroll_offset.y + y
        width = self.size.width
        if index >= len(self._strips):
            return Strip.blank(width, self._base)
        return self._strips[index].apply_style(self._base).crop_extend(0, width, self._base)


class ExplainPanel(TextPanel):
    """What the current step computes."""

    def show(self, explanation: Explanation, step: Step) -> None:
        self.set_text(explanation_text(explanation, step))


def bar(prob: float, width: int = BAR_WIDTH) -> str:
    eighths = round(max(0.0, min(1.0, prob)) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + ("" if part == 0 else " ▏▎▍▌▋▊▉"[part])


def log_prob(prob: float) -> str:
    """ln p, for telling apart probabilities that all print as 0.000."""
    if not isinstance(prob, (int, float)) or prob != prob or prob < 0:
        return "?"
    return "−∞" if prob == 0 else f"{math.log(prob):.2f}".replace("-", "−")


def top_k_text(top_k: list[dict], chosen: dict | None, heading: str) -> Text:
    text = Text()
    text.append(heading + "\n", style="bold")
    width = max((len(visible(item["token"])) for item in top_k), default=1)
    width = min(width, TOKEN_WIDTH)
    text.append(" " * (width + 3) + "p     ln p\n", style="dim")  # probability, log-probability
    for item in top_k:
        is_chosen = chosen is not None and item["id"] == chosen.get("id")
        token = visible(item["token"])
        token = token if len(token) <= width else token[: width - 1] + "…"
        style = "bold green" if is_chosen else ""
        text.append("▶ " if is_chosen else "  ", style=style)
        text.append(token.ljust(width), style=style)
        text.append(f" {item['prob']:.3f} ", style=style)
        # a confident model shows 0.000 for all but the winner: the log-probability still tells them apart
        text.append(f"{log_prob(item['prob']):>6} ", style=style or "dim")
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
            heading = f'position {item["pos"]} {quoted(item["token"])} → {quoted((item.get("chosen") or {}).get("token", "?"))}'
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
        heading += f': ▶ {quoted(chosen["token"])} chosen'
    text = top_k_text(extra["top_k"], chosen, heading)
    so_far = join_pieces(trace.output.get("tokens", [])[:t])
    if so_far:
        text.append("output so far: ", style="dim")
        text.append(quoted(so_far))
    return text


def join_pieces(tokens: list[str]) -> str:
    """Chosen tokens as text: "##" marks a word-piece that continues the previous word
    (the bundled tokenizers' WordPiece convention), so "pi ##y ##ush" reads "piyush"."""
    out = ""
    for token in tokens:
        out += token[2:] if token.startswith("##") and out else (" " if out else "") + token
    return out


class NextTokenPanel(TextPanel):
    """Top-k candidates as bars, the chosen one marked; hidden where nothing is predicted."""

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
            self.set_text(text)
