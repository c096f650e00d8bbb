"""TracerApp: builds the Viewer (where the user is) and the TraceScreen (keys and drawing)."""

from __future__ import annotations

import gc
from typing import Callable, Sequence

from textual import events
from textual.app import App
from textual.screen import Screen

from tracer.errors import DamagedFile
from tracer.trace import Trace
from tracer.trace.state import Bookmark, UIState
from tracer.tui.commands import StepFinder
from tracer.tui.screens.trace_screen import TraceScreen
from tracer.tui.view import Viewer


class TracerApp(App[None]):
    """Step through one or more traces. Exposes and restores its state as a `UIState`.

    `store`: the `tracer.trace.session.SessionStore` that `s` saves into, handed over by the
    CLI (None: the store's default folder).
    """

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
        store=None,
        compare: bool = False,
        tol: float | None = None,
    ) -> None:
        """`compare`: open in compare mode, the first trace against the second (`tracer diff --tui`);
        `tol`: compare mode's tolerance (None: `tracer diff`'s default)."""
        super().__init__()
        if not traces:
            raise ValueError("TracerApp needs at least one trace")
        self.viewer = Viewer(traces, state) if tol is None else Viewer(traces, state, tol=tol)
        if compare:
            self.viewer.compare_with(1)
        self.trace_screen = TraceScreen(self.viewer, retrace=retrace, store=store, session_name=session_name, play=play)
        self.load_error: DamagedFile | None = None  # a later pass of a trace that turned out damaged

    def on_ready(self) -> None:
        """The first frame is up: read what it did not need (a long decode's later passes), then
        turn the collector back on; a damaged pass closes the UI (the CLI says its error, exit 1)."""
        if not self._read_later_passes():
            self.exit(return_code=1)
            return
        if not gc.isenabled():  # started in tracer.collector.collector_paused: the first frame is up now
            gc.freeze()  # what start-up built lives as long as the app: keep it out of later collections
            gc.enable()

    async def on_event(self, event: events.Event) -> None:
        """Input that comes before on_ready has read the later passes (keys typed ahead, a click as
        the first frame appears) waits for them: they are read first, so that no key, click or
        finder meets an unread pass in its handler. If one is damaged the input is dropped and
        on_ready closes the UI with the error (closing here, before the screen is up, is not clean)."""
        if isinstance(event, events.InputEvent) and not event.is_forwarded and not self._read_later_passes():
            return
        await super().on_event(event)

    def _read_later_passes(self) -> bool:
        """Complete every trace (nothing to do once they are); False, the error kept in
        `load_error`, if one is damaged (then it is not read again)."""
        if self.load_error is not None:
            return False
        try:
            for trace in self.viewer.traces:
                trace.complete()
        except DamagedFile as exc:  # checked like the rest, only later: the CLI says it as it says any
            self.load_error = exc
            return False
        return True

    def get_default_screen(self) -> Screen:
        return self.trace_screen

    @property
    def traces(self) -> list[Trace]:
        return self.viewer.traces

    @property
    def bookmarks(self) -> list[Bookmark]:
        return self.viewer.bookmarks

    @property
    def session_name(self) -> str | None:
        """The session `s` saves into without asking (set once saved)."""
        return self.trace_screen.session_name

    def restore(self, state: UIState) -> None:
        """Go back to a saved place: trace, step, head, cell, view and bookmarks (bad values are ignored)."""
        self.trace_screen.draw(self.viewer.restore(state))

    def ui_state(self) -> UIState:
        """Where the user is and what they marked, for a session to save."""
        return self.viewer.to_state()
