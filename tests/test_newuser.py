"""What a new user hit (issue 12): each test fails on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.cli import cli
from tracer.trace.export import write_json
from tracer.trace.load import read_json


@pytest.fixture(scope="module")
def piyush():
    """The bundled model's trace of the README's sentence."""
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    return trace_text(load_model("de-en-tiny"), "ich bin piyush")


# -- 7: tracer check on a --precision export ------------------------------------------------
@pytest.mark.parametrize("precision", [4, 2])
def test_check_passes_on_a_rounded_export_and_says_what_it_tolerated(piyush, tmp_path, precision):
    path = tmp_path / "rounded.json"
    write_json(piyush, path, precision)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"rounded to {precision} digits: tolerance ±{0.5 * 10 ** (1 - precision):.1g}" in result.output
    assert "checks passed" in result.output


@pytest.mark.parametrize("altered", ["encoder.0.hook_resid_mid", "encoder.0.attn.hook_attn_raw",
                                     "decoder.1.cross_attn.hook_pattern@2", "decoder.0.attn.hook_z@3"])
def test_check_still_fails_on_a_rounded_export_altered_beyond_its_rounding(piyush, tmp_path, altered):
    path = tmp_path / "rounded.json"
    write_json(piyush, path, 4)
    trace = read_json(path)
    step = trace.step(altered)
    data = step.rows.astype(np.float64).copy()  # what the step stores: under the KV cache, its new rows
    flat = data.reshape(-1)
    at = int(np.argmax(np.abs(flat)))
    # 1 % of the tensor's largest value: twenty times what 4-digit rounding can move it
    flat[at] += 0.01 * max(1.0, float(np.abs(flat).max()))
    if step.stored_shape is None:
        step._array = data.astype(np.float32)
    else:
        step._rows = data.astype(np.float32)
    write_json(trace, tmp_path / "altered.json", 4)
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "altered.json")])
    assert result.exit_code == 1, result.output
    assert f"FAIL {altered}:" in result.output
    assert "rounded to 4 digits" in result.output


def test_check_at_full_precision_says_nothing_of_rounding(piyush, tmp_path):
    write_json(piyush, tmp_path / "full.json")
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "full.json")])
    assert result.exit_code == 0 and result.output.startswith("ok: ")
    assert "rounded" not in result.output


# -- 8: the attention formulas include the biases the model has ------------------------------
def test_attention_formulas_name_the_biases_the_model_has(piyush):
    from tracer.nn.loading import load_model
    from tracer.tui.view.explain import explain

    weights = dict(load_model("de-en-tiny").model.named_parameters())
    assert any(name.endswith("W_Q.bias") and float(p.detach().abs().max()) > 0 for name, p in weights.items())
    assert any(name.endswith("W_O.bias") and float(p.detach().abs().max()) > 0 for name, p in weights.items())
    assert explain(piyush.step("encoder.0.attn.hook_q"), piyush).formula.startswith("Q = x·W_Q + b_Q:")
    assert explain(piyush.step("decoder.1.cross_attn.hook_v@2"), piyush).formula.startswith("V = x·W_V + b_V:")
    assert explain(piyush.step("encoder.0.hook_attn_out"), piyush).formula.startswith("concat·W_O + b_O:")
    assert "+ b" in explain(piyush.step("encoder.0.mlp.hook_pre"), piyush).formula  # as the FFN already said


def test_attention_formulas_leave_out_biases_a_llama_does_not_have(piyush, monkeypatch):
    from tracer.tui.view.explain import explain

    # a Llama's trace says so in its config (tracer.nn.config's qkv_bias / attn_out_bias) ...
    config = dict(piyush.model["config"], qkv_bias=False, attn_out_bias=False)
    monkeypatch.setitem(piyush.model, "config", config)
    assert explain(piyush.step("encoder.0.attn.hook_q"), piyush).formula.startswith("Q = x·W_Q:")
    assert explain(piyush.step("encoder.0.hook_attn_out"), piyush).formula.startswith("concat·W_O:")
    # ... and a trace whose config predates those fields goes by its source's model_type
    monkeypatch.setitem(piyush.model, "config", {k: v for k, v in config.items() if not k.endswith("_bias")})
    monkeypatch.setitem(piyush.model, "source", {"source": "folder", "model_type": "llama"})
    assert explain(piyush.step("encoder.0.attn.hook_q"), piyush).formula.startswith("Q = x·W_Q:")
    assert explain(piyush.step("encoder.0.hook_attn_out"), piyush).formula.startswith("concat·W_O:")


# -- 9: a save over an existing session asks in the UI -----------------------------------------
def _ui_app(**kwargs):
    from tui_helpers import make_app

    return make_app(**kwargs)


async def _save_as(app, pilot, name: str) -> None:
    await pilot.press("s")
    app.screen.query_one("Input").value = name
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.parametrize("answer", ["y", "n"])
async def test_saving_over_an_existing_session_asks_whether_to_replace_it(tmp_path, answer):
    from tracer.trace.session import SessionStore
    from tracer.tui.screens.dialogs import Confirm
    from tui_helpers import fixture_trace, screen_text

    store = SessionStore(tmp_path / "sessions")
    store.save("taken", [fixture_trace()])
    before = store.load("taken").state.step
    app = _ui_app(store=store)
    async with app.run_test(size=(120, 40)) as pilot:
        app.trace_screen.go("encoder.0.attn.hook_pattern")
        await _save_as(app, pilot, "taken")
        assert isinstance(app.screen, Confirm)
        text = screen_text(app)
        assert "'taken' already exists" in text and "Replace it?" in text
        assert "--force" not in text
        await pilot.press("enter")  # one enter too many after the prompt replaces nothing
        await pilot.pause()
        assert isinstance(app.screen, Confirm)
        await pilot.press(answer)
        await pilot.pause()
        assert not isinstance(app.screen, Confirm)
        assert app.session_name == ("taken" if answer == "y" else None)
    saved = store.load("taken").state.step
    assert saved == ("encoder.0.attn.hook_pattern" if answer == "y" else before)


# -- 10: q remembers where a session was left ---------------------------------------------------
async def test_quit_remembers_the_place_so_replay_reopens_there(tmp_path):
    from tracer.trace.session import SessionStore
    from tracer.tui.view import Viewer
    from tui_helpers import fixture_trace

    store = SessionStore(tmp_path / "sessions")
    store.save("walk", [fixture_trace()])
    session = store.load("walk")
    assert session.state.step is None
    app = _ui_app(store=store, session_name="walk", state=session.state)
    async with app.run_test(size=(120, 40)) as pilot:
        app.trace_screen.go("decoder.1.cross_attn.hook_pattern@2")
        await pilot.press("h", "v")
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running
    again = store.load("walk")
    assert (again.state.step, again.state.head, again.state.view) == ("decoder.1.cross_attn.hook_pattern@2", 1, "numbers")
    assert Viewer(again.traces, again.state).step_id == "decoder.1.cross_attn.hook_pattern@2"  # what replay opens
    assert again.traces[0]["encoder.0.attn.hook_pattern"].shape == fixture_trace()["encoder.0.attn.hook_pattern"].shape


def test_the_place_is_not_written_into_a_session_that_holds_other_traces(tmp_path, piyush):
    from tracer.trace.session import SessionStore
    from tracer.trace.state import UIState
    from tui_helpers import fixture_trace

    store = SessionStore(tmp_path / "sessions")
    store.save("walk", [fixture_trace()])
    before = (store.path_of("walk") / "session.json").read_bytes()
    assert not store.remember_place("walk", UIState(step="encoder.hook_embed"), [piyush])
    assert (store.path_of("walk") / "session.json").read_bytes() == before


KILL_DURING = """
import os, signal, sys
import tracer.trace.atomic as atomic
from tracer.trace.session import SessionStore
from tracer.trace.state import UIState
from tracer.trace.load import read_json

store = SessionStore(sys.argv[1])
traces = store.load("walk").traces
def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)
setattr(atomic.os, sys.argv[2], die)   # killed with the new manifest half-way to disk
store.remember_place("walk", UIState(step="encoder.0.attn.hook_q"), traces)
"""


@pytest.mark.parametrize("moment", ["fsync", "replace"])
def test_a_kill_while_the_place_is_written_leaves_the_session_readable(tmp_path, moment):
    import subprocess
    import sys

    from tracer.trace.session import SessionStore
    from tracer.trace.state import UIState
    from tui_helpers import fixture_trace

    store = SessionStore(tmp_path / "sessions")
    store.save("walk", [fixture_trace()], state=UIState(step="encoder.hook_embed"))
    done = subprocess.run([sys.executable, "-c", KILL_DURING, str(store.root), moment], capture_output=True)
    assert done.returncode == -9, done.stderr.decode()
    folder = store.path_of("walk")
    left = [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert left, moment  # killed before the rename: the dead writer's temp is there
    session = store.load("walk")  # the old manifest, whole; the next use of the store tidies the temp away
    assert session.state.step == "encoder.hook_embed"
    assert session.traces[0]["encoder.hook_embed"].shape == fixture_trace()["encoder.hook_embed"].shape
    assert [info.error for info in store.list()] == [None]
    # and the next quit writes the place as usual
    assert store.remember_place("walk", UIState(step="encoder.0.attn.hook_q"), session.traces)
    assert store.load("walk").state.step == "encoder.0.attn.hook_q"
    assert sorted(p.name for p in folder.iterdir()) == ["session.json", "trace-0.meta.json", "trace-0.safetensors"]


# -- input the model does not know -----------------------------------------------------------
@pytest.mark.parametrize("text,unfamiliar", [
    ("wie geht es dir", ["wie", "geht", "dir"]),  # w ##ie | g ##e ##ht | es | d ##ir: most words split
    ("der hund schläft", ["schläft"]),            # a character the model never saw: <unk>
    ("ich bin piyush", None),                     # a name splits, and is copied: fine
    ("die katze trank die milch weil sie süß war", None),
])
def test_the_header_records_words_the_bundled_model_does_not_know(text, unfamiliar):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    trace = trace_text(load_model("de-en-tiny"), text, max_new_tokens=2)
    assert trace.input.get("unfamiliar") == unfamiliar


def test_summary_and_ui_say_the_model_does_not_know_the_input(tmp_path):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model
    from tracer.trace.session import SessionStore, load_session

    result = CliRunner().invoke(cli, ["run", "wie geht es dir", "--no-tui", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    note = next(line for line in result.output.splitlines() if line.startswith("note:"))
    assert 'de-en-tiny does not know the words "wie", "geht", "dir"' in note
    assert "MODEL.md" in note and "--model" in note
    known = CliRunner().invoke(cli, ["run", "ich bin piyush", "--no-tui", "--max-new-tokens", "2"])
    assert "note:" not in known.output
    # the note survives a session, and the UI's first step says it
    trace = trace_text(load_model("de-en-tiny"), "wie geht es dir", max_new_tokens=2)
    store = SessionStore(tmp_path / "s")
    store.save("wie", [trace])
    from tracer.tui.view.explain import explain

    reloaded = load_session(store.path_of("wie")).traces[0]
    assert "does not know the words" in explain(reloaded.steps[0], reloaded).words


async def test_the_ui_says_so_when_it_opens():
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model
    from tracer.tui.app import TracerApp

    app = TracerApp([trace_text(load_model("de-en-tiny"), "wie geht es dir", max_new_tokens=2)])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        from tui_helpers import screen_text

        assert "de-en-tiny does not know" in screen_text(app)  # a warning over the screen
        assert "does not know the words" in app.screen.query_one("#explain").plain


def test_a_bert_input_without_mask_says_every_position_is_predicted():
    result = CliRunner().invoke(cli, ["run", "the cat drank the milk", "--model", "en-bert-tiny", "--no-tui"])
    assert result.exit_code == 0, result.output
    assert "no [MASK] in the input: the model predicts every position" in result.output
    masked = CliRunner().invoke(cli, ["run", "the cat drank the [MASK]", "--model", "en-bert-tiny", "--no-tui"])
    assert "no [MASK]" not in masked.output


# -- 11, the smaller ones -------------------------------------------------------------------------
def _header_ticks(app) -> list[str]:
    """The numbered column header of the tensor view, as the words on screen."""
    from tui_helpers import screen_lines

    import re

    line = next(line for line in screen_lines(app) if re.search(r"▕ +0 +\d+ +\d+ +\d+", line))
    return line.split("▕", 1)[1].split()


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
async def test_the_last_column_tick_is_never_cut_by_the_edge_of_the_view(piyush, size):
    from tracer.tui.app import TracerApp

    app = TracerApp([piyush])
    async with app.run_test(size=size) as pilot:
        for step_id in ("encoder.hook_embed", "encoder.0.mlp.hook_pre"):
            app.trace_screen.go(step_id)
            await pilot.pause()
            ticks = [int(t) for t in _header_ticks(app)]
            step = ticks[1] - ticks[0]
            assert ticks == list(range(0, ticks[-1] + 1, step)), ticks  # no "8" left of a cut "80"
            assert len(ticks) > 3


async def test_help_headings_are_shown_whole():
    from tracer.tui.screens.help import HelpScreen
    from tui_helpers import make_app, screen_text

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        sections = [section for section, _ in app.trace_screen.help_sections()]
        seen = screen_text(app)
        for _ in range(6):  # the help scrolls at 40 rows
            await pilot.press("pagedown")
            await pilot.pause()
            seen += screen_text(app)
        for section in sections:
            assert section in seen, section


async def test_the_token_ids_step_is_labelled_numbers_not_heat_map(piyush):
    from tracer.tui.app import TracerApp
    from tui_helpers import screen_lines

    app = TracerApp([piyush])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        title = next(line for line in screen_lines(app) if "encoder.hook_tokens   [" in line)
        assert "numbers" in title and "heat map" not in title
        app.trace_screen.go("encoder.hook_embed")
        await pilot.pause()
        assert "heat map" in next(line for line in screen_lines(app) if "encoder.hook_embed   [" in line)


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


async def test_zero_cells_of_the_sequential_map_stand_out_from_a_dark_background():
    """WCAG contrast of the lowest level against black and against the UI's own background."""
    from tracer.tui.view.picture import SEQUENTIAL
    from tui_helpers import make_app

    app = make_app()
    async with app.run_test(size=(80, 24)):
        background = app.screen.styles.background.hex
    for dark in ("#000000", background):
        ratio = (_luminance(SEQUENTIAL[0]) + 0.05) / (_luminance(dark) + 0.05)
        assert ratio >= 1.4, (dark, ratio)
    assert _luminance(SEQUENTIAL[0]) < _luminance(SEQUENTIAL[len(SEQUENTIAL) // 4])  # still the dark end


async def test_the_colour_scale_says_it_is_one_heads_and_the_stats_all_heads(piyush):
    from tracer.tui.app import TracerApp
    from tui_helpers import screen_text

    app = TracerApp([piyush])
    async with app.run_test(size=(120, 40)) as pilot:
        app.trace_screen.go("encoder.0.attn.hook_pattern")
        await pilot.press("h")
        await pilot.pause()
        assert "colours: head 2's range" in screen_text(app)
        assert "stats    all 4 heads: min" in app.screen.query_one("#explain").plain
        app.trace_screen.go("encoder.hook_embed")  # no heads: nothing to say
        await pilot.pause()
        assert "range" not in screen_text(app) and "heads:" not in app.screen.query_one("#explain").plain


def test_vocabulary_cells_name_their_token(piyush, tmp_path):
    from tracer.tui.view.explain import describe_cell
    from tracer.tui.view.picture import build_picture

    step = piyush.step("decoder.hook_probs@1")
    picture = build_picture(step)
    top = {item["id"] for item in step.extra["top_k"]}
    assert 3 not in top  # not a top-k token: named from the model's vocabulary
    assert describe_cell(piyush, picture, 0, 3).endswith('(token "<unk>")')
    chosen = step.extra["chosen"]
    row, col = divmod(chosen["id"], picture.wrap)
    assert describe_cell(piyush, picture, row, col).endswith(f'(token "{chosen["token"]}")')
    # a replayed export names them too, while the model folder is there
    write_json(piyush, tmp_path / "t.json")
    again = read_json(tmp_path / "t.json")
    assert describe_cell(again, build_picture(again.step("decoder.hook_probs@1")), 0, 3).endswith('(token "<unk>")')


def test_the_top_k_panel_adds_the_log_probability(piyush):
    import math

    from tracer.tui.widgets.panels import next_token_text

    step = piyush.step("decoder.hook_probs@2")
    lines = next_token_text(piyush, step).plain.splitlines()
    assert "ln p" in lines[1]
    for item, line in zip(step.extra["top_k"], lines[2:]):
        assert f"{item['prob']:.3f}" in line
        assert f"{math.log(item['prob']):.2f}".replace("-", "−") in line, line
    # the runners-up all print as 0.000, and their log-probabilities still differ
    runners_up = [line.split()[-1] if "█" not in line else line.split()[-2] for line in lines[3:2 + len(step.extra["top_k"])]]
    assert len(set(runners_up)) == len(runners_up)


# -- teaching, at the matching step ---------------------------------------------------------------
def _worked(trace, step_id, cell, head=0):
    from tracer.tui.view.explain import explain
    from tracer.tui.view.picture import build_picture

    step = trace.step(step_id)
    return explain(step, trace, build_picture(step, head), cell).worked


def test_positional_encoding_cell_is_worked_with_its_own_numbers(piyush):
    worked = _worked(piyush, "encoder.hook_pos_embed", (2, 3))
    assert worked.startswith("PE(2, 3) = cos(2 / 10000^(2/128)) = cos(1.732) = −0.160")  # the example
    assert "recorded −0.160" in worked
    assert _worked(piyush, "encoder.hook_pos_embed", (4, 10)).startswith("PE(4, 10) = sin(4 / 10000^(10/128)) = ")


def test_scaling_says_why_and_gives_the_weight_with_and_without_it(piyush):
    import math

    from tracer.tui.view.explain import explain

    words = explain(piyush.step("encoder.0.attn.hook_attn_scaled"), piyush).words
    assert "variance d_k" in words and "saturating" in words
    head, q, k = 1, 1, 2
    worked = _worked(piyush, "encoder.0.attn.hook_attn_scaled", (q, k), head)
    raw = piyush["encoder.0.attn.hook_attn_raw"][head, q].astype(np.float64)
    unscaled = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    with_it = float(piyush["encoder.0.attn.hook_pattern"][head, q, k])
    from tracer.tui.view.picture import format_number

    assert f"softmax weight {format_number(with_it, 10)} with the scaling" in worked
    assert f"{format_number(float(unscaled[k]), 10).replace('-', '−')} without it" in worked
    assert f"÷ √32 = {format_number(float(raw[k]) / math.sqrt(32), 10)}" in worked


def test_layer_norm_cell_is_worked_through_and_says_what_is_not_recorded(piyush):
    from tracer.nn.loading import load_model
    from tracer.tui.view.picture import format_number

    pos, j = 2, 3
    worked = _worked(piyush, "encoder.0.ln1.hook_normalized", (pos, j))
    x = piyush["encoder.0.hook_resid_mid"][pos].astype(np.float64)  # post-norm: ln1 normalizes the residual sum
    assert f"μ = {format_number(x.mean(), 10)}" in worked.replace("−", "-")
    assert f"σ² = {format_number(x.var(), 10)}" in worked.replace("−", "-")
    assert "γ and β are learned weights, not in the trace" in worked
    # what the recorded steps give for γ₃ and β₃ is what the model has
    weights = dict(load_model("de-en-tiny").model.named_parameters())
    gamma, beta = (float(weights[f"encoder.0.ln1.{name}"].detach()[j]) for name in ("weight", "bias"))
    assert f"γ₃ ≈ {format_number(gamma, 10).replace('-', '−')}" in worked
    assert f"β₃ ≈ {format_number(beta, 10).replace('-', '−')}" in worked


def test_why_several_heads_is_said_on_q_and_concat_and_not_repeated_on_v(piyush):
    from tracer.tui.view.explain import explain

    words = {kind: explain(piyush.step(f"encoder.0.attn.hook_{kind}"), piyush).words for kind in ("q", "k", "v", "concat")}
    assert "Why several heads" in words["q"] and "subspace" in words["q"]
    assert "at once" in words["concat"] and "subspace" in words["concat"]
    sentences = lambda text: {s.strip() for s in text.split(".") if s.strip()}  # noqa: E731
    assert not (sentences(words["v"]) & sentences(words["q"]))
    assert "Why several heads" not in words["v"] and "Why several heads" not in words["k"]


async def test_the_explain_panel_follows_the_cell_on_a_worked_step(piyush):
    from tracer.tui.app import TracerApp

    app = TracerApp([piyush])
    async with app.run_test(size=(120, 40)) as pilot:
        app.trace_screen.go("encoder.hook_pos_embed")
        await pilot.pause()
        assert "PE(0, 0) = sin(0 / 10000^(0/128))" in app.screen.query_one("#explain").plain
        await pilot.press("down", "down", "shift+right", "shift+right", "shift+right")
        await pilot.pause()
        assert "PE(2, 3) = cos(2 / 10000^(2/128)) = cos(1.732) = −0.160" in app.screen.query_one("#explain").plain


# -- the README, for someone who has only the README -----------------------------------------------
def test_every_key_in_the_readme_table_is_bound():
    import re
    from pathlib import Path

    from tracer.tui.screens.trace_screen import TraceScreen
    from tracer.tui.widgets.navigator import StepNavigator
    from tracer.tui.widgets.tensor_view import TensorView

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("| keys | what |", 1)[1].split("\n\n", 1)[0]
    names = {"/": "slash", "]": "right_square_bracket", "[": "left_square_bracket", "+": "plus", "-": "minus",
             "?": "question_mark", ",": "comma", ".": "full_stop"}
    bound = {key.strip() for widget in (TraceScreen, TensorView, StepNavigator)
             for binding in widget.BINDINGS for key in binding.key.split(",")}
    keys = [key for row in table.splitlines()[2:] for key in re.findall(r"`([^`]+)`", row.split("|")[1])]
    assert len(keys) > 15
    for key in keys:
        assert names.get(key, key) in bound, key
    for arrow, name in (("→", "right"), ("←", "left")):  # "n / space / →, p / ←: next / previous step"
        assert any(name in b.key.split(",") and b.action in ("next", "prev") for b in TraceScreen.BINDINGS), arrow


def test_the_readme_device_line_lists_what_run_takes():
    from pathlib import Path

    from tracer.cli import run

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("tracer run TEXT --device"))
    option = next(p for p in run.params if p.name == "device")
    for choice in ("auto", "cpu", "cuda", "cuda:N", "mps"):
        assert choice in line and choice in option.help, choice
