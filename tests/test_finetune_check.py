"""The relations of a training trace (tracer/trace/check_training.py): they hold on what finetune
records, and an altered gradient, update or adapter output fails, naming the step."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.capture.finetune import FinetuneRequest, finetune
from tracer.nn.loading import load_model
from tracer.trace.check_training import check_training


@pytest.fixture(scope="module")
def traces(seq2seq_model, gpt_model, bert_model):
    """One training trace per architecture: full fine-tuning with weight decay, LoRA, a classifier."""
    return {
        "translation": finetune(load_model(seq2seq_model), FinetuneRequest(
            "ich bin piyush", target="i am tired", steps=3, weight_decay=0.1)).trace,
        "lora": finetune(load_model(gpt_model), FinetuneRequest(
            "the cat drank the milk", steps=3, lora_rank=2, lora_alpha=8.0, lr=1e-2)).trace,
        "classification": finetune(load_model(bert_model), FinetuneRequest(
            "the cat drank the milk", label="b", labels=["a", "b", "c"], steps=2)).trace,
    }


def altered(trace, step_id: str, change) -> None:
    """Change one value of a step in place (the trace is rebuilt per test where that matters)."""
    step = trace.step(step_id)
    data = np.array(step.data, copy=True)
    change(data)
    step._array = data


@pytest.mark.parametrize("name", ["translation", "lora", "classification"])
def test_the_relations_hold_on_what_finetune_records(traces, name):
    checked, failures = check_training(traces[name])
    assert failures == []
    trace = traces[name]
    params = len(trace.output["training"]["trained_parameters"])
    assert checked >= 6 * params * trace.output["training"]["steps"]  # every update quantity, every step


def test_a_plain_trace_has_no_training_relations(seq2seq_trace):
    assert check_training(seq2seq_trace) == (0, [])


@pytest.fixture
def fresh(gpt_model):
    return finetune(load_model(gpt_model), FinetuneRequest("the cat drank the milk", steps=2, lora_rank=2)).trace


def only_failure_ids(trace) -> list[str]:
    return [step_id for step_id, _ in check_training(trace)[1]]


def test_an_altered_logits_gradient_fails_naming_it(fresh):
    altered(fresh, "hook_logits.grad@s1", lambda a: a.__setitem__((0, 3), a[0, 3] + 1e-3))
    assert only_failure_ids(fresh) == ["hook_logits.grad@s1"]


def test_an_altered_residual_gradient_fails_at_the_branch_it_feeds(fresh):
    altered(fresh, "blocks.1.hook_resid_post.grad@s2", lambda a: a.__setitem__((1, 0), a[1, 0] * 1.5 + 1e-3))
    assert "blocks.1.hook_mlp_out.grad@s2" in only_failure_ids(fresh)


def test_an_altered_weight_gradient_fails_at_the_moments_computed_from_it(fresh):
    name = "blocks.0.attn.W_V.lora_B.weight"
    altered(fresh, f"{name}.grad@s2", lambda a: a.__setitem__((4, 1), a[4, 1] * 1.01))
    assert only_failure_ids(fresh) == [f"{name}.adam_m@s2", f"{name}.adam_v@s2"]


def test_an_altered_update_fails_at_the_step_and_the_new_value(fresh):
    name = "blocks.1.attn.W_Q.lora_B.weight"
    altered(fresh, f"{name}.adam_step@s1", lambda a: a.__setitem__((0, 0), a[0, 0] + 1e-5))
    assert only_failure_ids(fresh) == [f"{name}.adam_step@s1", f"{name}.new@s1"]


def test_a_new_value_that_is_not_the_next_steps_value_fails(fresh):
    name = "blocks.0.attn.W_Q.lora_A.weight"
    altered(fresh, f"{name}.value@s2", lambda a: a.__setitem__((0, 0), np.nextafter(a[0, 0], np.float32(1))))
    assert f"{name}.value@s2" in only_failure_ids(fresh)


def test_an_altered_lora_output_fails(fresh):
    prefix = "blocks.0.attn.W_Q"
    altered(fresh, f"{prefix}.hook_lora_out@s2", lambda a: a.__setitem__((0, 0), a[0, 0] + 1e-2))
    assert set(only_failure_ids(fresh)) == {f"{prefix}.hook_lora_out@s2", f"{prefix}.hook_adapted_out@s2"}


def test_an_altered_loss_fails(fresh):
    altered(fresh, "hook_token_losses@s1", lambda a: a.__setitem__(0, a[0] * 1.01))
    assert only_failure_ids(fresh) == ["hook_token_losses@s1"]  # the loss itself is recomputed from the logits


def test_an_altered_classifier_gradient_fails_naming_it(bert_model):
    trace = finetune(load_model(bert_model), FinetuneRequest("the cat", label="a", labels=["a", "b"])).trace
    assert check_training(trace)[1] == []
    altered(trace, "classifier.hook_class_logits.grad@s1", lambda a: a.__setitem__(0, a[0] + 1e-3))
    assert only_failure_ids(trace) == ["classifier.hook_class_logits.grad@s1"]


# -- through the anatomy and tracer check ----------------------------------------------------
def test_every_kind_a_training_trace_records_is_described(traces):
    from tracer.trace import anatomy
    from tracer.tui.view.explain import WORDS, explain

    for trace in traces.values():
        for step in trace.steps:
            assert anatomy.is_known(step.kind), step.id
            kind = anatomy.KINDS[step.kind]
            assert step.axes in kind.axes, (step.id, step.axes)
            assert kind.explanation in WORDS and explain(step, trace).words != "A recorded intermediate value.", step.id
            assert None not in anatomy.sources(step.id, trace), step.id
        place = anatomy.Place.of("blocks.0.attn.hook_pattern@s2", trace)
        assert (place.s, place.t) == (2, None)
    lora = traces["lora"]
    assert anatomy.sources("blocks.0.attn.W_Q.hook_adapted_out@s2", lora) == [
        "blocks.0.attn.W_Q.hook_base_out@s2", "blocks.0.attn.W_Q.hook_lora_out@s2"]
    assert anatomy.sources("hook_token_losses@s1", traces["translation"]) == ["decoder.hook_logits@s1", "hook_targets@s1"]


def test_tracer_check_passes_a_training_trace_and_names_an_altered_gradient(gpt_model, tmp_path):
    import orjson
    from click.testing import CliRunner

    from tracer.cli import cli

    out = tmp_path / "t.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["finetune", "the cat drank the milk", "--model", str(gpt_model), "--steps", "2",
                               "--no-tui", "--export", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["check", str(out)])
    assert result.exit_code == 0, result.output
    assert int(result.output.split("ok: ")[1].split()[0]) > 400  # forward, loss, gradients and every update
    document = orjson.loads(out.read_bytes())
    for item in document["steps"]:
        if item["id"] in ("hook_logits.grad@s2", "blocks.1.attn.hook_pattern@s1"):
            row = item["data"]
            while isinstance(row[0], list):
                row = row[0]
            row[0] += 0.01 if item["id"].startswith("hook_logits") else 0.5  # a weight 0 may stay 0: move it far
    out.write_bytes(orjson.dumps(document))
    result = runner.invoke(cli, ["check", str(out)])
    assert result.exit_code == 1
    failed = {line.split()[1].rstrip(":") for line in result.output.splitlines() if line.startswith("FAIL")}
    # the altered steps, and the one computed from the altered weights (z = pattern·V)
    assert failed == {"blocks.1.attn.hook_pattern@s1", "blocks.1.attn.hook_z@s1", "hook_logits.grad@s2"}, result.output


def test_lora_a_is_checked_against_what_each_projection_read(seq2seq_model):
    targets = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
    trace = finetune(load_model(seq2seq_model), FinetuneRequest("ich bin", target="i am", lora_rank=2, lora_targets=targets)).trace
    assert check_training(trace)[1] == []
    altered_ids = [f"{prefix}.hook_lora_a@s1" for prefix in (
        "encoder.0.attn.W_Q", "decoder.1.cross_attn.W_K", "decoder.0.attn.W_O", "decoder.0.mlp.W_in", "encoder.1.mlp.W_out")]
    for step_id in altered_ids:
        altered(trace, step_id, lambda a: a.__setitem__((0, 1), a[0, 1] + 0.1))
    failed = only_failure_ids(trace)
    assert set(altered_ids) <= set(failed)
