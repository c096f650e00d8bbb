"""Filters at attach time (`--only`, `--layers`, `--steps`): left-out taps get no hook; the trace says
what it kept; the UI, check and the API treat absent steps as absent."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.capture.recorder import Recorder
from tracer.capture.run import generate
from tracer.capture.select import TapFilter
from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.hooks import hook_points
from tracer.nn.loading import load_model
from tracer.trace.check import check_trace
from tracer.trace.session import SessionStore
from tracer.tui.view.viewer import Viewer


def test_only_the_selected_taps_get_a_hook():
    loaded = load_model("en-gpt-tiny")
    select = TapFilter.parse(["blocks.*.attn.hook_pattern"], layers="1")
    recorder = Recorder(loaded.model, select.taps)
    with recorder.attached():
        hooked = {name for name, point in hook_points(loaded.model).items() if point._forward_hooks}
    assert hooked == {"blocks.1.attn.hook_pattern", "hook_probs"}
    assert not any(point._forward_hooks for point in hook_points(loaded.model).values())  # and they come off


@pytest.mark.parametrize("kv_cache", [True, False])
def test_a_filtered_trace_keeps_what_it_says_and_passes_check(kv_cache):
    loaded = load_model("de-en-tiny")
    select = TapFilter.parse(["*attn.hook_*"], layers="1", steps="2-3")
    full = generate(loaded, "ich bin piyush", max_new_tokens=4, traced=True, kv_cache=False).trace
    trace = generate(loaded, "ich bin piyush", max_new_tokens=4, traced=True, kv_cache=kv_cache, select=select).trace
    assert trace.capture == {"kv_cache": kv_cache, "filter": {"only": ["*attn.hook_*"], "layers": [1], "steps": [2, 3]}}
    assert trace.decode_steps == [2, 3]
    assert {step.layer for step in trace if step.kind != "probs"} == {1}
    assert all(".attn.hook_" in step.id or ".cross_attn.hook_" in step.id or step.kind == "probs" for step in trace)
    assert "decoder.1.attn.hook_pattern@1" not in trace and "decoder.0.attn.hook_pattern@2" not in trace
    for step in trace:  # a kept step stands alone, equal to the full re-run's
        assert step.cached == 0
        np.testing.assert_allclose(step.data, full[step.id], rtol=1e-5, atol=1e-5)
    assert [p["chosen"] for p in trace.predictions()] == [p["chosen"] for p in full.predictions()][1:3]
    report = check_trace(trace)
    assert report.ok, report.failures[:3]
    assert report.checked > 0


def test_a_filtered_trace_opens_in_the_viewer_and_the_ui(isolated_sessions):
    result = CliRunner().invoke(cli, ["run", "the cat drank the", "-m", "en-gpt-tiny", "--only", "*hook_pattern",
                                      "--layers", "0", "--steps", "1,3", "--no-tui", "--save", "f"])
    assert result.exit_code == 0, result.output
    trace = SessionStore(isolated_sessions).load("f").traces[0]
    assert trace.capture["filter"] == {"only": ["*hook_pattern"], "layers": [0], "steps": [1, 3]}
    viewer = Viewer([trace])
    seen = [viewer.step_id]
    while viewer.next_step():
        seen.append(viewer.step_id)
    assert seen == trace.ids == ["blocks.0.attn.hook_pattern@1", "hook_probs@1", "blocks.0.attn.hook_pattern@3", "hook_probs@3"]
    check = CliRunner().invoke(cli, ["check", "f"])
    assert check.exit_code == 0, check.output


async def test_a_filtered_trace_opens_in_the_textual_app():
    from tracer.tui.app import TracerApp

    trace = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=3, traced=True,
                     select=TapFilter.parse(["*hook_pattern"], steps="2")).trace
    app = TracerApp([trace])
    async with app.run_test(size=(120, 40)) as pilot:
        assert app.trace_screen.step_id == "blocks.0.attn.hook_pattern@2"
        await pilot.press("n")
        assert app.trace_screen.step_id == "blocks.1.attn.hook_pattern@2"


@pytest.mark.parametrize("option,value", [("--layers", "a-b"), ("--steps", "3-1"), ("--layers", "-1")])
def test_bad_ranges_are_bad_input(option, value):
    with pytest.raises(BadInput, match=option):
        TapFilter.parse(layers=value) if option == "--layers" else TapFilter.parse(steps=value)
    result = CliRunner().invoke(cli, ["run", "ich bin piyush", option, value, "--no-tui"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
