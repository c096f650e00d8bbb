"""tracer: step through a transformer's computation one tensor at a time."""

__version__ = "0.1.0"


def load(path):
    """Open a saved session folder or a JSON export as a Trace (numpy only, no torch)."""
    from tracer.trace.load import load_trace

    return load_trace(path)
