"""tracer finetune's numbers: every recorded gradient is autograd's, the explicit AdamW is torch's,
LoRA's first step has A's gradient exactly zero; the step ids and their parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tracer.capture.finetune import FinetuneRequest, finetune
from tracer.nn.classifier import ClassificationHead, encoder_hidden
from tracer.nn.hooks import hooks_attached
from tracer.nn.loading import load_model
from tracer.nn.lora import add_lora
from tracer.trace import Step, anatomy
from tracer.trace.step import parse_name, split_id, split_step_id
from tracer.train.adamw import AdamW

LABELS = ["negative", "positive"]


def request_for(arch: str, **options) -> FinetuneRequest:
    if arch == "encoder-decoder":
        return FinetuneRequest("ich bin piyush", target="i am tired", **options)
    if arch == "decoder":
        return FinetuneRequest("the cat drank the milk", **options)
    return FinetuneRequest("the cat drank the milk", label="positive", labels=LABELS, **options)


def independent_forward(loaded, arch: str, record, head=None):
    """The example's logits (n, classes) and targets, built here from the tokenizer, not by finetune."""
    tok, model = loaded.tokenizer, loaded.model
    with hooks_attached(model, record):
        if arch == "encoder-decoder":
            src = tok.encode("ich bin piyush")[0]
            tgt = tok.encode("i am tired")[0]
            logits = model(torch.tensor([src]), torch.tensor([[tok.bos_id] + tgt]))[0]
            return logits, torch.tensor(tgt + [tok.eos_id])
        if arch == "decoder":
            seq = [tok.bos_id] + tok.encode("the cat drank the milk")[0]
            return model(torch.tensor([seq[:-1]]), all_positions=True)[0], torch.tensor(seq[1:])
        ids = tok.encode("the cat drank the milk")[0]
        with hooks_attached(head, lambda name, value: record(f"classifier.{name}", value)):
            return head(encoder_hidden(model, torch.tensor([ids]))), torch.tensor([LABELS.index("positive")])


@pytest.fixture(params=["encoder-decoder", "decoder", "encoder"])
def arch_model(request, seq2seq_model, gpt_model, bert_model):
    return request.param, {"encoder-decoder": seq2seq_model, "decoder": gpt_model, "encoder": bert_model}[request.param]


@pytest.mark.parametrize("lora", [None, 2])
def test_every_recorded_gradient_is_autograds(arch_model, lora):
    arch, folder = arch_model
    trace = finetune(load_model(folder), request_for(arch, lora_rank=lora, seed=3)).trace

    loaded = load_model(folder)
    head = ClassificationHead(loaded.cfg.d_model, LABELS, seed=3) if arch == "encoder" else None
    if lora:
        add_lora(loaded.model, lora, seed=3)
    taps: dict[str, torch.Tensor] = {}
    logits, targets = independent_forward(loaded, arch, lambda name, value: taps.setdefault(name, value), head)
    loss = F.cross_entropy(logits, targets)
    differentiable = {name: value for name, value in taps.items() if value.requires_grad}
    grads = torch.autograd.grad(loss, list(differentiable.values()), allow_unused=True)
    expected = {name: g[0].numpy() for name, g in zip(differentiable, grads) if g is not None}

    recorded = {step.name.removesuffix(".grad"): step for step in trace.steps
                if step.train_step == 1 and parse_name(step.name)["of"] is not None}
    assert set(recorded) == set(expected)  # exactly the taps on the loss path
    assert "hook_probs" not in " ".join(recorded)  # the loss reads the logits, not the probabilities
    for name, g in expected.items():
        got = recorded[name].data
        assert got.shape == g.shape, name
        scale = max(float(np.abs(g).max()), 1e-30)
        assert float(np.abs(got - g).max()) <= 1e-6 * scale, name
        assert recorded[name].axes == trace.step(f"{name}@s1").axes  # a gradient has its value's axes


def test_gradients_come_in_the_order_the_chain_rule_visits_them(gpt_model):
    trace = finetune(load_model(gpt_model), request_for("decoder")).trace
    order = [step.name for step in trace.steps if parse_name(step.name)["of"]]
    assert order[0] == "hook_logits.grad"          # dL/dlogits first: the loss reads them directly
    at = order.index
    for layer in (0, 1):
        block = f"blocks.{layer}"
        assert at(f"{block}.hook_resid_post.grad") < at(f"{block}.hook_mlp_out.grad") < at(f"{block}.hook_resid_mid.grad")
        assert at(f"{block}.attn.hook_pattern.grad") < at(f"{block}.attn.hook_attn_scores.grad") < at(f"{block}.attn.hook_q.grad")
        assert at(f"{block}.hook_resid_mid.grad") < at(f"{block}.hook_resid_pre.grad")
    assert at("blocks.1.hook_resid_pre.grad") < at("blocks.0.hook_resid_post.grad")
    assert at("blocks.0.hook_resid_pre.grad") < at("hook_embed.grad")


def test_the_steps_of_one_training_step_come_in_order(bert_model):
    trace = finetune(load_model(bert_model), request_for("encoder", steps=2)).trace
    phases = []
    for step in trace.steps:
        parts = parse_name(step.name)
        phase = "update" if parts["param"] else "backward" if parts["of"] else \
            "loss" if step.kind in ("targets", "token_losses", "loss") else "forward"
        assert anatomy.phase_of(step.kind) == phase, step.id  # the anatomy says the same
        if not phases or phases[-1] != (step.train_step, phase):
            phases.append((step.train_step, phase))
    assert phases == [(s, p) for s in (1, 2) for p in ("forward", "loss", "backward", "update")]
    assert trace.step("classifier.hook_class_logits@s1").axes == ("label",)
    assert trace.step("classifier.hook_class_logits@s1").labels == {"label": LABELS}


def test_dl_dlogits_is_softmax_minus_one_hot_over_n(seq2seq_model):
    trace = finetune(load_model(seq2seq_model), request_for("encoder-decoder")).trace
    logits, probs = trace["decoder.hook_logits@s1"].astype(np.float64), trace["decoder.hook_probs@s1"]
    targets = trace["hook_targets@s1"]
    one_hot = np.eye(logits.shape[-1])[targets]
    np.testing.assert_allclose(trace["decoder.hook_logits.grad@s1"], (probs - one_hot) / len(targets), atol=1e-6)
    losses = -np.log(probs[np.arange(len(targets)), targets])
    np.testing.assert_allclose(trace["hook_token_losses@s1"], losses, rtol=1e-4)
    assert trace["hook_loss@s1"][0] == pytest.approx(losses.mean(), rel=1e-4)
    assert trace.output["training"]["loss_before"] == pytest.approx(float(trace["hook_loss@s1"][0]))


def test_explicit_adamw_is_torchs_over_several_steps_on_every_parameter(gpt_model):
    """The trace's recorded moments and new weights against torch.optim.AdamW(foreach=False)."""
    settings = dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1)
    trace = finetune(load_model(gpt_model), request_for("decoder", steps=3, **settings)).trace

    loaded = load_model(gpt_model)
    model = loaded.model
    optimizer = torch.optim.AdamW(model.parameters(), eps=1e-8, foreach=False, **settings)
    names = {param: name for name, param in model.named_parameters()}
    for s in (1, 2, 3):
        optimizer.zero_grad()
        logits, targets = independent_forward(loaded, "decoder", lambda name, value: None)
        F.cross_entropy(logits, targets).backward()
        optimizer.step()
        for param, name in names.items():
            state = optimizer.state[param]
            for kind, want in (("new", param), ("adam_m", state["exp_avg"]), ("adam_v", state["exp_avg_sq"])):
                got = trace[f"{name}.{kind}@s{s}"]
                assert np.abs(got - want.detach().numpy()).max() <= 1e-7, (name, kind, s)
    assert len(names) * 3 == len(trace.find(kind="new"))


def test_explicit_adamw_alone_matches_torch_bit_for_bit():
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
    theirs.load_state_dict(ours.state_dict())
    mine = AdamW(ours.named_parameters(), lr=1e-2, weight_decay=0.3)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.3, foreach=False)
    x = torch.randn(5, 6)
    for _ in range(4):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            optimizer.zero_grad()
            (model(x) ** 2).sum().backward()
            optimizer.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(a, b)


def test_recorded_update_quantities_fit_together(gpt_model):
    lr = 1e-3
    trace = finetune(load_model(gpt_model), request_for("decoder", steps=2, lr=lr, weight_decay=0.0)).trace
    name = "blocks.0.attn.W_Q.weight"
    for s in (1, 2):
        g = lambda kind: trace[f"{name}.{kind}@s{s}"].astype(np.float64)  # noqa: E731
        m_hat = trace.step(f"{name}.adam_m_hat@s{s}")
        np.testing.assert_allclose(g("adam_m_hat"), g("adam_m") / m_hat.extra["bias_correction"], rtol=1e-6)
        np.testing.assert_allclose(g("adam_step"), -lr * g("adam_m_hat") / (np.sqrt(g("adam_v_hat")) + 1e-8), rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(g("new"), g("value") + g("adam_step"), atol=1e-7)
        assert m_hat.extra["adam_t"] == s
    np.testing.assert_array_equal(trace[f"{name}.value@s2"], trace[f"{name}.new@s1"])
    # Adam's first step: m̂ = g and v̂ = g², so every weight with a real gradient moves by about lr
    grad, step = trace[f"{name}.grad@s1"], trace[f"{name}.adam_step@s1"]
    moved = np.abs(grad) > 1e-6
    assert moved.mean() > 0.9
    np.testing.assert_allclose(np.abs(step[moved]), lr, rtol=1e-2)
    np.testing.assert_array_equal(np.sign(step[moved]), -np.sign(grad[moved]))


def test_lora_first_step_a_gradient_is_exactly_zero_b_is_not(seq2seq_model):
    trace = finetune(load_model(seq2seq_model), request_for("encoder-decoder", lora_rank=2, lora_alpha=4.0, steps=2)).trace
    a, b = "encoder.0.attn.W_Q.lora_A.weight", "encoder.0.attn.W_Q.lora_B.weight"
    assert np.count_nonzero(trace[f"{a}.grad@s1"]) == 0
    assert np.count_nonzero(trace[f"{b}.grad@s1"]) > 0
    assert np.count_nonzero(trace[f"{a}.grad@s2"]) > 0      # once B has moved, A learns too
    assert not np.any(trace[f"{b}.value@s1"])               # because B starts at zero
    trained = trace.output["training"]["trained_parameters"]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)  # the base is frozen
    assert "encoder.0.attn.W_Q.base.weight.new@s1" not in trace
    # the adapter's taps: output = frozen base + (alpha/r)·B·A·x
    prefix = "encoder.0.attn.W_Q"
    x = trace["encoder.0.hook_resid_pre@s2"].astype(np.float64)
    A, B = trace[f"{a}.value@s2"].astype(np.float64), trace[f"{b}.value@s2"].astype(np.float64)
    np.testing.assert_allclose(trace[f"{prefix}.hook_lora_a@s2"], x @ A.T, atol=1e-5)
    np.testing.assert_allclose(trace[f"{prefix}.hook_lora_out@s2"], 2.0 * (x @ A.T @ B.T), atol=1e-5)
    np.testing.assert_allclose(trace[f"{prefix}.hook_adapted_out@s2"],
                               trace[f"{prefix}.hook_base_out@s2"] + trace[f"{prefix}.hook_lora_out@s2"], atol=1e-6)
    assert trace.step(f"{prefix}.hook_lora_a@s1").axes == ("pos", "rank")
    # cross-attention's value projection reads the source sentence
    v = trace.step("decoder.0.cross_attn.W_V.hook_lora_a@s1")
    assert v.labels["pos"] == trace.input["tokens"]


def test_a_seed_fixes_the_run_and_another_seed_changes_it(bert_model):
    def run(seed):
        return finetune(load_model(bert_model), request_for("encoder", lora_rank=2, seed=seed, steps=2)).trace

    first, again, other = run(1), run(1), run(2)
    assert first.ids == again.ids
    for step in first.steps:
        np.testing.assert_array_equal(step.data, again[step.id])
    assert not np.array_equal(first["classifier.W_cls.weight.value@s1"], other["classifier.W_cls.weight.value@s1"])


def test_forward_steps_keep_their_values_when_the_weights_change(gpt_model):
    """hook_pos_embed is a view of W_pos: the recorded forward must not follow the update."""
    trace = finetune(load_model(gpt_model), request_for("decoder", steps=2, lr=0.1)).trace
    T = trace["hook_pos_embed@s1"].shape[0]
    np.testing.assert_array_equal(trace["hook_pos_embed@s1"], trace["W_pos.weight.value@s1"][:T])
    np.testing.assert_array_equal(trace["hook_pos_embed@s2"], trace["W_pos.weight.new@s1"][:T])


# -- step ids -------------------------------------------------------------------------------
def test_step_ids_carry_the_training_step_and_old_ids_read_as_before():
    assert split_step_id("blocks.0.attn.hook_pattern@s2") == ("blocks.0.attn.hook_pattern", None, 2)
    assert split_step_id("decoder.0.hook_z@3") == ("decoder.0.hook_z", 3, None)
    assert split_id("decoder.0.hook_z@3") == ("decoder.0.hook_z", 3)
    assert split_id("hook_loss@s1") == ("hook_loss", None)
    for bad in ("x@s", "x@sx", "x@s-1", "x@x"):
        with pytest.raises(ValueError):
            split_step_id(bad)
    step = Step.from_array("blocks.0.attn.hook_pattern.grad@s2", np.zeros((1, 2, 2), np.float32), ("head", "query", "key"))
    assert (step.train_step, step.decode_step, step.kind, step.layer, step.component) == (2, None, "pattern.grad", 0, "attn")
    assert step.meta()["train_step"] == 2
    assert "train_step" not in Step.from_array("decoder.hook_probs@1", np.zeros(3, np.float32), ("vocab",)).meta()


def test_training_names_parse_into_their_parts():
    assert parse_name("decoder.1.cross_attn.hook_pattern.grad") == {
        "stack": "decoder", "layer": 1, "component": "cross_attn", "kind": "pattern.grad", "of": "pattern", "param": None, "module": None}
    assert parse_name("blocks.0.attn.W_Q.lora_A.weight.adam_m")["param"] == "W_Q.lora_A.weight"
    assert parse_name("blocks.0.ln1.weight.new")["component"] == "ln1"
    assert parse_name("W_E.weight.grad")["component"] is None
    assert parse_name("blocks.0.attn.W_V.hook_lora_out")["module"] == "W_V"
    assert parse_name("blocks.0.attn.hook_pattern")["of"] is None


def test_the_model_side_pieces_never_import_the_trace_or_the_ui():
    import subprocess
    import sys

    code = "import sys, tracer.nn.lora, tracer.nn.classifier, tracer.train.adamw; print('\\n'.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split())
    assert not {m for m in loaded if m.startswith(("tracer.trace", "tracer.tui", "tracer.capture", "textual"))}
    help_code = ("import sys; from click.testing import CliRunner; from tracer.cli import cli; "
                 "r = CliRunner().invoke(cli, ['finetune', '--help']); print(r.exit_code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", help_code], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["0", "False"]
