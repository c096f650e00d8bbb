"""`tracer run --store-dtype float16`: half the bytes, the trace says so, `check` tolerates float16's
rounding and nothing more, `diff` calls a float16 and a float32 trace of one run equal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.capture import trace_text
from tracer.capture.budget import estimate
from tracer.capture.run import generate
from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.loading import load_model
from tracer.trace.check import FLOAT16_ROUNDOFF, check_trace
from tracer.trace.diff import diff
from tracer.trace.export import write_json
from tracer.trace.load import read_json

BUNDLED = [("de-en-tiny", "ich bin piyush"), ("en-gpt-tiny", "the cat drank the"),
           ("en-bert-tiny", "the cat drank the [MASK]")]


def stored_bytes(trace) -> int:
    return sum(step.rows.nbytes for step in trace)


@pytest.fixture(scope="module")
def pairs():
    """name -> (float32 trace, float16 trace) of the same run, logit lens included."""
    out = {}
    for name, text in BUNDLED:
        loaded = load_model(name)
        out[name] = tuple(trace_text(loaded, text, max_new_tokens=4, lens=True, store_dtype=store)
                          for store in (None, "float16"))
    return out


@pytest.mark.parametrize("name", [name for name, _ in BUNDLED])
def test_floats_are_stored_as_float16_and_the_rest_unchanged(pairs, name):
    full, half = pairs[name]
    assert "store_dtype" not in full.capture and half.capture["store_dtype"] == "float16"
    assert [s.id for s in full.steps] == [s.id for s in half.steps]
    for a, b in zip(full.steps, half.steps):
        if a.kind == "lens_probs":  # the logit lens reads the stored residual, itself rounded
            assert b.dtype == "float16" and np.abs(b.rows.astype(np.float64) - a.rows).max() < 1e-3, a.id
        elif a.dtype.startswith("float"):
            assert (a.dtype, b.dtype) == ("float32", "float16"), a.id
            # rounding to nearest: each value within float16's unit roundoff of the float32 one
            with np.errstate(invalid="ignore"):
                gap = np.abs(b.rows.astype(np.float64) - a.rows)
            finite = np.isfinite(a.rows)
            assert np.all(gap[finite] <= FLOAT16_ROUNDOFF * np.abs(a.rows[finite]) + 2.0 ** -25), a.id
            assert np.array_equal(np.isfinite(b.rows), finite), a.id
        else:
            assert a.dtype == b.dtype and np.array_equal(a.rows, b.rows), a.id  # ids, masks: exact
    floats = sum(s.rows.nbytes for s in full.steps if s.dtype.startswith("float"))
    assert stored_bytes(half) == stored_bytes(full) - floats // 2


@pytest.mark.parametrize("name", [name for name, _ in BUNDLED])
def test_check_passes_on_a_float16_trace_of_every_bundled_model(pairs, name):
    report = check_trace(pairs[name][1])
    assert report.failures == [], report.failures[:3]
    assert report.checked == check_trace(pairs[name][0]).checked
    assert "stored as float16" in report.tolerance_note


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("options", [dict(arch="decoder", positional="rotary", activation="swiglu", norm="pre"),
                                     dict(arch="encoder-decoder", positional="learned", norm="pre", activation="gelu")],
                         ids=["rotary-swiglu", "seq2seq-pre"])
def test_check_passes_on_float16_traces_of_other_architectures(make_model, options, kv_cache):
    trace = trace_text(load_model(make_model(**options)), "die katze trank die milch", max_new_tokens=3,
                       kv_cache=kv_cache, store_dtype="float16")
    assert check_trace(trace).failures == []


# Alterations a float16 trace's check must still catch: 1% of the step's largest value, far above
# float16's rounding (0.05%), at relations of every sort (products, sums, softmax, norm, argmax).
# (altered, the step check names): a norm's weights are fitted, so its own check absorbs part of
# one altered value; the residual add that reads it does not.
TAMPER = [(step, step) for step in ["decoder.0.attn.hook_attn_raw@2", "decoder.0.attn.hook_pattern@3",
                                    "decoder.1.cross_attn.hook_z@3", "encoder.1.hook_resid_mid",
                                    "decoder.0.hook_resid_post@2", "decoder.hook_probs@2"]] \
    + [("encoder.0.ln1.hook_normalized", "encoder.0.hook_resid_post")]


def put_rows(step, data) -> None:
    """Make `data` what `step` recorded (a KV-cached step's new rows; its full view is assembled again)."""
    if step.stored_shape is None:
        step._array = data
    else:
        step._rows = data
        step._array = None


@pytest.mark.parametrize("step_id,named", TAMPER)
def test_check_still_fails_on_an_altered_float16_trace(pairs, step_id, named):
    trace = pairs["de-en-tiny"][1]
    step = trace.step(step_id)
    before = step.rows.copy()
    data = before.copy()
    flat = data.reshape(-1)
    i = int(np.argmax(np.abs(flat.astype(np.float64))))
    flat[i] = np.float16(flat[i] + (0.01 * max(1.0, abs(float(flat[i]))) if step.kind != "probs" else -0.01))
    try:
        put_rows(step, data)
        failed = {failure.step_id for failure in check_trace(trace).failures}
    finally:
        put_rows(step, before)
    assert named in failed, failed


def test_a_float16_export_round_trips_and_checks_at_a_precision_too(pairs, tmp_path):
    half = pairs["en-gpt-tiny"][1]
    write_json(half, tmp_path / "h.json")
    back = read_json(tmp_path / "h.json")
    assert back.capture["store_dtype"] == "float16"
    assert all(a.dtype == b.dtype and np.array_equal(a.data, b.data, equal_nan=True) for a, b in zip(half.steps, back.steps))
    write_json(half, tmp_path / "p.json", precision=4)  # rounded again: the check compounds both
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert "rounded to 4 digits (stored as float16)" in result.output


@pytest.mark.parametrize("name", [name for name, _ in BUNDLED])
def test_diff_calls_a_float16_and_a_float32_trace_of_one_run_equal(pairs, name):
    full, half = pairs[name]
    found = diff(full, half)
    assert found.equal, found.summary()
    assert any("float16-stored values" in line for line in found.summary())
    # the widening is float16's rounding and no more: the plain tolerance would not pass it
    assert max(s.relative_max for s in found.compared) > 1e-4
    assert max(s.relative_max for s in found.compared if s.kind != "lens_probs") <= FLOAT16_ROUNDOFF


def test_diff_of_float16_traces_still_sees_another_input():
    loaded = load_model("de-en-tiny")
    a = trace_text(loaded, "ich bin piyush", max_new_tokens=3, store_dtype="float16")
    b = trace_text(loaded, "du bist piyush", max_new_tokens=3, store_dtype="float16")
    assert not diff(a, b).equal


def test_the_estimate_counts_two_bytes_a_float():
    for name, text in BUNDLED:
        loaded = load_model(name)
        result = generate(loaded, text, max_new_tokens=6, traced=True, lens=True, store_dtype="float16")
        passes = len(result.output_ids) + (len(result.output_ids) < 6)
        found = estimate(loaded, text, max_new_tokens=passes, lens=True, store_dtype="float16")["bytes"]
        assert abs(found - stored_bytes(result.trace)) <= 0.05 * stored_bytes(result.trace), name
        full = estimate(loaded, text, max_new_tokens=passes, lens=True)["bytes"]
        assert 0.5 * full <= found < 0.56 * full, name  # floats halve; token ids and masks do not


def test_cli_store_dtype_estimate_refusal_and_the_trace(isolated_sessions, tmp_path):
    runner = CliRunner()
    sizes = {}
    for store in ("float32", "float16"):
        result = runner.invoke(cli, ["run", "ich bin piyush", "--estimate", "--store-dtype", store])
        assert result.exit_code == 0, result.output
        sizes[store] = int(result.output.split("(")[1].split(" bytes")[0])
    assert 0.5 * sizes["float32"] <= sizes["float16"] < 0.56 * sizes["float32"]
    refused = runner.invoke(cli, ["run", "ich bin piyush", "--max-trace-size", f"{sizes['float16'] + 1000}",
                                  "--no-tui"])
    assert refused.exit_code == 2 and "--store-dtype float16 (about" in refused.output
    out = tmp_path / "t.json"
    made = runner.invoke(cli, ["run", "ich bin piyush", "--store-dtype", "float16", "--no-tui", "--export", str(out)])
    assert made.exit_code == 0, made.output
    document = json.loads(out.read_text())
    assert document["capture"]["store_dtype"] == "float16"
    assert {s["dtype"] for s in document["steps"]} == {"float16", "int64", "bool"}
    bad = runner.invoke(cli, ["run", "ich bin piyush", "--store-dtype", "bfloat16", "--no-tui"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_an_unknown_store_dtype_is_bad_input():
    with pytest.raises(BadInput, match="--store-dtype 'int8'"):
        generate(load_model("de-en-tiny"), "ich bin piyush", max_new_tokens=1, traced=True, store_dtype="int8")


def test_the_title_says_float16_storage(pairs):
    from tracer.tui.view.titles import screen_title

    full, half = pairs["de-en-tiny"]
    assert "float16 storage" in "".join(text for text, _ in screen_title(half, 1, 1, None, 120))
    assert "storage" not in "".join(text for text, _ in screen_title(full, 1, 1, None, 120))

