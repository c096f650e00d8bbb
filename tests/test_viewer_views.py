"""The Viewer's moves for issue 18's views, and their headless pictures, without Textual:
follow and back, all heads, find by value, the attention map, the lens table, export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tui_helpers import FIXTURE, fixture_trace

from tracer.errors import BadInput
from tracer.trace.load import read_json
from tracer.trace.state import UIState
from tracer.tui.view import Change, Viewer

KATZE = FIXTURE.parent / "de-en-tiny-katze.json"


@pytest.fixture(scope="module")
def katze():
    return read_json(KATZE)


def at(trace, step_id, **state) -> Viewer:
    return Viewer([trace], UIState(step=step_id, **state))


# -- follow and back -----------------------------------------------------------------------------
def test_follow_goes_to_each_input_and_back_retraces_the_path(katze):
    viewer = at(katze, "decoder.0.attn.hook_attn_raw@2", head=3, cell=(1, 1))
    assert viewer.sources() == ["decoder.0.attn.hook_q@2", "decoder.0.attn.hook_k@2"]
    assert viewer.follow(1).step and viewer.step_id == "decoder.0.attn.hook_k@2"
    assert viewer.follow(0).step and viewer.step_id == "decoder.0.hook_resid_pre@2"  # post-norm: K is read from the layer input
    assert viewer.back() == Change(step=True, cell=True) and viewer.step_id == "decoder.0.attn.hook_k@2"
    assert viewer.back() and (viewer.step_id, viewer.head, viewer.cell) == ("decoder.0.attn.hook_attn_raw@2", 3, (1, 1))
    nothing = viewer.back()
    assert not nothing and "nothing to go back to" in nothing.message


def test_follow_refuses_what_is_not_there(katze):
    viewer = at(katze, "encoder.hook_tokens")
    change = viewer.follow()
    assert not change and "input itself" in change.message and viewer.history == []
    viewer.go("decoder.0.attn.hook_pattern@2")
    change = viewer.follow(1)
    assert not change and "1 step only" in change.message
    # a cross-attention's keys come from the encoder's output, outside the decoding step
    viewer.go("decoder.0.cross_attn.hook_k@2")
    assert viewer.follow() and viewer.step_id == "encoder.1.ln2.hook_normalized"


# -- all heads -----------------------------------------------------------------------------------
def test_all_heads_is_a_mode_for_steps_with_heads(katze):
    viewer = at(katze, "decoder.hook_probs@3")
    refused = viewer.toggle_all_heads()
    assert not refused and "no heads" in refused.message and not viewer.all_heads
    viewer.go("encoder.0.attn.hook_q")
    assert viewer.toggle_all_heads() == Change(view=True) and viewer.showing_all_heads
    picture = viewer.heads_picture()
    data = katze["encoder.0.attn.hook_q"]  # [pos, head, d_head]: a [pos, d_head] grid per head
    assert picture.values.shape == (data.shape[1], data.shape[0], data.shape[2])
    np.testing.assert_allclose(picture.values[2], data[:, 2, :])
    assert picture.vmin == -picture.vmax == -np.abs(data).max()  # one scale over every head
    viewer.go("encoder.0.hook_resid_pre")
    assert viewer.all_heads and not viewer.showing_all_heads  # kept for the next per-head step


def test_masked_pattern_cells_stay_masked_in_every_head(katze):
    from tracer.tui.view.heads import build_heads

    viewer = at(katze, "decoder.0.attn.hook_pattern@4")
    picture = viewer.heads_picture()
    mask = katze["decoder.0.attn.hook_mask@4"]
    assert all((picture.masked[h] == ~mask).all() for h in range(picture.n_heads))
    assert build_heads(katze.step("decoder.0.attn.hook_pattern@4")).masked.sum() == 0  # without the mask: weights of 0


def test_layout_and_sampling_keep_a_peak_and_fit_the_room():
    from tracer.trace import Step
    from tracer.tui.view.heads import TITLE_ROWS, build_heads, fit_layout, sampled

    data = np.zeros((12, 128, 128), dtype=np.float32)
    data[5, 77, 33] = 1.0  # one sharp peak in one head
    step = Step.from_array("blocks.0.attn.hook_pattern@1", data, ("head", "query", "key"))
    picture = build_heads(step)
    layout = fit_layout(12, 128, 128, 90, 30)
    bands = layout.panel_rows(12)
    assert layout.columns * layout.width + (layout.columns - 1) <= 90
    assert bands * (layout.height + TITLE_ROWS) <= 30
    levels, masked = sampled(picture, layout.rows, layout.cols)
    assert levels.shape == (12, layout.rows, layout.cols) and not masked.any()
    assert levels[5].max() == 63 and levels[[h for h in range(12) if h != 5]].max() == 0


# -- find by value -------------------------------------------------------------------------------
def test_find_max_moves_head_and_cell(katze):
    viewer = at(katze, "encoder.1.attn.hook_attn_scaled")
    data = katze["encoder.1.attn.hook_attn_scaled"]
    head, row, col = np.unravel_index(np.argmax(data), data.shape)
    change = viewer.find_max()
    assert change.cell and (viewer.head, viewer.cell) == (head, (row, col))
    assert viewer.back() and (viewer.head, viewer.cell) == (0, (0, 0))


@pytest.mark.parametrize("step_id", ["encoder.hook_tokens", "decoder.hook_probs@2", "encoder.0.attn.hook_q"])
def test_find_max_cell_shows_the_largest_element(katze, step_id):
    viewer = at(katze, step_id)
    viewer.find_max()
    data = katze[step_id]
    assert viewer.picture().index(*viewer.cell) == np.unravel_index(np.argmax(data), data.shape)


def test_token_ids_by_text_or_number(katze):
    viewer = Viewer([katze])
    milk = katze.output["ids"][katze.output["tokens"].index("milk")]
    assert viewer.token_id("milk") == viewer.token_id(" MILK ") == viewer.token_id(str(milk)) == milk
    assert viewer.token_id("katze") == katze.input["ids"][1]  # from the input
    assert viewer.token_id("zebra") is None
    change = viewer.find_token("zebra")
    assert not change and "give its id" in change.message


def test_find_token_in_the_output_and_in_the_lens(katze):
    viewer = Viewer([katze])
    cat = viewer.token_id("cat")
    change = viewer.find_token("cat")
    assert change.step and viewer.step_id == "decoder.hook_probs@2" and "decoding step 2" in change.message
    assert viewer.picture().index(*viewer.cell) == (cat,)
    change = viewer.find_token("cat", lens=True)
    lens = {s.id: s.data[cat] for s in katze.find(kind="lens_probs")}
    assert viewer.step_id == max(lens, key=lens.get) and "layer" in change.message


def test_find_token_in_the_lens_of_a_trace_without_one():
    viewer = Viewer([fixture_trace()])
    change = viewer.find_token("we", lens=True)
    assert not change and "no lens steps" in change.message


# -- one token's attention everywhere ------------------------------------------------------------
def test_attention_map_reads_every_layer_and_head(katze):
    viewer = at(katze, "encoder.0.attn.hook_attn_scores", cell=(1, 0))
    found, why = viewer.attention_map()
    assert why is None and found.query_token == "katze" and [s.title for s in found.sections] == ["self-attention"]
    for layer, row in zip(found.sections[0].layers, found.sections[0].cells):
        pattern = katze[f"encoder.{layer}.attn.hook_pattern"]
        for cell in row:
            assert cell.key == int(np.argmax(pattern[cell.head, 1])) and cell.weight == pattern[cell.head, 1].max()
            assert cell.token == katze.input["tokens"][cell.key]
    cell = found.sections[0].cells[1][2]
    assert viewer.open_pattern(cell, 1) and (viewer.step_id, viewer.head, viewer.cell) == (
        "encoder.1.attn.hook_pattern", 2, (1, cell.key))


def test_attention_map_needs_an_attention_step(katze):
    found, why = at(katze, "decoder.hook_probs@1").attention_map()
    assert found is None and "attention step" in why


# -- the lens table ------------------------------------------------------------------------------
def test_lens_table_rows_and_the_chosen_tokens_probability(katze):
    from tracer.tui.view.lens import lens_table

    table = lens_table(katze, katze.step("decoder.0.attn.hook_q@9"))
    chosen = katze.step("decoder.hook_probs@9").extra["chosen"]
    assert table.chosen == chosen and [row.label for row in table.rows] == ["layer 0", "layer 1", "output"]
    assert table.rows[0].chosen_prob == pytest.approx(float(katze["decoder.0.hook_lens_probs@9"][chosen["id"]]))
    assert table.rows[-1].top == katze.step("decoder.hook_probs@9").extra["top_k"]
    found, why = Viewer([katze]).lens_table()  # at the encoder's first step: no decoding step
    assert found is None and "per decoding step" in why


# -- export --------------------------------------------------------------------------------------
def test_export_formats_and_paths(katze, tmp_path):
    from tracer.tui.view.export import export_step, target_path

    step = katze.step("decoder.0.attn.hook_mask@3")
    assert target_path(step, None, tmp_path) == tmp_path / "decoder.0.attn.hook_mask@3.npy"
    assert target_path(step, str(tmp_path), tmp_path) == tmp_path / "decoder.0.attn.hook_mask@3.npy"  # a folder
    assert target_path(step, "mask", tmp_path) == tmp_path / "mask.npy"
    csv = export_step(step, tmp_path / "mask.csv")
    np.testing.assert_array_equal(np.loadtxt(csv, delimiter=",", comments="#"), step.data.astype(int))
    document = json.loads(export_step(step, tmp_path / "mask.json").read_text())
    assert document["data"] == step.data.tolist() and document["labels"] == step.labels
    scores = katze.step("decoder.0.attn.hook_attn_scores@3")  # −∞ where masked: null in JSON
    document = json.loads(export_step(scores, tmp_path / "scores.json").read_text())
    assert document["data"][0][0][1] is None
    with pytest.raises(BadInput, match="use .npy, .csv or .json"):
        export_step(step, tmp_path / "mask.txt")
    with pytest.raises(BadInput, match="does not exist"):
        export_step(step, tmp_path / "nowhere" / "mask.npy")


# -- layer rule ----------------------------------------------------------------------------------
def test_the_new_headless_modules_leave_torch_and_textual_out():
    import subprocess
    import sys

    code = (
        "import sys, tracer.tui.view.heads, tracer.tui.view.lens, tracer.tui.view.attention_map, tracer.tui.view.export\n"
        "loaded = [m for m in ('torch', 'textual') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_attention_map_of_a_decoder_only_trace():
    gpt = read_json(FIXTURE.parent / "gpt-continue.json")  # 1 layer, 2 heads, 2 decoding steps
    viewer = at(gpt, "blocks.0.attn.hook_pattern@2", cell=(2, 0))
    found, why = viewer.attention_map()
    assert why is None and [s.title for s in found.sections] == ["masked self-attention"]
    assert found.cell_count == 1 * 2 and found.decode_step == 2
    pattern = gpt["blocks.0.attn.hook_pattern@2"]
    assert [c.key for c in found.sections[0].cells[0]] == list(np.argmax(pattern[:, 2], axis=1))
    assert all(c.key <= 2 for c in found.sections[0].cells[0])  # causal: never a later token
