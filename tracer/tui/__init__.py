"""The Textual UI (never imports torch)."""


def open_traces(traces, loaded=None, state=None):
    """Open the step-through UI on these traces."""
    from tracer.tui.app import TracerApp

    TracerApp(traces, loaded=loaded, state=state).run()
