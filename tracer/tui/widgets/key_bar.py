"""KeyBar: the screen's keys on one line, with `? help` and `q quit` always in sight.

Textual's Footer draws each key as a widget of its own (thirteen here, with ~3 KB of CSS to
parse at start) and, when the terminal is narrow, cuts off the end of the row — which is where
help and quit are. This bar is one widget; where the hints don't all fit, the middle ones give way.
"""

from __future__ import annotations

from typing import Iterable

from rich.cells import cell_len
from rich.text import Text

from textual import events
from textual.binding import Binding
from textual.widget import Widget

GAP = " …"  # marks the hints left out (all of them are in the help screen)


class KeyBar(Widget):
    """One line of `key description` hints for `bindings` (those with show=True), in order.

    The last `keep` hints are always drawn; a click on a hint presses its key.
    """

    DEFAULT_CSS = """
    KeyBar {
        height: 1;
        background: $footer-background;
        color: $footer-description-foreground;
    }
    KeyBar > .key-bar--key {
        color: $footer-key-foreground;
        text-style: bold;
    }
    """
    COMPONENT_CLASSES = {"key-bar--key"}

    def __init__(self, bindings: Iterable[Binding], keep: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self._bindings = [b for b in bindings if isinstance(b, Binding) and b.show]
        self._keep = keep
        self._spans: list[tuple[int, int, str]] = []  # (first cell, end cell, key) of each hint drawn

    def set_bindings(self, bindings: Iterable[Binding]) -> None:
        """Show these hints instead (the screen adds keys that only work now, e.g. compare mode's)."""
        shown = [b for b in bindings if isinstance(b, Binding) and b.show]
        if shown != self._bindings:
            self._bindings = shown
            self.refresh()

    def _hints(self) -> list[tuple[str, str, str]]:
        """(key as shown, description, key to press) per binding."""
        return [(self.app.get_key_display(b), b.description, b.key.split(",")[0].strip()) for b in self._bindings]

    def render(self) -> Text:
        hints = self._hints()
        widths = [cell_len(f" {shown} {description} ") for shown, description, _ in hints]
        chosen = list(range(len(hints)))
        if sum(widths) > self.size.width:
            keep = min(self._keep, len(hints))
            room = self.size.width - sum(widths[len(hints) - keep:]) - cell_len(GAP)
            head: list[int] = []
            for index in range(len(hints) - keep):
                if widths[index] > room:
                    break
                head.append(index)
                room -= widths[index]
            chosen = head + [-1] + list(range(len(hints) - keep, len(hints)))
        key_style = self.get_component_rich_style("key-bar--key")
        text = Text(no_wrap=True, overflow="crop")
        self._spans = []
        for index in chosen:
            if index < 0:
                text.append(GAP)
                continue
            shown, description, key = hints[index]
            start = text.cell_len
            text.append(f" {shown}", style=key_style)
            text.append(f" {description} ")
            self._spans.append((start, text.cell_len, key))
        return text

    def on_click(self, event: events.Click) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.app.simulate_key(key)
                return
