"""The Textual UI (never imports torch); tracer.tui.view is its part without Textual."""


def open_traces(traces, retrace=None, state=None, session_name=None, play=False, store=None, compare=False, tol=None):
    """Open the step-through UI on these traces.

    retrace: optional callable text -> Trace, for tracing a new sentence without leaving
    (the CLI passes one that runs the model; the UI itself never imports torch).
    state: a tracer.trace.state.UIState to restore (replay). play: start autoplay.
    store: the tracer.trace.session.SessionStore that saving writes into (None: its default folder).
    compare: open in compare mode, the first trace against the second (`tracer diff --tui`), with
    tolerance `tol` (None: `tracer diff`'s default).
    A step that could not be drawn is shown as its problem, the UI going on; once it closes, the
    first such problem is raised as a DamagedFile (the CLI's `Error:` line, exit 1). So is a trace
    whose later passes, read once the first frame is up (`Trace.complete`), are damaged: the UI
    closes at once.
    """
    from tracer.collector import collector_paused

    with collector_paused():  # until the first frame: TracerApp.on_ready turns it back on
        from tracer.tui.app import TracerApp

        app = TracerApp(traces, retrace=retrace, state=state, session_name=session_name, play=play, store=store,
                        compare=compare, tol=tol)
        app.run()
    if app.load_error is not None:  # a later pass, read once the first frame was up, is damaged
        raise app.load_error
    failed = app.trace_screen.step_errors
    if failed:  # the UI went on past steps it could not draw; the exit code says so
        from tracer.errors import DamagedFile
        from tracer.text import visible

        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DamagedFile(f"{visible(failed[0])}{more}")
