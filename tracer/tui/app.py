"""TracerApp: holds the open traces, bookmarks and session name; the TraceScreen does the rest."""

from __future__ import annotations

import gc
from typing import Callable, Sequence

from textual.app import App
from textual.screen import Screen

from tracer.trace import Trace
from tracer.trace.state import VIEWS, Bookmark, UIState
from tracer.tui.commands import StepFinder
from tracer.tui.screens.trace_screen import TraceScreen


class TracerApp(App[None]):
    """Step through one or more traces. Exposes and restores its state as a `UIState`."""

    CSS_PATH = "app.tcss"
    TITLE = "tracer"
    COMMANDS = App.COMMANDS | {StepFinder}

    def __init__(
        self,
        traces: Sequence[Trace],
        retrace: Callable[[str], Trace] | None = None,
        state: UIState | None = None,
        session_name: str | None = None,
        play: bool = False,
    ) -> None:
        super().__init__()
        if not traces:
            raise ValueError("TracerApp needs at least one trace")
        self.traces: list[Trace] = list(traces)
        self.retrace = retrace
        self.session_name = session_name
        self.play = play
        self.bookmarks: list[Bookmark] = []
        self._initial_state = state or UIState()
        self.trace_screen: TraceScreen | None = None

    def on_ready(self) -> None:
        if not gc.isenabled():  # started in tracer.collector.collector_paused: the first frame is up now
            gc.freeze()  # what start-up built lives as long as the app: keep it out of later collections
            gc.enable()

    def get_default_screen(self) -> Screen:
        self.trace_screen = TraceScreen()
        return self.trace_screen

    def trace_screen_ready(self) -> None:
        """Called by the TraceScreen once its widgets exist: open the first trace."""
        self.restore(self._initial_state)
        if self.play:
            self.trace_screen.start_playing()

    def restore(self, state: UIState) -> None:
        """Go back to a saved place: trace, step, head, view and bookmarks (bad values are ignored)."""
        screen = self.trace_screen
        self.bookmarks = [
            Bookmark(b.trace, b.step, b.note) for b in state.bookmarks
            if 0 <= b.trace < len(self.traces) and b.step in self.traces[b.trace]
        ]
        screen.head = max(0, state.head)
        screen.view = state.view if state.view in VIEWS else "heatmap"
        index = state.trace if 0 <= state.trace < len(self.traces) else 0
        screen.open_trace(index, state.step)

    def ui_state(self) -> UIState:
        """Where the user is and what they marked, for a session to save."""
        screen = self.trace_screen
        return UIState(
            trace=screen.trace_index,
            step=screen.step_id,
            head=screen.head,
            view=screen.view,
            bookmarks=[Bookmark(b.trace, b.step, b.note) for b in self.bookmarks],
        )
