"""`tracer run --heads`: per-head taps keep only the chosen heads; the steps say which, so the UI
names the model's real heads, check maps them (grouped-query attention included), the KV-cached
assembly still works, and the estimate shrinks."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.capture.budget import estimate
from tracer.capture.run import generate
from tracer.capture.select import TapFilter
from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.loading import load_model
from tracer.trace.check import check_trace
from tracer.trace.export import write_json
from tracer.trace.load import read_json
from tracer.trace.session import SessionStore

from test_kv_cache import LLAMA_TINY


@pytest.fixture(scope="module")
def llama_tiny(tmp_path_factory):
    """4 query heads sharing 2 key/value heads (heads 0-1 read kv head 0, heads 2-3 kv head 1)."""
    from tracer.nn import ModelConfig
    from tracer.nn.random_model import make_random_model

    cfg = ModelConfig(name="tiny-gqa", vocab_size=120, d_model=32, n_heads=4, d_ff=48, n_layers=2,
                      max_positions=40, **LLAMA_TINY)
    return load_model(make_random_model(tmp_path_factory.mktemp("gqa"), cfg))


def traced(loaded, text, heads=None, kv_cache=True, n=4):
    select = TapFilter.parse(heads=heads) if heads is not None else None
    return generate(loaded, text, max_new_tokens=n, traced=True, kv_cache=kv_cache, select=select).trace


def assert_kept_heads_equal(filtered, full):
    """Every step of the filtered trace is the full trace's, along its head axis only its heads."""
    assert filtered.ids == full.ids
    for step in filtered:
        expected = full[step.id]
        if "head" in step.axes:
            expected = np.take(expected, step.heads, axis=step.axes.index("head"))
        np.testing.assert_allclose(step.data, expected, rtol=1e-5, atol=1e-6, err_msg=step.id)


@pytest.mark.parametrize("kv_cache", [True, False])
def test_gqa_query_heads_map_to_their_kv_heads_and_check_passes(llama_tiny, kv_cache):
    full = traced(llama_tiny, "the cat", kv_cache=kv_cache)
    trace = traced(llama_tiny, "the cat", heads="1,3", kv_cache=kv_cache)
    assert trace.capture["filter"] == {"heads": [1, 3]}
    t = trace.decode_steps[-1]
    pattern, k = trace.step(f"blocks.0.attn.hook_pattern@{t}"), trace.step(f"blocks.0.attn.hook_k@{t}")
    assert pattern.extra["heads"] == {"kept": [1, 3], "of": 4} and pattern.shape[0] == 2
    assert k.heads == [0, 1] and k.heads_of == 2       # heads 1 and 3 read kv heads 0 and 1
    assert trace.step("blocks.0.attn.hook_q@1").heads == [1, 3]
    assert_kept_heads_equal(trace, full)                 # assembled KV views included (Q·Kᵀ filled in by head)
    report = check_trace(trace)
    assert report.ok, report.failures[:3]
    assert any("concat" in note and "--heads" in note for note in report.notes)


def test_one_kv_head_is_kept_when_its_query_heads_are(llama_tiny):
    trace = traced(llama_tiny, "the cat", heads="2-3")
    assert trace.step("blocks.1.attn.hook_v@2").heads == [1]
    assert check_trace(trace).ok
    altered = trace.step("blocks.1.attn.hook_z@2")     # a late step's new row, head 3
    altered.rows[..., 1, 0] += 0.5
    assert "blocks.1.attn.hook_z@2" in {f.step_id for f in check_trace(trace).failures}


def test_a_seq2seq_trace_keeps_the_heads_in_cross_attention_too(seq2seq_model, tmp_path):
    loaded = load_model(seq2seq_model)
    full = traced(loaded, "ich bin piyush", kv_cache=False)
    trace = traced(loaded, "ich bin piyush", heads="0,2", kv_cache=False)
    assert trace.step("decoder.0.cross_attn.hook_pattern@2").heads == [0, 2]
    assert_kept_heads_equal(trace, full)
    assert check_trace(trace).ok
    write_json(trace, tmp_path / "h.json")             # the heads survive an export and a session
    back = read_json(tmp_path / "h.json")
    assert back.step("encoder.0.attn.hook_pattern").heads == [0, 2]
    SessionStore(tmp_path / "s").save("h", [trace])
    again = SessionStore(tmp_path / "s").load("h").trace
    assert again.step("decoder.1.attn.hook_v@1").heads == [0, 2] and check_trace(again).ok


def test_the_estimate_shrinks_with_the_heads(seq2seq_model):
    loaded = load_model(seq2seq_model)
    every = estimate(loaded, "ich bin piyush", max_new_tokens=4)["bytes"]
    some = estimate(loaded, "ich bin piyush", max_new_tokens=4, select=TapFilter.parse(heads="1"))["bytes"]
    trace = traced(loaded, "ich bin piyush", heads="1", kv_cache=True, n=4)
    assert some < every
    assert some == sum(step.rows.nbytes for step in trace)  # as exact as without --heads


def test_heads_the_model_lacks_are_bad_input(seq2seq_model):
    with pytest.raises(BadInput, match="--heads 7: the model has 4 heads"):
        traced(load_model(seq2seq_model), "ich bin piyush", heads="1,7")
    result = CliRunner().invoke(cli, ["run", "ich bin piyush", "--heads", "2-x", "--no-tui"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


async def test_the_ui_names_the_real_heads(llama_tiny, isolated_sessions):
    from tracer.tui.app import TracerApp
    from tracer.tui.view.explain import describe_cell
    from tracer.tui.widgets.heads_view import HeadsView

    SessionStore(isolated_sessions).save("h", [traced(llama_tiny, "the cat", heads="1,3")])
    assert CliRunner().invoke(cli, ["check", "h"]).exit_code == 0
    trace = SessionStore(isolated_sessions).load("h").trace
    app = TracerApp([trace])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.trace_screen
        screen.go("blocks.0.attn.hook_attn_raw@3")
        await pilot.pause()
        title = str(screen.query_one("#tensor-title").render())
        assert "head 2/4" in title                       # position 0 holds the model's head 1 (counted from 1: 2)
        assert "colours: head 2's range" in title          # the colour note names the model's head too
        assert "stats    2 of 4 heads (2, 4): min" in screen.query_one("#explain").plain  # which heads the stats cover
        await pilot.press("h")
        await pilot.pause()
        assert "head 4/4" in str(screen.query_one("#tensor-title").render())
        picture = screen.viewer.picture()
        text = describe_cell(trace, picture, 0, 0)
        assert "head 4/4" in text and "key/value head 2/2" in text  # head 3 reads kv head 1 (from 1: 2)
        await pilot.press("A")
        await pilot.pause()
        panels = screen.query_one(HeadsView)
        first_line = panels.render_line(0).text
        assert "head 2" in first_line and "head 4" in first_line and "head 1" not in first_line
        assert "2 of 4 heads (2, 4)" in str(screen.query_one("#tensor-title").render())
        await pilot.press("A")
        await pilot.press("g")                           # one token's attention in every layer and head
        await pilot.pause()
        from textual.widgets import DataTable

        columns = [str(column.label) for column in app.screen.query_one(DataTable).columns.values()]
        assert columns == ["layer", "head 2", "head 4"]
