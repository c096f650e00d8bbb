"""Helpers shared by the UI tests: the fixture trace and what the screen shows, as text."""

from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "ich-bin-piyush.json"


def fixture_trace():
    """"ich bin piyush" through a seeded random encoder-decoder (see fixtures/make_fixtures.py)."""
    from tracer.trace.load import read_json

    return read_json(FIXTURE)


def make_app(**kwargs):
    from tracer.tui.app import TracerApp

    return TracerApp([fixture_trace()], **kwargs)


def screen_lines(app) -> list[str]:
    """The terminal's rows as plain text, as the compositor would paint them now.

    Textual has no public way to read the composed screen (App.export_screenshot itself reads
    Screen._compositor and gives SVG): this is the one place the tests reach inside."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def screen_text(app) -> str:
    return "\n".join(screen_lines(app))
