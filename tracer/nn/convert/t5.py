"""T5 (T5ForConditionalGeneration: t5-small style v1.0, and v1.1 / flan-t5) -> tracer's encoder-decoder.

Pre-norm with T5's RMS norm (no mean, no bias, the mean square in float32, eps 1e-6) and a final norm
on both stacks; no projection biases; no 1/√d_k (T5's initialisation absorbs it); `d_kv` per head,
independent of d_model. No positional encoding: each stack has one table of learned biases per
(relative-distance bucket, head), added to every self-attention layer's scores before the mask —
the encoder's buckets are bidirectional, the decoder's one-directional; cross-attention has none.
v1.0: ReLU FFN, head tied to the embeddings with the decoder output × d_model^-0.5.
v1.1 / flan: gated GELU (tanh) FFN, untied head, no rescale.

The two generations of config.json disagree about the head: files saved by transformers v5 always
say `tie_word_embeddings: true` and carry `scale_decoder_outputs`; v4-era hub files say
`tie_word_embeddings: false` for v1.1 and have no `scale_decoder_outputs`. The rule is transformers':
rescale = scale_decoder_outputs, else tie_word_embeddings; the head is `lm_head.weight` when the file
has one, else the embeddings.
"""

from __future__ import annotations

from tracer.errors import BadInput
from tracer.nn.convert import Converted
from tracer.nn.convert.checkpoint import Checkpoint, build_config, choose, need

FEED_FORWARD = {"relu": "relu", "gated-gelu": "gated_gelu_tanh"}  # gated-gelu means gelu_new (tanh)



def feed_forward(hf: dict) -> str:
    activation = choose(hf, "feed_forward_proj", "relu", FEED_FORWARD)
    if hf.get("feed_forward_proj") == "gated-gelu" and hf.get("dense_act_fn", "gelu_new") != "gelu_new":
        raise BadInput(f"config.json: dense_act_fn {hf['dense_act_fn']!r} is not supported with gated-gelu (only gelu_new)")
    return activation


def convert(hf: dict, weights, extras: dict) -> Converted:
    activation = feed_forward(hf)
    n_enc = need(hf, "num_layers")
    n_dec = hf.get("num_decoder_layers") or n_enc
    vocab, d_model, n_heads = need(hf, "vocab_size"), need(hf, "d_model"), need(hf, "num_heads")
    rescale = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    untied = "lm_head.weight" in weights
    cfg = build_config(
        arch="encoder-decoder", vocab_size=vocab, d_model=d_model, n_heads=n_heads, head_dim=need(hf, "d_kv"),
        d_ff=need(hf, "d_ff"), n_layers=n_enc, n_decoder_layers=n_dec,
        max_positions=hf.get("n_positions") or 512, positional="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="pre", norm_type="rmsnorm_t5", layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=activation, qkv_bias=False, attn_out_bias=False, mlp_bias=False, attn_scale=False,
        scale_embeddings=False, tie_embeddings=not untied, head_scale=d_model ** -0.5 if rescale else 1.0,
    )
    ckpt = Checkpoint(weights, cfg)
    for copy in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        ckpt.same_as(copy, "shared.weight")
    embedding = ckpt.take("shared.weight", (vocab, d_model))
    ckpt.put("encoder.W_E.weight", embedding, "shared.weight")
    ckpt.put("decoder.W_E.weight", embedding, "shared.weight")

    def attention(source: str, name: str) -> None:
        for part in ("q", "k", "v", "o"):
            ckpt.move(f"{source}.{part}.weight", f"{name}.W_{part.upper()}.weight")

    def ffn(source: str, name: str) -> None:
        if activation == "relu":
            ckpt.move(f"{source}.wi.weight", f"{name}.W_in.weight")
        else:
            ckpt.move(f"{source}.wi_0.weight", f"{name}.W_gate.weight")  # the GELU branch
            ckpt.move(f"{source}.wi_1.weight", f"{name}.W_in.weight")    # the linear branch
        ckpt.move(f"{source}.wo.weight", f"{name}.W_out.weight")

    for stack, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        table = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ckpt.put(f"{stack}.rel_pos.W_rel.weight", ckpt.take(table, (cfg.relative_buckets, n_heads)), table)
        for layer in range(n_layers):
            h, b = f"{stack}.block.{layer}.layer", f"{stack}.{layer}"
            attention(f"{h}.0.SelfAttention", f"{b}.attn")
            ckpt.move(f"{h}.0.layer_norm.weight", f"{b}.ln1.weight")
            if stack == "decoder":
                attention(f"{h}.1.EncDecAttention", f"{b}.cross_attn")
                ckpt.move(f"{h}.1.layer_norm.weight", f"{b}.ln2.weight")
                ffn(f"{h}.2.DenseReluDense", f"{b}.mlp")
                ckpt.move(f"{h}.2.layer_norm.weight", f"{b}.ln3.weight")
            else:
                ffn(f"{h}.1.DenseReluDense", f"{b}.mlp")
                ckpt.move(f"{h}.1.layer_norm.weight", f"{b}.ln2.weight")
        ckpt.move(f"{stack}.final_layer_norm.weight", f"{stack}.ln_final.weight")
    if untied:
        ckpt.move("lm_head.weight", "decoder.W_U.weight")
    state = ckpt.finish()
    notes = {"head": "lm", "ignored": ckpt.ignored(), "tied": not untied, "decoder_output_scale": cfg.head_scale,
             "decoder_start_token_id": hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
             **{key: hf.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return Converted(cfg, state, notes)
