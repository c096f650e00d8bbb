"""The UI on a trace the readers accepted but one of whose steps cannot be drawn (issue 19, class 7):
it goes on, shows that step's problem in one line where the tensor would be, and the exit code says so."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import tracer
from tracer.cli import cli
from tracer.errors import DamagedFile
from tracer.trace.session import SessionStore
from tracer.tui import open_traces
from tracer.tui.app import TracerApp
from tracer.tui.widgets.title_bar import FittedLine

from session_helpers import synthetic_trace
from tui_helpers import screen_lines


@pytest.fixture
def damaged_after_opening(tmp_path, monkeypatch):
    """A loaded session whose tensor file is then cut short: its later tensors cannot be read."""
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "s"))
    folder = SessionStore().save("s", [synthetic_trace()])
    trace = tracer.load("s")
    os.truncate(folder / "trace-0.safetensors", 300)
    return trace


async def test_the_ui_steps_past_a_step_it_cannot_draw(damaged_after_opening):
    trace = damaged_after_opening
    app = TracerApp([trace])
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.trace_screen
        seen, shown_errors = [], []
        for _ in range(len(trace)):
            seen.append(screen.step_id)
            await pilot.press("v", "tab", "down", "v")
            title = "".join(screen_lines(app))
            if "cannot be drawn" in title:
                shown_errors.append(screen.step_id)
            await pilot.press("n")
        await pilot.press("q")
    assert seen == trace.ids                       # every step was reached
    assert shown_errors                            # the damaged ones said so where the tensor would be
    assert {e.split(":")[0] for e in screen.step_errors} == set(shown_errors)
    assert all("cut short" in e and "\n" not in e for e in screen.step_errors)


def test_the_exit_code_says_a_step_could_not_be_drawn(damaged_after_opening, monkeypatch):
    """open_traces (what `tracer replay` runs) raises after the UI closes: `Error:` and exit 1."""
    async def walk(app: TracerApp) -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(len(app.traces[0])):
                await pilot.press("n")
            await pilot.press("q")

    def run_headless(self, *args, **kwargs):
        import asyncio

        asyncio.run(walk(self))

    monkeypatch.setattr(TracerApp, "run", run_headless)
    with pytest.raises(DamagedFile, match=r"the tensor cannot be drawn .*cut short.* \(and \d+ more\)"):
        open_traces([damaged_after_opening])
    from tracer.trace import session as session_module

    real_open = session_module.open_source

    def open_then_damage(source, sessions_dir=None, **options):  # the file is cut short once replay has opened it
        opened = real_open(source, sessions_dir, **options)
        os.truncate(opened.path / "trace-0.safetensors", 300)
        return opened

    SessionStore().save("fresh", [synthetic_trace()])
    monkeypatch.setattr(session_module, "open_source", open_then_damage)
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)
    result = CliRunner().invoke(cli, ["replay", "fresh"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "cannot be drawn" in result.output
    assert "Traceback" not in result.output


async def test_a_trace_that_draws_reports_nothing():
    app = TracerApp([synthetic_trace()])
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(len(app.traces[0])):
            await pilot.press("n")
        assert app.trace_screen.step_errors == []
        assert app.screen.query_one("#tensor-title", FittedLine) is not None
