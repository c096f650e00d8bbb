"""Moved to tracer.tui.view.picture; this name stays only while tracer/tui/explain.py imports it
(that module is being rewritten on another branch and will import the new path)."""

from tracer.tui.view.picture import *  # noqa: F401,F403
from tracer.tui.view.picture import Picture, format_number  # noqa: F401  (what explain.py uses)
