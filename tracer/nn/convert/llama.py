"""Llama family (LlamaForCausalLM; Qwen2 and Mistral where they compute the same) -> tracer's decoder.

Pre-norm with RMSNorm, rotary positions (rotate-half layout, as tracer's `Rotary`), SwiGLU FFN,
grouped-query attention. Differences by model_type: Qwen2 has biases on Q, K, V only; Mistral
(every layer) and Qwen2 (the layers its `layer_types` name) may use a sliding attention window:
each query attends to the last `sliding_window` keys only, itself included. RoPE settings come
from v5's `rope_parameters` or v4's top-level `rope_theta` / `rope_scaling`.
"""

from __future__ import annotations

from tracer.errors import BadInput
from tracer.nn.convert import Converted
from tracer.nn.convert.checkpoint import Checkpoint, build_config, need

ROPE_TYPES = ("default", "llama3")
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)  # early conversions saved it; recomputed


def rope(hf: dict) -> tuple[float, dict | None]:
    """(θ, tracer's rotary_scaling) from either generation of config.json."""
    params = dict(hf.get("rope_parameters") or {})
    params.update(hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise BadInput(f"config.json: rope type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise BadInput("config.json: partial_rotary_factor other than 1 is not supported")
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if rope_type == "default":
        return theta, None
    original = hf.get("original_max_position_embeddings",
                      params.get("original_max_position_embeddings", hf.get("max_position_embeddings")))
    scaling = {"type": "llama3", "original_max_positions": original}
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        if key not in params:
            raise BadInput(f"config.json: llama3 rope scaling needs {key}")
        scaling[key] = params[key]
    return theta, scaling


def sliding_window(hf: dict, model_type: str) -> tuple[int | None, list[int] | None]:
    """(the window, the layers that use it: None = all) as transformers 5 reads config.json, or (None, None)
    for full causal attention everywhere. Mistral windows every layer when `sliding_window` is set; Qwen2
    only with `use_sliding_window`, in the layers `layer_types` calls "sliding_attention" (absent, as in
    v4 configs: the layers from `max_window_layers` on)."""
    if model_type == "mistral":
        return hf.get("sliding_window"), None
    if model_type != "qwen2":
        return None, None
    n_layers = need(hf, "num_hidden_layers")
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    if types is None:
        types = ["sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28) else "full_attention"
                 for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise BadInput(f"config.json: layer_types must list one type per layer ({n_layers})")
    unknown = sorted(set(map(str, types)) - {"full_attention", "sliding_attention"})
    if unknown:
        raise BadInput(f"config.json: layer type {unknown[0]!r} is not supported")
    layers = [i for i, kind in enumerate(types) if kind == "sliding_attention"]
    if not layers:
        return None, None
    if window is None:   # transformers' own mask builder refuses this too
        raise BadInput("config.json: layer_types name sliding_attention layers, but no sliding_window is set "
                       "(use_sliding_window false or sliding_window null)")
    return window, layers


def convert(hf: dict, weights, extras: dict) -> Converted:
    model_type = hf["model_type"]
    if hf.get("hidden_act", "silu") != "silu":
        raise BadInput(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
    if model_type == "qwen2":
        qkv_bias, out_bias, mlp_bias = True, False, False
    elif model_type == "mistral":
        qkv_bias = out_bias = mlp_bias = False
    else:
        qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        mlp_bias = bool(hf.get("mlp_bias", False))
    theta, scaling = rope(hf)
    max_positions = hf.get("max_position_embeddings", 2048)
    window, window_layers = sliding_window(hf, model_type)
    n_layers, n_heads = need(hf, "num_hidden_layers"), need(hf, "num_attention_heads")
    cfg = build_config(
        arch="decoder", vocab_size=need(hf, "vocab_size"),
        d_model=need(hf, "hidden_size"), n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=hf.get("head_dim"), d_ff=need(hf, "intermediate_size"), n_layers=n_layers,
        max_positions=max_positions, positional="rotary", norm="pre", norm_type="rmsnorm", activation="swiglu",
        scale_embeddings=False, tie_embeddings=hf.get("tie_word_embeddings", False),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6), rotary_base=theta, rotary_scaling=scaling,
        qkv_bias=qkv_bias, attn_out_bias=out_bias, mlp_bias=mlp_bias, softmax_fp32=True,
        sliding_window=window, sliding_layers=window_layers,
    )
    ckpt = Checkpoint(weights, cfg, IGNORED)

    def linear(source: str, name: str, bias: bool) -> None:
        ckpt.move(f"{source}.weight", f"{name}.weight")
        if bias:
            ckpt.move(f"{source}.bias", f"{name}.bias")

    ckpt.move("model.embed_tokens.weight", "W_E.weight")
    for layer in range(n_layers):
        h, b = f"model.layers.{layer}", f"blocks.{layer}"
        ckpt.move(f"{h}.input_layernorm.weight", f"{b}.ln1.weight")
        for source, part in (("q_proj", "Q"), ("k_proj", "K"), ("v_proj", "V")):
            linear(f"{h}.self_attn.{source}", f"{b}.attn.W_{part}", qkv_bias)
        linear(f"{h}.self_attn.o_proj", f"{b}.attn.W_O", out_bias)
        ckpt.move(f"{h}.post_attention_layernorm.weight", f"{b}.ln2.weight")
        linear(f"{h}.mlp.gate_proj", f"{b}.mlp.W_gate", mlp_bias)   # the SiLU branch
        linear(f"{h}.mlp.up_proj", f"{b}.mlp.W_in", mlp_bias)       # the linear branch
        linear(f"{h}.mlp.down_proj", f"{b}.mlp.W_out", mlp_bias)
    ckpt.move("model.norm.weight", "ln_final.weight")
    if cfg.tie_embeddings:
        ckpt.same_as("lm_head.weight", "model.embed_tokens.weight")
    else:
        ckpt.move("lm_head.weight", "W_U.weight")
    state = ckpt.finish()
    notes = {"head": "lm", "ignored": ckpt.ignored(), "tied": cfg.tie_embeddings,
             **{key: hf.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return Converted(cfg, state, notes)
