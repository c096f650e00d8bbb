"""GPT-2 (GPT2LMHeadModel) -> tracer's pre-norm decoder, as nanoGPT's `from_pretrained` does it.

GPT-2 stores its linear layers as Conv1D, (in, out): transposed here into nn.Linear's (out, in);
`c_attn` holds Q, K and V side by side. Files saved by transformers v5 prefix the body with
`transformer.`; the original hub files do not, and carry each layer's causal-mask buffers
(`attn.bias`, `attn.masked_bias`), which transformers ignores too.
"""

from __future__ import annotations

from tracer.nn.convert import Converted
from tracer.nn.convert.checkpoint import Checkpoint, build_config, choose, need, refuse

ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",)  # causal-mask buffers, rebuilt from the length


def convert(hf: dict, weights, extras: dict) -> Converted:
    refuse(hf, {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "add_cross_attention": False})
    activation = choose(hf, "activation_function", "gelu_new", ACTIVATIONS)
    d, n_layers = need(hf, "n_embd"), need(hf, "n_layer")
    cfg = build_config(
        arch="decoder", vocab_size=need(hf, "vocab_size"), d_model=d,
        n_heads=need(hf, "n_head"), d_ff=hf.get("n_inner") or 4 * d, n_layers=n_layers,
        max_positions=hf.get("n_positions", 1024), positional="learned", norm="pre",
        activation=activation, scale_embeddings=False,
        tie_embeddings=hf.get("tie_word_embeddings", True), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )
    ckpt = Checkpoint(weights, cfg, IGNORED)
    p = "transformer." if any(key.startswith("transformer.") for key in ckpt.keys) else ""

    def norm(source: str, name: str) -> None:
        ckpt.move(f"{source}.weight", f"{name}.weight")
        ckpt.move(f"{source}.bias", f"{name}.bias")

    def conv1d(source: str, name: str) -> None:
        weight = ckpt.take(f"{source}.weight", ckpt.expected[f"{name}.weight"][::-1])   # (in, out)
        ckpt.put(f"{name}.weight", weight.t(), f"{source}.weight")
        ckpt.move(f"{source}.bias", f"{name}.bias")

    ckpt.move(f"{p}wte.weight", "W_E.weight")
    ckpt.move(f"{p}wpe.weight", "W_pos.weight")
    for layer in range(n_layers):
        h, b = f"{p}h.{layer}", f"blocks.{layer}"
        norm(f"{h}.ln_1", f"{b}.ln1")
        qkv_w = ckpt.take(f"{h}.attn.c_attn.weight", (d, 3 * d))               # (in, 3·out)
        qkv_b = ckpt.take(f"{h}.attn.c_attn.bias", (3 * d,))
        for part, w, bias in zip("QKV", qkv_w.split(d, dim=1), qkv_b.split(d)):
            ckpt.put(f"{b}.attn.W_{part}.weight", w.t(), f"{h}.attn.c_attn.weight")
            ckpt.put(f"{b}.attn.W_{part}.bias", bias, f"{h}.attn.c_attn.bias")
        conv1d(f"{h}.attn.c_proj", f"{b}.attn.W_O")
        norm(f"{h}.ln_2", f"{b}.ln2")
        conv1d(f"{h}.mlp.c_fc", f"{b}.mlp.W_in")
        conv1d(f"{h}.mlp.c_proj", f"{b}.mlp.W_out")
    norm(f"{p}ln_f", "ln_final")
    if cfg.tie_embeddings:
        ckpt.same_as("lm_head.weight", f"{p}wte.weight")
    else:
        ckpt.move("lm_head.weight", "W_U.weight")
    state = ckpt.finish()
    notes = {"head": "lm", "ignored": ckpt.ignored(), "tied": cfg.tie_embeddings,
             **{key: hf.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return Converted(cfg, state, notes)
