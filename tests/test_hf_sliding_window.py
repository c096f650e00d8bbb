"""Sliding-window attention (Mistral: every layer; Qwen2: the layers its layer_types name): tracer's model
computes what transformers 5 computes on inputs several windows long, in one pass and in a KV-cached decode.

transformers' rule (masking_utils.sliding_window_overlay): query i may see key j when j ≤ i and
j > i − w, the last w keys, itself included. The tests use w = 4 on 24-token inputs, compare the
attention patterns themselves, and show that a window one key wider or narrower breaks the bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_helpers import (
    N_NEW, as_text, assert_within, hf_greedy, input_ids, load_folder, make_hf, max_diff, parity, run_traced,
    save_and_read, traced_and_checked, tracer_model, transformers,
)
from tracer.errors import BadInput
from tracer.nn.config import ModelConfig
from tracer.nn.convert import convert
from tracer.trace.check import check_trace
from tracer.tui.view.explain import explain

VOCAB, WINDOW, N_LAYERS = 61, 4, 3
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=N_LAYERS, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=0)
QWEN2_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def build(tmp_path_factory, model_class, config_class, **options):
    hf = make_hf(model_class, config_class(**{**COMMON, **options}))
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp(config_class.model_type)))


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return build(tmp_path_factory, transformers.MistralForCausalLM, transformers.MistralConfig, sliding_window=WINDOW)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """Layers 0 and 2 windowed, layer 1 full: each layer gets its own mask."""
    return build(tmp_path_factory, transformers.Qwen2ForCausalLM, transformers.Qwen2Config, use_sliding_window=True,
                 sliding_window=WINDOW, layer_types=QWEN2_TYPES)


def check_parity(hf, converted, ids):
    logits, taps = run_traced(tracer_model(converted), ids)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_attentions=True)
    diffs = parity(out, taps, last="ln_final.hook_normalized")
    diffs["logits"] = max_diff(out.logits[:, -1], logits)
    return diffs, taps, out


def windowed(T: int, window: int) -> np.ndarray:
    """The expected mask, written from the definition: key j visible to query i when i − w < j ≤ i."""
    return np.array([[i - window < j <= i for j in range(T)] for i in range(T)])


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_matches_transformers_on_an_input_six_windows_long(family, request):
    hf, hf_config, weights, _ = request.getfixturevalue(family)
    ids = input_ids(VOCAB)
    assert ids.shape[1] >= 6 * WINDOW
    converted = convert(hf_config, weights)
    assert converted.cfg.max_positions == 64          # no longer capped at the window
    diffs, taps, out = check_parity(hf, converted, ids)
    assert_within(diffs)
    T = ids.shape[1]
    sliding = range(N_LAYERS) if family == "mistral" else [0, 2]
    for layer in range(N_LAYERS):
        mask = taps[f"blocks.{layer}.attn.hook_mask"][0].numpy()
        expected = windowed(T, WINDOW) if layer in sliding else np.tril(np.ones((T, T), dtype=bool))
        assert np.array_equal(mask, expected), layer
        pattern = out.attentions[layer][0]
        # transformers' own weights at the boundary: the key w − 1 back is seen, the key w back is not
        rows = torch.arange(WINDOW, T)
        assert (pattern[:, rows, rows - WINDOW + 1] > 0).all()
        assert ((pattern[:, rows, rows - WINDOW] == 0).all()) == (layer in sliding)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
@pytest.mark.parametrize("off_by", [-1, 1])
def test_a_window_one_key_off_is_caught(family, off_by, request):
    """`>= i − w` (one key too many) or a window of w − 1 would be the classic off-by-one: the bound sees it."""
    hf, hf_config, weights, _ = request.getfixturevalue(family)
    converted = convert(hf_config, weights)
    converted.cfg.sliding_window = WINDOW + off_by
    diffs, _, _ = check_parity(hf, converted, input_ids(VOCAB))
    assert diffs["blocks.0.attn.hook_pattern"] > 1e-3 and diffs["logits"] > 1e-3


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_decoding_matches_generate(family, kv_cache, request):
    """24 new tokens after a 20-token prompt: each decoding query sees only the last w keys, cached or not."""
    from tracer.capture.run import generate

    hf, _, _, folder = request.getfixturevalue(family)
    ids = input_ids(VOCAB, seed=2, n=20)
    ours = generate(load_folder(folder), as_text(ids), max_new_tokens=N_NEW, kv_cache=kv_cache).output_ids
    assert ours == hf_greedy(hf, ids, N_NEW)
    assert len(set(ours)) > 1


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_a_cached_trace_records_the_window_and_checks(family, request):
    """`tracer run` with the KV cache: the later passes' mask rows show the window, and `tracer check`
    passes; a mask tampered to plain causal (or a full layer's to a window) fails, named."""
    hf, _, _, folder = request.getfixturevalue(family)
    ids = input_ids(VOCAB, seed=3, n=3 * WINDOW)
    trace = traced_and_checked(folder, ids, max_new_tokens=4)
    T = ids.shape[1] + 3
    assert np.array_equal(trace["blocks.0.attn.hook_mask@4"], windowed(T, WINDOW))
    explained = explain(trace.step("blocks.0.attn.hook_mask@4"), trace)
    assert "sliding window" in explained.words and "i − 4 < j ≤ i" in explained.formula
    if family == "qwen2":   # the full-attention layer between the windowed ones is explained as plain causal
        explained = explain(trace.step("blocks.1.attn.hook_mask@4"), trace)
        assert "sliding" not in explained.words and "j ≤ i:" in explained.formula
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    assert max_diff(torch.as_tensor(trace["blocks.0.attn.hook_pattern@1"]), out.attentions[0][0]) < 1e-10
    tampered = {"blocks.0.attn.hook_mask@1": np.tril(np.ones((ids.shape[1],) * 2, dtype=bool))}
    if family == "qwen2":
        tampered["blocks.1.attn.hook_mask@1"] = windowed(ids.shape[1], WINDOW)
    for step_id, data in tampered.items():
        step = trace.step(step_id)
        original = step.data
        step._array = data
        try:
            failures = [f for f in check_trace(trace).failures if f.step_id == step_id]
        finally:
            step._array = original
        assert failures, step_id
        assert ("sliding window of 4 keys" if step_id.startswith("blocks.0") else "must be causal") in failures[0].message


def test_qwen2_layers_follow_layer_types_or_max_window_layers(qwen2):
    _, hf_config, weights, _ = qwen2
    cfg = convert(hf_config, weights).cfg
    assert (cfg.sliding_window, cfg.sliding_layers) == (WINDOW, [0, 2])
    assert [cfg.windowed(layer) for layer in range(N_LAYERS)] == [True, False, True]
    # a v4 config has no layer_types: the layers from max_window_layers on are windowed
    v4 = {k: v for k, v in hf_config.items() if k != "layer_types"}
    assert convert(dict(v4, max_window_layers=1), weights).cfg.sliding_layers == [1, 2]
    # without use_sliding_window transformers drops the window (and writes no sliding layer types)
    off = dict(v4, use_sliding_window=False)
    assert (convert(off, weights).cfg.sliding_window, convert(off, weights).cfg.sliding_layers) == (None, None)
    with pytest.raises(BadInput, match="layer_types name sliding_attention layers, but no sliding_window is set"):
        convert(dict(hf_config, use_sliding_window=False), weights)
    with pytest.raises(BadInput, match=r"layer_types must list one type per layer \(3\)"):
        convert(dict(hf_config, layer_types=QWEN2_TYPES[:2]), weights)
    with pytest.raises(BadInput, match="layer type 'chunked_attention' is not supported"):
        convert(dict(hf_config, layer_types=["chunked_attention"] * 3), weights)


def test_mistral_windows_every_layer_unless_the_window_is_null(mistral):
    _, hf_config, weights, _ = mistral
    cfg = convert(hf_config, weights).cfg
    assert (cfg.sliding_window, cfg.sliding_layers) == (WINDOW, None) and cfg.windowed(N_LAYERS - 1)
    assert convert(dict(hf_config, sliding_window=None), weights).cfg.sliding_window is None


@pytest.mark.parametrize("fields, message", [
    ({"sliding_window": 0}, r"sliding_window must be in \[1, 16,777,216\], not 0"),
    ({"sliding_layers": [0]}, "sliding_layers needs a sliding_window"),
    ({"sliding_window": 4, "sliding_layers": [2]}, r"sliding_layers must be a list of layer numbers 0…1, not \[2\]"),
    ({"sliding_window": 4, "arch": "encoder"}, "sliding_window needs a decoder, not 'encoder'"),
])
def test_config_refuses_a_bad_window_by_name(fields, message):
    base = dict(arch="decoder", vocab_size=20, d_model=16, n_heads=2, d_ff=24, n_layers=2, max_positions=16)
    with pytest.raises(BadInput, match=message):
        ModelConfig.from_dict({**base, **fields})
