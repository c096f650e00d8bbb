"""The model features added for Hugging Face checkpoints, without transformers: config validation
and the shapes and parameters each switch gives the model."""

from __future__ import annotations

import pytest
import torch

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig
from tracer.nn.hooks import hook_points, hooks_attached
from tracer.nn.model import build_model


def llama_like(**changes) -> ModelConfig:
    fields = dict(arch="decoder", vocab_size=20, d_model=16, n_heads=4, n_kv_heads=2, head_dim=6, d_ff=24,
                  n_layers=1, max_positions=16, positional="rotary", norm="pre", norm_type="rmsnorm",
                  activation="swiglu", qkv_bias=False, attn_out_bias=False, mlp_bias=False)
    return ModelConfig(**{**fields, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"n_kv_heads": 3}, "n_heads 4 is not a multiple of n_kv_heads 3"),
    ({"n_kv_heads": 0}, r"n_kv_heads must be in \[1, 4,096\], not 0"),
    ({"head_dim": 5}, "even d_head"),
    ({"norm_type": "batchnorm"}, "norm_type must be one of"),
    ({"output": "pooled"}, "output 'pooled' needs an encoder"),
    ({"rotary_scaling": {"type": "yarn"}}, "rotary_scaling type must be one of llama3, not 'yarn'"),
    ({"rotary_scaling": {"type": "llama3", "factor": 8}}, "rotary_scaling needs a number low_freq_factor"),
    ({"token_types": -1}, r"token_types must be in \[0, 1,024\], not -1"),
])
def test_bad_new_fields_are_refused_by_name(changes, message):
    with pytest.raises(BadInput, match=message):
        llama_like(**changes).validate()


def test_the_new_fields_round_trip_through_config_json():
    cfg = llama_like(rotary_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_positions": 8}).validate()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_gqa_and_head_dim_shape_the_projections_and_taps():
    model = build_model(llama_like().validate())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["blocks.0.attn.W_Q.weight"] == (24, 16)      # 4 heads × 6
    assert shapes["blocks.0.attn.W_K.weight"] == (12, 16)      # 2 key/value heads × 6
    assert shapes["blocks.0.attn.W_O.weight"] == (16, 24)
    assert not [k for k in shapes if k.endswith(".bias")]      # no zero biases standing in for absent ones
    assert shapes["blocks.0.ln1.weight"] == (16,) and "blocks.0.ln1.bias" not in shapes
    taps = {}
    with torch.no_grad(), hooks_attached(model, lambda name, value: taps.__setitem__(name, value)):
        model(torch.arange(5)[None])
    assert taps["blocks.0.attn.hook_k"].shape == (1, 5, 2, 6) and taps["blocks.0.attn.hook_q"].shape == (1, 5, 4, 6)
    assert taps["blocks.0.attn.hook_concat"].shape == (1, 5, 24)


@torch.no_grad()
def test_rmsnorm_normalises_in_float32_whatever_the_dtype():
    """transformers' Llama RMSNorm: x·rsqrt(mean(x²)+ε) in float32, cast back, times the weight."""
    model = build_model(llama_like().validate()).to(torch.float64)
    norm = model.blocks[0].ln1
    x = torch.randn(1, 3, 16, dtype=torch.float64)
    wide = x.float()
    expected = norm.weight * (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + norm.eps)).double()
    assert torch.equal(norm(x), expected)
    exact = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
    assert 0 < float((norm(x) - exact).abs().max()) < 1e-5


def test_bert_switches_add_their_taps_and_nothing_else():
    base = dict(arch="encoder", vocab_size=20, d_model=16, n_heads=2, d_ff=24, n_layers=1, max_positions=16,
                positional="learned", norm="post", activation="gelu", scale_embeddings=False)
    plain = set(hook_points(build_model(ModelConfig(**base).validate())))
    bert = set(hook_points(build_model(ModelConfig(**base, token_types=2, embed_norm=True, mlm_head=True,
                                                   logits_bias=True).validate())))
    assert bert - plain == {"hook_token_type_embed", "ln_embed.hook_normalized", "hook_mlm_dense",
                            "hook_mlm_act", "ln_mlm.hook_normalized"}
    pooled = set(hook_points(build_model(ModelConfig(**base, output="pooled").validate())))
    sentence = set(hook_points(build_model(ModelConfig(**base, output="sentence").validate())))
    assert pooled - plain == {"pooler.hook_pooler_out"} and sentence - plain == {"hook_mean_pooled", "hook_sentence_embedding"}
    assert "hook_logits" not in pooled | sentence
