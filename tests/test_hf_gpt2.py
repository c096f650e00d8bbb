"""GPT-2 checkpoints: tracer's converted model computes what transformers' GPT2LMHeadModel computes."""

from __future__ import annotations

import pytest
import torch

from hf_helpers import (
    N_NEW, assert_within, hf_greedy, input_ids, make_hf, max_diff, parity, run_traced,
    save_and_read, trace_parity, traced_and_checked, tracer_generate, tracer_model, transformers,
)
from tracer.errors import BadInput
from tracer.nn.convert import convert

N_LAYERS, VOCAB = 2, 61


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=N_LAYERS, n_head=4,
                                     bos_token_id=None, eos_token_id=None)  # greedy never stops early
    hf = make_hf(transformers.GPT2LMHeadModel, config)
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp("gpt2")))


def test_gpt2_matches_transformers_at_every_step(gpt2):
    hf, hf_config, weights, folder = gpt2
    converted = convert(hf_config, weights)
    assert converted.notes["head"] == "lm" and converted.cfg.activation == "gelu_tanh"
    ids = input_ids(VOCAB)
    logits, taps = run_traced(tracer_model(converted), ids)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_attentions=True)
    diffs = parity(out, taps, last="ln_final.hook_normalized")
    diffs["logits"] = max_diff(out.logits[:, -1], logits)
    assert_within(diffs)


def test_gpt2_greedy_decoding_matches_generate(gpt2):
    hf, hf_config, weights, folder = gpt2
    ids = input_ids(VOCAB, seed=2)
    ours = tracer_generate(folder, ids, N_NEW)
    assert ours == hf_greedy(hf, ids, N_NEW)
    assert len(set(ours)) > 1, "a decode that repeats one token proves little"


def test_traced_as_tracer_run_traces_it_the_trace_matches_and_checks(gpt2):
    """Through tracer's loader, tokenizer and capture (what `tracer run --model DIR` does)."""
    hf, _, _, folder = gpt2
    ids = input_ids(VOCAB, seed=3)
    trace = traced_and_checked(folder, ids, max_new_tokens=2)
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    assert_within(trace_parity(trace, out, at="@1", logits=out.logits[0, -1]))
    assert trace.model["source"]["notes"]["head"] == "lm"


def test_the_exact_gelu_would_be_caught(gpt2):
    """The widened weights make erf-GELU in place of GPT-2's tanh-GELU visible far above the bound."""
    hf, hf_config, weights, folder = gpt2
    converted = convert(hf_config, weights)
    converted.cfg.activation = "gelu"
    ids = input_ids(VOCAB)
    logits, _ = run_traced(tracer_model(converted), ids)
    with torch.no_grad():
        assert max_diff(hf(ids).logits[:, -1], logits) > 1e-4


def old_layout(weights: dict) -> dict:
    """The original hub file's layout: no `transformer.` prefix, each layer's causal-mask buffers."""
    old = {key.removeprefix("transformer."): value for key, value in weights.items()}
    for layer in range(N_LAYERS):
        old[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(64, 64, dtype=torch.bool))[None, None]
        old[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return old


def test_old_hub_layout_converts_to_the_same_weights(gpt2):
    _, hf_config, weights, _ = gpt2
    new, old = convert(hf_config, weights), convert(hf_config, old_layout(weights))
    assert new.state_dict.keys() == old.state_dict.keys()
    assert all(torch.equal(new.state_dict[k], old.state_dict[k]) for k in new.state_dict)
    assert old.notes["ignored"] == sorted(f"h.{layer}.attn.{b}" for layer in range(N_LAYERS) for b in ("bias", "masked_bias"))


def test_a_copy_of_the_tied_head_is_accepted_only_if_it_is_the_embedding(gpt2):
    _, hf_config, weights, _ = gpt2
    tied = dict(weights, **{"lm_head.weight": weights["transformer.wte.weight"].clone()})
    assert "lm_head.weight" not in convert(hf_config, tied).notes["ignored"]
    tied["lm_head.weight"] = tied["lm_head.weight"] + 1
    with pytest.raises(BadInput, match=r"lm_head\.weight differs from transformer\.wte\.weight"):
        convert(hf_config, tied)


@pytest.mark.parametrize("option, value", [
    ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True), ("scale_attn_weights", False),
    ("add_cross_attention", True), ("activation_function", "quick_gelu"),
])
def test_unsupported_options_are_refused_by_name(gpt2, option, value):
    _, hf_config, weights, _ = gpt2
    with pytest.raises(BadInput, match=option) as error:
        convert(dict(hf_config, **{option: value}), weights)
    assert "\n" not in str(error.value)


def test_key_accounting_names_the_first_offending_key(gpt2):
    _, hf_config, weights, _ = gpt2
    missing = {k: v for k, v in weights.items() if k != "transformer.h.1.mlp.c_fc.weight"}
    with pytest.raises(BadInput, match=r"missing key 'transformer\.h\.1\.mlp\.c_fc\.weight'"):
        convert(hf_config, missing)
    with pytest.raises(BadInput, match=r"unexpected key 'transformer\.h\.0\.attn\.rotary'"):
        convert(hf_config, dict(weights, **{"transformer.h.0.attn.rotary": torch.zeros(3)}))
    narrow = dict(weights, **{"transformer.h.0.mlp.c_proj.weight": torch.zeros(64, 32, dtype=torch.float64)})
    with pytest.raises(BadInput, match=r"transformer\.h\.0\.mlp\.c_proj\.weight has shape \[64, 32\], config\.json implies \[128, 32\]"):
        convert(hf_config, narrow)
    qkv = dict(weights, **{"transformer.h.0.attn.c_attn.weight": torch.zeros(32, 32, dtype=torch.float64)})
    with pytest.raises(BadInput, match=r"c_attn\.weight has shape \[32, 32\], config\.json implies \[32, 96\]"):
        convert(hf_config, qkv)


def test_unknown_model_types_are_refused():
    with pytest.raises(BadInput, match="model_type 'bart' is not supported"):
        convert({"model_type": "bart"}, {})
    with pytest.raises(BadInput, match="no model_type"):
        convert({}, {})
