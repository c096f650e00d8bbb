"""BERT (BertModel, BertForMaskedLM) and sentence-transformers folders -> tracer's post-norm encoder.

Embeddings: word + token type 0 + position, then a layer norm. Each layer is post-norm:
ln1(x + attention(x)), ln2(x + FFN(x)). The head is chosen by what the folder is:
- a sentence-transformers folder (`modules.json`: Transformer, mean Pooling, Normalize): the
  sentence embedding, the mean of the last hidden states over the tokens, L2-normalised;
- BertForMaskedLM / BertForPreTraining (`cls.predictions.*`): the MLM head, dense + activation +
  layer norm, then the decoder tied to the word embeddings, plus a bias;
- BertModel: the pooled output, tanh(W·h[CLS] + b).
Very old checkpoints name layer-norm parameters gamma/beta; `embeddings.position_ids` is a buffer.
"""

from __future__ import annotations

from tracer.errors import BadInput
from tracer.nn.convert import Converted
from tracer.nn.convert.checkpoint import Checkpoint, build_config, choose, need, refuse

ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ST_MODULES = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
              "sentence_transformers.models.Normalize")
OTHER_POOLING = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def sentence_transformers_head(extras: dict) -> bool:
    """True for a supported sentence-transformers folder; refuses any module it cannot compute."""
    modules = extras.get("modules.json")
    if modules is None:
        return False
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise BadInput("modules.json: expected a list of modules")
    types = [m.get("type") for m in modules]
    for kind in types:
        if kind not in ST_MODULES:
            raise BadInput(f"modules.json: module {kind!r} is not supported (only Transformer, Pooling, Normalize)")
    if types != list(ST_MODULES):
        raise BadInput("modules.json: only Transformer, then mean Pooling, then Normalize is supported")
    path = modules[1].get("path") or "1_Pooling"
    pooling = extras.get(f"{path}/config.json")
    if not isinstance(pooling, dict):
        raise BadInput(f"{path}/config.json is missing; it says how sentence-transformers pools the tokens")
    mode = pooling.get("pooling_mode")
    if mode is not None and mode != "mean":
        raise BadInput(f"{path}/config.json: pooling_mode {mode!r} is not supported (only mean)")
    if mode is None and not pooling.get("pooling_mode_mean_tokens"):
        raise BadInput(f"{path}/config.json: only pooling_mode_mean_tokens is supported")
    for key in OTHER_POOLING:
        if pooling.get(key):
            raise BadInput(f"{path}/config.json: {key} is not supported (only mean pooling)")
    return True


def convert(hf: dict, weights, extras: dict) -> Converted:
    refuse(hf, {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False})
    activation = choose(hf, "hidden_act", "gelu", ACTIVATIONS)
    keys = set(weights.keys())
    p = "bert." if any(key.startswith("bert.") for key in keys) else ""
    if sentence_transformers_head(extras):
        head = "sentence"
    elif any(key.startswith("cls.predictions.") for key in keys):
        head = "mlm"
    elif any(key.startswith(f"{p}pooler.") for key in keys):
        head = "pooled"
    else:
        raise BadInput("checkpoint: neither an MLM head (cls.predictions.*) nor a pooler (pooler.dense.*), "
                       "and no modules.json: tracer does not know what this BERT outputs")
    n_layers = need(hf, "num_hidden_layers")
    cfg = build_config(
        arch="encoder", vocab_size=need(hf, "vocab_size"),
        d_model=need(hf, "hidden_size"), n_heads=need(hf, "num_attention_heads"), d_ff=need(hf, "intermediate_size"),
        n_layers=n_layers, max_positions=hf.get("max_position_embeddings", 512), positional="learned",
        norm="post", activation=activation, scale_embeddings=False,
        tie_embeddings=hf.get("tie_word_embeddings", True), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        token_types=hf.get("type_vocab_size", 2), embed_norm=True,
        mlm_head=head == "mlm", logits_bias=head == "mlm",
        output={"sentence": "sentence", "mlm": "logits", "pooled": "pooled"}[head],
    )
    ignore = [rf"{p}embeddings\.position_ids"]                   # a buffer: positions are 0, 1, …
    if head == "mlm":
        ignore += [r"cls\.seq_relationship\..*", rf"{p}pooler\..*"]  # next-sentence head and pooler: not computed
    else:
        ignore += [r"cls\..*"] + ([rf"{p}pooler\..*"] if head == "sentence" else [])
    ckpt = Checkpoint(weights, cfg, ignore)

    def linear(source: str, name: str) -> None:
        ckpt.move(f"{source}.weight", f"{name}.weight")
        ckpt.move(f"{source}.bias", f"{name}.bias")

    def norm(source: str, name: str) -> None:
        ckpt.move(ckpt.first(f"{source}.weight", f"{source}.gamma"), f"{name}.weight")
        ckpt.move(ckpt.first(f"{source}.bias", f"{source}.beta"), f"{name}.bias")

    e = f"{p}embeddings"
    ckpt.move(f"{e}.word_embeddings.weight", "W_E.weight")
    ckpt.move(f"{e}.position_embeddings.weight", "W_pos.weight")
    ckpt.move(f"{e}.token_type_embeddings.weight", "W_token_type.weight")
    norm(f"{e}.LayerNorm", "ln_embed")
    for layer in range(n_layers):
        h, b = f"{p}encoder.layer.{layer}", f"blocks.{layer}"
        for source, part in (("query", "Q"), ("key", "K"), ("value", "V")):
            linear(f"{h}.attention.self.{source}", f"{b}.attn.W_{part}")
        linear(f"{h}.attention.output.dense", f"{b}.attn.W_O")
        norm(f"{h}.attention.output.LayerNorm", f"{b}.ln1")
        linear(f"{h}.intermediate.dense", f"{b}.mlp.W_in")
        linear(f"{h}.output.dense", f"{b}.mlp.W_out")
        norm(f"{h}.output.LayerNorm", f"{b}.ln2")
    if head == "mlm":
        linear("cls.predictions.transform.dense", "mlm_dense")
        norm("cls.predictions.transform.LayerNorm", "ln_mlm")
        ckpt.move("cls.predictions.bias", "b_U")
        ckpt.same_as("cls.predictions.decoder.bias", "cls.predictions.bias")
        if cfg.tie_embeddings:
            ckpt.same_as("cls.predictions.decoder.weight", f"{e}.word_embeddings.weight")
        else:
            ckpt.move("cls.predictions.decoder.weight", "W_U.weight")
    elif head == "pooled":
        linear(f"{p}pooler.dense", "pooler.dense")
    state = ckpt.finish()
    notes = {"head": head, "ignored": ckpt.ignored(),
             **{key: hf.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    return Converted(cfg, state, notes)
