"""TensorView: one step's tensor as a heat map or as numbers, on Textual's Line API.

A `ScrollView` that draws only the lines on screen, each from a cached `Strip` (the
pattern of textual's `Log` and toolong's `LogLines`): a 128×128 attention pattern repaints
in milliseconds, where a `DataTable` of coloured cells takes seconds. Row labels (tokens)
stay put when scrolling sideways; the column header stays put when scrolling down.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tracer.text import visible
from tracer.tui.view.picture import MASKED_GLYPH, PALETTES, Picture, format_number

HEADER_ROWS = 1
NUMBER_WIDTH = 9          # cells per value in numbers mode (8 characters and a gap)
MAX_LABEL = 12            # longest row label shown in full
VIEWS = ("heatmap", "numbers")
MASKED_STYLE = Style(color="#8a8a8a", bgcolor="#000000")
LABEL_STYLE = Style(color="#b0b0b0")
CURSOR_LABEL_STYLE = Style(color="#ffffff", bold=True, reverse=True)


@lru_cache(maxsize=None)
def palette_styles(scale: str, numbers: bool) -> tuple[Style, ...]:
    """Rich styles for every palette level: the level's colour as background; in numbers, the text
    black or white, whichever reads on it (readable on dark and light terminals alike)."""
    palette = PALETTES["diverging" if scale == "diverging" else "sequential"]
    if numbers:
        return tuple(Style(color=contrast(colour), bgcolor=colour) for colour in palette)
    return tuple(Style(bgcolor=colour) for colour in palette)


def contrast(colour: str) -> str:
    red, green, blue = RichColor.parse(colour).get_truecolor()
    return "#000000" if (0.299 * red + 0.587 * green + 0.114 * blue) > 140 else "#ffffff"


def fit(text: str, width: int) -> str:
    """Shorten to `width` cells with an ellipsis (labels are user text: never markup)."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def visible_token(token: str) -> str:
    """Whitespace inside a token would vanish on screen (␣/⏎/⇥); other control characters are escaped."""
    return visible(token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")) or "∅"


def legend_text(picture: Picture, view: str, swatches: int = 16) -> Text:
    """`min ███ max  ░ masked` for the colour scale in use."""
    text = Text()
    if picture.scale == "ids":
        text.append("token ids (shown as numbers)", style="dim")
        return text
    palette = PALETTES["diverging" if picture.scale == "diverging" else "sequential"]
    text.append(format_number(picture.vmin), style="bold")
    text.append(" ")
    for i in range(swatches):
        colour = palette[round(i * (len(palette) - 1) / (swatches - 1))]
        text.append(" ", style=Style(bgcolor=colour))
    text.append(" ")
    text.append(format_number(picture.vmax), style="bold")
    text.append(f"   {'diverging, 0 = dark' if picture.scale == 'diverging' else 'sequential'}", style="dim")
    if picture.masked.reshape(-1)[: picture.length or picture.masked.size].any():
        text.append("   ")
        text.append(MASKED_GLYPH * 2, style=MASKED_STYLE)
        text.append(" masked", style="dim")
    return text


class TensorView(ScrollView, can_focus=True, inherit_bindings=False):
    """The current step's tensor: colour heat map (or numbers) with token labels and a cell cursor.

    Left/right arrows stay with the screen (previous/next step), so columns move with
    shift+arrows or , and . while the view has focus. ScrollView's own bindings are not
    inherited: its left/right would scroll a wide tensor instead of changing the step.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1, 0)", "cell up", show=False),
        Binding("down", "move(1, 0)", "cell down", show=False),
        Binding("shift+left,comma", "move(0, -1)", "cell left", show=False),
        Binding("shift+right,full_stop", "move(0, 1)", "cell right", show=False),
        Binding("ctrl+left", "page_columns(-1)", "a screen of columns left", show=False),
        Binding("ctrl+right", "page_columns(1)", "a screen of columns right", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "jump(0)", "first row", show=False),
        Binding("end", "jump(-1)", "last row", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | up / down | Move the cell cursor a row. |
    | shift+left / shift+right (or , / .) | Move the cell cursor a column. |
    | ctrl+left / ctrl+right | Move the cell cursor a screenful of columns. |
    | pageup / pagedown / home / end | Move the cursor by a page / to the first or last row. |
    """

    DEFAULT_CSS = """
    TensorView {
        background: $surface;
        scrollbar-size: 1 1;
    }
    """

    class CellHighlighted(Message):
        """The cell cursor moved (or the picture under it changed)."""

        def __init__(self, view: "TensorView", row: int, col: int) -> None:
            super().__init__()
            self.view = view
            self.row = row
            self.col = col

        @property
        def control(self) -> "TensorView":
            return self.view

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.picture: Picture | None = None
        self.view = "heatmap"
        self.cursor: tuple[int, int] = (0, 0)
        self._cell_width = 3
        self._label_width = 4
        self._lines: LRUCache[tuple, Strip] = LRUCache(1024)
        self._base_style: Style | None = None
        self.message = ""  # one line drawn in place of a picture (compare mode: a step in one trace only)

    # -- what to show --------------------------------------------------------------
    def show(self, picture: Picture | None, view: str | None = None, cursor: tuple[int, int] | None = None) -> None:
        """Draw a new picture (a step, a head) or the same one in another view, the cursor at `cursor`."""
        previous = self.picture
        self.picture = picture
        self.message = ""
        if view is not None:
            self.view = view
        self._lines.clear()
        if picture is None:
            self.virtual_size = Size(0, 0)
            self.refresh()
            return
        self._cell_width = self._pick_cell_width(picture)
        labels = picture.row_labels
        if labels:
            widest = max((len(visible_token(label)) for label in labels), default=1)
        else:
            widest = len(picture.row_name(picture.rows - 1))
        self._label_width = min(widest, MAX_LABEL) + 1
        row, col = self.cursor if cursor is None else cursor
        if previous is None or previous.values.shape != picture.values.shape or cursor is not None:
            row, col = min(row, picture.rows - 1), min(col, picture.cols - 1)
        self.cursor = (max(row, 0), max(col, 0))
        virtual_size = Size(self._label_width + picture.cols * self._cell_width, HEADER_ROWS + picture.rows)
        if not self.size:
            self.virtual_size = virtual_size
        elif virtual_size != self.virtual_size:
            # The view's own size does not depend on its content, so skip the screen-wide
            # relayout a virtual_size change asks for, and size the scrollbars in this frame.
            # Textual has no public call for that: assigning virtual_size relayouts the screen
            # and repaints the scrollbars a frame later (n/p in benchmarks/tui.py: ~14 → ~50 ms);
            # _scroll_update is what ScrollView itself calls once its size is known.
            self.set_reactive(ScrollView.virtual_size, virtual_size)
            self._scroll_update(virtual_size)
        self.refresh()
        self._scroll_to_cursor()
        # No CellHighlighted here: whoever called show() knows the picture changed and
        # updates in the same frame (a message would cost a second repaint).

    def show_message(self, message: str) -> None:
        """No picture: one line of text in its place."""
        self.show(None)
        self.message = message

    def _pick_cell_width(self, picture: Picture) -> int:
        if self.view == "numbers" or picture.scale == "ids":
            return NUMBER_WIDTH
        cols = picture.cols
        if picture.col_labels:
            if cols <= 24:
                widest = max(len(visible_token(label)) for label in picture.col_labels)
                return max(3, min(widest + 1, 7))
            return 3 if cols <= 40 else 2
        return 2 if cols <= 96 else 1

    @property
    def cell_width(self) -> int:
        return self._cell_width

    @property
    def label_width(self) -> int:
        return self._label_width

    # -- drawing -------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base_style = None
        self._lines.clear()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self._base_style
        if base is None:  # computing rich_style walks the DOM: once per style change, not per line
            base = self._base_style = self.rich_style
        picture = self.picture
        if picture is None:
            if y == 0 and self.message:
                return Strip([Segment(fit(visible(self.message), width), base)]).extend_cell_length(width, base)
            return Strip.blank(width, base)
        scroll_x, scroll_y = self.scroll_offset
        label_width = min(self._label_width, width)
        cells_width = max(0, width - label_width)
        if y < HEADER_ROWS:
            label = Strip.blank(label_width, base)
            cells = self._header_strip(scroll_x, scroll_x + cells_width)
        else:
            row = scroll_y + y - HEADER_ROWS
            if row >= picture.rows:
                return Strip.blank(width, base)
            label = self._label_strip(row).crop(0, label_width)
            cells = self._row_strip(row)
        return Strip.join([label, cells.crop_extend(scroll_x, scroll_x + cells_width, base)])

    def _label_strip(self, row: int) -> Strip:
        is_cursor = row == self.cursor[0]
        key = ("label", row, is_cursor)
        strip = self._lines.get(key)
        if strip is None:
            picture = self.picture
            name = visible_token(picture.row_name(row)) if picture.row_labels else picture.row_name(row)
            text = fit(name, self._label_width - 1).rjust(self._label_width - 1) + " "
            strip = Strip([Segment(text, CURSOR_LABEL_STYLE if is_cursor else LABEL_STYLE)], self._label_width)
            self._lines.set(key, strip)
        return strip

    def _header_strip(self, start: int = 0, end: int | None = None) -> Strip:
        """The column labels; numbered columns get only the ticks that fit whole in cells
        start…end (what is in sight), so the edge of the view never cuts a number to its first digit."""
        cursor_col = self.cursor[1]
        key = ("header", cursor_col, start, end)
        strip = self._lines.get(key)
        if strip is not None:
            return strip
        picture, cw = self.picture, self._cell_width
        segments: list[Segment] = []
        if picture.col_labels is not None and cw >= 3:  # narrower cells: numbers (the cell line names the token)
            for col, label in enumerate(picture.col_labels):
                style = CURSOR_LABEL_STYLE if col == cursor_col else LABEL_STYLE
                segments.append(Segment(fit(visible_token(label), cw - 1).ljust(cw - 1) + " " if cw > 1 else visible_token(label)[:1], style))
        else:
            # numbered columns: a tick every `step` columns, spaced so the numbers never collide
            digits = len(str(picture.cols - 1)) + 1
            step = next(s for s in (1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 256, 512, 1024, 10**9) if s * cw >= digits)
            line = [" "] * (picture.cols * cw)
            for col in range(0, picture.cols, step):
                if col * cw < start or (end is not None and col * cw + len(str(col)) > end):
                    continue  # cut by the edge of the view
                for i, ch in enumerate(str(col)):
                    if col * cw + i < len(line):
                        line[col * cw + i] = ch
            text = "".join(line)
            start, end = cursor_col * cw, cursor_col * cw + cw
            segments = [Segment(text[:start], LABEL_STYLE), Segment(text[start:end], CURSOR_LABEL_STYLE), Segment(text[end:], LABEL_STYLE)]
        strip = Strip(segments, picture.cols * cw)
        self._lines.set(key, strip)
        return strip

    def _row_strip(self, row: int) -> Strip:
        cursor_row, cursor_col = self.cursor
        at = cursor_col if row == cursor_row else -1
        key = ("row", row, at)
        strip = self._lines.get(key)
        if strip is None:
            strip = self._draw_row(row, at)
            self._lines.set(key, strip)
        return strip

    def _draw_row(self, row: int, cursor_col: int) -> Strip:
        picture, cw = self.picture, self._cell_width
        numbers = self.view == "numbers" or picture.scale == "ids"
        styles = palette_styles(picture.scale, numbers)
        levels = picture.level[row].tolist()
        masked = picture.masked[row].tolist()
        values = picture.values[row]
        valid_cols = picture.cols if picture.wrap is None else max(0, min(picture.cols, picture.length - row * picture.wrap))
        blank = " " * cw
        masked_text = MASKED_GLYPH * cw
        segments: list[Segment] = []
        append = segments.append
        if numbers:
            # Each number on its level's colour, in black or white by contrast, then a plain gap.
            raw = picture.step.data
            is_mask = picture.step.kind == "mask"
            gap = Segment(" ", self._base_style)
            for col in range(valid_cols):
                if masked[col] and not is_mask:
                    value = raw[picture.index(row, col)]
                    text = "−∞" if value == float("-inf") else "·"
                    style = MASKED_STYLE
                elif is_mask:
                    text, style = ("1", styles[levels[col]]) if not masked[col] else ("0", MASKED_STYLE)
                else:
                    value = float(values[col])
                    text = str(int(value)) if picture.scale == "ids" else format_number(value, cw - 1)
                    style = styles[levels[col]]
                if col == cursor_col:
                    style = style + Style(reverse=True, bold=True)
                append(Segment(text.rjust(cw - 1), style))
                append(gap)
        else:
            # Runs of equal colour become one segment: an attention row is mostly near-zero
            # weights, so this cuts the segments the compositor handles several times over.
            col = 0
            while col < valid_cols:
                level, is_masked = levels[col], masked[col]
                end = col + 1
                while end < valid_cols and end != cursor_col and masked[end] == is_masked and (is_masked or levels[end] == level):
                    end += 1
                if col == cursor_col:
                    end = col + 1
                style = MASKED_STYLE if is_masked else styles[level]
                text = (masked_text if is_masked else blank) * (end - col)
                if col == cursor_col:
                    colour = style.bgcolor.get_truecolor() if style.bgcolor else None
                    fg = contrast("#%02x%02x%02x" % tuple(colour)) if colour else "#ffffff"
                    mark = "◆" if cw < 3 else "[◆]" if cw == 3 else "◆".center(cw)
                    text = mark[:cw].ljust(cw)
                    style = style + Style(color=fg, bold=True)
                append(Segment(text, style))
                col = end
        if valid_cols < picture.cols:
            append(Segment(" " * ((picture.cols - valid_cols) * cw)))
        return Strip(segments, picture.cols * cw)

    # -- the cell cursor -----------------------------------------------------------
    def set_cursor(self, row: int, col: int) -> None:
        picture = self.picture
        if picture is None:
            return
        row = min(max(row, 0), picture.rows - 1)
        col = min(max(col, 0), picture.cols - 1)
        if picture.wrap is not None:
            while col > 0 and not picture.valid(row, col):
                col -= 1
        old_row, old_col = self.cursor
        if (row, col) == (old_row, old_col):
            return
        self.cursor = (row, col)
        # Only the old and new cursor rows (and the header) miss the cache: their keys hold the cursor.
        self.refresh()
        self._scroll_to_cursor()
        self.post_message(self.CellHighlighted(self, row, col))

    def _scroll_to_cursor(self) -> None:
        row, col = self.cursor
        region = self.scrollable_content_region
        view_height = max(1, region.height - HEADER_ROWS)
        view_width = max(1, region.width - self._label_width)
        scroll_x, scroll_y = self.scroll_offset
        left, right = col * self._cell_width, (col + 1) * self._cell_width
        if left < scroll_x:
            scroll_x = left
        elif right > scroll_x + view_width:
            scroll_x = right - view_width
        if row < scroll_y:
            scroll_y = row
        elif row >= scroll_y + view_height:
            scroll_y = row - view_height + 1
        self.scroll_to(scroll_x, scroll_y, animate=False, immediate=True)

    def action_move(self, rows: int, cols: int) -> None:
        row, col = self.cursor
        self.set_cursor(row + rows, col + cols)

    def action_page(self, direction: int) -> None:
        page = max(1, self.scrollable_content_region.height - HEADER_ROWS - 1)
        self.action_move(direction * page, 0)

    def action_page_columns(self, direction: int) -> None:
        """Wide tensors (an FFN's 3072 columns): move the cursor a screenful of columns."""
        columns = max(1, (self.scrollable_content_region.width - self._label_width) // self._cell_width)
        self.action_move(0, direction * columns)

    def action_jump(self, row: int) -> None:
        if self.picture is not None:
            self.set_cursor(row if row >= 0 else self.picture.rows - 1, self.cursor[1])

    def on_click(self, event: events.Click) -> None:
        picture = self.picture
        if picture is None:
            return
        x, y = event.x, event.y
        if y < HEADER_ROWS or x < self._label_width:
            return
        scroll_x, scroll_y = self.scroll_offset
        self.set_cursor(scroll_y + y - HEADER_ROWS, (scroll_x + x - self._label_width) // self._cell_width)
