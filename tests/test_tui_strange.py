"""The UI never dies on a strange trace: each is opened, walked, viewed both ways, and poked cell by cell."""

from __future__ import annotations

import numpy as np
import pytest

from tui_helpers import screen_lines

from tracer.trace import Step, Trace
from tracer.tui.app import TracerApp
from tracer.tui.widgets.tensor_view import TensorView


def make_trace(*steps: Step, arch: str = "encoder") -> Trace:
    return Trace(list(steps), model={"name": "strange", "arch": arch, "config": {}}, device="cpu",
                 input={"text": "a b", "tokens": ["a", "b"], "ids": [1, 2]},
                 output={"text": "", "tokens": [], "ids": []})


def step(step_id: str, array, axes, labels=None, **extra) -> Step:
    return Step.from_array(step_id, np.asarray(array), axes, labels or {}, extra)


RNG = np.random.default_rng(0)
NONFINITE = np.array([[[np.nan, np.inf], [-np.inf, 0.5]], [[np.nan, np.nan], [np.nan, np.nan]]], dtype=np.float32)

STRANGE = {
    "nan and inf": make_trace(
        step("blocks.0.attn.hook_attn_scores", NONFINITE, ("head", "query", "key"), {"query": ["a", "b"], "key": ["a", "b"]}),
        step("blocks.0.attn.hook_pattern", NONFINITE, ("head", "query", "key"), {"query": ["a", "b"], "key": ["a", "b"]}),
        step("blocks.0.hook_resid_post", np.full((2, 3), np.nan, dtype=np.float32), ("pos", "d_model"), {"pos": ["a", "b"]}),
        step("hook_logits", np.array([np.inf, -np.inf, np.nan], dtype=np.float32), ("vocab",)),
    ),
    "one by one": make_trace(
        step("hook_tokens", np.array([7]), ("pos",), {"pos": ["a"]}),
        step("blocks.0.attn.hook_pattern", np.ones((1, 1, 1), dtype=np.float32), ("head", "query", "key"), {"query": ["a"], "key": ["a"]}),
        step("blocks.0.attn.hook_mask", np.ones((1, 1), dtype=bool), ("query", "key"), {"query": ["a"], "key": ["a"]}),
        step("blocks.0.hook_resid_post", np.zeros((1, 1), dtype=np.float32), ("pos", "d_model"), {"pos": ["a"]}),
    ),
    "zero-length axis": make_trace(
        step("hook_tokens", np.zeros((0,), dtype=np.int64), ("pos",), {"pos": []}),
        step("blocks.0.attn.hook_pattern", np.zeros((4, 0, 0), dtype=np.float32), ("head", "query", "key"), {"query": [], "key": []}),
        step("blocks.0.attn.hook_q", np.zeros((0, 4, 8), dtype=np.float32), ("pos", "head", "d_head"), {"pos": []}),
        step("blocks.0.hook_resid_post", np.zeros((2, 0), dtype=np.float32), ("pos", "d_model"), {"pos": ["a", "b"]}),
    ),
    "4096-wide FFN": make_trace(
        step("blocks.0.mlp.hook_pre", RNG.standard_normal((6, 4096)).astype(np.float32), ("pos", "d_ff"), {"pos": list("abcdef")}),
        step("blocks.0.mlp.hook_post", RNG.standard_normal((6, 4096)).astype(np.float32), ("pos", "d_ff"), {"pos": list("abcdef")}),
    ),
    "single step": make_trace(
        step("hook_probs", np.array([0.7, 0.2, 0.1], dtype=np.float32), ("vocab",),
             top_k=[{"token": "x", "id": 0, "prob": 0.7}], chosen={"token": "x", "id": 0}),
        arch="decoder",
    ),
}


@pytest.mark.parametrize("name", list(STRANGE))
async def test_the_ui_survives_a_strange_trace(name):
    trace = STRANGE[name]
    app = TracerApp([trace])
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.trace_screen
        seen = []
        for _ in range(len(trace)):
            seen.append(screen.step_id)
            # both views, another head, and the cell cursor moved to the far corner and back
            await pilot.press("v", "h", "tab", "down", "full_stop", "end", "home", "tab", "v")
            view = app.screen.query_one(TensorView)
            rendered = [view.render_line(y).text for y in range(view.size.height)]
            assert len(rendered) == view.size.height
            await pilot.press("n")
        assert seen == trace.ids
        await pilot.resize_terminal(60, 18)
        await pilot.press("p", "?", "escape", "q")
    assert app.return_code in (0, None)


async def test_control_characters_in_trace_text_never_reach_the_terminal():
    """A hostile export can put ESC/NUL/bell in tokens, top-k, input text or the model's name."""
    tokens = ["a\x1b[31mb", "c\x00d"]
    probs = np.array([0.6, 0.4], dtype=np.float32)
    top_k = [{"token": "x\x1b[5my", "id": 0, "prob": 0.6}, {"token": "z\x07", "id": 1, "prob": 0.4}]
    trace = Trace(
        [
            step("hook_tokens@1", np.array([1, 2]), ("pos",), {"pos": tokens}),
            step("blocks.0.attn.hook_pattern@1", np.full((1, 2, 2), 0.5, dtype=np.float32), ("head", "query", "key"),
                 {"query": tokens, "key": tokens}),
            step("hook_probs@1", probs, ("vocab",), top_k=top_k, chosen={"token": top_k[0]["token"], "id": 0}),
        ],
        model={"name": "m\x1b[5m", "arch": "decoder", "config": {}}, device="cpu\x1b[2J",
        input={"text": "ich\x1b[31m bin", "tokens": tokens, "ids": [1, 2]},
        output={"text": "x\x1b[5my", "tokens": [top_k[0]["token"]], "ids": [0]},
    )
    app = TracerApp([trace])
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(len(trace)):
            await pilot.press("tab", "down", "tab")     # a cell description too
            shown = "".join(screen_lines(app))  # every character sent, control characters included
            assert not any(ch in shown for ch in "\x1b\x00\x07"), app.trace_screen.step_id
            await pilot.press("n")
        assert "\\x1b[31m" in shown   # shown literally, as an escape
