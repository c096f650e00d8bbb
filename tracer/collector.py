"""Pausing Python's cycle collector while many long-lived objects are built."""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off inside the block; as it was before once the block is left,
    errors included.

    For work that builds many objects and no garbage cycles — a session's thousands of steps,
    the UI's start (modules, styles, widgets) — where the collector would only walk the growing
    heap again and again: a third of a session's open time, about a tenth of the UI's time to its
    first frame (benchmarks/replay.py). The UI turns it back on at its first frame
    (TracerApp.on_ready), freezing what start-up built.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
