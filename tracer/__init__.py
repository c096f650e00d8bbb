"""tracer: step through a transformer's computation one tensor at a time."""

__version__ = "0.1.0"


def load(source, sessions_dir=None):
    """Open a session (a folder, or a name in the sessions folder) or a JSON export as a Trace.

    `t["encoder.0.attn.hook_pattern"]` is a numpy array, `t.steps` the steps with their
    metadata, `t.find(kind=..., layer=..., decode_step=...)` filters them. A session with
    several traces gives its first; `load_session` gives them all. Numpy only, no torch.
    """
    return load_session(source, sessions_dir).traces[0]


def load_session(source, sessions_dir=None):
    """A session with all its traces and its UI state (a JSON export gives one trace)."""
    from tracer.trace.session import open_source

    return open_source(source, sessions_dir)


def diff(a, b, tol=None, sessions_dir=None):
    """Compare trace `b` with trace `a`, step by step: a TraceDiff of numpy figures.

    `a` and `b` are Traces or what `load` takes (a session name or folder, a JSON export).
    `d.first_over_tol`, `d.most_changed(10)`, `d["encoder.0.attn.hook_pattern"].rel_l2`,
    `d.equal`; `tracer.trace.diff.delta(step_a, step_b)` is one step's B − A. Numpy only, no torch.
    """
    from os import PathLike

    from tracer.trace.diff import DEFAULT_TOL, diff as diff_traces

    a, b = (load(x, sessions_dir) if isinstance(x, (str, PathLike)) else x for x in (a, b))
    return diff_traces(a, b, DEFAULT_TOL if tol is None else tol)
