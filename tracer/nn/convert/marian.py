"""Marian (MarianMTModel, the opus-mt translation models) -> tracer's encoder-decoder.

The paper's post-norm layout almost exactly: ln1(x + self-attention), (ln2(x + cross-attention),)
then the FFN's norm; no embedding norm, no final stack norm. What differs from the paper:
- one embedding matrix (`model.shared`) for the encoder, the decoder and the tied output, when
  `share_encoder_decoder_embeddings` (most opus-mt models); otherwise the decoder has its own
  vocabulary (`decoder_vocab_size`) and embeddings, which the output is tied to;
- sinusoidal positions in Marian's layout: every frequency's sin in the first half of the vector,
  its cos in the second (not interleaved), from position 0. They are computed, never read; older
  hub files also store them (`embed_positions.weight`), and then they are checked against the table;
- the FFN's activation is usually `swish` (SiLU); the logits get `final_logits_bias`;
- decoding starts from the pad token (`decoder_start_token_id`), and pad is never generated.
"""

from __future__ import annotations

import torch

from tracer.errors import BadInput
from tracer.nn.convert import Converted
from tracer.nn.convert.checkpoint import Checkpoint, build_config, choose, need, refuse
from tracer.nn.model import sinusoidal_table

ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}
POSITION_TOLERANCE = 1e-6  # a stored table is float32; the computed one is rounded to float32 the same way


def convert(hf: dict, weights, extras: dict) -> Converted:
    refuse(hf, {"normalize_before": False, "add_final_layer_norm": False,
                "normalize_embedding": False, "static_position_embeddings": True})
    activation = choose(hf, "activation_function", "gelu", ACTIVATIONS)
    for encoder_key, decoder_key in (("encoder_attention_heads", "decoder_attention_heads"),
                                     ("encoder_ffn_dim", "decoder_ffn_dim")):
        if need(hf, encoder_key) != need(hf, decoder_key):
            raise BadInput(f"config.json: {encoder_key} {hf[encoder_key]} differs from {decoder_key} "
                           f"{hf[decoder_key]}; tracer's stacks share one width")
    vocab = need(hf, "vocab_size")
    shared_embeddings = bool(hf.get("share_encoder_decoder_embeddings", True))
    decoder_vocab = vocab if shared_embeddings else (hf.get("decoder_vocab_size") or vocab)
    if shared_embeddings and hf.get("decoder_vocab_size") not in (None, vocab):
        raise BadInput(f"config.json: decoder_vocab_size {hf['decoder_vocab_size']} differs from vocab_size {vocab}, "
                       "but share_encoder_decoder_embeddings is true")
    tied = bool(hf.get("tie_word_embeddings", True))
    n_enc, n_dec = need(hf, "encoder_layers"), need(hf, "decoder_layers")
    d_model = need(hf, "d_model")
    cfg = build_config(
        arch="encoder-decoder", vocab_size=vocab, d_model=d_model, n_heads=need(hf, "encoder_attention_heads"),
        d_ff=need(hf, "encoder_ffn_dim"), n_layers=n_enc, n_decoder_layers=n_dec,
        max_positions=need(hf, "max_position_embeddings"), positional="sinusoidal", sinusoid_layout="halves",
        norm="post", activation=activation, scale_embeddings=bool(hf.get("scale_embedding", False)),
        tie_embeddings=tied, logits_bias=True, layer_norm_eps=1e-5,
        decoder_vocab_size=None if shared_embeddings else decoder_vocab,
    )
    ckpt = Checkpoint(weights, cfg)
    if shared_embeddings:
        shared = ckpt.first("model.shared.weight", "model.encoder.embed_tokens.weight")
        copies = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight") + (("lm_head.weight",) if tied else ())
        for copy in copies:
            if copy != shared:
                ckpt.same_as(copy, shared)     # older files store the tied copies too
        embedding = ckpt.take(shared, (vocab, d_model))
        ckpt.put("encoder.W_E.weight", embedding, shared)
        ckpt.put("decoder.W_E.weight", embedding, shared)
    else:
        ckpt.put("encoder.W_E.weight", ckpt.take("model.encoder.embed_tokens.weight", (vocab, d_model)),
                 "model.encoder.embed_tokens.weight")
        ckpt.move("model.decoder.embed_tokens.weight", "decoder.W_E.weight")
        if tied:
            ckpt.same_as("lm_head.weight", "model.decoder.embed_tokens.weight")
    if not tied:
        ckpt.move("lm_head.weight", "decoder.W_U.weight")
    bias = ckpt.take("final_logits_bias", (1, decoder_vocab))
    ckpt.put("decoder.b_U", bias[0], "final_logits_bias")
    table = sinusoidal_table(cfg.max_positions, d_model, "halves")
    for stack in ("encoder", "decoder"):
        key = f"model.{stack}.embed_positions.weight"
        if ckpt.has(key):
            stored = ckpt.take(key, tuple(table.shape)).to(torch.float64)
            if float((stored - table.to(torch.float64)).abs().max()) > POSITION_TOLERANCE:
                raise BadInput(f"checkpoint: {key} is not Marian's sinusoid (sin in the first half, cos in the second)")

    def linear(source: str, name: str) -> None:
        ckpt.move(f"{source}.weight", f"{name}.weight")
        ckpt.move(f"{source}.bias", f"{name}.bias")

    def attention(source: str, name: str) -> None:
        for part in ("q", "k", "v"):
            linear(f"{source}.{part}_proj", f"{name}.W_{part.upper()}")
        linear(f"{source}.out_proj", f"{name}.W_O")

    for stack, n_layers in (("encoder", n_enc), ("decoder", n_dec)):
        for layer in range(n_layers):
            h, b = f"model.{stack}.layers.{layer}", f"{stack}.{layer}"
            attention(f"{h}.self_attn", f"{b}.attn")
            linear(f"{h}.self_attn_layer_norm", f"{b}.ln1")
            ffn_norm = f"{b}.ln2"
            if stack == "decoder":
                attention(f"{h}.encoder_attn", f"{b}.cross_attn")
                linear(f"{h}.encoder_attn_layer_norm", f"{b}.ln2")
                ffn_norm = f"{b}.ln3"
            linear(f"{h}.fc1", f"{b}.mlp.W_in")
            linear(f"{h}.fc2", f"{b}.mlp.W_out")
            linear(f"{h}.final_layer_norm", ffn_norm)
    state = ckpt.finish()
    pad = hf.get("pad_token_id")
    notes = {"head": "lm", "ignored": ckpt.ignored(), "tied": tied, "shared_embeddings": shared_embeddings,
             "decoder_start_token_id": hf.get("decoder_start_token_id", pad),
             **{key: hf.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return Converted(cfg, state, notes)
