"""KV-cached decoding: each later pass runs only the newest token, its steps hold the rows it computed,
and the Trace assembles the full tensors; they equal a full re-run's (`--no-kv-cache`) at every step."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.capture.run import generate
from tracer.nn.loading import load_model
from tracer.trace.check import check_trace
from tracer.trace.diff import diff
from tracer.trace.export import write_json
from tracer.trace.load import read_json
from tracer.trace.session import SessionStore

LLAMA_TINY = dict(arch="decoder", positional="rotary", norm="pre", norm_type="rmsnorm", activation="swiglu",
                  n_kv_heads=2, head_dim=6, qkv_bias=False, attn_out_bias=False, mlp_bias=False, softmax_fp32=True,
                  scale_embeddings=False, tie_embeddings=False, layer_norm_eps=1e-6)

BUNDLED = [("de-en-tiny", "ich bin piyush"), ("en-gpt-tiny", "the cat drank the"),
           ("en-bert-tiny", "the cat drank the [MASK]")]


def both(model, text, n=6):
    """The same decode traced with and without the KV cache."""
    cached = generate(model, text, max_new_tokens=n, traced=True, kv_cache=True)
    full = generate(model, text, max_new_tokens=n, traced=True, kv_cache=False)
    return cached, full


def assert_same_views(kv, full):
    """Every step of the full re-run is in the KV trace, and its assembled view equals it (1e-5,
    relative to the tensor's largest value; masked entries: -inf and 0 exactly)."""
    assert kv.ids == full.ids
    for step in full:
        x, y = kv[step.id], step.data
        assert x.shape == y.shape, step.id
        if y.dtype.kind == "f":
            finite = np.isfinite(y)
            assert np.array_equal(np.isfinite(x), finite), step.id
            assert np.array_equal(x[~finite], y[~finite]), step.id
            scale = max(1.0, float(np.abs(y[finite]).max(initial=0)))
            assert np.abs(x[finite].astype(np.float64) - y[finite]).max(initial=0) <= 1e-5 * scale, step.id
        else:
            assert np.array_equal(x, y), step.id


@pytest.fixture(scope="module")
def llama_tiny(tmp_path_factory):
    from tracer.nn import ModelConfig
    from tracer.nn.random_model import make_random_model

    cfg = ModelConfig(name="tiny-gqa", vocab_size=120, d_model=32, n_heads=4, d_ff=48, n_layers=2,
                      max_positions=40, **LLAMA_TINY)
    return make_random_model(tmp_path_factory.mktemp("gqa"), cfg)


@pytest.mark.parametrize("name,text", BUNDLED)
def test_kv_and_full_rerun_agree_on_every_bundled_model(name, text):
    kv, full = both(load_model(name), text)
    assert kv.output_ids == full.output_ids
    assert_same_views(kv.trace, full.trace)
    for trace in (kv.trace, full.trace):
        report = check_trace(trace)
        assert report.ok, report.failures[:3]
    assert diff(kv.trace, full.trace).equal


def test_kv_and_full_rerun_agree_on_a_gqa_rmsnorm_rope_model(llama_tiny):
    kv, full = both(load_model(str(llama_tiny)), "the cat drank the", n=8)
    assert kv.output_ids == full.output_ids
    assert_same_views(kv.trace, full.trace)
    assert check_trace(kv.trace).ok
    assert kv.trace.capture == {"kv_cache": True} and full.trace.capture == {"kv_cache": False}


def test_a_cached_step_stores_only_what_its_pass_computed():
    kv, full = both(load_model("en-gpt-tiny"), "the cat drank the", n=4)
    trace = kv.trace
    prompt = len(trace["blocks.0.attn.hook_q@1"])  # the first pass runs the whole prompt
    for t in (2, 3, 4):
        T = prompt + t - 1
        pattern = trace.step(f"blocks.0.attn.hook_pattern@{t}")
        assert pattern.rows_shape[1] == 1 and pattern.cached == T - 1  # one new query row, over every key
        assert pattern.shape == full.trace.step(f"blocks.0.attn.hook_pattern@{t}").shape
        k = trace.step(f"blocks.0.attn.hook_k@{t}")
        assert k.rows_shape[0] == 1 and k.cached == T - 1 and k.shape[0] == T
        assert trace.step(f"blocks.0.hook_resid_post@{t}").rows_shape[0] == 1
        assert trace.step(f"hook_probs@{t}").cached == 0  # the next token's probabilities: no position axis
    # the assembled matrix at step 3: the rows of steps 1, 2 and 3, causal
    view = trace["blocks.0.attn.hook_pattern@3"]
    assert np.array_equal(view[:, :prompt, :prompt], trace.step("blocks.0.attn.hook_pattern@1").rows)
    assert np.array_equal(view[:, -1:], trace.step("blocks.0.attn.hook_pattern@3").rows)
    assert np.all(np.triu(view[0], 1) == 0)
    assert kv.trace.step("blocks.0.attn.hook_pattern@4").rows.nbytes < full.trace.step("blocks.0.attn.hook_pattern@4").data.nbytes


def test_cross_attention_keys_are_computed_once():
    kv, _ = both(load_model("de-en-tiny"), "ich bin piyush", n=4)
    trace = kv.trace
    S = len(trace.input["tokens"])
    assert trace.step("decoder.0.cross_attn.hook_k@1").rows_shape[0] == S
    for t in (2, 3):
        k = trace.step(f"decoder.0.cross_attn.hook_k@{t}")
        assert k.rows_shape[0] == 0 and k.cached == S  # nothing new: every key from the cache
        assert np.array_equal(k.data, trace["decoder.0.cross_attn.hook_k@1"])
        assert trace.step(f"decoder.0.cross_attn.hook_pattern@{t}").shape[1:] == (t, S)


def test_a_kv_trace_round_trips_through_a_session_and_json(tmp_path):
    kv, full = both(load_model("en-gpt-tiny"), "the cat drank the", n=4)
    store = SessionStore(tmp_path / "sessions")
    store.save("kv", [kv.trace])
    reopened = store.load("kv").traces[0]
    assert reopened.capture == {"kv_cache": True}
    assert_same_views(reopened, full.trace)
    write_json(kv.trace, tmp_path / "kv.json")
    assert_same_views(read_json(tmp_path / "kv.json"), full.trace)
    assert check_trace(reopened).ok


def test_a_tampered_cached_row_fails_check():
    kv, _ = both(load_model("en-gpt-tiny"), "the cat drank the", n=3)
    step = kv.trace.step("blocks.0.attn.hook_k@3")
    step.rows[0, 0, 0] += 1.0  # the key step 3 computed (no view is assembled yet)
    report = check_trace(kv.trace)
    assert not report.ok
    assert any("hook_attn_raw@3" in failure.step_id for failure in report.failures)


def test_the_explain_panel_says_what_the_cache_did():
    from tracer.tui.view.explain import explain

    kv, full = both(load_model("en-gpt-tiny"), "the cat drank the", n=4)
    trace = kv.trace
    prompt = len(trace["blocks.0.attn.hook_q@1"])
    T = prompt + 2  # step 3 runs position prompt + 1
    words = explain(trace.step("blocks.0.attn.hook_k@3"), trace).words
    assert "KV cache" in words and f"positions 0…{T - 2} come from the cache" in words
    assert f"computed only position {T - 1}" in words
    assert "earlier steps' rows" in explain(trace.step("blocks.0.attn.hook_pattern@3"), trace).words
    assert "KV cache" not in explain(trace.step("blocks.0.attn.hook_k@1"), trace).words  # the prompt pass: nothing cached
    assert "KV cache" not in explain(full.trace.step("blocks.0.attn.hook_k@3"), full.trace).words
    seq2seq, _ = both(load_model("de-en-tiny"), "ich bin piyush", n=3)
    cross = explain(seq2seq.trace.step("decoder.0.cross_attn.hook_k@2"), seq2seq.trace).words
    assert "computed once" in cross and "computed none" in cross


def test_a_version_1_session_still_opens(tmp_path):
    """A session written before KV caching (format version 1: no `cached`, no `capture`) opens as it did."""
    import json

    full = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=3, traced=True, kv_cache=False).trace
    store = SessionStore(tmp_path / "sessions")
    folder = store.save("old", [full])
    for path in [folder / "session.json", *folder.glob("*.meta.json")]:
        document = json.loads(path.read_text())
        document["version"] = 1
        if "trace" in document:
            document["trace"]["version"] = 1
            document["trace"].pop("capture")
        path.write_text(json.dumps(document))
    reopened = store.load("old").traces[0]
    assert reopened.capture is None and reopened.ids == full.ids
    assert np.array_equal(reopened["blocks.0.attn.hook_pattern@3"], full["blocks.0.attn.hook_pattern@3"])


def test_a_kv_step_in_json_holds_its_new_rows_and_the_cached_count(tmp_path):
    import json

    kv, _ = both(load_model("en-gpt-tiny"), "the cat drank the", n=3)
    write_json(kv.trace, tmp_path / "kv.json")
    doc = json.loads((tmp_path / "kv.json").read_text())
    assert doc["version"] == 2 and doc["capture"] == {"kv_cache": True}
    steps = {step["id"]: step for step in doc["steps"]}
    T = len(steps["blocks.0.attn.hook_q@1"]["data"]) + 2                       # keys at step 3
    scores = steps["blocks.0.attn.hook_attn_scores@3"]
    assert scores["shape"] == [4, 1, T] and scores["cached"] == T - 1          # one row: the newest query
    assert steps["blocks.0.attn.hook_k@3"]["cached"] == T - 1 and steps["blocks.0.attn.hook_k@3"]["shape"][0] == 1
    assert "cached" not in steps["blocks.0.attn.hook_k@1"]


def kv_form(trace):
    """The same trace as a KV-cached capture stores it: each decoding step after the first keeps only
    its new rows (cross-attention's keys and values none), saying how many came before."""
    from tracer.trace.step import Step, row_axis
    from tracer.trace.trace import Trace

    seen: dict[str, int] = {}
    steps = []
    for step in trace:
        axis, data = row_axis(step.axes), step.data
        cached = 0
        if axis is not None and step.decode_step is not None and step.decode_step > 1:
            source_side = step.component == "cross_attn" and step.kind in ("k", "v")
            cached = data.shape[axis] if source_side else seen[step.name]
            data = data[(slice(None),) * axis + (slice(cached, None),)]
        if axis is not None:
            seen[step.name] = cached + data.shape[axis]
        steps.append(Step.from_array(step.id, data, step.axes, step.labels, step.extra, cached=cached))
    return Trace(steps, model=trace.model, device=trace.device, input=trace.input, output=trace.output,
                 capture={"kv_cache": True})


async def test_the_ui_shows_the_same_full_masked_matrix_at_decoding_step_3():
    """The UI fixture's trace in KV form: at step 3's masked scores (numbers view, 80×24, as the
    snapshot test shows it) the tensor view is the whole trace's, character for character; the
    explain panel adds what the cache did."""
    from tui_helpers import fixture_trace

    from tracer.tui.app import TracerApp
    from tracer.tui.widgets.tensor_view import TensorView

    whole = fixture_trace()
    compact = kv_form(whole)
    assert compact.step("decoder.0.attn.hook_attn_scores@3").rows_shape[1] == 1
    screens = []
    for trace in (whole, compact):
        app = TracerApp([trace])
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app.trace_screen.go("decoder.0.attn.hook_attn_scores@3")
            await pilot.press("v")
            await pilot.pause()
            view = app.screen.query_one(TensorView)
            screens.append([view.render_line(y).text for y in range(view.size.height)])
    assert screens[0] == screens[1]
    assert "−∞" in "".join(screens[1]) and len([line for line in screens[1] if line.strip()]) >= 4
    assert compact.ids == whole.ids
