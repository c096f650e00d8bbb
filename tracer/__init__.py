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
