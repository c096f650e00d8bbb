"""The step ids of a trace are exactly DESIGN.md's hook names, for every layer and decoding step."""

from __future__ import annotations

import pytest

from tracer.capture import trace_text
from tracer.nn.loading import load_model

ATTN = ["hook_q", "hook_k", "hook_v", "hook_attn_raw", "hook_attn_scaled", "hook_mask",
        "hook_attn_scores", "hook_pattern", "hook_z", "hook_concat"]
MLP = ["mlp.hook_pre", "mlp.hook_post"]


def block_names(prefix: str, cross: bool, rotary: bool = False) -> set[str]:
    attn = ATTN + (["hook_rot_q", "hook_rot_k"] if rotary else [])
    names = {f"{prefix}.attn.{n}" for n in attn}
    names |= {f"{prefix}.{n}" for n in ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"]}
    names |= {f"{prefix}.ln1.hook_normalized", f"{prefix}.ln2.hook_normalized"}
    names |= {f"{prefix}.{n}" for n in MLP}
    if cross:
        names |= {f"{prefix}.cross_attn.{n}" for n in ATTN}
        names |= {f"{prefix}.hook_cross_attn_out", f"{prefix}.hook_resid_mid_cross", f"{prefix}.ln3.hook_normalized"}
    return names


def test_encoder_decoder_ids_are_design_names_for_every_layer_and_step(seq2seq_trace):
    trace = seq2seq_trace
    n_steps = len(trace.decode_steps)
    assert trace.decode_steps == list(range(1, n_steps + 1)) and n_steps == 3
    expected = {"encoder.hook_tokens", "encoder.hook_embed", "encoder.hook_pos_embed"}
    for layer in range(2):
        expected |= block_names(f"encoder.{layer}", cross=False)
    decoder = {"decoder.hook_tokens", "decoder.hook_embed", "decoder.hook_pos_embed", "decoder.hook_logits", "decoder.hook_probs"}
    for layer in range(2):
        decoder |= block_names(f"decoder.{layer}", cross=True)
    for t in range(1, n_steps + 1):
        expected |= {f"{name}@{t}" for name in decoder}
    assert set(trace.ids) == expected
    assert len(trace.ids) == len(expected)


def test_steps_are_in_computation_order(seq2seq_trace):
    ids = seq2seq_trace.ids
    assert ids[0] == "encoder.hook_tokens"
    assert ids.index("encoder.0.attn.hook_attn_raw") < ids.index("encoder.0.attn.hook_attn_scaled") < ids.index("encoder.0.attn.hook_pattern")
    assert ids.index("encoder.1.hook_resid_post") < ids.index("decoder.hook_tokens@1")
    assert ids.index("decoder.0.attn.hook_pattern@1") < ids.index("decoder.0.cross_attn.hook_pattern@1")
    assert ids.index("decoder.hook_probs@1") < ids.index("decoder.hook_tokens@2")
    assert ids[-1] == "decoder.hook_probs@3"


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_single_stack_models_use_transformerlens_block_names(make_model, arch, positional):
    folder = make_model(arch=arch, positional=positional, norm="pre", activation="gelu")
    trace = trace_text(load_model(folder), "der hund sieht die katze", max_new_tokens=2)
    names = {"hook_tokens", "hook_embed", "ln_final.hook_normalized", "hook_logits", "hook_probs"}
    if positional != "rotary":
        names.add("hook_pos_embed")
    for layer in range(2):
        names |= block_names(f"blocks.{layer}", cross=False, rotary=positional == "rotary")
    if arch == "decoder":
        expected = {f"{name}@{t}" for name in names for t in (1, 2)}
    else:
        expected = names
    assert set(trace.ids) == expected


def test_shapes_axes_and_labels(seq2seq_trace):
    trace = seq2seq_trace
    tokens = trace.input["tokens"]
    assert tokens == ["ich", "bin", "piyush"]
    q = trace.step("encoder.0.attn.hook_q")
    assert q.shape == (3, 4, 8) and q.axes == ("pos", "head", "d_head") and q.labels["pos"] == tokens
    pattern = trace.step("decoder.1.cross_attn.hook_pattern@2")
    assert pattern.shape == (4, 2, 3) and pattern.axes == ("head", "query", "key")
    assert pattern.labels["key"] == tokens
    assert pattern.labels["query"][0] == "<s>" and len(pattern.labels["query"]) == 2
    self_mask = trace["decoder.0.attn.hook_mask@3"]
    assert self_mask.dtype == bool and self_mask.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    cross_v = trace.step("decoder.0.cross_attn.hook_v@3")
    assert cross_v.labels["pos"] == tokens
    probs = trace.step("decoder.hook_probs@1")
    assert probs.axes == ("vocab",) and len(probs.extra["top_k"]) == 5
    assert probs.extra["chosen"]["id"] == probs.extra["top_k"][0]["id"]
    assert trace.find(kind="pattern", layer=1, decode_step=2, component="cross_attn") == [pattern]


def test_tracing_does_not_change_the_result(make_model):
    from tracer.capture import generate

    for arch in ("encoder-decoder", "decoder", "encoder"):
        loaded = load_model(make_model(arch=arch))
        plain = generate(loaded, "wir lesen ein buch", max_new_tokens=5)
        traced = generate(loaded, "wir lesen ein buch", max_new_tokens=5, traced=True)
        assert plain.output_ids == traced.output_ids
        assert plain.predictions == traced.predictions
        assert traced.trace.output["ids"] == traced.output_ids
