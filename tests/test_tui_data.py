"""The UI's data layer (no Textual): pictures, explanations, the outline, and a large tensor
scrolled in the real widget. Fixtures are JSON or built in memory: no torch."""

from __future__ import annotations

import numpy as np

from tui_helpers import fixture_trace

SIZE = (120, 40)


def synthetic_trace(n: int = 100, heads: int = 2):
    """A decoder-only-shaped trace with one n×n causal attention pattern, built in memory."""
    from tracer.trace import Step, Trace

    tokens = [f"t{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(heads, n, n)).astype(np.float32)
    mask = np.tril(np.ones((n, n), dtype=bool))
    scores = np.where(mask, scores, -np.inf)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern = (pattern / pattern.sum(-1, keepdims=True)).astype(np.float32)
    labels = {"query": tokens, "key": tokens}
    steps = [
        Step.from_array("hook_tokens@1", np.arange(n), ("pos",), {"pos": tokens}),
        Step.from_array("blocks.0.attn.hook_mask@1", mask, ("query", "key"), labels),
        Step.from_array("blocks.0.attn.hook_attn_scores@1", scores, ("head", "query", "key"), labels),
        Step.from_array("blocks.0.attn.hook_pattern@1", pattern, ("head", "query", "key"), labels),
        Step.from_array("blocks.0.mlp.hook_pre@1", rng.normal(size=(n, 3072)).astype(np.float32), ("pos", "d_ff"), {"pos": tokens}),
    ]
    return Trace(steps, model={"name": "synthetic", "arch": "decoder", "config": {"d_model": 64, "n_heads": heads}},
                 device="cpu", input={"text": " ".join(tokens), "tokens": tokens, "ids": list(range(n))},
                 output={"text": "", "tokens": [], "ids": []})


def test_picture_of_a_pattern_marks_forbidden_cells():
    from tracer.tui.view.picture import build_picture

    trace = synthetic_trace(6)
    step = trace.step("blocks.0.attn.hook_pattern@1")
    picture = build_picture(step, head=1, mask=trace["blocks.0.attn.hook_mask@1"])
    assert (picture.rows, picture.cols, picture.head, picture.n_heads) == (6, 6, 1, 2)
    np.testing.assert_array_equal(picture.masked, ~np.tril(np.ones((6, 6), dtype=bool)))
    assert picture.scale == "sequential" and picture.vmin == 0.0
    assert picture.index(3, 2) == (1, 3, 2)
    assert picture.level[~picture.masked].max() == 63  # the largest weight gets the brightest colour


def test_picture_of_signed_values_is_diverging_and_centred():
    from tracer.tui.view.picture import build_picture

    step = fixture_trace().step("encoder.0.attn.hook_attn_raw")
    picture = build_picture(step, head=0)
    assert picture.scale == "diverging" and picture.vmin == -picture.vmax


def test_long_vectors_wrap_without_inventing_masked_cells():
    from tracer.tui.view.picture import WRAP, build_picture

    step = fixture_trace().step("decoder.hook_probs@1")  # 120 values
    picture = build_picture(step)
    assert picture.wrap == WRAP and picture.rows == 4 and picture.length == 120
    assert not picture.masked.any()
    assert picture.valid(3, 23) and not picture.valid(3, 24)
    assert picture.index(2, 5) == (69,)


def test_explanations_name_real_sizes_and_inputs():
    from tracer.tui.view.explain import explain, inputs_of

    trace = fixture_trace()  # post-norm encoder-decoder, d_model 16, 4 heads, 3 source tokens
    raw = explain(trace.step("encoder.0.attn.hook_attn_raw"), trace)
    assert raw.formula == "Q·Kᵀ: (3×4)·(4×3) → 3×3 per head, 4 heads"
    assert raw.inputs == ["encoder.0.attn.hook_q", "encoder.0.attn.hook_k"]
    cross = explain(trace.step("decoder.1.cross_attn.hook_attn_raw@2"), trace)
    assert "(2×4)·(4×3) → 2×3 per head" in cross.formula
    # cross-attention keys come from the encoder's output; queries from the decoder
    assert inputs_of(trace.step("decoder.1.cross_attn.hook_k@2"), trace) == ["encoder.1.ln2.hook_normalized"]
    assert inputs_of(trace.step("decoder.1.cross_attn.hook_q@2"), trace) == ["decoder.1.ln1.hook_normalized@2"]
    assert inputs_of(trace.step("decoder.1.hook_resid_pre@2"), trace) == ["decoder.0.ln3.hook_normalized@2"]
    assert inputs_of(trace.step("decoder.hook_logits@2"), trace) == ["decoder.1.ln3.hook_normalized@2"]
    assert "÷ 2.00" in explain(trace.step("encoder.0.attn.hook_attn_scaled"), trace).formula
    for step in trace.steps:  # every recorded kind has words and existing inputs
        explanation = explain(step, trace)
        assert explanation.words and explanation.formula, step.id
        assert all(step_id in trace for step_id in explanation.inputs), step.id


def test_outline_follows_computation_order():
    from tracer.tui.view.outline import build_outline

    trace = fixture_trace()
    root = build_outline(trace)
    leaves = [node.step_id for node in root.walk() if node.step_id]
    assert leaves == trace.ids
    top = [node.label for node in root.children]
    assert top[:4] == ["Tokenize", "Embedding + positions", "Encoder layer 0", "Encoder layer 1"]
    chosen = trace.predictions()[1]["chosen"]["token"]
    assert top[5] == f'Decoder step 2 → "{chosen}"'
    step2 = root.children[5]
    layer0 = next(child for child in step2.children if child.label == "Decoder layer 0")
    assert [child.label for child in layer0.children] == ["layer input x", "Masked self-attention", "Cross-attention", "Feed-forward"]


async def test_a_large_pattern_scrolls_with_its_labels():
    from tracer.tui.app import TracerApp
    from tracer.tui.widgets.tensor_view import TensorView

    app = TracerApp([synthetic_trace(100)])
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("blocks.0.attn.hook_pattern@1")
        await pilot.pause()
        view = screen.query_one(TensorView)
        assert view.virtual_size.height == 101 and view.virtual_size.width > view.size.width
        await pilot.press("end")
        await pilot.pause()
        assert view.cursor == (99, 0)
        assert view.scroll_offset.y > 0
        last = view.render_line(view.scrollable_content_region.height - 1).text  # above the scrollbar
        assert last.lstrip().startswith("t99")
        await pilot.press("ctrl+right", "ctrl+right")
        assert view.cursor[1] > 0 and view.scroll_offset.x > 0
        assert view.render_line(0).text.startswith(" " * (view.label_width - 1))  # header keeps its place
        # the row above the diagonal is masked: drawn as a pattern
        screen.go("blocks.0.attn.hook_pattern@1")
        await pilot.press("home")
        assert "░" in view.render_line(1).text
        screen.go("blocks.0.mlp.hook_pre@1")  # 100 × 3072: one cell per column
        await pilot.pause()
        assert view.cell_width == 1 and view.virtual_size.width == view.label_width + 3072
