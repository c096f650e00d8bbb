"""`tracer check` holds on every architecture and option, and names the step a tamperer changed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.capture import trace_text
from tracer.cli import cli
from tracer.nn.loading import load_model
from tracer.trace.check import check_trace
from tracer.trace.export import write_json

OPTIONS = list(itertools.product(["encoder-decoder", "decoder", "encoder"], ["sinusoidal", "learned", "rotary"],
                                 ["post", "pre"], ["relu", "gelu", "swiglu"]))


@pytest.mark.parametrize("arch,positional,norm,activation", OPTIONS)
def test_check_passes_for_every_architecture_and_option(make_model, arch, positional, norm, activation):
    folder = make_model(arch=arch, positional=positional, norm=norm, activation=activation, n_layers=2, n_decoder_layers=1)
    trace = trace_text(load_model(folder), "die katze trank die milch", max_new_tokens=3)
    report = check_trace(trace)
    assert report.failures == []
    # every layer's attention, every residual add and every prediction was actually checked
    layers = 2 + (1 if arch == "encoder-decoder" else 0)
    assert report.checked >= layers * len(trace.decode_steps or [None]) * 8


def test_cli_check_passes_on_an_export(seq2seq_trace, tmp_path):
    write_json(seq2seq_trace, tmp_path / "t.json")
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")


TAMPER = [
    ("encoder.0.attn.hook_attn_raw", "encoder.0.attn.hook_attn_raw"),        # Q·Kᵀ
    ("encoder.1.attn.hook_attn_scaled", "encoder.1.attn.hook_attn_scaled"),  # ÷√d
    ("decoder.0.attn.hook_pattern@2", "decoder.0.attn.hook_pattern@2"),      # softmax / row sums
    ("decoder.1.cross_attn.hook_z@3", "decoder.1.cross_attn.hook_z@3"),      # pattern·V
    ("encoder.0.attn.hook_concat", "encoder.0.attn.hook_concat"),            # heads side by side
    ("encoder.1.hook_resid_mid", "encoder.1.hook_resid_mid"),                # residual add
    ("decoder.0.hook_resid_mid_cross@1", "decoder.0.hook_resid_mid_cross@1"),
    ("decoder.hook_probs@2", "decoder.hook_probs@2"),                        # softmax of logits
]


@pytest.mark.parametrize("altered,named", TAMPER)
def test_check_fails_and_names_the_altered_step(seq2seq_model, tmp_path, altered, named):
    trace = trace_text(load_model(seq2seq_model), "ich bin piyush", max_new_tokens=3)
    step = trace.step(altered)
    data = step.rows.copy()  # what the step stores: under the KV cache, a decoding step's new rows
    data.reshape(-1)[data.size // 2] += 0.25
    if step.stored_shape is None:
        step._array = data
    else:
        step._rows = data
    path = tmp_path / "bad.json"
    write_json(trace, path)
    result = CliRunner().invoke(cli, ["check", str(path)])
    assert result.exit_code == 1, result.output
    assert f"FAIL {named}:" in result.output
    assert "Traceback" not in result.output


def test_check_catches_a_masked_position_that_leaks(seq2seq_model):
    # Without the KV cache: a KV-cached step stores only its new query's row, which sees every key
    # recorded so far, so its masked cells are never stored; check verifies the rows a pass computed.
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    trace = trace_text(load_model(seq2seq_model), "ich bin piyush", max_new_tokens=3, kv_cache=False)
    step = trace.step("decoder.0.attn.hook_attn_scores@3")
    original = step.data
    leaked = original.copy()
    leaked[0, 0, 2] = 0.5   # the first query may not see the third key
    step._array = leaked
    try:
        ids = {f.step_id for f in check_trace(trace).failures}
    finally:
        step._array = original
    assert "decoder.0.attn.hook_attn_scores@3" in ids


def test_check_catches_a_chosen_token_that_is_not_the_argmax(seq2seq_trace):
    step = seq2seq_trace.step("decoder.hook_probs@1")
    chosen = step.extra["chosen"]
    step.extra["chosen"] = {"token": "x", "id": step.extra["top_k"][1]["id"]}
    try:
        failures = check_trace(seq2seq_trace).failures
    finally:
        step.extra["chosen"] = chosen
    assert any(f.step_id == "decoder.hook_probs@1" and "argmax" in f.message for f in failures)
    assert check_trace(seq2seq_trace).ok


def test_check_masks_are_causal_in_the_decoder(seq2seq_trace):
    mask = seq2seq_trace["decoder.1.attn.hook_mask@3"]
    assert np.array_equal(mask, np.tril(np.ones((3, 3), dtype=bool)))
    assert seq2seq_trace["encoder.1.attn.hook_mask"].all()


def test_steps_that_cannot_be_combined_fail_instead_of_crashing(seq2seq_trace):
    step = seq2seq_trace.step("encoder.0.attn.hook_k")
    original = step.data
    step._array = original[:, :2]          # two heads where Q has four
    try:
        failures = check_trace(seq2seq_trace).failures
    finally:
        step._array = original
    assert any(f.step_id == "encoder.0.attn" and "cannot be recomputed" in f.message for f in failures)


@pytest.mark.parametrize("tokenization", [True, "suppressed", {"suppressed": 7}, {"suppressed": "ab"}])
def test_check_reads_a_free_form_tokenization_field_of_any_type(seq2seq_trace, tokenization):
    """`model.tokenization` is free-form in a file: a value that is not {"suppressed": [ids]} means
    nothing is suppressed, not a crash (found by tests/test_fuzz_session.py)."""
    trace = seq2seq_trace
    before = dict(trace.model)
    trace.model["tokenization"] = tokenization
    try:
        assert check_trace(trace).failures == []
    finally:
        trace.model.clear()
        trace.model.update(before)
# -- a KV-cached trace is checked on the rows each pass computed ----------------------------------
def kv_decode(gpt_model, new_tokens=6):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    loaded = load_model(gpt_model)
    loaded.tokenizer.stop_ids = set()  # decode every step asked for
    return trace_text(loaded, "the cat sat on the mat and the dog", max_new_tokens=new_tokens)


def test_check_of_a_kv_trace_never_assembles_an_attention_matrix(gpt_model, monkeypatch):
    from tracer.trace import Trace

    trace = kv_decode(gpt_model)
    assembled = []
    original = Trace._assembled
    monkeypatch.setattr(Trace, "_assembled", lambda self, step: assembled.append(step) or original(self, step))
    report = check_trace(trace)
    assert report.ok, report.failures[:3]
    assert not [step.id for step in assembled if "key" in step.axes]  # no t × t view: O(T) per step, not O(T²)
    # what is assembled (keys and values read along the keys, a norm's positions) is O(positions) wide
    assert {step.kind for step in assembled} <= {"k", "v", "normalized", "resid_pre", "resid_mid", "resid_post", "tokens"}


@pytest.mark.parametrize("kind", ["attn_scores", "pattern", "z", "resid_post"])
def test_check_catches_an_altered_new_row_in_the_last_step(gpt_model, kind):
    trace = kv_decode(gpt_model)
    t = trace.decode_steps[-1]
    step = trace.step(f"blocks.1.attn.hook_{kind}@{t}" if kind != "resid_post" else f"blocks.1.hook_{kind}@{t}")
    assert step.cached and step.rows.shape != step.shape
    step.rows.reshape(-1)[step.rows.size // 2 + 1] += 0.25
    assert step.id in {f.step_id for f in check_trace(trace).failures}


def test_check_of_a_saved_trace_keeps_no_tensor_loaded(gpt_model, tmp_path):
    from tracer.trace.session import SessionStore

    store = SessionStore(tmp_path)
    store.save("kv", [kv_decode(gpt_model)])
    trace = store.load("kv").trace
    assert check_trace(trace).ok
    assert all(step._array is None and step._rows is None for step in trace.steps)
