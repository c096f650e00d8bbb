"""The headless Viewer (tracer.tui.view): every move on real traces, without Textual.

Traces are the JSON fixtures (seeded random models and the bundled de-en-tiny), so no torch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tui_helpers import FIXTURE, fixture_trace

from tracer.trace.load import read_json
from tracer.trace.state import Bookmark, UIState
from tracer.tui.view import Change, Viewer, nearest_step

DE_EN_TINY = FIXTURE.parent / "de-en-tiny-ich-bin-piyush.json"


@pytest.fixture(scope="module")
def trace():
    return fixture_trace()  # random de-en: 2 encoder and 2 decoder layers, 4 heads, 3 decoding steps


def viewer_at(trace, step_id=None, **state) -> Viewer:
    return Viewer([trace], UIState(step=step_id, **state))


# -- steps ----------------------------------------------------------------------------------
def test_starts_at_the_first_step_and_walks_in_computation_order(trace):
    viewer = Viewer([trace])
    assert viewer.step_id == trace.steps[0].id == "encoder.hook_tokens"
    seen = [viewer.step_id]
    while viewer.next_step():
        seen.append(viewer.step_id)
    assert seen == trace.ids
    last = viewer.next_step()
    assert not last and last.message == "last step of the trace" and viewer.step_id == trace.ids[-1]
    change = viewer.previous_step()
    assert change == Change(step=True) and viewer.step_id == trace.ids[-2]


def test_previous_at_the_first_step_says_so(trace):
    viewer = Viewer([trace])
    change = viewer.previous_step()
    assert not change and change.message == "first step of the trace"
    assert viewer.step_id == "encoder.hook_tokens"


def test_go_to_a_step_and_to_a_step_that_is_not_there(trace):
    viewer = Viewer([trace])
    assert viewer.go("decoder.1.cross_attn.hook_pattern@2") == Change(step=True)
    assert viewer.step.kind == "pattern" and viewer.step.decode_step == 2
    assert not viewer.go("decoder.1.cross_attn.hook_pattern@2")  # already there: nothing changed, nothing to say
    missing = viewer.go("decoder.9.nope")
    assert not missing and "no step decoder.9.nope" in missing.message
    assert viewer.step_id == "decoder.1.cross_attn.hook_pattern@2"


# -- layers ---------------------------------------------------------------------------------
def test_layer_keeps_kind_component_and_decoding_step(trace):
    viewer = viewer_at(trace, "decoder.0.cross_attn.hook_q@2")
    assert viewer.layer(1) == Change(step=True)
    assert viewer.step_id == "decoder.1.cross_attn.hook_q@2"
    last = viewer.layer(1)
    assert not last and last.message == "this is the last layer"
    assert viewer.layer(-1) and viewer.step_id == "decoder.0.cross_attn.hook_q@2"


def test_layer_below_the_first_says_this_is_the_first_layer(trace):
    """Issue 12 (11): it said "no layer -1"."""
    viewer = viewer_at(trace, "encoder.0.attn.hook_pattern")
    change = viewer.layer(-1)
    assert not change and change.message == "this is the first layer"
    assert viewer.step_id == "encoder.0.attn.hook_pattern"


def test_layer_outside_any_layer(trace):
    change = viewer_at(trace, "encoder.hook_embed").layer(1)
    assert not change and change.message == "this step is not inside a layer"


# -- heads ------------------------------------------------------------------------------------
def test_heads_cycle_and_the_picture_follows(trace):
    viewer = viewer_at(trace, "encoder.0.attn.hook_attn_raw")
    assert viewer.next_head() == Change(head=True) and viewer.head == 1
    np.testing.assert_array_equal(viewer.picture().values, trace["encoder.0.attn.hook_attn_raw"][1])
    viewer.next_head(-1)
    viewer.next_head(-1)
    assert viewer.head == 3  # wraps round (4 heads)
    assert viewer.picture().head == 3
    no_heads = viewer_at(trace, "encoder.hook_embed").next_head()
    assert not no_heads and no_heads.message == "this step has no heads"


# -- decoding steps ---------------------------------------------------------------------------
def test_decoding_step_moves_the_same_step_along(trace):
    viewer = viewer_at(trace, "decoder.0.cross_attn.hook_pattern@1")
    assert viewer.decoding_step(1) and viewer.step_id == "decoder.0.cross_attn.hook_pattern@2"
    assert viewer.decoding_step(1) and viewer.step_id == "decoder.0.cross_attn.hook_pattern@3"
    last = viewer.decoding_step(1)
    assert not last and last.message == "this is the last decoding step"
    viewer.go("decoder.0.cross_attn.hook_pattern@1")
    first = viewer.decoding_step(-1)
    assert not first and "first decoding step" in first.message


def test_decoding_step_from_the_encoder_goes_to_the_same_kind_in_the_decoder(trace):
    """Issue 12 (11): `t` from an encoder step went to decoder.hook_tokens@1 whatever the step."""
    viewer = viewer_at(trace, "encoder.1.attn.hook_pattern")
    assert viewer.decoding_step(1)
    assert viewer.step_id == "decoder.1.attn.hook_pattern@1"
    viewer.go("encoder.hook_embed")
    viewer.decoding_step(1)
    assert viewer.step_id == "decoder.hook_embed@1"
    back = viewer_at(trace, "encoder.0.attn.hook_q").decoding_step(-1)
    assert not back and back.message == "the encoder runs before the first decoding step"


def test_decoding_step_in_a_trace_without_decoding_steps():
    bert = read_json(FIXTURE.parent / "bert-mask.json")
    change = Viewer([bert]).decoding_step(1)
    assert not change and change.message == "this trace has no decoding steps"


def test_decoding_step_in_a_decoder_only_trace():
    gpt = read_json(FIXTURE.parent / "gpt-continue.json")
    viewer = viewer_at(gpt, "blocks.0.attn.hook_pattern@2")
    assert viewer.decoding_step(-1) and viewer.step_id == "blocks.0.attn.hook_pattern@1"
    first = viewer.decoding_step(-1)
    assert not first and first.message == "this is the first decoding step"


# -- find -------------------------------------------------------------------------------------
def test_find_by_id_and_by_words(trace):
    viewer = Viewer([trace])
    assert viewer.find("decoder.1.cross_attn.hook_pattern@2") and viewer.step_id == "decoder.1.cross_attn.hook_pattern@2"
    # every word must match the id or the label; the next match after the current step comes first
    assert viewer.find("cross_attn pattern@3") and viewer.step_id == "decoder.0.cross_attn.hook_pattern@3"
    assert viewer.find("cross_attn pattern@3") and viewer.step_id == "decoder.1.cross_attn.hook_pattern@3"
    assert viewer.find("cross_attn pattern@3") and viewer.step_id == "decoder.0.cross_attn.hook_pattern@3"  # wraps
    assert viewer.matches("softmax encoder") == ["encoder.0.attn.hook_pattern", "encoder.1.attn.hook_pattern"]
    none = viewer.find("no such thing")
    assert not none and none.message == "no step matches 'no such thing'"


# -- view and cell ----------------------------------------------------------------------------
def test_view_toggles_and_the_cell_stays_inside_the_tensor(trace):
    viewer = viewer_at(trace, "encoder.0.mlp.hook_pre")  # 3 × 64
    assert viewer.toggle_view() == Change(view=True) and viewer.view == "numbers"
    assert viewer.toggle_view() and viewer.view == "heatmap"
    viewer.set_cell(2, 60)
    viewer.go("encoder.0.attn.hook_pattern")  # 3 × 3 per head: the cell is pulled inside
    assert viewer.cell == (2, 2)
    viewer.go("decoder.hook_probs@1")  # 120 values wrapped in rows of 32: row 2 ends at 95
    assert viewer.cell == (2, 2)
    viewer.set_cell(3, 30)  # the last row holds 24 values (96..119)
    viewer.go("decoder.hook_logits@1")
    assert viewer.cell == (3, 23) and viewer.picture().valid(*viewer.cell)


# -- bookmarks --------------------------------------------------------------------------------
def test_bookmarks_add_remove_and_next(trace):
    viewer = Viewer([trace])
    assert not viewer.next_bookmark() and viewer.next_bookmark().message == "no bookmarks in this trace (b adds one)"
    viewer.go("encoder.1.attn.hook_pattern")
    assert viewer.add_bookmark("  look here ") == Change(bookmarks=True)
    assert viewer.bookmark_for().note == "look here"
    again = viewer.add_bookmark()
    assert not again and "already bookmarked" in again.message
    viewer.add_bookmark("", step_id="encoder.hook_embed")
    assert viewer.bookmarked_steps() == {"encoder.1.attn.hook_pattern", "encoder.hook_embed"}
    # next bookmark: the first one after this step, wrapping round to the start of the trace
    assert viewer.next_bookmark() and viewer.step_id == "encoder.hook_embed"
    assert viewer.next_bookmark() and viewer.step_id == "encoder.1.attn.hook_pattern"
    removed = viewer.remove_bookmark()
    assert removed == Change(bookmarks=True, message="bookmark removed")
    assert viewer.bookmarked_steps() == {"encoder.hook_embed"}
    nothing = viewer.remove_bookmark()
    assert not nothing and nothing.message == "this step has no bookmark"


# -- traces -----------------------------------------------------------------------------------
def other_sentence(text: str):
    trace = fixture_trace()
    trace.input = dict(trace.input, text=text)
    return trace


def test_add_trace_opens_it_at_its_start_and_other_trace_cycles(trace):
    viewer = Viewer([trace])
    single = viewer.other_trace()
    assert not single and single.message == "only one trace is open (i traces a new sentence)"
    viewer.go("encoder.0.attn.hook_pattern")
    assert viewer.add_trace(other_sentence("du bist müde")) == Change(trace=True, step=True)
    assert (viewer.trace_index, viewer.step_id) == (1, "encoder.hook_tokens")
    assert viewer.trace.input["text"] == "du bist müde"
    assert viewer.other_trace() and viewer.trace_index == 0


def test_other_trace_keeps_the_place(trace):
    """Issue 12 (4): `o` jumped back to Tokenize; it must keep the step, head and cell."""
    viewer = Viewer([trace, other_sentence("du bist müde")])
    viewer.go("decoder.1.cross_attn.hook_pattern@2")
    viewer.next_head()
    viewer.set_cell(1, 2)
    assert viewer.other_trace() == Change(trace=True, step=True)
    assert (viewer.trace_index, viewer.step_id, viewer.head, viewer.cell) == (1, "decoder.1.cross_attn.hook_pattern@2", 1, (1, 2))


def test_other_trace_goes_to_the_nearest_step_of_the_same_kind_and_layer(trace):
    """A longer output (de-en-tiny's 6 decoding steps) against a shorter one (3): the same step at the
    nearest decoding step there is; an encoder step of a longer input keeps its id."""
    tiny = read_json(DE_EN_TINY)
    assert tiny.decode_steps[-1] > trace.decode_steps[-1] == 3
    viewer = Viewer([tiny, trace])
    viewer.go(f"decoder.1.cross_attn.hook_pattern@{tiny.decode_steps[-1]}")
    viewer.other_trace()
    assert viewer.step_id == "decoder.1.cross_attn.hook_pattern@3"
    viewer.go("encoder.1.mlp.hook_post")
    viewer.other_trace()
    assert (viewer.trace_index, viewer.step_id) == (0, "encoder.1.mlp.hook_post")


def test_nearest_step_across_architectures():
    gpt = read_json(FIXTURE.parent / "gpt-continue.json")
    seq2seq = fixture_trace()
    # no step of the same layer and component: the same kind elsewhere; no such kind: the first step
    assert nearest_step(gpt, seq2seq.step("decoder.0.attn.hook_pattern@2")).kind == "pattern"
    assert nearest_step(gpt, seq2seq.step("decoder.0.hook_cross_attn_out@1")) is gpt.steps[0]


# -- saved state -------------------------------------------------------------------------------
def test_state_round_trip(trace):
    viewer = Viewer([trace, other_sentence("du bist müde")])
    viewer.other_trace()
    viewer.go("decoder.0.attn.hook_attn_scores@3")
    viewer.next_head()
    viewer.toggle_view()
    viewer.set_cell(2, 1)
    viewer.add_bookmark("masked")
    state = viewer.to_state()
    assert state == UIState(trace=1, step="decoder.0.attn.hook_attn_scores@3", head=1, view="numbers",
                            bookmarks=[Bookmark(1, "decoder.0.attn.hook_attn_scores@3", "masked")], cell=(2, 1))
    saved = UIState.from_dict(state.to_dict())
    assert saved == state
    restored = Viewer([trace, other_sentence("du bist müde")], saved)
    assert restored.to_state() == state
    assert restored.bookmark_for().note == "masked"


def test_restore_drops_what_does_not_fit(trace):
    viewer = Viewer([trace], UIState(trace=5, step="no.such.step", head=99, cell=(50, 50), view="sideways",
                                     bookmarks=[Bookmark(0, "gone"), Bookmark(3, "encoder.hook_embed"), Bookmark(0, "encoder.hook_embed", "kept")]))
    assert (viewer.trace_index, viewer.step_id, viewer.view) == (0, "encoder.hook_tokens", "heatmap")
    assert viewer.cell == (2, 0)  # 3 tokens, one column of ids
    assert viewer.bookmarks == [Bookmark(0, "encoder.hook_embed", "kept")]


def test_the_viewer_needs_a_trace():
    with pytest.raises(ValueError):
        Viewer([])


# -- layer rule --------------------------------------------------------------------------------
def test_importing_the_viewer_leaves_torch_and_textual_out():
    code = (
        "import sys, tracer.tui.view, tracer.tui.view.viewer, tracer.tui.view.picture, tracer.tui.view.titles,"
        " tracer.tui.view.outline, tracer.tui.view.explain\n"
        "loaded = [m for m in ('torch', 'textual') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- titles fitted to a width -------------------------------------------------------------------
def test_screen_title_shortens_the_sentence_never_the_indicators(trace):
    from tracer.tui.view.titles import screen_title, width_of

    long = other_sentence("ein sehr langer satz über den hund, der im garten hinter dem haus schläft")
    playing = ["▶ playing, 0.8 s/step (a pause, +/- speed)", "▶ playing, 0.8 s/step", "▶ playing"]
    for width in (120, 80, 60):
        parts = screen_title(long, 2, 3, playing, width)
        text = "".join(t for t, _ in parts)
        assert width_of(parts) <= width, (width, text)
        assert "trace 2/3" in text and "▶ playing" in text and '"ein sehr' in text and "…" in text
    assert "(a pause, +/- speed)" in "".join(t for t, _ in screen_title(long, 2, 3, playing, 120))
    # a sentence that fits is left whole; not laid out yet (width 0): nothing shortened
    assert '"ich bin piyush" → "we we we"' in "".join(t for t, _ in screen_title(trace, 1, 1, None, 80))
    assert '"ein sehr langer satz über den hund, der im garten hinter dem haus schläft"' in \
        "".join(t for t, _ in screen_title(long, 1, 1, None, 0))


def test_outline_labels_keep_the_chosen_token():
    from tracer.tui.view.titles import fit_label

    assert fit_label('Decoder step 2 → "am"', 40) == 'Decoder step 2 → "am"'
    assert fit_label('Decoder step 2 → "am"', 15) == 'step 2 → "am"'
    assert fit_label('Decoder step 2 → "am"', 9) == '2 → "am"'
    assert fit_label('probabilities → "piyush"', 16) == 'prob… → "piyush"'
    assert fit_label("Embedding + positions", 12) == "Embedding +…"


def test_screen_title_names_where_the_model_came_from(trace):
    """Issue 13: the title carries the provenance the header records (source, model_type, digest)."""
    from tracer.tui.view.titles import model_label, screen_title

    assert model_label(trace) == trace.model["name"]  # a bundled model: just its name
    saved = dict(trace.model)
    digest = "sha256:" + "1a2b3c4d" * 8
    trace.model["source"] = {"source": "hub", "hub": "HuggingFaceTB/SmolLM2-135M", "model_type": "llama", "digest": digest}
    try:
        assert model_label(trace) == "HuggingFaceTB/SmolLM2-135M (llama, hub, sha256:1a2b3c4d)"
        wide = "".join(text for text, _ in screen_title(trace, 1, 1, None, 160))
        assert "SmolLM2-135M (llama, hub, sha256:1a2b3c4d)" in wide
        narrow = "".join(text for text, _ in screen_title(trace, 1, 1, None, 70))
        assert "sha256" not in narrow and len(narrow) <= 70  # gives way before the sentence does
        trace.model["source"] = {"source": "folder", "model_type": "bert", "digest": digest}
        assert model_label(trace) == f"{trace.model['name']} (bert folder, sha256:1a2b3c4d)"
    finally:
        trace.model.clear()
        trace.model.update(saved)
