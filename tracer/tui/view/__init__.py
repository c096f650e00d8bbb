"""The UI without Textual: the Viewer (where the user is, every move), the outline, the explain
panel's words and what the tensor view draws.

Nothing here imports textual or torch (tests/test_viewer.py checks), so every move is a plain
method that unit tests call directly; tracer/tui/screens and widgets only map keys and draw.
"""

from tracer.tui.view.viewer import Change, Viewer, nearest_step

__all__ = ["Change", "Viewer", "nearest_step"]
