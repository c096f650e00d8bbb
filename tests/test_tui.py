"""The step-through UI, driven with Textual's pilot: keys move through the trace and the
screen shows what they should. The trace comes from a JSON fixture, so no torch is needed."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tui_helpers import FIXTURE, fixture_trace, make_app, screen_text

SIZE = (120, 40)


def tensor_lines(app) -> list[str]:
    from tracer.tui.widgets.tensor_view import TensorView

    view = app.screen.query_one(TensorView)
    return [view.render_line(y).text for y in range(view.size.height)]


def panel_text(app, selector: str) -> str:
    return app.screen.query_one(selector).plain


def static_text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).content)


async def test_first_screen_shows_the_input_and_the_first_step():
    app = make_app()
    async with app.run_test(size=SIZE):
        screen = app.trace_screen
        assert screen.step_id == "encoder.hook_tokens"
        text = screen_text(app)
        assert '"ich bin piyush" → "we we we"' in text
        assert "Tokenize ◂" in text  # current step marked in the navigator
        lines = tensor_lines(app)
        # one row per token, labelled with the token and showing its id
        ids = fixture_trace().input["ids"]
        for token, token_id in zip(["ich", "bin", "piyush"], ids):
            assert any(line.split()[:2] == [token, str(token_id)] for line in lines), (token, lines)
        assert "text → 3 tokens → 3 ids" in text


async def test_next_and_previous_follow_computation_order():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        ids = [step.id for step in screen.trace.steps]
        await pilot.press("n")
        assert screen.step_id == ids[1] == "encoder.hook_embed"
        await pilot.press("space")
        assert screen.step_id == ids[2] == "encoder.hook_pos_embed"
        await pilot.press("right")
        assert screen.step_id == ids[3] == "encoder.0.hook_resid_pre"
        assert "Input to layer 0" in panel_text(app, "#explain")
        await pilot.press("p")
        assert screen.step_id == ids[2]
        await pilot.press("left")
        assert screen.step_id == ids[1]
        assert "encoder.hook_embed" in static_text(app, "#tensor-title")
        await pilot.press("p", "p")  # past the first step: stays
        assert screen.step_id == ids[0]


async def test_layer_jump_keeps_the_step_kind():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("encoder.0.attn.hook_pattern")
        await pilot.press("right_square_bracket")
        assert screen.step_id == "encoder.1.attn.hook_pattern"
        assert "encoder.1.attn.hook_pattern" in static_text(app, "#tensor-title")
        await pilot.press("right_square_bracket")  # no layer 2: stays
        assert screen.step_id == "encoder.1.attn.hook_pattern"
        await pilot.press("left_square_bracket")
        assert screen.step_id == "encoder.0.attn.hook_pattern"
        screen.go("decoder.1.cross_attn.hook_q@2")
        await pilot.press("left_square_bracket")
        assert screen.step_id == "decoder.0.cross_attn.hook_q@2"


async def test_head_cycling_shows_each_head():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("encoder.0.attn.hook_attn_raw")
        await pilot.pause()
        assert "head 1/4" in static_text(app, "#tensor-title")
        await pilot.press("h")
        assert screen.head == 1
        assert "head 2/4" in static_text(app, "#tensor-title")
        view = screen.query_one("#tensor")
        np.testing.assert_array_equal(view.picture.values, screen.trace["encoder.0.attn.hook_attn_raw"][1])
        await pilot.press("H", "H")
        assert screen.head == 3  # wraps round
        assert "head 4/4" in screen_text(app)
        await pilot.press("n")  # the head is kept from step to step
        assert screen.step_id == "encoder.0.attn.hook_attn_scaled"
        assert "head 4/4" in static_text(app, "#tensor-title")


async def test_decoding_step_jump():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        await pilot.press("t")  # from the encoder: to the first decoding step
        assert screen.step.decode_step == 1
        screen.go("decoder.0.cross_attn.hook_pattern@1")
        await pilot.press("t")
        assert screen.step_id == "decoder.0.cross_attn.hook_pattern@2"
        text = screen_text(app)
        assert "Decoder step 2" in text and "softmax ◂" in text
        # cross-attention: decoder tokens down the side, source tokens across the top
        header = tensor_lines(app)[0]
        assert header.split() == ["ich", "bin", "piyush"]
        await pilot.press("t", "t")  # only 3 decoding steps
        assert screen.step_id == "decoder.0.cross_attn.hook_pattern@3"
        await pilot.press("T")
        assert screen.step_id == "decoder.0.cross_attn.hook_pattern@2"


async def test_find_a_step_by_name():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash")
        await pilot.press(*"decoder.1.cross_attn.hook_pattern@2")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.trace_screen.step_id == "decoder.1.cross_attn.hook_pattern@2"
        assert "decoder.1.cross_attn.hook_pattern@2" in static_text(app, "#tensor-title")


async def test_numbers_view_and_masked_cells():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("decoder.0.attn.hook_attn_scores@3")  # causal: the upper triangle is −∞
        await pilot.press("v")
        assert screen.view == "numbers"
        rows = tensor_lines(app)[1:4]
        assert rows[0].count("−∞") == 2 and rows[1].count("−∞") == 1 and "−∞" not in rows[2]
        value = screen.trace["decoder.0.attn.hook_attn_scores@3"][0, 2, 1]
        assert f"{value:.3f}" in rows[2]
        await pilot.press("v")
        assert screen.view == "heatmap"
        assert "░" in tensor_lines(app)[1]  # masked cells drawn as a pattern, not a colour
        assert "masked" in static_text(app, "#tensor-title")  # and named in the legend


async def test_cell_inspection_shows_the_dot_product():
    from tracer.tui.view.picture import format_number

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        trace = screen.trace
        screen.go("encoder.0.attn.hook_pattern")
        await pilot.press("h", "down", "shift+right", "shift+right")  # head 1, query 1, key 2
        q = trace["encoder.0.attn.hook_q"][1, 1].astype(np.float64)
        k = trace["encoder.0.attn.hook_k"][2, 1].astype(np.float64)
        inspect = static_text(app, "#inspect")
        assert 'query "bin" (1) · key "piyush" (2)' in inspect
        assert f"q₁·k₂ = {q @ k:.3f}" in inspect
        assert f"÷ √4 = {q @ k / math.sqrt(4):.3f}" in inspect
        assert f"softmax weight {format_number(float(trace['encoder.0.attn.hook_pattern'][1, 1, 2]), 12)}" in inspect


async def test_click_selects_a_cell():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("encoder.0.attn.hook_attn_raw")
        await pilot.pause()
        view = screen.query_one("#tensor")
        x = view.label_width + 2 * view.cell_width + 1
        await pilot.click("#tensor", offset=(x, 1 + 1))
        assert view.cursor == (1, 2)
        assert "q₁·k₂" in static_text(app, "#inspect")


async def test_next_token_panel_at_a_decoding_step():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        panel = screen.query_one("#next-token")
        assert not panel.display  # nothing is predicted in the encoder
        screen.go("decoder.hook_probs@2")
        await pilot.pause()
        assert panel.display
        top = screen.step.extra["top_k"]
        text = panel_text(app, "#next-token")
        assert f'next token, step 2: ▶ "{top[0]["token"]}" chosen' in text
        assert f"▶ {top[0]['token']}" in text
        for item in top:
            assert f"{item['prob']:.3f}" in text
        assert f'output so far: "{" ".join(screen.trace.output["tokens"][:2])}"' in text


def test_word_pieces_join_into_words():
    from tracer.tui.widgets.panels import join_pieces

    assert join_pieces(["i", "am", "pi", "##y", "##ush"]) == "i am piyush"
    assert join_pieces(["##x", "y"]) == "##x y"


async def test_bookmarks_and_state_round_trip():
    from tracer.trace.state import UIState

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("encoder.1.attn.hook_pattern")
        await pilot.press("h", "v", "b")
        await pilot.press(*"look here", "enter")
        await pilot.pause()
        state = app.ui_state()
        assert state.step == "encoder.1.attn.hook_pattern" and state.head == 1 and state.view == "numbers"
        assert [(b.trace, b.step, b.note) for b in state.bookmarks] == [(0, "encoder.1.attn.hook_pattern", "look here")]
        assert "★ look here" in static_text(app, "#tensor-title")
        saved = UIState.from_dict(state.to_dict())
    restored = make_app(state=saved)
    async with restored.run_test(size=SIZE) as pilot:
        screen = restored.trace_screen
        assert (screen.step_id, screen.head, screen.view) == ("encoder.1.attn.hook_pattern", 1, "numbers")
        assert "★ look here" in static_text(restored, "#tensor-title")
        await pilot.press("b")  # on a bookmarked step: removes it
        assert restored.ui_state().bookmarks == []


async def test_restore_ignores_a_state_that_does_not_fit():
    from tracer.trace.state import Bookmark, UIState

    state = UIState(trace=5, step="no.such.step", head=99, bookmarks=[Bookmark(0, "gone", "")])
    app = make_app(state=state)
    async with app.run_test(size=SIZE):
        assert app.trace_screen.step_id == "encoder.hook_tokens"
        assert app.bookmarks == []


async def test_autoplay_steps_on_its_own_and_pauses():
    app = make_app(play=True)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        assert screen.playing and "playing" in screen_text(app)
        await pilot.press("plus", "plus", "plus", "plus")  # fastest: 0.08 s per step
        await pilot.pause(0.6)
        reached = screen.step.index
        assert reached >= 2
        await pilot.press("a")
        assert not screen.playing
        stopped_at = screen.step.index
        await pilot.pause(0.3)
        assert screen.step.index == stopped_at


async def test_new_input_traces_and_keeps_the_earlier_trace():
    seen = []

    def retrace(text):
        seen.append(text)
        trace = fixture_trace()
        trace.input = dict(trace.input, text=text)
        return trace

    app = make_app(retrace=retrace)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("i")
        await pilot.press(*"du bist müde", "enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert seen == ["du bist müde"]
        assert len(app.traces) == 2 and app.trace_screen.trace_index == 1
        assert '"du bist müde"' in screen_text(app) and "trace 2/2" in screen_text(app)
        await pilot.press("o")
        assert app.trace_screen.trace_index == 0
        assert '"ich bin piyush"' in screen_text(app)


async def test_user_text_is_shown_literally():
    from tracer.tui.app import TracerApp

    trace = fixture_trace()
    trace.input = dict(trace.input, text="[bold]x[/bold] [MASK]")
    app = TracerApp([trace])
    async with app.run_test(size=SIZE):
        assert '"[bold]x[/bold] [MASK]"' in screen_text(app)


async def test_help_lists_every_key():
    from tracer.tui.screens.help import HelpScreen
    from tracer.tui.screens.trace_screen import TraceScreen

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for binding in TraceScreen.BINDINGS:
            assert binding.description in text, binding
        for key in ("n / space / →", "p / ←", "]", "[", "h", "H", "t", "T", "/", "?", "q", "shift+←"):
            assert key in text, key
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_small_terminal_and_resize():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.trace_screen
        screen.go("encoder.0.mlp.hook_pre")
        await pilot.pause()
        text = screen_text(app)
        assert "encoder.0.mlp.hook_pre" in text and "n next" in text
        view = screen.query_one("#tensor")
        small = view.size
        assert small.height >= 3
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert view.size.width > small.width and view.size.height > small.height
        assert "encoder.0.mlp.hook_pre" in screen_text(app)


def key_bar_line(app) -> str:
    from tracer.tui.widgets.key_bar import KeyBar

    bar = app.screen.query_one(KeyBar)
    return bar.render_line(0).text


@pytest.mark.parametrize("width", [120, 80, 50, 34])
async def test_key_bar_keeps_help_and_quit_in_sight(width):
    app = make_app()
    async with app.run_test(size=(width, 24)) as pilot:
        await pilot.pause()
        line = key_bar_line(app)
        assert len(line) <= width
        assert line.rstrip().endswith("? help  q quit")
        assert line.lstrip().startswith("n next")
        shown = [hint for hint in ("p prev", "] layer", "s save", "a play") if hint in line]
        if width >= 120:
            assert " … " not in line and len(shown) == 4  # everything fits
        else:
            assert " … " in line and "s save" not in line  # the middle gave way, not the end


async def test_clicking_a_key_bar_hint_presses_its_key():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        first = screen.step_id
        line = key_bar_line(app)
        await pilot.click("KeyBar", offset=(line.index("n next") + 1, 0))
        await pilot.pause()
        assert screen.step_id == app.traces[0].steps[1].id != first
        await pilot.click("KeyBar", offset=(line.index("? help") + 1, 0))
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"


async def test_walk_the_whole_trace_to_the_end():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.trace_screen
        # every step is drawn on the way (pressing n for each of 248 steps costs a minute on CI)
        for index in range(len(screen.trace) - 3):
            screen.action_next()
            if index % 8 == 0:
                await pilot.pause()
        await pilot.press("n", "n", "n", "n")  # the last two steps, then past the end: stays
        assert screen.step_id == screen.trace.steps[-1].id == "decoder.hook_probs@3"
        chosen = screen.step.extra["chosen"]["token"]
        assert f'▶ {chosen}' in panel_text(app, "#next-token")


async def test_save_writes_a_session(isolated_sessions):
    session = pytest.importorskip("tracer.trace.session")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        app.trace_screen.go("encoder.0.attn.hook_pattern")
        await pilot.press("s")
        app.screen.query_one("Input").value = "walk"
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.session_name == "walk"
    store = session.SessionStore(None)
    assert store.path_of("walk").exists()


async def test_quit():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


def test_the_ui_never_imports_torch():
    code = (
        "import sys, tracer.tui, tracer.tui.app, tracer.tui.screens.trace_screen\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_encoder_only_trace_shows_masked_predictions():
    from tracer.trace.load import read_json
    from tracer.tui.app import TracerApp

    trace = read_json(FIXTURE.parent / "bert-mask.json")
    app = TracerApp([trace])
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        prediction = trace.predictions()[0]
        text = panel_text(app, "#next-token")
        # the masked position's candidates, from the first screen on
        assert f'"[MASK]" → "{prediction["chosen"]["token"]}"' in text
        assert f"{prediction['top_k'][0]['prob']:.3f}" in text
        assert "Layer 0" in screen_text(app) and "Masked-token predictions" in screen_text(app)
        screen.go("blocks.0.attn.hook_pattern")
        await pilot.pause()
        assert "Self-attention" in screen_text(app) and "Masked self-attention" not in screen_text(app)


async def test_decoder_only_trace_groups_by_decoding_step():
    from tracer.trace.load import read_json
    from tracer.tui.app import TracerApp

    trace = read_json(FIXTURE.parent / "gpt-continue.json")
    app = TracerApp([trace])
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        assert screen.step_id == "hook_tokens@1"
        chosen = trace.predictions()[0]["chosen"]["token"]
        assert f'Step 1 → "{chosen}"' in screen_text(app)
        screen.go("blocks.0.attn.hook_pattern@2")
        await pilot.press("T")
        assert screen.step_id == "blocks.0.attn.hook_pattern@1"
        assert "Masked self-attention" in screen_text(app)
        assert "Softmax: attention weights (masked self-attention)" in panel_text(app, "#explain")
        screen.go("blocks.0.attn.hook_q@1")
        await pilot.pause()
        assert "from     blocks.0.ln1.hook_normalized@1" in panel_text(app, "#explain")  # pre-norm: Q reads ln1


async def test_switching_steps_draws_what_opening_them_directly_draws():
    """The tensor view and panels skip Textual's relayout when their content size changes;
    scrollbars and text must still come out as they would on a fresh screen."""
    from tracer.trace.state import UIState

    # scrollbar on → on, on → off, off → off, off → on (at 80×24 the FFN and vocab steps overflow)
    steps = ["encoder.0.mlp.hook_pre", "decoder.hook_probs@2", "encoder.hook_tokens",
             "decoder.1.cross_attn.hook_k@3", "decoder.0.mlp.hook_post@2"]
    walked = []
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        for step_id in steps:
            app.trace_screen.go(step_id)
            await pilot.pause()
            walked.append(screen_text(app))
        assert app.trace_screen.query_one("#tensor").show_horizontal_scrollbar
    for step_id, text in zip(steps, walked):
        fresh = make_app(state=UIState(step=step_id))
        async with fresh.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert screen_text(fresh) == text, step_id


# -- issue 12: what a new user hit ------------------------------------------------------------
@pytest.mark.parametrize("step_id", ["encoder.hook_embed", "encoder.0.mlp.hook_pre", "decoder.hook_logits@1"])
async def test_arrows_change_the_step_on_a_tensor_wider_than_the_view(step_id):
    """→ / ← scrolled a wide tensor (ScrollView's bindings) instead of moving to the next/previous step."""
    app = make_app()
    async with app.run_test(size=(50, 20)) as pilot:
        screen = app.trace_screen
        screen.go(step_id)
        await pilot.pause()
        view = screen.query_one("#tensor")
        assert view.has_focus and view.virtual_size.width > view.size.width  # really wider than the view
        index = screen.step.index
        await pilot.press("right")
        assert screen.step.index == index + 1
        await pilot.press("left")
        assert screen.step_id == step_id
        assert view.scroll_offset.x == 0
        # columns still scroll, with the cell cursor (shift+→ or .; ctrl+→ a screenful)
        await pilot.press("ctrl+right", "ctrl+right", "full_stop")
        await pilot.pause()
        assert view.cursor[1] > 0 and view.scroll_offset.x > 0 and screen.step_id == step_id


def contrast_ratio(foreground, background) -> float:
    """WCAG contrast ratio of two rich colours (1 … 21)."""
    def luminance(colour):
        channels = []
        for c in colour.get_truecolor():
            c /= 255
            channels.append(c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
        return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


@pytest.mark.parametrize("step_id", ["decoder.1.cross_attn.hook_pattern@2", "encoder.0.attn.hook_attn_raw", "encoder.hook_tokens"])
async def test_numbers_are_readable_on_any_terminal_background(step_id):
    """Numbers were drawn in their heat-map colour on the terminal's own background: small weights
    (navy, black) vanished on a dark terminal. Each number now brings its own background."""
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go(step_id)
        if screen.view != "numbers" and screen.step.kind != "tokens":
            await pilot.press("v")
        await pilot.pause()
        view = screen.query_one("#tensor")
        cursor_row, cursor_col = view.cursor
        numbers = 0
        for y in range(1, view.picture.rows + 1):
            for segment in view.render_line(y):
                text, style = segment.text.strip(), segment.style
                if not any(ch.isdigit() for ch in text) or style is None or style.reverse:
                    continue  # row labels, the gap between numbers, the cursor cell
                if text in ("−∞", "·"):
                    continue
                numbers += 1
                assert style.bgcolor is not None and style.color is not None, (text, style)
                assert contrast_ratio(style.color, style.bgcolor) >= 3.0, (text, style)
        assert numbers >= view.picture.rows - 1  # every row but the cursor's holds a number at least


async def test_other_trace_keeps_the_place():
    """`o` jumped back to Tokenize; comparing one tensor across two sentences needs the same step."""
    app = TracerAppWith(2)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("decoder.1.cross_attn.hook_pattern@2")
        await pilot.press("h")
        await pilot.press("o")
        assert screen.trace_index == 1
        assert (screen.step_id, screen.head) == ("decoder.1.cross_attn.hook_pattern@2", 1)
        assert "decoder.1.cross_attn.hook_pattern@2   head 2/4" in static_text(app, "#tensor-title")
        assert "Decoder step 2" in screen_text(app) and "softmax ◂" in screen_text(app)


def TracerAppWith(count: int, text: str = "ich bin piyush"):
    from tracer.tui.app import TracerApp

    traces = []
    for number in range(count):
        trace = fixture_trace()
        trace.input = dict(trace.input, text=text if number == 0 else f"{text} ({number + 1})")
        traces.append(trace)
    return TracerApp(traces)


async def test_title_keeps_its_indicators_and_shortens_the_sentence():
    """A long sentence pushed `trace 2/3` and `▶ playing` off the title bar."""
    long_text = "der hund schläft unter dem großen alten baum im garten hinter dem haus " * 2
    app = TracerAppWith(3, long_text)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("o", "a")
        await pilot.pause()
        title = screen_text(app).splitlines()[0]
        assert "trace 2/3" in title and "▶ playing" in title, title
        assert '"der hund' in title and "…" in title  # the sentence gave way
        await pilot.resize_terminal(120, 24)
        await pilot.pause()
        title = screen_text(app).splitlines()[0]
        assert "trace 2/3" in title and "▶ playing, 0.8 s/step (a pause, +/- speed)" in title, title


async def test_bookmark_stays_in_sight_with_a_long_note():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.trace_screen
        screen.go("encoder.1.attn.hook_pattern")
        screen.add_bookmark(screen.step_id, "the masked cells are where the future would be " * 3)
        await pilot.pause()
        first_line = screen_text(app).splitlines()[1]
        assert "encoder.1.attn.hook_pattern   head 1/4" in first_line
        assert "★ the masked" in first_line


async def test_layer_zero_says_this_is_the_first_layer():
    app = make_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.trace_screen
        screen.go("encoder.0.attn.hook_pattern")
        await pilot.press("left_square_bracket")
        await pilot.pause()
        assert screen.step_id == "encoder.0.attn.hook_pattern"
        text = screen_text(app)
        assert "this is the first layer" in text and "layer -1" not in text


async def test_decoding_step_from_an_encoder_step_keeps_its_kind():
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("encoder.1.attn.hook_pattern")
        await pilot.press("t")
        assert screen.step_id == "decoder.1.attn.hook_pattern@1"


async def test_decoding_step_labels_keep_the_chosen_token_at_80x24():
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        for t, token in enumerate(app.traces[0].output["tokens"], start=1):
            assert f'step {t} → "{token}"' in text, (t, text)


async def test_save_writes_into_the_store_the_app_was_handed(tmp_path, isolated_sessions):
    from tracer.trace.session import SessionStore

    store = SessionStore(tmp_path / "elsewhere")
    app = make_app(store=store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        app.screen.query_one("Input").value = "handed"
        await pilot.press("enter")
        await pilot.pause()
        assert app.session_name == "handed"
    assert store.path_of("handed").exists()
    assert not SessionStore(isolated_sessions).path_of("handed").exists()  # not the environment's folder


def test_replay_hands_its_sessions_folder_to_the_ui(tmp_path, monkeypatch):
    """The sessions folder reaches the UI as a SessionStore, not through os.environ."""
    import os

    from click.testing import CliRunner

    import tracer.tui
    from tracer.cli import cli
    from tracer.trace.session import ENV_DIR

    opened = {}
    monkeypatch.setattr(tracer.tui, "open_traces", lambda traces, **kwargs: opened.update(kwargs, traces=traces))
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    before = os.environ.get(ENV_DIR)
    result = CliRunner().invoke(cli, ["replay", str(FIXTURE), "--sessions-dir", str(tmp_path / "mine")])
    assert result.exit_code == 0, result.output
    assert opened["store"].root == tmp_path / "mine"
    assert os.environ.get(ENV_DIR) == before
