"""Issue 18's views, driven with Textual's pilot on the bundled de-en-tiny's trace of
"die katze trank die milch weil sie hungrig war" (a JSON fixture with the logit lens): all heads
at once, the logit lens, one token's attention everywhere, following the dataflow, find by value
and export. No torch needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tui_helpers import FIXTURE

import tracer
from tracer.trace.load import read_json

KATZE = FIXTURE.parent / "de-en-tiny-katze.json"
SIZE = (120, 40)


@pytest.fixture(scope="module")
def katze():
    return read_json(KATZE)


def katze_app():
    from tracer.tui.app import TracerApp

    return TracerApp([read_json(KATZE)])


def tensor_title(app) -> str:
    return str(app.screen.query_one("#tensor-title").render())


def rendered(widget) -> list[str]:
    return [widget.render_line(y).text for y in range(widget.size.height)]


# -- all heads at once ---------------------------------------------------------------------------
async def test_all_heads_shows_every_head_on_one_scale(katze):
    from tracer.tui.view.picture import LEVELS
    from tracer.tui.widgets.heads_view import HeadsView
    from tracer.tui.widgets.tensor_view import TensorView

    step_id = "decoder.1.cross_attn.hook_attn_scaled@7"
    data = katze[step_id].astype(np.float64)
    bound = max(-data.min(), data.max())  # a diverging scale (scores of either sign), 0 in the middle
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go(step_id)
        await pilot.pause()
        assert "scale: per head" in tensor_title(app)
        await pilot.press("A")
        await pilot.pause()
        heads = screen.query_one(HeadsView)
        assert heads.display and not screen.query_one(TensorView).display
        lines = rendered(heads)
        text = "\n".join(lines)
        for head in range(data.shape[0]):
            assert f"head {head + 1}" in text
        assert "▀" in text
        title = tensor_title(app)
        assert "all 4 heads" in title and "scale: shared by all 4 heads" in title
        # one scale: each head's extremes sit where they fall among all heads' values
        levels, _ = heads._sampled
        assert levels.shape == data.shape  # small enough to draw every cell
        for head in range(data.shape[0]):
            assert levels[head].max() == round((data[head].max() + bound) / (2 * bound) * (LEVELS - 1))
            assert levels[head].min() == round((data[head].min() + bound) / (2 * bound) * (LEVELS - 1))
        assert len({int(levels[h].max()) for h in range(data.shape[0])}) > 1  # per-head scales would all reach the top
        # h still steps through the heads, highlighting the one the single-head view would show
        await pilot.press("h")
        assert screen.head == 1 and heads.head == 1
        assert "head 2 highlighted" in tensor_title(app)
        # another per-head step keeps the view; a step without heads shows its tensor
        await pilot.press("left_square_bracket", "right_square_bracket")
        assert screen.step_id == step_id and heads.display
        await pilot.press("n")  # → the mask: no heads, its tensor shows
        assert screen.step.kind == "mask" and not heads.display and screen.query_one(TensorView).display
        await pilot.press("n")  # → the masked scores: per head again
        assert screen.step.kind == "attn_scores" and heads.display
        screen.go(step_id)
        await pilot.press("A")
        assert not heads.display and "scale: per head" in tensor_title(app)


async def test_all_heads_refuses_a_step_without_heads():
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("A")
        assert not app.viewer.all_heads
        assert "no heads" in "\n".join(str(n.message) for n in app._notifications)


# -- the logit lens ------------------------------------------------------------------------------
async def test_lens_has_a_row_per_layer_and_its_last_layer_chooses_the_chosen_token(katze):
    from textual.widgets import DataTable

    from tracer.tui.screens.views import LensScreen

    layers = katze.model["config"]["n_decoder_layers"]
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        for t in katze.decode_steps:
            screen.go(f"decoder.1.attn.hook_pattern@{t}")  # any step of the decoding step
            await pilot.press("l")
            assert isinstance(app.screen, LensScreen)
            table = app.screen.query_one(DataTable)
            labels = [str(table.get_row_at(row)[0]) for row in range(table.row_count)]
            assert labels == [f"layer {layer}" for layer in range(layers)] + ["output"]
            chosen = katze.step(f"decoder.hook_probs@{t}").extra["chosen"]
            last = table.get_row_at(layers - 1)
            assert str(last[2]).split()[0] == f"▶{chosen['token']}"  # its #1, marked as the chosen token
            await pilot.press("escape")
        # t / T move the lens through the decoding steps without leaving it
        screen.go("decoder.hook_probs@2")
        await pilot.press("l", "t")
        lens = app.screen
        assert lens.table.title == "logit lens at decoding step 3" and lens.rows[0] == "decoder.0.hook_lens_probs@3"
        await pilot.press("T", "T", "T")  # past the first decoding step: stays at 1
        assert lens.table.title == "logit lens at decoding step 1"
        await pilot.press("escape")
        screen.go(f"decoder.1.attn.hook_pattern@{katze.decode_steps[-1]}")
        # enter on a row opens that layer's lens step
        await pilot.press("l", "enter")
        assert screen.step_id == f"decoder.0.hook_lens_probs@{katze.decode_steps[-1]}"
        await pilot.press("backspace")
        assert screen.step_id == f"decoder.1.attn.hook_pattern@{katze.decode_steps[-1]}"


async def test_lens_says_why_not_where_there_is_none():
    from tui_helpers import make_app

    app = make_app()  # the random fixture was traced before the lens existed
    async with app.run_test(size=SIZE) as pilot:
        app.trace_screen.go("decoder.hook_probs@2")
        await pilot.press("l")
        assert app.screen is app.trace_screen
        assert "no logit lens" in "\n".join(str(n.message) for n in app._notifications)


# -- one token's attention everywhere ------------------------------------------------------------
async def test_token_view_grid_and_enter_lands_on_that_pattern_head_and_row(katze):
    from textual.widgets import DataTable

    from tracer.tui.screens.views import AttentionMapScreen

    cfg = katze.model["config"]
    layers, heads = cfg["n_decoder_layers"], cfg["n_heads"]
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("decoder.0.attn.hook_pattern@8")
        await pilot.pause()
        await pilot.press(*["down"] * 6)  # query row 6
        assert app.viewer.cell[0] == 6
        token = katze.step("decoder.0.attn.hook_pattern@8").labels["query"][6]
        await pilot.press("g")
        assert isinstance(app.screen, AttentionMapScreen)
        found = app.screen.map
        assert found.query == 6 and found.query_token == token == "because"
        assert [s.title for s in found.sections] == ["masked self-attention", "cross-attention"]
        assert found.cell_count == 2 * layers * heads
        for section in found.sections:
            assert section.layers == list(range(layers)) and all(len(row) == heads for row in section.cells)
        table = app.screen.query_one(DataTable)
        assert table.row_count == 2 * (layers + 1) and len(table.columns) == heads + 1
        # the cross-attention section's layer 1, head 3
        row = next(r for (r, c), cell in app.screen.cells.items()
                   if "cross" in cell.step_id and cell.layer == 1 and c == 3)
        table.move_cursor(row=row, column=3, animate=False)
        await pilot.press("enter")
        assert app.screen is screen
        assert screen.step_id == "decoder.1.cross_attn.hook_pattern@8" and screen.head == 2
        weights = katze["decoder.1.cross_attn.hook_pattern@8"][2, 6]
        assert app.viewer.cell == (6, int(np.argmax(weights)))
        assert screen.query_one("#tensor").cursor == (6, int(np.argmax(weights)))


async def test_token_view_needs_an_attention_step():
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("g")
        assert app.screen is app.trace_screen
        assert "attention step" in "\n".join(str(n.message) for n in app._notifications)


# -- follow the dataflow -------------------------------------------------------------------------
async def test_follow_from_and_back_returns_to_the_same_step():
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("decoder.1.attn.hook_z@4")
        await pilot.press("h", "down", "down")
        here = (screen.step_id, screen.head, app.viewer.cell)
        assert "decoder.1.attn.hook_pattern@4" in screen.query_one("#explain").plain
        await pilot.press("f")
        assert screen.step_id == "decoder.1.attn.hook_pattern@4"
        await pilot.press("f")
        assert screen.step_id == "decoder.1.attn.hook_attn_scores@4"
        await pilot.press("backspace", "F")  # back to the pattern, then z's … no: the pattern's second input
        assert screen.step_id == "decoder.1.attn.hook_pattern@4"  # a pattern has one input: F is refused
        await pilot.press("backspace")
        assert (screen.step_id, screen.head, app.viewer.cell) == here
        await pilot.press("F")
        assert screen.step_id == "decoder.1.attn.hook_v@4"
        await pilot.press("backspace")
        assert (screen.step_id, screen.head, app.viewer.cell) == here


async def test_clicking_a_from_link_follows_it():
    from tracer.tui.widgets.panels import ExplainPanel

    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("decoder.1.attn.hook_z@4")
        await pilot.pause()
        panel = screen.query_one(ExplainPanel)
        target = "decoder.1.attn.hook_v@4"
        lines = rendered(panel)
        y = next(i for i, line in enumerate(lines) if target in line)
        x = lines[y].index(target) + 3
        await pilot.click(ExplainPanel, offset=(x, y))
        assert screen.step_id == target
        await pilot.press("backspace")
        assert screen.step_id == "decoder.1.attn.hook_z@4"


# -- find by value -------------------------------------------------------------------------------
async def test_find_max_lands_on_the_arg_max(katze):
    step_id = "decoder.0.attn.hook_attn_scores@6"  # −∞ where masked: the largest finite value counts
    data = katze[step_id]
    expected = np.unravel_index(np.argmax(np.where(np.isfinite(data), data, -np.inf)), data.shape)
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go(step_id)
        await pilot.press("m")
        assert screen.head == expected[0]
        assert app.viewer.cell == (expected[1], expected[2])
        assert screen.query_one("#tensor").cursor == (expected[1], expected[2])
        assert f"head {expected[0]}, query {expected[1]}, key {expected[2]}" in "\n".join(
            str(n.message) for n in app._notifications)


async def test_find_token_lands_where_it_is_most_probable(katze):
    milk = next(i for token, i in zip(katze.output["tokens"], katze.output["ids"]) if token == "milk")
    probs = {s.id: float(s.data[milk]) for s in katze.find(kind="probs")}
    lens = {s.id: float(s.data[milk]) for s in katze.find(kind="lens_probs")}
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        await pilot.press("w")
        await pilot.press(*"milk", "enter")
        assert screen.step_id == max(probs, key=probs.get) == "decoder.hook_probs@5"
        assert screen.query_one("#tensor").picture.index(*app.viewer.cell) == (milk,)
        await pilot.press("W")
        await pilot.press(*str(milk), "enter")  # by id this time
        assert screen.step_id == max(lens, key=lens.get)
        assert screen.step.kind == "lens_probs"
        assert screen.query_one("#tensor").picture.index(*app.viewer.cell) == (milk,)


# -- export --------------------------------------------------------------------------------------
async def test_export_writes_the_tensor_as_npy_into_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    step_id = "decoder.0.cross_attn.hook_pattern@3"
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        app.trace_screen.go(step_id)
        await pilot.press("e")
        await pilot.pause()
        path = tmp_path / f"{step_id}.npy"
        assert path.exists()
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), tracer.load(KATZE)[step_id])
        messages = "\n".join(str(n.message) for n in app._notifications)
        assert f"exported {step_id} to {path}" in messages
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


async def test_export_to_a_path_asked_for_as_csv_and_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    step_id = "decoder.1.attn.hook_q@2"
    expected = tracer.load(KATZE)[step_id]
    app = katze_app()
    async with app.run_test(size=SIZE) as pilot:
        app.trace_screen.go(step_id)
        for name in ("q.csv", "q.json"):
            await pilot.press("E")
            field = app.screen.query_one("#prompt-input")
            assert field.value == f"{step_id}.npy"
            field.value = str(tmp_path / name)
            await pilot.press("enter")
            await pilot.pause()
    table = np.loadtxt(tmp_path / "q.csv", delimiter=",", comments="#")
    np.testing.assert_allclose(table, expected.reshape(expected.shape[0], -1), rtol=1e-6)
    document = json.loads((tmp_path / "q.json").read_text())
    assert document["id"] == step_id and document["axes"] == ["pos", "head", "d_head"]
    np.testing.assert_array_equal(np.array(document["data"], dtype=np.float32), expected)
