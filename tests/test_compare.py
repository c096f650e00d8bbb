"""Compare mode: two open traces, the current step of both as a Δ heat map (B − A) or side by side.

The Viewer's compare moves are tested headless; the screen with Textual's pilot and a snapshot of
the Δ map on the bundled de-en-tiny's "… hungrig war" / "… süß war" pair (committed JSON fixtures,
so no torch); `tracer diff A B --tui` with the UI patched out, as the replay tests do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from session_helpers import bumped, copy_trace
from tui_helpers import fixture_trace, screen_text

from tracer.trace import Step, Trace
from tracer.trace.diff import PARTED, UNALIGNED, delta, diff
from tracer.trace.load import read_json
from tracer.tui.view import Viewer
from tracer.tui.view.compare import DELTA, ONLY, SIDE, describe_compared_cell, figure_lines
from tracer.tui.view.picture import LEVELS, build_picture, format_number

FIXTURES = Path(__file__).parent / "fixtures"
HUNGRIG = FIXTURES / "de-en-tiny-hungrig.json"
SUESS = FIXTURES / "de-en-tiny-suess.json"
CROSS = "decoder.0.cross_attn.hook_pattern@9"   # "was" attends to "hungrig" / "süß" while choosing the next word
SIZE = (120, 40)


def pair() -> tuple[Trace, Trace]:
    return read_json(HUNGRIG), read_json(SUESS)


def comparing(a: Trace, b: Trace, *more: Trace) -> Viewer:
    viewer = Viewer([a, b, *more])
    assert viewer.toggle_compare()
    return viewer


# -- the Viewer's compare moves (no Textual) ------------------------------------------------------
def test_compare_needs_a_second_trace():
    viewer = Viewer([fixture_trace()])
    change = viewer.toggle_compare()
    assert not change and "second trace" in change.message
    assert viewer.comparison is None and viewer.compared() is None
    assert not viewer.most_changed(1) and "not comparing" in viewer.most_changed(1).message


def test_the_delta_map_is_b_minus_a_at_the_current_head_on_a_symmetric_diverging_scale():
    a = fixture_trace()
    step_id = "encoder.1.attn.hook_pattern"
    b = copy_trace(a, {step_id: bumped((1, 2, 0), 0.25)})  # head 1, query 2, key 0
    viewer = comparing(a, b)
    viewer.go(step_id)
    viewer.next_head()  # head 1
    shown = viewer.compared()
    assert shown.mode == DELTA and shown.step_b is b.step(step_id)
    picture = shown.picture
    assert picture.head == 1 and picture.scale == "diverging"
    expected = np.zeros(picture.values.shape)
    expected[2, 0] = 0.25
    np.testing.assert_allclose(picture.values, expected, atol=1e-6)
    assert picture.vmin == -picture.vmax and picture.vmax == pytest.approx(0.25)
    zero = picture.level[~np.isclose(picture.values, 0.25)]
    assert picture.level[2, 0] == LEVELS - 1                     # the largest change: the end of the scale
    assert set(zero.tolist()) == {round((LEVELS - 1) / 2)}       # no change: the neutral middle
    viewer.next_head(-1)  # head 0 did not change: every cell neutral
    assert not viewer.compared().picture.values.any()
    assert "Δ +0.250" in describe_compared_cell(shown, a, b, 2, 0)
    assert "A " in describe_compared_cell(shown, a, b, 2, 0) and "B " in describe_compared_cell(shown, a, b, 2, 0)


def test_moves_keep_comparing_and_move_both_sides():
    a = fixture_trace()
    b = copy_trace(a, {s.id: (lambda x: x * 1.5) for s in a.steps if s.data.dtype.kind == "f"})
    viewer = comparing(a, b)
    viewer.go("encoder.0.attn.hook_pattern")
    moves = [viewer.next_step, lambda: viewer.layer(1), viewer.next_head, lambda: viewer.decoding_step(1),
             lambda: viewer.decoding_step(1), viewer.previous_step, lambda: viewer.layer(-1)]
    seen = []
    for move in moves:
        assert move(), seen
        shown = viewer.compared()
        assert viewer.comparison is not None
        assert shown.step_a is a.step(viewer.step_id) and shown.step_b is b.step(viewer.step_id)
        expected = build_picture(Step.from_array("x", delta(shown.step_a, shown.step_b), shown.step_a.axes), viewer.head)
        masked = shown.picture.masked
        np.testing.assert_array_equal(masked, viewer.picture().masked)  # A's masked cells (a causal mask) stay masked
        np.testing.assert_array_equal(shown.picture.values[~masked], expected.values[~masked])
        seen.append((viewer.step_id, viewer.head))
    assert len(set(seen)) == len(seen)  # every move went somewhere new (a step, a head)


def test_next_most_changed_follows_the_trace_diffs_order():
    a = fixture_trace()
    b = copy_trace(a, {"encoder.0.hook_resid_pre": bumped((0, 0), 0.5), "decoder.1.hook_mlp_out@2": bumped((1, 3), 5.0),
                       "encoder.1.attn.hook_pattern": bumped((0, 0, 0), 0.01)})
    viewer = comparing(a, b)
    order = [s.id for s in diff(a, b).most_changed()]
    assert order == ["decoder.1.hook_mlp_out@2", "encoder.0.hook_resid_pre", "encoder.1.attn.hook_pattern"]
    assert viewer.step_id not in order  # from a step that did not change: the most changed first
    visited = []
    while viewer.most_changed(1):
        visited.append(viewer.step_id)
    assert visited == order
    change = viewer.most_changed(1)
    assert not change and "least changed" in change.message
    assert viewer.most_changed(-1) and viewer.step_id == order[1]
    assert viewer.most_changed(-1) and viewer.step_id == order[0]
    assert not viewer.most_changed(-1) and viewer.step_id == order[0]
    rank = dict(figure_lines(viewer.comparison, order[0]))["rank"]
    assert rank.startswith("most changed 1 of 3")


def test_the_trace_diff_is_computed_once_per_pair_and_only_when_asked_for(monkeypatch):
    import tracer.tui.view.compare as compare

    calls = []

    def counting(a, b, tol):
        calls.append((a, b))
        return diff(a, b, tol)

    monkeypatch.setattr(compare, "diff", counting)
    a = fixture_trace()
    b, c = copy_trace(a, {"encoder.0.hook_resid_pre": bumped((0, 0), 1.0)}), copy_trace(a)
    viewer = comparing(a, b, c)
    for _ in range(5):  # stepping shows each step's own figures: no whole diff yet
        viewer.next_step()
        figure_lines(viewer.comparison, viewer.step_id)
        viewer.compared()
    assert calls == []
    viewer.most_changed(1)
    viewer.most_changed(1)
    assert calls == [(a, b)]
    assert viewer.toggle_compare() and viewer.comparison.b is c   # c: the next trace
    assert viewer.toggle_compare().message == "compare mode off"   # after the last: off
    assert viewer.toggle_compare() and viewer.comparison.b is b   # back to the first pair: not computed again
    viewer.most_changed(1)
    assert calls == [(a, b)]


def test_step_figures_match_the_whole_diffs_including_steps_after_the_decodes_part():
    a = fixture_trace()
    probs = a.step("decoder.hook_probs@2")
    other = (probs.extra["chosen"]["id"] + 1) % probs.shape[-1]
    b = copy_trace(a, {"decoder.0.hook_resid_pre@1": bumped((0, 0), 0.3)},
                   extra={probs.id: {**probs.extra, "chosen": {"id": other, "token": "other"}}})
    viewer = comparing(a, b)
    whole = diff(a, b)
    assert whole.parted_at == 2
    for step_id in ("decoder.0.hook_resid_pre@1", "decoder.0.attn.hook_pattern@3", "encoder.1.attn.hook_pattern"):
        assert viewer.comparison.step_diff(step_id) == whole[step_id]
    assert whole["decoder.0.attn.hook_pattern@3"].status == PARTED
    lines = dict(figure_lines(viewer.comparison, "decoder.0.attn.hook_pattern@3"))
    assert "not compared: after the decodes part at step 2" in lines["figures"]
    lines = figure_lines(viewer.comparison, "decoder.hook_probs@2")
    assert any('"other"' in text and "chosen" in text for _, text in lines)


def test_a_step_in_one_trace_only_is_said_in_one_line():
    a = fixture_trace()
    gone = "decoder.1.attn.hook_pattern@2"
    viewer = comparing(a, copy_trace(a, drop={gone}))
    viewer.go(gone)
    shown = viewer.compared()
    assert shown.mode == ONLY and shown.picture is None and shown.step_b is None
    assert shown.message.startswith(f"{gone} is only in trace 1: trace 2 has no such step")
    assert "nearest: decoder.1.attn.hook_pattern@1" in shown.message
    assert dict(figure_lines(viewer.comparison, gone))["figures"] == f"only in trace 1: trace 2 has no step {gone}"
    assert viewer.next_step() and viewer.compared().mode == DELTA  # and the next step is compared again


def test_shapes_that_cannot_be_aligned_are_shown_side_by_side():
    a = fixture_trace()
    step_id = "encoder.0.hook_resid_pre"    # [pos, d_model]: d_model is no token axis, so 16 vs 8 cannot align
    b = copy_trace(a, {step_id: lambda x: x[:, :8] * 2})
    viewer = comparing(a, b)
    viewer.go(step_id)
    shown = viewer.compared()
    assert shown.mode == SIDE and viewer.comparison.step_diff(step_id).status == UNALIGNED
    left, right = shown.sides
    picture = shown.picture
    assert picture.cols == 16 + 1 + 8 and shown.split == 17
    np.testing.assert_array_equal(picture.values[:, :16], left.values)
    np.testing.assert_array_equal(picture.values[:, 17:], right.values)
    np.testing.assert_array_equal(right.values, b[step_id])
    assert picture.masked[:, 16].all()                      # the gap between them
    assert picture.index(2, 16) == (2, 16)                  # numbers mode reads a masked cell through its own step
    assert describe_compared_cell(shown, a, b, 1, 3).startswith("A  ")
    assert describe_compared_cell(shown, a, b, 1, 17 + 3).startswith("B  ")
    assert describe_compared_cell(shown, a, b, 1, 16) == ""
    assert "side by side" in dict(figure_lines(viewer.comparison, step_id))["figures"]


def test_side_by_side_shows_each_trace_at_the_current_head_or_its_last():
    a = fixture_trace()
    step_id = "encoder.1.attn.hook_pattern"   # 4 heads in A, 2 in B: the head axis cannot align
    b = copy_trace(a, {step_id: lambda x: x[:2]})
    viewer = comparing(a, b)
    viewer.go(step_id)
    viewer.next_head(-1)                       # head 4/4
    shown = viewer.compared()
    assert shown.mode == SIDE
    assert [p.head for p in shown.sides] == [3, 1]
    np.testing.assert_array_equal(shown.picture.values[:, shown.split:], b[step_id][1])


def test_token_axes_of_different_lengths_are_cut_to_the_positions_both_have():
    a = fixture_trace()
    step_id = "encoder.0.hook_resid_pre"
    b = copy_trace(a, {step_id: lambda x: x[:2] + 1.0})   # two positions of three
    viewer = comparing(a, b)
    viewer.go(step_id)
    picture = viewer.compared().picture
    assert picture.rows == 2 and picture.row_labels == a.step(step_id).labels["pos"][:2]
    np.testing.assert_allclose(picture.values, 1.0, rtol=1e-6)


def test_with_three_traces_c_goes_through_the_others_then_off_and_o_swaps_the_pair():
    a = fixture_trace()
    b, c = copy_trace(a), copy_trace(a)
    viewer = Viewer([a, b, c])
    pairs = []
    for _ in range(3):
        viewer.toggle_compare()
        pairs.append(None if viewer.comparison is None else (viewer.comparison.a_index, viewer.comparison.b_index))
    assert pairs == [(0, 1), (0, 2), None]
    viewer.toggle_compare()
    viewer.go("encoder.1.attn.hook_pattern")
    assert viewer.other_trace() and viewer.trace_index == 1
    assert (viewer.comparison.a_index, viewer.comparison.b_index) == (1, 0)   # B − A became A − B
    assert viewer.comparison.a is b and viewer.step_id == "encoder.1.attn.hook_pattern"


def test_a_new_trace_is_compared_with_the_one_the_current_trace_was_compared_with():
    a = fixture_trace()
    b, c = copy_trace(a), copy_trace(a)
    viewer = comparing(a, b)
    assert viewer.add_trace(c) and viewer.trace_index == 2
    assert (viewer.comparison.a, viewer.comparison.b) == (c, b)


def test_the_compare_view_imports_neither_textual_nor_torch():
    code = ("import sys, tracer.tui.view.compare\n"
            "print([m for m in ('torch', 'textual') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# -- the screen (Textual's pilot) -------------------------------------------------------------------
def tensor_lines(app) -> list[str]:
    from tracer.tui.widgets.tensor_view import TensorView

    view = app.screen.query_one(TensorView)
    return [view.render_line(y).text for y in range(view.size.height)]


def tensor_title(app) -> str:
    return str(app.screen.query_one("#tensor-title").content)


async def test_compare_mode_pilot_steps_changes_head_and_jumps_to_the_most_changed_steps():
    from tracer.tui.app import TracerApp

    a, b = pair()
    app = TracerApp([a, b])
    order = [s.id for s in diff(a, b).most_changed()]
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go(CROSS)
        assert "c compare" in screen_text(app)                 # two traces: the bar offers compare
        await pilot.press("c")
        text = screen_text(app)
        assert "vs trace 2" in text.splitlines()[0]             # the title names the pair
        assert "Δ = trace 2 − trace 1" in tensor_title(app) and "head 1/4" in tensor_title(app)
        figures = diff(a, b)[CROSS]
        assert f"rel L2 {figures.rel_l2:.3f}" in screen.query_one("#explain").plain

        await pilot.press("n")                                   # the next step, compared too
        nxt = a.steps[a.step(CROSS).index + 1].id
        assert screen.step_id == nxt and nxt in tensor_title(app) and "Δ = trace 2 − trace 1" in tensor_title(app)
        await pilot.press("p", "h")                              # back, and the next head
        assert screen.step_id == CROSS and "head 2/4" in tensor_title(app)
        assert app.viewer.compared().picture.head == 1
        inspect = str(screen.query_one("#inspect").content)
        assert " A " in inspect and " B " in inspect and " Δ " in inspect
        await pilot.press("v")                                   # numbers: the Δ values themselves
        was = delta(a.step(CROSS), b.step(CROSS))[1, 8]           # head 2, the query "was", over the keys
        row = next(line for line in tensor_lines(app) if line.strip().startswith("was"))
        assert row.split()[1:8] == [format_number(float(x), 8) for x in was[:7]]  # those the width shows whole
        await pilot.press("v")

        start = order.index(CROSS) if CROSS in order else -1
        for expected in order[start + 1: start + 4]:             # d: the next most-changed step, in that order
            await pilot.press("d")
            assert screen.step_id == expected
            assert expected in tensor_title(app)
        await pilot.press("D")
        assert screen.step_id == order[start + 2]

        await pilot.press("c")                                   # leave compare mode
        assert app.viewer.comparison is None
        assert "vs trace" not in screen_text(app).splitlines()[0]
        assert "Δ" not in tensor_title(app)


async def test_the_key_bar_offers_compare_with_two_traces_and_the_jump_in_compare_mode():
    from tracer.tui.app import TracerApp

    def bar(app) -> str:
        return screen_text(app).splitlines()[-1]

    one = TracerApp([fixture_trace()])
    async with one.run_test(size=(160, 40)):
        assert "compare" not in bar(one)                        # one trace: nothing to compare with
    app = TracerApp([fixture_trace(), fixture_trace()])
    async with app.run_test(size=(160, 40)) as pilot:
        assert "c compare" in bar(app) and "most changed" not in bar(app)
        await pilot.press("c")
        assert "c compare" in bar(app) and "d most changed" in bar(app)


async def test_a_step_in_one_trace_only_shows_one_line_in_place_of_the_picture():
    from tracer.tui.app import TracerApp
    from tracer.tui.widgets.tensor_view import TensorView

    a = fixture_trace()
    gone = "decoder.1.attn.hook_pattern@2"
    app = TracerApp([a, copy_trace(a, drop={gone})], compare=True)
    async with app.run_test(size=SIZE):
        app.trace_screen.go(gone)
        view = app.screen.query_one(TensorView)
        lines = [view.render_line(y).text.strip() for y in range(view.size.height)]
        assert lines[0].startswith(f"{gone} is only in trace 1") and not any(lines[1:])
        assert "only in trace 1" in tensor_title(app)


def test_snapshot_of_the_delta_map_of_the_hungrig_suess_cross_attention(snap_compare):
    from tracer.tui.app import TracerApp

    async def run_before(pilot) -> None:
        await pilot.pause()
        screen = pilot.app.trace_screen
        screen.head = 2            # the head where "was" moves its attention from "war" to "süß"
        screen.go(CROSS)
        await pilot.pause()

    assert snap_compare(TracerApp(list(pair()), compare=True), terminal_size=SIZE, run_before=run_before)


# -- tracer diff A B --tui ----------------------------------------------------------------------------
def test_diff_tui_opens_the_ui_on_both_traces_in_compare_mode(monkeypatch):
    import tracer.tui
    from tracer.cli import cli

    opened = {}
    monkeypatch.setattr(tracer.tui, "open_traces", lambda traces, **kwargs: opened.update(kwargs, traces=traces))
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    result = CliRunner().invoke(cli, ["diff", str(HUNGRIG), str(SUESS), "--tui", "--tol", "0.01"])
    assert result.exit_code == 0, result.output
    assert [t.input["text"] for t in opened["traces"]] == [read_json(p).input["text"] for p in (HUNGRIG, SUESS)]
    assert opened["compare"] is True and opened["tol"] == 0.01


async def test_the_app_opened_for_diff_tui_starts_in_compare_mode():
    from tracer.tui.app import TracerApp

    app = TracerApp(list(pair()), compare=True, tol=0.01)
    async with app.run_test(size=SIZE):
        assert app.viewer.comparison is not None and app.viewer.comparison.tol == 0.01
        assert "vs trace 2" in screen_text(app).splitlines()[0]
        assert "Δ = trace 2 − trace 1" in tensor_title(app)


def test_diff_tui_without_a_terminal_prints_the_report_instead():
    from tracer.cli import cli

    result = CliRunner().invoke(cli, ["diff", str(HUNGRIG), str(SUESS), "--tui"])
    assert result.exit_code == 1, result.output                 # the traces differ, as without --tui
    assert "most-changed steps" in result.stdout
    assert "not a terminal" in result.stderr


def test_diff_tui_on_a_missing_file_is_one_line_and_exit_2(tmp_path, monkeypatch):
    from tracer.cli import cli

    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)
    result = CliRunner().invoke(cli, ["diff", str(HUNGRIG), str(tmp_path / "nothing.json"), "--tui"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_diff_tui_with_json_is_bad_usage():
    from tracer.cli import cli

    result = CliRunner().invoke(cli, ["diff", str(HUNGRIG), str(SUESS), "--tui", "--json"])
    assert result.exit_code == 2
    assert "--tui and --json" in result.output and "Traceback" not in result.output


def test_the_figures_say_the_tolerance_diff_applied_widened_for_float16_and_exact_for_integers():
    """A float16-stored copy of a trace against the trace: within --tol plus float16's rounding, as
    `tracer diff` judges it, and the panel says that tolerance (not the bare --tol)."""
    from tracer.trace.diff import FLOAT16_ROUNDOFF

    a = fixture_trace()
    step_id = "decoder.0.hook_resid_pre@1"
    half = copy_trace(a, {s.id: (lambda x: x.astype(np.float16)) for s in a if s.data.dtype == np.float32})
    viewer = comparing(a, half)
    found = viewer.comparison.step_diff(step_id)
    assert not found.over_tol and found.max_abs > 0 and found.tol == pytest.approx(1e-4 + FLOAT16_ROUNDOFF)
    figures = dict(figure_lines(viewer.comparison, step_id))["figures"]
    assert f"within tolerance {found.tol:g} (--tol 0.0001, widened for float16 storage)" in figures
    tokens = dict(figure_lines(viewer.comparison, "decoder.hook_tokens@1"))["figures"]
    assert "identical (exact data)" in tokens
    same = dict(figure_lines(comparing(a, copy_trace(a)).comparison, step_id))["figures"]
    assert "within tolerance 0.0001" in same and "widened" not in same
