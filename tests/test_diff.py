"""`tracer diff`, `tracer.diff` and `tracer check --against`: compare two traces step by step."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tracer
from tracer.cli import cli
from tracer.trace.diff import COMPARED, PARTED, UNALIGNED, delta
from tracer.trace.export import write_json
from tracer.trace.session import SessionStore

from session_helpers import bumped, copy_trace, model_trace, run_without_torch, synthetic_trace

HUNGRIG = "die katze trank die milch weil sie hungrig war"
SUESS = "die katze trank die milch weil sie süß war"


@pytest.fixture
def store(isolated_sessions) -> SessionStore:
    return SessionStore(isolated_sessions)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    # a TracerError ends in SystemExit through TracerGroup; anything else would be a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.fixture(scope="module")
def de_en():
    from tracer.nn.loading import load_model

    return load_model("de-en-tiny")


@pytest.fixture(scope="module")
def hungrig_suess(de_en):
    from tracer.capture import trace_text

    return trace_text(de_en, HUNGRIG), trace_text(de_en, SUESS)


# -- equal -------------------------------------------------------------------------------------
def test_a_trace_against_itself_is_equal_with_zero_differences():
    # the synthetic trace holds -inf (masked) and NaN cells, ints, bools, float16 and an empty tensor
    a = synthetic_trace()
    result = tracer.diff(a, copy_trace(a))
    assert result.equal
    assert [s.status for s in result.steps] == [COMPARED] * len(a)
    for step in result.steps:
        assert (step.max_abs, step.rel_l2, step.changed, step.nonfinite_differ) == (0, 0, 0, 0), step.id
        assert step.cosine == pytest.approx(1.0), step.id
    assert result.first_over_tol is None and result.most_changed() == []
    assert result.only_in_a == result.only_in_b == []
    # the -inf and NaN cells are equal on both sides, and their delta is 0, not NaN
    scores = a.step("encoder.0.attn.hook_attn_scores")
    assert not np.isfinite(scores.data).all()
    assert not np.isnan(delta(scores, scores)).any() and not delta(scores, scores).any()


def test_cli_a_session_against_itself_exits_0(store):
    store.save("same", [model_trace()])
    result = invoke("diff", "same", "same")
    assert result.exit_code == 0, result.output
    assert "0 over tolerance" in result.output and "every compared value is identical" in result.output
    assert result.output.strip().endswith("equal within tolerance")


def test_two_runs_of_the_same_input_with_the_bundled_model_are_equal_within_tolerance():
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    first = trace_text(load_model("de-en-tiny"), HUNGRIG)
    second = trace_text(load_model("de-en-tiny"), HUNGRIG)  # the model loaded again: a second run
    result = tracer.diff(first, second)
    assert result.equal, result.summary()
    assert len(result.compared) == len(first) and result.parted_at is None


# -- what differs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("step_id, where", [
    ("encoder.1.attn.hook_pattern", (1, 2, 0)),
    ("decoder.0.cross_attn.hook_v@2", (0, 1, 3)),
    ("encoder.0.mlp.hook_post", (1, 5)),
])
def test_one_altered_tensor_is_named_first_and_alone(step_id, where):
    a = model_trace()
    b = copy_trace(a, {step_id: bumped(where, 0.01)})
    result = tracer.diff(a, b)
    assert not result.equal
    assert result.first_over_tol == step_id
    assert [s.id for s in result.over_tol] == [step_id]
    altered = result[step_id]
    assert altered.changed == 1 and altered.max_abs == pytest.approx(0.01, rel=1e-3)
    assert result.most_changed(1)[0].id == step_id
    assert delta(a.step(step_id), b.step(step_id))[where] == pytest.approx(0.01, rel=1e-3)


def test_a_change_below_the_tolerance_is_equal_and_above_it_is_not():
    a = model_trace()
    step_id = "encoder.0.hook_resid_post"
    tiny = copy_trace(a, {step_id: bumped((0, 0), 1e-6)})
    assert tracer.diff(a, tiny).equal
    assert tracer.diff(a, tiny)[step_id].max_abs > 0  # seen, just within tolerance
    assert not tracer.diff(a, tiny, tol=1e-8).equal


def test_the_cli_names_the_altered_step_and_exits_1(store):
    a = model_trace()
    store.save("a", [a])
    store.save("b", [copy_trace(a, {"encoder.1.hook_attn_out": bumped((1, 2), 0.5)})])
    result = invoke("diff", "a", "b")
    assert result.exit_code == 1, result.output
    assert "first step over tolerance: encoder.1.hook_attn_out" in result.output
    assert "traces differ" in result.output


def test_nan_and_inf_differences_are_reported_not_hidden():
    a = synthetic_trace()
    step_id = "encoder.0.attn.hook_attn_scores"  # holds -inf at [:, 0, 2] and a NaN at [1, 1, 1]
    unmasked = copy_trace(a, {step_id: lambda x: np.where(np.isneginf(x), 0.5, x).astype(x.dtype)})
    result = tracer.diff(a, unmasked)
    step = result[step_id]
    assert step.nonfinite_differ == 2 and step.over_tol and result.first_over_tol == step_id
    assert step.max_abs == 0  # the finite cells agree: the difference is only where -inf became 0.5
    assert np.isnan(delta(a.step(step_id), unmasked.step(step_id))[:, 0, 2]).all()
    # a NaN where a number was is a difference too
    nan = copy_trace(a, {"encoder.hook_embed": bumped((0, 0), np.nan)})
    assert tracer.diff(a, nan)["encoder.hook_embed"].nonfinite_differ == 1


def test_probability_steps_report_kl_top_k_and_the_chosen_token():
    a = model_trace()
    step_id = "decoder.hook_probs@2"
    probs = a[step_id].astype(np.float64)
    chosen = a.step(step_id).extra["chosen"]["id"]
    runner_up = int(np.argsort(-probs)[1])
    swapped = probs.copy()
    swapped[[chosen, runner_up]] = swapped[[runner_up, chosen]]  # the two best swap places
    b = copy_trace(a, {step_id: lambda _: swapped.astype(np.float32)})
    extra = b.step(step_id).extra  # what B recorded: the runner-up chosen, the first two ranks swapped
    extra["chosen"] = {"id": runner_up, "token": "runner-up"}
    extra["top_k"] = [extra["top_k"][1], extra["top_k"][0], *extra["top_k"][2:]]
    step = tracer.diff(a, b)[step_id]
    (prediction,) = step.predictions
    assert prediction.chosen_changed and prediction.chosen_b == {"id": runner_up, "token": "runner-up"}
    assert prediction.top_k_changed == 2
    assert prediction.prob_a == pytest.approx(probs[chosen], rel=1e-6)
    assert prediction.prob_b == pytest.approx(probs[runner_up], rel=1e-6)
    expected_kl = float(np.sum(np.where(probs > 0, probs * (np.log(probs) - np.log(swapped)), 0.0)))
    assert step.kl == pytest.approx(expected_kl, rel=1e-4) and step.kl > 0
    assert step.over_tol


def test_the_hungrig_suess_decodes_part_at_the_first_different_word(hungrig_suess):
    a, b = hungrig_suess
    ids_a, ids_b = a.output["ids"], b.output["ids"]
    first_different = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y) + 1  # decoding steps count from 1
    result = tracer.diff(a, b)
    assert result.parted_at == first_different
    assert result.parted_tokens[0]["id"] == ids_a[first_different - 1]
    assert result.parted_tokens[1]["id"] == ids_b[first_different - 1]
    probs = result[f"decoder.hook_probs@{first_different}"]
    assert probs.status == COMPARED and probs.chosen_changed and probs.over_tol
    for step in result.steps:
        t = a.step(step.id).decode_step
        assert step.status == (PARTED if t is not None and t > first_different else COMPARED), step.id
    assert f"decodes part at step {first_different}" in "\n".join(result.summary())
    assert result.first_over_tol == "encoder.hook_tokens"  # the inputs differ in their eighth token


def test_decodes_of_different_lengths_align_while_the_chosen_tokens_agree(de_en):
    from tracer.capture import trace_text

    short, full = trace_text(de_en, HUNGRIG, max_new_tokens=3), trace_text(de_en, HUNGRIG)
    result = tracer.diff(short, full)
    assert result.parted_at is None and result.decode_lengths == (3, len(full.decode_steps))
    assert result.only_in_b == [s.id for s in full.steps if s.decode_step and s.decode_step > 3]
    assert result.equal  # what both have is the same; the rest of B is listed
    assert f"decodes agree on every step both have (3 vs {len(full.decode_steps)} steps)" in result.summary()


def test_inputs_of_different_lengths_are_compared_over_the_positions_both_have():
    a, b = model_trace(text="ich bin piyush"), model_trace(text="ich bin")
    result = tracer.diff(a, b)
    assert result.input_lengths == (3, 2) and not result.equal
    assert any("inputs differ in length (3 vs 2 tokens)" in line for line in result.summary())
    embed = result["encoder.hook_embed"]
    assert embed.cropped and embed.compared_shape == (2, a.step("encoder.hook_embed").shape[1])
    assert embed.max_abs == 0  # the same two tokens at the same two positions embed the same
    assert result["encoder.hook_tokens"].changed == 0
    pattern = result["encoder.0.attn.hook_pattern"]
    assert pattern.compared_shape == (2, 2, 2) and pattern.over_tol  # the third token changes attention


def test_cli_inputs_of_different_lengths_give_a_summary_not_an_error(store):
    store.save("three", [model_trace(text="ich bin piyush")])
    store.save("two", [model_trace(text="ich bin")])
    result = invoke("diff", "three", "two")
    assert result.exit_code == 1, result.output
    assert "inputs differ in length (3 vs 2 tokens)" in result.output
    assert "Error" not in result.output


def test_steps_on_one_side_only_are_listed_not_errors():
    a = model_trace()
    dropped = ["encoder.0.attn.hook_q", "decoder.hook_logits@1"]
    filtered = copy_trace(a, drop=dropped)
    result = tracer.diff(a, filtered)
    assert result.only_in_a == dropped and result.only_in_b == []
    assert result.equal  # everything both have is the same
    reverse = tracer.diff(filtered, a)
    assert reverse.only_in_b == dropped and reverse.equal


def test_cli_lists_the_steps_on_one_side_and_exits_0_when_the_rest_is_equal(store):
    a = model_trace()
    store.save("full", [a])
    store.save("filtered", [copy_trace(a, drop=["encoder.0.attn.hook_q", "decoder.hook_logits@1"])])
    result = invoke("diff", "full", "filtered")
    assert result.exit_code == 0, result.output
    assert "only in A: encoder.0.attn.hook_q, decoder.hook_logits@1" in result.output.splitlines()
    assert not any(line.startswith("only in B") for line in result.output.splitlines())


def test_another_architecture_shares_no_step_and_is_not_equal():
    result = tracer.diff(model_trace("encoder-decoder"), model_trace("decoder"))
    assert result.steps == [] and result.only_in_a and result.only_in_b
    assert not result.equal
    assert "no step in both traces: nothing to compare" in result.summary()


def test_shapes_that_cannot_be_aligned_are_listed_not_a_crash(make_model):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    narrow = trace_text(load_model(make_model(d_model=32)), "ich bin", max_new_tokens=2)
    wide = trace_text(load_model(make_model(d_model=48, n_heads=4)), "ich bin", max_new_tokens=2)
    result = tracer.diff(narrow, wide)
    embed = result["encoder.hook_embed"]
    assert embed.status == UNALIGNED and embed.over_tol and "d_model differs" in embed.reason
    assert result["encoder.hook_tokens"].status == COMPARED  # ids compare whatever the width
    assert "encoder.hook_embed" in [s.id for s in result.over_tol] and not result.equal
    assert embed in result.most_changed(1)  # a shape that cannot be aligned ranks first
    assert delta(narrow.step("encoder.hook_embed"), wide.step("encoder.hook_embed")) is None


# -- --json, NAME:N, bad input ---------------------------------------------------------------------
def test_json_output_round_trips_and_matches_the_api(store, hungrig_suess):
    a, b = hungrig_suess
    store.save("hungrig", [a])
    store.save("suess", [b])
    result = invoke("diff", "hungrig", "suess", "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert json.loads(json.dumps(document)) == document
    expected = tracer.diff(a, b)
    assert set(document) == {"a", "b", "format", "version", "tol", "equal", "first_over_tol", "parted_at", "parted_tokens",
                             "input_lengths", "decode_lengths", "counts", "only_in_a", "only_in_b", "steps"}
    assert document["a"]["input"] == HUNGRIG and document["b"]["input"] == SUESS
    assert document["equal"] is False and document["first_over_tol"] == expected.first_over_tol
    assert document["parted_at"] == expected.parted_at
    assert document["counts"]["compared"] == len(expected.compared)
    assert [s["id"] for s in document["steps"]] == [s.id for s in expected.steps]
    probs = next(s for s in document["steps"] if s["id"] == f"decoder.hook_probs@{expected.parted_at}")
    assert probs["predictions"][0]["chosen_changed"] is True and probs["kl"] > 0


def test_the_name_n_form_picks_a_sessions_nth_trace(store):
    first, second = model_trace(text="ich bin piyush"), model_trace(text="ich bin")
    store.save("two", [first, second])
    document = json.loads(invoke("diff", "two:1", "two:2", "--json").stdout)
    assert document["a"]["trace"] == 1 and document["b"]["trace"] == 2
    assert document["input_lengths"] == [3, 2]
    assert invoke("diff", "two:2", "two:2").exit_code == 0
    assert invoke("diff", "two", "two:1").exit_code == 0  # a bare name is its first trace


def test_sessions_dir_says_where_the_sessions_are(tmp_path):
    elsewhere = SessionStore(tmp_path / "elsewhere")
    elsewhere.save("one", [model_trace()])
    assert invoke("diff", "one", "one").exit_code == 2  # not in $TRACER_SESSIONS_DIR
    assert invoke("diff", "one", "one", "--sessions-dir", elsewhere.root).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["two:3", "two"], "Error: two:3: two has 2 trace(s), numbered from 1"),
    (["two:0", "two"], "Error: two:0: two has 2 trace(s), numbered from 1"),
    (["two", "ghost"], "Error: no session or file named 'ghost'"),
    (["two", "nowhere/missing.json"], "Error: nowhere/missing.json: no such file or session"),
    (["two", "damaged.json"], "Error: "),
    (["two", "two", "--tol", "nan"], "Error: the tolerance must be a finite number >= 0, not nan"),
])
def test_bad_inputs_exit_2_with_one_line(store, tmp_path, monkeypatch, args, message):
    store.save("two", [model_trace(), model_trace()])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "damaged.json").write_text('{"format": "tracer-trace", "version": 1, "steps": [')
    result = invoke("diff", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert "Traceback" not in result.output


def test_diff_reads_json_exports_and_session_folders(store, tmp_path):
    a = model_trace()
    write_json(a, tmp_path / "a.json")
    folder = store.save("folder", [copy_trace(a, {"encoder.hook_embed": bumped((0, 0), 1.0)})])
    result = invoke("diff", tmp_path / "a.json", folder, "--top", "1")
    assert result.exit_code == 1
    assert "first step over tolerance: encoder.hook_embed" in result.output
    assert "most-changed steps (1 of" in result.output


# -- check --against -------------------------------------------------------------------------------
def test_check_against_a_reference_of_another_dtype(store, de_en):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    store.save("fp32", [trace_text(de_en, HUNGRIG)])
    store.save("fp16", [trace_text(load_model("de-en-tiny", dtype="float16"), HUNGRIG)])
    assert invoke("check", "fp32", "--against", "fp32").exit_code == 0
    # float16 arithmetic is not float32's: the default tolerance sees it, the one for float16 lets it pass
    half = invoke("check", "fp16", "--against", "fp32")
    assert half.exit_code == 1 and "first step over tolerance:" in half.output
    assert invoke("check", "fp16", "--against", "fp32", "--tol", "1e-2").exit_code == 0


def test_check_against_notes_inputs_that_differ_and_reports_like_diff(store):
    store.save("three", [model_trace(text="ich bin piyush")])
    store.save("two", [model_trace(text="ich bin")])
    result = invoke("check", "two", "--against", "three")
    assert result.exit_code == 1
    assert "note: the inputs differ ('ich bin piyush' vs 'ich bin')" in result.output
    assert "inputs differ in length (3 vs 2 tokens)" in result.output
    assert invoke("check", "two", "--against", "ghost").exit_code == 2
    alone = invoke("check", "two", "--tol", "1e-3")
    assert alone.exit_code == 2 and alone.output.strip() == "Error: --tol applies only with --against"


# -- no torch ---------------------------------------------------------------------------------------
def test_diff_and_check_against_run_without_torch(store):
    a = model_trace()
    store.save("a", [a])
    store.save("b", [copy_trace(a, {"encoder.0.attn.hook_k": bumped((0, 0, 0), 1.0)})])
    args = [(["diff", "a", "a"], 0), (["diff", "a", "b", "--json"], 1), (["check", "b", "--against", "a"], 1)]
    before = 'import tracer\nassert "tracer.trace.diff" not in sys.modules, "importing tracer loaded the diff"'
    proc = run_without_torch(args, store.root, before=before,
                             after='print(tracer.diff("a", "b").first_over_tol)')
    assert "encoder.0.attn.hook_k\ntorch absent" in proc.stdout
