"""The Textual UI (never imports torch)."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def quick_start():
    """Python's cycle collector off while the UI starts up.

    Start-up builds some 200,000 objects that all live as long as the app (modules, styles,
    widgets, steps), so collecting them again and again is wasted work: about a tenth of the time
    to the first frame (benchmarks/replay.py). TracerApp turns the collector back on once its
    first frame is up, freezing what start-up built; leaving this block turns it on in any case.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def open_traces(traces, retrace=None, state=None, session_name=None, play=False):
    """Open the step-through UI on these traces.

    retrace: optional callable text -> Trace, for tracing a new sentence without leaving
    (the CLI passes one that runs the model; the UI itself never imports torch).
    state: a tracer.trace.state.UIState to restore (replay). play: start autoplay.
    """
    with quick_start():
        from tracer.tui.app import TracerApp

        TracerApp(traces, retrace=retrace, state=state, session_name=session_name, play=play).run()
