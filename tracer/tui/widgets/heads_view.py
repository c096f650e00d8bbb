"""HeadsView: every head of a per-head step as small multiples, on the Line API.

Each panel is one head, shrunk to fit (tracer.tui.view.heads), two values per text cell drawn
as `▀` (the upper value as the glyph's colour, the lower as its background). One colour scale
for all panels; the current head's title is highlighted. Lines are cached per size and head.
"""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style

from textual.strip import Strip
from textual.widget import Widget

from tracer.tui.view.heads import GAP, TITLE_ROWS, HeadsPicture, Layout, fit_layout, head_number, sampled, zoomed
from tracer.tui.view.picture import PALETTES
from tracer.tui.widgets.tensor_view import MASKED_STYLE

MASKED_COLOUR = MASKED_STYLE.bgcolor
TITLE_STYLE = Style(color="#b0b0b0")
CURRENT_TITLE_STYLE = Style(color="#000000", bgcolor="#e0c040", bold=True)
HALF = "▀"


@lru_cache(maxsize=16384)
def pair_style(scale: str, top: int, bottom: int, top_masked: bool, bottom_masked: bool, background=None) -> Style:
    """▀ in the upper value's colour on the lower one's (`background`: there is no lower value)."""
    palette = PALETTES["diverging" if scale == "diverging" else "sequential"]
    lower = background if background is not None else MASKED_COLOUR if bottom_masked else palette[bottom]
    return Style(color=MASKED_COLOUR if top_masked else palette[top], bgcolor=lower)


class HeadsView(Widget, can_focus=False):
    """All heads of the current step at once; `show(picture, head)` draws them."""

    DEFAULT_CSS = """
    HeadsView {
        background: $surface;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.picture: HeadsPicture | None = None
        self.head = 0
        self.layout_used: Layout | None = None
        self._sampled = None   # (levels, masked) per head, shrunk to the panels
        self._drawn = None     # the same, zoomed: one entry per half-row and cell
        self._lines: dict[int, Strip] = {}
        self._base: Style | None = None

    def show(self, picture: HeadsPicture, head: int) -> None:
        if picture is not self.picture:
            self.picture = picture
            self._sampled = None
            self.layout_used = None
        self.head = head
        self._lines.clear()
        self.refresh()

    def on_resize(self) -> None:
        self.layout_used = None
        self._sampled = None
        self._lines.clear()
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None
        self._lines.clear()

    def _fit(self) -> Layout:
        if self.layout_used is None:
            picture = self.picture
            self.layout_used = fit_layout(picture.n_heads, picture.rows, picture.cols, self.size.width, self.size.height)
            self._sampled = sampled(picture, self.layout_used.rows, self.layout_used.cols)
            self._drawn = zoomed(*self._sampled, self.layout_used.zoom)
        return self.layout_used

    def render_line(self, y: int) -> Strip:
        if self._base is None:
            self._base = self.rich_style
        width = self.size.width
        if self.picture is None or width <= 0:
            return Strip.blank(width, self._base)
        strip = self._lines.get(y)
        if strip is None:
            strip = self._draw_line(y).crop_extend(0, width, self._base)
            self._lines[y] = strip
        return strip

    def _draw_line(self, y: int) -> Strip:
        picture, layout = self.picture, self._fit()
        levels, masked = self._drawn
        band, line = divmod(y, layout.height + TITLE_ROWS)
        first = band * layout.columns
        heads = range(first, min(first + layout.columns, picture.n_heads))
        if not heads:
            return Strip.blank(0)
        segments: list[Segment] = []
        gap = Segment(" " * GAP, self._base)
        for number, head in enumerate(heads):
            if number:
                segments.append(gap)
            if line < TITLE_ROWS:
                number = head_number(picture.step, head) + 1  # the model's head (a --heads trace holds some)
                title = next((t for t in (f"head {number}", f"h{number}") if len(t) <= layout.width), str(number))
                title = title[: layout.width].ljust(layout.width)
                segments.append(Segment(title, CURRENT_TITLE_STYLE if head == self.head else TITLE_STYLE))
                continue
            upper = (line - TITLE_ROWS) * 2
            segments.extend(self._cells(levels[head], masked[head], upper, layout))
        return Strip(segments)

    def _cells(self, levels, masked, upper: int, layout: Layout) -> list[Segment]:
        rows = levels.shape[0]
        if upper >= rows:
            return [Segment(" " * layout.width, self._base)]
        top, top_masked = levels[upper].tolist(), masked[upper].tolist()
        background = None
        if upper + 1 < rows:
            bottom, bottom_masked = levels[upper + 1].tolist(), masked[upper + 1].tolist()
        else:  # an odd last row: its lower half is the background
            bottom, bottom_masked = top, top_masked
            background = self._base.bgcolor if self._base is not None else None
        scale = self.picture.scale
        segments, col, cols = [], 0, len(top)
        while col < cols:  # runs of equal colour pairs become one segment
            key = (top[col], bottom[col], top_masked[col], bottom_masked[col])
            end = col + 1
            while end < cols and (top[end], bottom[end], top_masked[end], bottom_masked[end]) == key:
                end += 1
            segments.append(Segment(HALF * (end - col), pair_style(scale, *key, background)))
            col = end
        if cols < layout.width:
            segments.append(Segment(" " * (layout.width - cols), self._base))
        return segments
