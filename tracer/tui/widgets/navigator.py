"""StepNavigator: the trace as a folding outline in computation order, the current step highlighted.

Built on the Line API rather than Textual's `Tree`: `Tree` re-renders every visible line
whenever a group opens or closes (its line cache is keyed on the line number), which made
it the slowest part of a layer jump (~45 ms for 38 lines here). Here each line's `Strip` is
cached by what it shows, so after folding, the lines that merely moved are reused.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from rich.segment import Segment
from rich.style import Style

from textual import events
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tracer.tui.view.outline import Node
from tracer.tui.view.titles import fit_label

CURRENT_MARK = " ◂"
BOOKMARK_MARK = "★ "
INDENT = 2
GROUP_STYLE = Style(color="#d0d0d0")
LEAF_STYLE = Style(color="#b8b8b8")
ICON_STYLE = Style(color="#7a9cc6")
CURRENT_STYLE = Style(color="#ffffff", bgcolor="#1f5f9f", bold=True)
CURSOR_STYLE = Style(bgcolor="#3a3a4a")
BOOKMARK_STYLE = Style(color="#ffd75f", bold=True)


class _Line(NamedTuple):
    node: Node
    depth: int


class StepNavigator(ScrollView, can_focus=True):
    """Groups fold; only the path to the current step is kept open, so the outline stays short.

    Enter (or a click) on a step opens it; on a group, folds or unfolds it. Left/right and
    space stay with the screen (previous/next step).
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "move up the outline", show=False),
        Binding("down", "cursor(1)", "move down the outline", show=False),
        Binding("enter", "select", "open the step / fold or unfold the group", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | up / down | Move the outline cursor. |
    | enter | Open the step under the cursor, or fold/unfold its group. |
    """

    DEFAULT_CSS = """
    StepNavigator {
        background: $panel;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    """

    class StepChosen(Message):
        """The user picked a step in the outline (enter or click)."""

        def __init__(self, navigator: "StepNavigator", step_id: str) -> None:
            super().__init__()
            self.navigator = navigator
            self.step_id = step_id

        @property
        def control(self) -> "StepNavigator":
            return self.navigator

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._root = Node("root", "")
        self._expanded: set[str] = set()
        self._lines: list[_Line] = []
        self._index: dict[str, int] = {}
        self._current: str | None = None
        self._bookmarked: set[str] = set()
        self.cursor_line = 0
        self._strips: LRUCache[tuple, Strip] = LRUCache(2048)
        self._base: Style | None = None

    # -- content -------------------------------------------------------------------
    def load(self, outline: Node) -> None:
        """Show a trace's outline (all groups folded; a group's lines are worked out when it opens)."""
        self._root = outline
        self._expanded.clear()
        self._current = None
        self._strips.clear()
        self._relayout()

    def _relayout(self) -> None:
        """Recompute the visible lines after folding (strips are reused from the cache)."""
        lines: list[_Line] = []

        def walk(node: Node, depth: int) -> None:
            lines.append(_Line(node, depth))
            if node.key in self._expanded and node.has_children:
                for child in node.children:
                    walk(child, depth + 1)

        for child in self._root.children:
            walk(child, 0)
        self._lines = lines
        self._index = {line.node.key: y for y, line in enumerate(lines)}
        width = max((line.depth * INDENT + 2 + len(line.node.label) + 4 for line in lines), default=0)
        self.virtual_size = Size(width, len(lines))
        self.cursor_line = min(self.cursor_line, max(0, len(lines) - 1))
        self.refresh()

    def set_bookmarks(self, step_ids: set[str]) -> None:
        if step_ids != self._bookmarked:
            self._bookmarked = set(step_ids)
            self.refresh()

    def show_current(self, step_id: str) -> None:
        """Open the path to this step, fold the rest, and bring it into view."""
        path = self._root.path_to(step_id)
        if path is None:
            return
        node = path[-1]
        self._current = step_id
        groups = {ancestor.key for ancestor in path[:-1]}
        if groups != self._expanded:
            self._expanded = groups
            self._relayout()
        y = self._index.get(node.key, 0)
        self.cursor_line = y
        self._scroll_into_view(y)
        self.refresh()

    @property
    def current(self) -> str | None:
        return self._current

    @property
    def visible_labels(self) -> list[str]:
        return [line.node.label for line in self._lines]

    def _scroll_into_view(self, y: int) -> None:
        height = self.scrollable_content_region.height or self.size.height
        top = self.scroll_offset.y
        if height <= 0:
            return
        if y < top or y >= top + height:
            self.scroll_to(None, max(0, y - height // 3), animate=False, immediate=True)

    # -- drawing -------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        if self._base is None:
            self._base = self.rich_style
        width = self.scrollable_content_region.width  # without the scrollbar: labels are fitted to what shows
        index = self.scroll_offset.y + y
        if index >= len(self._lines):
            return Strip.blank(width, self._base)
        line = self._lines[index]
        node = line.node
        is_current = node.step_id is not None and node.step_id == self._current
        is_cursor = self.has_focus and index == self.cursor_line
        marked = node.step_id in self._bookmarked if node.step_id else False
        expanded = node.key in self._expanded
        key = (node.key, line.depth, is_current, is_cursor, marked, expanded, width)
        strip = self._strips.get(key)
        if strip is None:
            strip = self._draw(line, is_current, is_cursor, marked, expanded, width)
            self._strips.set(key, strip)
        return strip

    def _draw(self, line: _Line, is_current: bool, is_cursor: bool, marked: bool, expanded: bool, width: int) -> Strip:
        node, base = line.node, self._base
        segments = [Segment(" " * (line.depth * INDENT))]
        if node.has_children:
            segments.append(Segment("▼ " if expanded else "▶ ", ICON_STYLE))
        label_style = CURRENT_STYLE if is_current else (GROUP_STYLE if node.has_children else LEAF_STYLE)
        if marked:
            segments.append(Segment(BOOKMARK_MARK, BOOKMARK_STYLE))
        # Labels are plain text (Segments are never parsed as markup): "[MASK]" shows as typed.
        # A label too long for the outline keeps its end (the chosen token), not its start.
        mark = CURRENT_MARK if is_current else ""
        room = width - sum(segment.cell_length for segment in segments) - len(mark)
        segments.append(Segment(fit_label(node.label, room) + mark, label_style))
        strip = Strip(segments).apply_style(base)
        if is_cursor:
            strip = strip.apply_style(CURSOR_STYLE)
        return strip.crop_extend(0, width, base + (CURSOR_STYLE if is_cursor else Style()))

    # -- keys and mouse -----------------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        if not self._lines:
            return
        self.cursor_line = min(max(self.cursor_line + delta, 0), len(self._lines) - 1)
        self._scroll_into_view(self.cursor_line)
        self.refresh()

    def action_select(self) -> None:
        self._choose(self.cursor_line)

    def _choose(self, y: int) -> None:
        if not 0 <= y < len(self._lines):
            return
        node = self._lines[y].node
        self.cursor_line = y
        if node.step_id is not None:
            self.post_message(self.StepChosen(self, node.step_id))
            return
        self._expanded ^= {node.key}
        self._relayout()

    def on_click(self, event: events.Click) -> None:
        self._choose(self.scroll_offset.y + event.y)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
