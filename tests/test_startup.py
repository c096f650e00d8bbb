"""What the UI does to start quickly: the cycle collector paused until the first frame, one
BLAS thread for replay. (How quickly is measured by benchmarks/replay.py, not here.)"""

from __future__ import annotations

import gc
import os

import pytest
from click.testing import CliRunner

from tui_helpers import FIXTURE, make_app

from tracer.cli import cli
from tracer.collector import collector_paused


@pytest.fixture
def collector_on():
    """Each test starts with the collector on and leaves it on, nothing frozen."""
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_collector_paused_pauses_the_collector_and_restores_it(collector_on):
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("start-up failed")
    assert gc.isenabled()  # back on after a failure too


def test_collector_paused_leaves_a_collector_that_was_off_off(collector_on):
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


async def test_the_collector_is_back_on_once_the_first_frame_is_up(collector_on):
    with collector_paused():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert gc.isenabled()  # the app turned it on: not left off for the whole session
            assert gc.get_freeze_count() > 0  # and what start-up built is kept out of collections
            await pilot.press("n")
            assert app.trace_screen.step_id == app.traces[0].steps[1].id


async def test_an_app_started_without_collector_paused_freezes_nothing(collector_on):
    gc.unfreeze()
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("4", "4")])
def test_replay_asks_for_one_blas_thread_unless_told_otherwise(monkeypatch, preset, expected):
    if preset is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", preset)
    result = CliRunner().invoke(cli, ["replay", str(FIXTURE), "--no-tui"])
    assert result.exit_code == 0, result.output
    assert "ich bin piyush" in result.output
    assert os.environ["OPENBLAS_NUM_THREADS"] == expected
