"""Llama-family checkpoints (Llama with GQA and llama3 RoPE scaling, Qwen2, Mistral): tracer's
converted model computes what transformers computes.

transformers computes parts of these models in float32 even in a float64 model: RMSNorm (the
whole normalisation), the RoPE angles, the attention softmax. tracer's model does the same
(RMSNorm always, `softmax_fp32` for this family), so the float64 comparison is exact up to
matmul rounding; the test below shows that without the float32 softmax the bound would fail.
"""

from __future__ import annotations

import pytest
import torch

from hf_helpers import (
    N_NEW, assert_within, hf_greedy, input_ids, make_hf, max_diff, parity, run_traced, save_and_read,
    trace_parity, traced_and_checked, tracer_generate, tracer_model, transformers,
)
from tracer.errors import BadInput
from tracer.nn.convert import convert

VOCAB = 61
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=0)  # greedy never stops early
LLAMA3 = {"rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # short enough to rescale this model's RoPE


def build(tmp_path_factory, model_class, config_class, **options):
    hf = make_hf(model_class, config_class(**{**COMMON, **options}))
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp(config_class.model_type)))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """GQA (4 query heads, 2 key/value heads), head_dim 12 ≠ 32 / 4, llama3 RoPE scaling, θ 1e5, untied head."""
    return build(tmp_path_factory, transformers.LlamaForCausalLM, transformers.LlamaConfig,
                 head_dim=12, rope_parameters=LLAMA3)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """Biases on Q, K, V only; tied head."""
    return build(tmp_path_factory, transformers.Qwen2ForCausalLM, transformers.Qwen2Config, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    """A sliding window (48) longer than input plus decode (20 + 24): the mask is plain causal."""
    return build(tmp_path_factory, transformers.MistralForCausalLM, transformers.MistralConfig, sliding_window=48)


def check_parity(hf, converted, ids=None):
    ids = input_ids(VOCAB) if ids is None else ids
    logits, taps = run_traced(tracer_model(converted), ids)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_attentions=True)
    diffs = parity(out, taps, last="ln_final.hook_normalized")
    diffs["logits"] = max_diff(out.logits[:, -1], logits)
    return diffs, taps


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_matches_transformers_at_every_step(family, request):
    hf, hf_config, weights, folder = request.getfixturevalue(family)
    diffs, taps = check_parity(hf, convert(hf_config, weights))
    assert_within(diffs)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_greedy_decoding_matches_generate(family, request):
    hf, hf_config, weights, folder = request.getfixturevalue(family)
    ids = input_ids(VOCAB, seed=2, n=20)
    ours = tracer_generate(folder, ids, N_NEW)
    assert ours == hf_greedy(hf, ids, N_NEW)
    assert len(set(ours)) > 1


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_traced_as_tracer_run_traces_it_the_trace_matches_and_checks(family, request):
    """Through tracer's loader, tokenizer and capture; `tracer check`'s GQA and RMSNorm relations hold."""
    hf, _, _, folder = request.getfixturevalue(family)
    ids = input_ids(VOCAB, seed=3)
    trace = traced_and_checked(folder, ids, max_new_tokens=2)
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    assert_within(trace_parity(trace, out, at="@1", logits=out.logits[0, -1]))


def test_grouped_query_attention_records_k_and_v_per_kv_head(llama):
    hf, hf_config, weights, folder = llama
    converted = convert(hf_config, weights)
    assert (converted.cfg.n_heads, converted.cfg.kv_heads, converted.cfg.d_head) == (4, 2, 12)
    _, taps = check_parity(hf, converted)
    ids_len = taps["hook_tokens"].shape[1]
    assert taps["blocks.0.attn.hook_k"].shape == (1, ids_len, 2, 12)
    assert taps["blocks.0.attn.hook_v"].shape == (1, ids_len, 2, 12)
    assert taps["blocks.0.attn.hook_q"].shape == (1, ids_len, 4, 12)
    assert taps["blocks.0.attn.hook_pattern"].shape == (1, 4, ids_len, ids_len)
    # query heads 0 and 1 share key/value head 0: their raw scores use the same keys
    q, k = taps["blocks.0.attn.hook_rot_q"][0], taps["blocks.0.attn.hook_rot_k"][0]
    raw = taps["blocks.0.attn.hook_attn_raw"][0]
    assert max_diff(raw[1], q[:, 1] @ k[:, 0].T) < 1e-12
    assert max_diff(raw[2], q[:, 2] @ k[:, 1].T) < 1e-12


def test_llama3_scaling_and_float32_softmax_are_both_needed(llama):
    """Each emulated detail is visible: dropping it breaks the 1e-10 bound."""
    hf, hf_config, weights, folder = llama
    converted = convert(hf_config, weights)
    assert converted.cfg.rotary_scaling["type"] == "llama3" and converted.cfg.rotary_base == 1e5
    converted.cfg.rotary_scaling = None
    assert max(check_parity(hf, converted)[0].values()) > 1e-3
    converted = convert(hf_config, weights)
    converted.cfg.softmax_fp32 = False
    assert max(check_parity(hf, converted)[0].values()) > 1e-10


def test_v4_config_layout_gives_the_same_model(llama):
    """transformers v4 wrote rope_theta and rope_scaling at the top level instead of rope_parameters."""
    _, hf_config, weights, _ = llama
    v4 = {k: v for k, v in hf_config.items() if k != "rope_parameters"}
    v4["rope_theta"] = LLAMA3["rope_theta"]
    v4["rope_scaling"] = {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    assert convert(v4, weights).cfg == convert(hf_config, weights).cfg


def test_qwen2_has_biases_on_q_k_v_only(qwen2):
    _, hf_config, weights, _ = qwen2
    state = convert(hf_config, weights).state_dict
    assert {"blocks.0.attn.W_Q.bias", "blocks.0.attn.W_K.bias", "blocks.0.attn.W_V.bias"} <= state.keys()
    assert not {"blocks.0.attn.W_O.bias", "blocks.0.mlp.W_in.bias", "W_U.weight"} & state.keys()


def test_a_sliding_window_is_kept_not_a_cap_on_the_positions(mistral):
    """(The window itself is tested on inputs longer than it in test_hf_sliding_window.py.)"""
    _, hf_config, weights, _ = mistral
    converted = convert(hf_config, weights)
    assert converted.cfg.max_positions == 64 and converted.cfg.sliding_window == 48


def test_unsupported_options_are_refused_by_name(llama):
    _, hf_config, weights, _ = llama
    yarn = dict(hf_config, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})
    with pytest.raises(BadInput, match="rope type 'yarn' is not supported"):
        convert(yarn, weights)
    with pytest.raises(BadInput, match="hidden_act 'gelu'"):
        convert(dict(hf_config, hidden_act="gelu"), weights)
    with pytest.raises(BadInput, match="partial_rotary_factor"):
        convert(dict(hf_config, partial_rotary_factor=0.5), weights)


def test_key_accounting_names_the_first_offending_key(llama):
    _, hf_config, weights, _ = llama
    with pytest.raises(BadInput, match=r"missing key 'lm_head\.weight'"):
        convert(hf_config, {k: v for k, v in weights.items() if k != "lm_head.weight"})
    with pytest.raises(BadInput, match=r"unexpected key 'model\.layers\.0\.self_attn\.q_norm\.weight'"):
        convert(hf_config, dict(weights, **{"model.layers.0.self_attn.q_norm.weight": torch.ones(12)}))
    # config.json claims 4 key/value heads; the file holds 2
    with pytest.raises(BadInput, match=r"model\.layers\.0\.self_attn\.k_proj\.weight has shape \[24, 32\], the model needs \[48, 32\]"):
        convert(dict(hf_config, num_key_value_heads=4), weights)
    buffers = dict(weights, **{"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(6)})
    assert convert(hf_config, buffers).notes["ignored"] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
