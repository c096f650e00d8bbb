"""FittedLine: a line of text worked out for its own width, and worked out again when that changes."""

from __future__ import annotations

from typing import Callable

from rich.text import Text

from textual.widgets import Static


class FittedLine(Static):
    """Shows `fit(width)`: the screen says what to show, this widget says how wide it is.

    Long user text (a sentence, a note) gives way inside `fit`, so what must stay in sight
    (trace 2/3, ▶ playing, ★) is never cut off by the ellipsis at the edge.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._fit: Callable[[int], Text] | None = None
        self._width = -1

    def show(self, fit: Callable[[int], Text]) -> None:
        self._fit = fit
        self._draw()

    def _draw(self) -> None:
        if self._fit is not None:
            self._width = self.content_size.width
            self.update(self._fit(self._width), layout=False)  # fixed height: no relayout

    def on_resize(self) -> None:
        if self.content_size.width != self._width:
            self._draw()
