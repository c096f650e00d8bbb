"""Plain words for every kind of step: what it computes, the formula with this step's real
sizes, which recorded steps it was computed from, and what one cell of it means (no Textual).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracer.input_notes import unfamiliar_note, unmasked_note
from tracer.trace import Step, Trace, anatomy
from tracer.trace.step import kv_columns, row_axis
from tracer.tui.view.outline import quoted
from tracer.tui.view.heads import head_name
from tracer.tui.view.picture import Picture, format_number

ATTENTION_SCORES = ("attn_raw", "attn_scaled", "attn_scores", "pattern")
BUCKET_PICTURE_DISTANCES = (0, 1, 2, 4, 8, 9, 12, 16, 24, 32, 64, 128)  # where the bucket picture samples key − query
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def sub(number: int) -> str:
    return str(number).translate(_SUBSCRIPT)


@dataclass
class Explanation:
    title: str
    words: str
    formula: str
    inputs: list[str] = field(default_factory=list)
    worked: str = ""   # the formula worked through with the selected cell's own numbers ("" where none)


@dataclass
class Context:
    """What a step's words are made of: its sizes, where it sits, and the steps it came from."""

    step: Step
    trace: Trace
    config: dict
    inputs: list[str]
    shape: tuple[int, ...]
    n: int          # the first axis's length (positions, mostly)
    d: int          # d_model
    H: int          # heads
    dh: int         # d_head
    dff: object     # d_ff (the string "d_ff" if the config does not say)
    cross: bool     # a cross-attention step
    decoder_side: bool
    where: str      # which attention: "self-attention", "masked self-attention", "cross-attention"

    @classmethod
    def of(cls, step: Step, trace: Trace) -> "Context":
        config = trace.model.get("config", {})
        shape = step.shape
        d = config.get("d_model") or (shape[-1] if shape else 0)
        H = config.get("n_heads") or 1
        cross = step.component == "cross_attn"
        decoder_side = step.stack == "decoder" or trace.arch == "decoder"
        where = "cross-attention" if cross else "masked self-attention" if decoder_side else "self-attention"
        dh = config.get("head_dim") or (d // H if H else d)   # Llama-family models may set d_head apart
        return cls(step, trace, config, inputs_of(step, trace), shape, shape[0] if shape else 0, d, H,
                   dh, config.get("d_ff", "d_ff"), cross, decoder_side, where)


def inputs_of(step: Step, trace: Trace) -> list[str]:
    """The recorded steps this one was computed from, in the same forward pass (the anatomy's dataflow)."""
    return [step_id for step_id in anatomy.sources(step.id, trace) if step_id]


# Hugging Face families whose attention projections have no bias (or only Q/K/V's); tracer's own
# models, GPT-2 and BERT have all four (nn.Linear's default).
_NO_ATTENTION_BIAS = {"llama": (False, False), "mistral": (False, False), "qwen2": (True, False)}


def attention_biases(trace: Trace) -> tuple[bool, bool]:
    """(Q/K/V projections have a bias, the output projection W_O has one) for this trace's model."""
    config = trace.model.get("config") or {}
    if isinstance(config, dict) and "qkv_bias" in config:  # what the model was built with (tracer.nn.config)
        return bool(config["qkv_bias"]), bool(config.get("attn_out_bias", True))
    source = trace.model.get("source")
    model_type = source.get("model_type") if isinstance(source, dict) else None
    return _NO_ATTENTION_BIAS.get(model_type, (True, True))


def _size(*dims) -> str:
    return "×".join(str(d) for d in dims)


# -- the words, one function per explanation key (tracer.trace.anatomy gives each kind's key) --

def _tokens(c: Context):
    if c.step.decode_step is None:
        words = ("The text is cut into pieces the model has a vocabulary entry for, and each piece becomes "
                 "an integer id. These ids are all the model ever sees of the text.")
        return "Tokenize", words, f"text → {c.n} tokens → {c.n} ids"
    words = (f"The decoder's input at step {c.step.decode_step}: the start token and every token chosen "
             "so far. The decoder re-reads this whole prefix at every step and predicts what comes next.")
    return "Tokenize", words, f"{c.n} tokens → {c.n} ids"


def _embed(c: Context):
    n, d = c.n, c.d
    words = ("Each token id picks one row of the embedding table E: a learned vector of "
             f"{d} numbers that stands for the token.")
    formula = f"E[ids]: ({n}) ids → {_size(n, d)}"
    if c.config.get("scale_embeddings", True):
        words += " As in the paper, it is multiplied by √d_model so it is not drowned out by the positions."
        formula += f", × √{d} = × {math.sqrt(d):.2f}"
    return "Token embedding", words, formula


def _pos_embed(c: Context):
    n, d = c.n, c.d
    if c.config.get("positional") == "learned":
        words = "Attention alone ignores word order, so each position has a learned vector that is added to the token's."
        return "Positional encoding", words, f"W_pos[0:{n}] → {_size(n, d)}, added to the embedding"
    words = ("Attention alone ignores word order, so each position gets a fixed pattern of sines and "
             "cosines at different frequencies, added to the token's embedding.")
    if c.config.get("sinusoid_layout") == "halves":
        words += (" Marian lays the numbers out differently from the paper: the sines of every frequency fill "
                  "the first half of the vector and the cosines the second half, instead of alternating.")
        return ("Positional encoding (Marian's layout)", words,
                f"PE(pos, i) = sin(pos / 10000^(2i/{d})), PE(pos, {d // 2}+i) = cos(…), i < {d // 2} → {_size(n, d)}")
    return "Positional encoding", words, f"PE(pos, 2i) = sin(pos / 10000^(2i/{d})), PE(pos, 2i+1) = cos(…) → {_size(n, d)}"


def _resid_pre(c: Context):
    layer, n, d = c.step.layer, c.n, c.d
    if layer == 0 and c.config.get("embed_norm"):
        words = ("What enters the first layer: the token, token-type and position embeddings added up and "
                 "layer-normalised (BERT), one vector per position.")
        return f"Input to layer {layer}", words, f"x = LN(embedding + token type + positions): {_size(n, d)}"
    if layer == 0 and c.config.get("positional") == "rotary":
        words = ("What enters the first layer: the token embedding, one vector per position. Positions come in "
                 "later, inside attention, by rotating the queries and keys (RoPE).")
        return f"Input to layer {layer}", words, f"x = embedding: {_size(n, d)}"
    if layer == 0:
        words = "What enters the first layer: token embedding plus positional encoding, one vector per position."
        return f"Input to layer {layer}", words, f"x = embedding + positions: {_size(n, d)}"
    words = (f"What enters layer {layer}: the output of layer {layer - 1}. This running vector "
             "per position is the residual stream every sub-layer reads from and adds to.")
    return f"Input to layer {layer}", words, f"x: {_size(n, d)}"


def _qkv(c: Context):
    kind, n, d, H, dh = c.step.kind, c.n, c.d, c.H, c.dh
    role = {"q": ("Queries", "what each position is looking for"),
            "k": ("Keys", "what each position offers to be found by"),
            "v": ("Values", "what each position hands over when it is attended to")}[kind]
    words = f"{role[0]}: {role[1]}. x is multiplied by W_{kind.upper()} and split into {H} heads of {dh} numbers. "
    words += {
        "q": (f"Why several heads: each has its own slice of W_Q, W_K and W_V, so each can follow a different "
              f"relation (the word before, the subject, the word being translated) in its own {dh}-number "
              f"subspace, all at once, for the cost of one {d}-wide head."),
        "k": f"Each head's keys are compared only with the same head's queries: {H} separate comparisons of {dh} numbers.",
        "v": f"Each head hands over its own {dh}-number slice; the heads' results are put side by side later (concat).",
    }[kind]
    if c.cross:
        words += (" In cross-attention the queries come from the decoder (what the next word needs) and the keys "
                  "and values from the encoder's output (the source sentence).")
    Hkv = _gqa(c)
    if Hkv and kind in ("k", "v"):
        H = Hkv
        words = (f"{role[0]}: {role[1]}. Grouped-query attention: there are only {Hkv} key/value heads for "
                 f"{c.H} query heads, so each is computed once and shared ({_kv_groups(c.H, Hkv)}). "
                 "That makes the cache of keys and values smaller at the same number of query heads.")
    elif Hkv:
        words += f" Their keys and values are shared in groups of {c.H // Hkv} (grouped-query attention)."
    bias = f" + b_{kind.upper()}" if attention_biases(c.trace)[0] else ""
    formula = f"{kind.upper()} = x·W_{kind.upper()}{bias}: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)} = {n}×{H} heads×{dh}"
    if H * dh != d:
        formula = f"{kind.upper()} = x·W_{kind.upper()}{bias}: ({_size(n, d)})·({_size(d, H * dh)}) → {n}×{H} heads×{dh}"
    return f"{role[0]} ({c.where})", words, formula


def _kv_groups(H: int, Hkv: int) -> str:
    """Which query heads share each key/value head, counted from 1 as the head picker does:
    "query heads 1–2 share key/value head 1, …"."""
    g = H // Hkv
    parts = [f"query heads {j * g + 1}–{j * g + g} share key/value head {j + 1}" if g > 1 else
             f"query head {j + 1} has key/value head {j + 1}" for j in range(Hkv)]
    return ", ".join(parts[:3]) + (", …" if Hkv > 3 else "")


def _gqa(c: Context) -> int | None:
    """The number of key/value heads when fewer than the query heads (grouped-query attention)."""
    Hkv = c.config.get("n_kv_heads")
    return Hkv if Hkv and Hkv != c.H and not c.cross else None


def _rotary(c: Context):
    words = ("RoPE rotates pairs of numbers in each query and key by an angle that grows with the position, "
             "so Q·K depends on how far apart two positions are.")
    return (f"Rotary position embedding ({'Q' if c.step.kind == 'rot_q' else 'K'})", words,
            f"rotate pairs by pos·θᵢ: {_size(*c.shape)}")


def _query_key(c: Context) -> tuple[int, int]:
    shape = c.shape
    return (shape[-2], shape[-1]) if len(shape) >= 2 else (c.n, c.n)


def _attn_raw(c: Context):
    Tq, Tk = _query_key(c)
    words = ("Every query is compared with every key by a dot product: one score per (query, key) pair "
             "and head. A large score means 'this key is what I am looking for'.")
    return f"Q·Kᵀ ({c.where})", words, f"Q·Kᵀ: ({_size(Tq, c.dh)})·({_size(c.dh, Tk)}) → {_size(Tq, Tk)} per head, {c.H} heads"


def _attn_scaled(c: Context):
    Tq, Tk = _query_key(c)
    words = ("The scores are divided by √d_head. Why: a dot product of d_k numbers of unit variance has "
             f"variance d_k (here {c.dh}), so raw scores spread ~√d_k = {math.sqrt(c.dh):.1f} times wider; dividing brings "
             "them back to unit spread and keeps softmax from saturating on one key (where it stops learning).")
    return f"Scale by √dₖ ({c.where})", words, f"Q·Kᵀ ÷ √{c.dh} = ÷ {math.sqrt(c.dh):.2f}: {_size(Tq, Tk)} per head"


def _attn_bias(c: Context):
    Tq, Tk = _query_key(c)
    decoder = c.decoder_side and not c.cross
    buckets = c.config.get("relative_buckets", 32)
    per_side = buckets if decoder else buckets // 2
    exact = per_side // 2
    words = ("T5 has no positional encoding: the embeddings carry no position at all. Instead each head adds a "
             "learned number to every score that depends only on how far the key is from the query (key − "
             "query), so attention can prefer nearby or distant words. Distances share buckets: "
             f"{exact} exact ones (0…{exact - 1}), then ever wider, log-spaced ones up to "
             f"{c.config.get('relative_max_distance', 128)}, beyond which all distances share the last bucket. ")
    words += ("The decoder's buckets are one-directional: all of them count keys before the query (a later key "
              "is masked anyway and shares bucket 0). One table serves all the stack's layers."
              if decoder else
              "The encoder's buckets are bidirectional: half for keys before the query, half for keys after it. "
              "One table serves all the stack's layers.")
    picture = _bucket_picture(decoder, buckets, c.config.get("relative_max_distance", 128))
    return (f"Relative position bias ({c.where})", words + " Buckets by distance back: " + picture,
            f"scores = Q·Kᵀ + bias[head, bucket(key − query)]: {_size(Tq, Tk)} per head")


def _bucket_picture(decoder: bool, buckets: int, max_distance: int) -> str:
    """`distance→bucket` pairs for keys before the query, e.g. `0→0 1→1 … 9→8 12→9`."""
    from tracer.trace.check import relative_buckets  # check loads when a T5 bias is explained, not at start-up

    distances = np.array(BUCKET_PICTURE_DISTANCES)
    found = relative_buckets(-distances, not decoder, buckets, max_distance)
    return " ".join(f"{d}→{b}" for d, b in zip(distances.tolist(), found.tolist())) + "."


def _mask(c: Context):
    Tq, Tk = _query_key(c)
    title = f"Attention mask ({c.where})"
    window, layers = c.config.get("sliding_window"), c.config.get("sliding_layers")
    if c.decoder_side and not c.cross and isinstance(window, int) and (layers is None or c.step.layer in layers):
        words = ("Which keys each query may look at (lit = allowed, ░ = forbidden). The decoder may not look "
                 f"ahead, and this layer attends through a sliding window: query i sees only the last {window} "
                 f"keys, i − {window - 1}…i. Older tokens reach it only through earlier layers.")
        return title, words, f"allowed(i, j) = i − {window} < j ≤ i: {_size(Tq, Tk)}"
    if c.decoder_side and not c.cross:
        words = ("Which keys each query may look at (lit = allowed, ░ = forbidden). The decoder may not look "
                 "ahead: query i sees keys 0…i only, so it cannot read the answer it is predicting.")
        return title, words, f"allowed(i, j) = j ≤ i: {_size(Tq, Tk)}"
    words = ("Which keys each query may look at (lit = allowed, ░ = forbidden). With one sentence there "
             "is no padding, so every key is allowed.")
    return title, words, f"allowed(i, j) = key j is not padding: {_size(Tq, Tk)}"


def _attn_scores(c: Context):
    Tq, Tk = _query_key(c)
    words = "Forbidden (query, key) pairs are set to −∞, shown as ░, so softmax gives them exactly zero weight."
    return f"Masked scores ({c.where})", words, f"scores = scaled where mask, else −∞: {_size(Tq, Tk)} per head"


def _pattern(c: Context):
    Tq, Tk = _query_key(c)
    words = ("Softmax along each row turns scores into weights that are positive and sum to 1: how much "
             "each query position takes from each key position.")
    return (f"Softmax: attention weights ({c.where})", words,
            f"softmax over keys: exp(sᵢⱼ) / Σⱼ exp(sᵢⱼ), {_size(Tq, Tk)} per head, rows sum to 1")


def _z(c: Context):
    v_id = c.inputs[-1] if c.inputs else None
    Tk = c.trace.step(v_id).shape[0] if v_id else "Tk"
    words = ("Each query position's output for each head: the average of the value vectors, weighted by "
             "the softmax weights.")
    return f"Weights · V ({c.where})", words, f"pattern·V: ({_size(c.n, Tk)})·({_size(Tk, c.dh)}) → {_size(c.n, c.dh)} per head"


def _concat(c: Context):
    H, dh = c.H, c.dh
    words = (f"The {H} heads' outputs are placed side by side: {H} × {dh} = {H * dh} numbers per position. "
             f"Several narrow heads instead of one wide one let the layer gather by {H} relations at once, each "
             "in its own subspace, at the same cost; W_O then mixes what they found.")
    return f"Concatenate heads ({c.where})", words, f"[head₀ … head{sub(H - 1)}]: {c.n}×{H}×{dh} → {_size(c.n, H * dh)}"


def _attn_out(c: Context):
    n, d = c.n, c.d
    title = "Output projection" + (" (cross-attention)" if c.step.kind == "cross_attn_out" else "")
    words = "A learned matrix W_O mixes the heads back together into the residual stream's dimensions."
    bias = " + b_O" if attention_biases(c.trace)[1] else ""
    return title, words, f"concat·W_O{bias}: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)}"


def _residual(c: Context):
    n, d = c.n, c.d
    what = {"resid_mid": "self-attention", "resid_mid_cross": "cross-attention", "resid_post": "feed-forward network"}[c.step.kind]
    words = (f"The {what}'s output is added to its input, so what came before flows past the sub-layer "
             "unchanged and the sub-layer only has to learn a correction.")
    return f"Residual add after the {what}", words, f"x + sublayer(x): {_size(n, d)} + {_size(n, d)} → {_size(n, d)}"


def _normalized(c: Context):
    component = c.step.component
    titles = {"ln_final": "Final layer norm", "ln_embed": "Embedding layer norm", "ln_mlm": "MLM head: layer norm"}
    title = titles.get(component, f"Layer norm ({component})")
    eps = c.config.get("layer_norm_eps", 1e-5)
    if anatomy.is_rms_norm(c.config, component):
        title = title.replace("Layer norm", "RMSNorm").replace("layer norm", "RMSNorm")
        words = ("RMSNorm: each position's vector is divided by its root mean square, so its numbers have "
                 "mean square 1, then scaled by a learned weight g. Unlike a layer norm it does not subtract "
                 "the mean and has no shift. As in transformers, it is computed in float32 whatever the "
                 "model's dtype.")
        return title, words, f"x / √(mean(x²) + {eps:g}) · g over {c.d} numbers, for each of {c.n} positions"
    words = ("Each position's vector is shifted to mean 0 and scaled to variance 1, then scaled and shifted "
             "by learned γ and β. It keeps the numbers in a steady range from layer to layer.")
    if component == "ln_embed":
        words += " BERT normalises the summed embeddings this way before the first layer."
    return title, words, f"(x − mean) / √(var + {eps:g}) · γ + β over {c.d} numbers, for each of {c.n} positions"


def _pre(c: Context):
    n, d, dff = c.n, c.d, c.dff
    words = (f"Each position on its own is projected up from {d} to {dff} numbers: the network gets room to "
             "compute features of the token in its context.")
    return "Feed-forward: first linear layer", words, f"x·W_in + b: ({_size(n, d)})·({_size(d, dff)}) → {_size(n, dff)}"


def _pre_linear(c: Context):
    n, d, dff = c.n, c.d, c.dff
    words = "The second projection of SwiGLU; the gate multiplies it element by element."
    return "Feed-forward: value branch (SwiGLU)", words, f"x·W_in + b: ({_size(n, d)})·({_size(d, dff)}) → {_size(n, dff)}"


def _post(c: Context):
    n, dff = c.n, c.dff
    activation = c.config.get("activation", "relu")
    name = {"relu": "ReLU", "gelu": "GELU", "gelu_tanh": "GELU, tanh approximation", "swiglu": "SwiGLU"}.get(activation, activation)
    explain_act = {
        "relu": "ReLU keeps positive numbers and turns negatives into 0.",
        "gelu": "GELU is a smooth ReLU: negatives are squashed towards 0, positives kept.",
        "gelu_tanh": ("GELU is a smooth ReLU: negatives are squashed towards 0, positives kept; GPT-2 computes "
                      "it with a tanh approximation of Φ."),
        "swiglu": "SwiGLU gates one projection with SiLU of the other, element by element.",
    }.get(activation, "")
    words = explain_act + " It is the layer's non-linearity: without it the two linear layers would collapse into one."
    formula = {"relu": f"max(0, pre): {_size(n, dff)}", "gelu": f"pre·Φ(pre): {_size(n, dff)}",
               "gelu_tanh": f"½·pre·(1 + tanh(√(2/π)·(pre + 0.044715·pre³))): {_size(n, dff)}",
               "swiglu": f"SiLU(gate) ⊙ value: {_size(n, dff)}"}.get(activation, f"{_size(n, dff)}")
    return f"Feed-forward: activation ({name})", words, formula


def _mlp_out(c: Context):
    n, d, dff = c.n, c.d, c.dff
    words = f"Back down from {dff} to {d} numbers per position, ready to be added to the residual stream."
    return "Feed-forward: second linear layer", words, f"post·W_out + b: ({_size(n, dff)})·({_size(dff, d)}) → {_size(n, d)}"


def _logits(c: Context):
    n, d, shape = c.n, c.d, c.shape
    V = shape[-1] if shape else "V"
    if c.trace.arch == "encoder" and c.config.get("mlm_head"):
        words = ("BERT's MLM head: each position's vector, after the MLM transform (dense, activation, layer "
                 "norm), is compared with every token's embedding (the decoder is tied to them), and a learned "
                 "bias per token is added: one score per vocabulary token.")
        return "Logits", words, f"h·Eᵀ + b: ({_size(n, d)})·({_size(d, V)}) → {_size(*shape)}"
    if c.trace.arch == "encoder":
        words = "Every position's final vector is compared with every token's embedding: one score per vocabulary token."
        return "Logits", words, f"x·Eᵀ: ({_size(n, d)})·({_size(d, V)}) → {_size(*shape)}"
    words = ("The last position's final vector is compared with every token's embedding by a dot product: "
             "one score per token in the vocabulary. Higher means more likely next.")
    return "Logits", words, f"x_last·Eᵀ: ({d})·({_size(d, V)}) → {V}"


def _probs(c: Context):
    step = c.step
    V = c.shape[-1] if c.shape else "V"
    title = "Next-token probabilities"
    chosen = step.extra.get("chosen")
    words = "Softmax over the vocabulary turns the logits into probabilities that sum to 1."
    if chosen:
        words += f" Greedy decoding picks the most likely token: {quoted(chosen['token'])}."
    if step.extra.get("predictions"):
        title = "Masked-token predictions"
        words += " At each masked position the most likely token fills the gap."
    return title, words, f"softmax(logits) over {V} tokens"


def _lens_probs(c: Context):
    step, V, d = c.step, c.shape[-1] if c.shape else "V", c.d
    norm = c.config.get("norm") == "pre"
    through = "the final layer norm and then the unembedding" if norm else "the unembedding"
    words = (f"The logit lens: what layer {step.layer}'s output would predict if it were the last layer, "
             f"sent through {through} and a softmax. Watch at which layer the chosen token comes out on top.")
    top = step.extra.get("top_k")
    if top:
        words += f" Here the most likely token is {quoted(top[0]['token'])} ({top[0]['prob']:.3f})."
    formula = f"softmax({'LN_final(x)' if norm else 'x'}·W_Uᵀ): ({d})·({_size(d, V)}) → {V}"
    return f"Logit lens, layer {step.layer}", words, formula


def _token_type_embed(c: Context):
    words = ("BERT was trained on pairs of sentences and adds a learned vector saying which sentence a token "
             "belongs to (its token type, or segment). With one text every token is type 0, so the same row "
             "is added at every position.")
    return "Token-type embedding", words, f"W_type[0] at each of {c.n} positions → {_size(c.n, c.d)}"


def _mlm_dense(c: Context):
    words = ("BERT's masked-LM head starts with its own dense layer over each position's final vector, "
             "before the activation, a layer norm and the comparison with the vocabulary.")
    return "MLM head: dense", words, f"h·W + b: ({_size(c.n, c.d)})·({_size(c.d, c.d)}) → {_size(c.n, c.d)}"


def _mlm_act(c: Context):
    name = {"gelu": "GELU", "gelu_tanh": "GELU (tanh approximation)", "relu": "ReLU"}.get(c.config.get("activation"), "the activation")
    words = f"The MLM head's non-linearity, {name}, element by element; its layer norm (ln_mlm) comes next."
    return "MLM head: activation", words, f"{name}(dense): {_size(c.n, c.d)}"


def _pooler_out(c: Context):
    words = ("BertModel's pooled output: the final vector of the first token ([CLS]) through a dense layer "
             "and tanh. It is one vector for the whole text, the input BERT's sentence classifiers were trained on.")
    return "Pooled output ([CLS])", words, f"tanh(W·h[CLS] + b): ({c.d}) → ({c.d})"


def _mean_pooled(c: Context):
    words = ("sentence-transformers' pooling: the final vectors of all the tokens are averaged, one vector "
             "for the whole text.")
    tokens = c.trace.step(c.inputs[0]).shape[0] if c.inputs else "T"
    return "Mean pooling", words, f"mean over the {tokens} tokens of h: ({_size(tokens, c.d)}) → ({c.d})"


def _sentence_embedding(c: Context):
    words = ("The mean is divided by its length, so every sentence embedding has length 1; comparing two "
             "texts is then a dot product (their cosine similarity).")
    return "Sentence embedding", words, f"m / ‖m‖₂: ({c.d}) → ({c.d}), length 1"


def _generic(c: Context):
    """A kind without words of its own (e.g. from a newer tracer): what can be said of any tensor."""
    return c.step.kind, "A recorded intermediate value.", _size(*c.shape)


# -- a training trace's steps (tracer finetune) --------------------------------------------------

def _training(c: Context) -> dict:
    training = c.trace.output.get("training")
    return training if isinstance(training, dict) else {}


def _optimizer(c: Context) -> tuple[float, float, float, float, float]:
    """lr, β₁, β₂, ε, weight decay of the run (AdamW's defaults where the trace does not say)."""
    found = _training(c).get("optimizer") or {}
    betas = found.get("betas") or (0.9, 0.999)
    return (found.get("lr", 1e-3), betas[0], betas[1], found.get("eps", 1e-8), found.get("weight_decay", 0.01))


def _t(c: Context) -> int:
    return c.step.extra.get("adam_t") or c.step.train_step or 1


def _cls(c: Context):
    words = ("The encoder's final vector at position 0 — BERT's [CLS] token, or the first token when the "
             "tokenizer adds none. Attention let it read the whole text; the classification head reads only it.")
    return "Classification input h₀", words, f"h₀: {c.shape[0] if c.shape else c.d} numbers"


def _class_logits(c: Context):
    labels = (c.step.labels or {}).get("label") or []
    words = (f"A new linear layer scores each class ({', '.join(map(quoted, labels))}) from h₀. It started "
             "random; training moves it, and the encoder under it, towards the example's label.")
    return "Class scores", words, f"W·h₀ + b: ({_size(len(labels) or '?', c.d)})·({c.d}) → {len(labels) or '?'}"


def _class_probs(c: Context):
    return "Class probabilities", "Softmax turns the class scores into probabilities that sum to 1.", \
        f"softmax(scores) over {c.shape[0] if c.shape else '?'} classes"


def _targets(c: Context):
    words = ("What each position of the loss must predict: with teacher forcing, the decoder reads the right "
             "answer up to each position and is scored on the next token; a classifier on the one label.")
    return "Targets", words, f"{c.n} target(s)"


def _token_losses(c: Context):
    words = ("Cross-entropy at each position: minus the log of the probability the model gave the target. "
             "Near 0 where it was already sure of the right token, large where the target surprised it.")
    return "Loss per position", words, "−log softmax(logits)[target], at each of " + f"{c.n} positions"


def _loss(c: Context):
    training = _training(c)
    words = "The number training makes smaller: the mean of the per-position losses."
    if "loss_after" in training:
        words += f" This run took it from {training['loss_before']:.4f} to {training['loss_after']:.4f}."
    return "Loss", words, "L = mean(−log p(target))"


def _lora(c: Context):
    lora = _training(c).get("lora") or {}
    rank, scale = lora.get("rank", "r"), lora.get("scale", "α/r")
    words = (f"LoRA: the projection's weight W is frozen; beside it a low-rank path A (rank {rank}) then B "
             f"adds (α/r)·B·A·x, scale {scale}. B starts at zero, so at step 1 the path adds nothing — and, "
             "since the gradient reaching A passes through B, A's gradient is exactly zero; only B moves at first.")
    what = {"base_out": "Frozen projection W·x + b", "lora_a": "LoRA down-projection A·x", "lora_b": "LoRA up-projection B·A·x",
            "lora_out": "LoRA correction × α/r", "adapted_out": "Projection output: frozen + low-rank"}[c.step.kind]
    return what, words, f"W·x + b + {scale}·B·(A·x), A: {rank}×d_in, B: d_out×{rank}"


def _grad_words(c: Context, words: str, formula: str):
    of = c.step.kind.removesuffix(".grad")
    return f"∂L/∂ {anatomy.kind_of(of).label}", words, formula


def _grad(c: Context):
    words = ("The gradient of the loss with respect to this tensor: how much the loss would change per unit "
             "change of each number. The chain rule computes it from the gradient of the step after it, "
             "times that step's local derivative — so the backward pass runs from the loss towards the input.")
    return _grad_words(c, words, f"∂L/∂x = ∂L/∂y · ∂y/∂x: {_size(*c.shape)}")


def _grad_logits(c: Context):
    n = c.shape[0] if len(c.shape) > 1 else 1
    words = ("The first gradient of the backward pass. For cross-entropy over a softmax it is simply the "
             "predicted probabilities minus the one-hot target, divided by the number of positions the loss "
             "averages: negative at the target (raising its score lowers the loss), positive at every other "
             "token, in proportion to the probability it took.")
    return _grad_words(c, words, f"∂L/∂logits = (softmax(logits) − one-hot(target)) / {n}")


def _grad_residual(c: Context):
    words = ("The chain rule at a residual add y = x + f(x): a sum passes its gradient to both inputs "
             "unchanged, so the sub-layer's output gets exactly the gradient of the sum, and the stream "
             "below gets it too, plus what flows back through the sub-layer. This skip path carries the "
             "gradient straight down to the first layers.")
    return _grad_words(c, words, "∂L/∂f(x) = ∂L/∂y,  ∂L/∂x = ∂L/∂y + ∂L/∂y · ∂f/∂x")


def _grad_pattern(c: Context):
    words = ("The gradient at the attention weights: z = P·V, so each weight's gradient is the dot product of "
             "the gradient at z (its query's row) with the value vector of its key.")
    return _grad_words(c, words, "∂L/∂P[h, q, k] = ∂L/∂z[q, h] · V[k, h]")


def _grad_scores(c: Context):
    words = ("Back through the softmax: each score's gradient is its weight times (its own gradient minus the "
             "row's weighted mean). A masked score had weight 0, so it gets gradient 0 — the mask also "
             "blocks learning from the future.")
    return _grad_words(c, words, "∂L/∂s = P ⊙ (∂L/∂P − Σₖ P·∂L/∂P)")


def _param_value(c: Context):
    return "Weight before the update", "A trained weight as this step's forward pass used it.", _size(*c.shape)


def _param_grad(c: Context):
    words = ("dL/dW: the gradient of the loss with respect to this weight, summed over every position that "
             "used it (a tied embedding adds both its uses, as input and as output layer). AdamW reads it next.")
    return "Weight gradient ∂L/∂W", words, _size(*c.shape)


def _adam_m(c: Context):
    _, beta1, _, _, _ = _optimizer(c)
    words = (f"AdamW's first moment: a running average of the gradient (β₁ = {beta1:g}), so the step follows "
             "the direction the gradient keeps pointing and noise averages out. It starts at zero.")
    return "First moment m", words, f"m = {beta1:g}·m + {1 - beta1:g}·g"


def _adam_v(c: Context):
    _, _, beta2, _, _ = _optimizer(c)
    words = (f"AdamW's second moment: a running average of the squared gradient (β₂ = {beta2:g}), a measure "
             "of each weight's typical gradient size. It starts at zero.")
    return "Second moment v", words, f"v = {beta2:g}·v + {1 - beta2:g}·g²"


def _adam_hat(c: Context):
    _, beta1, beta2, _, _ = _optimizer(c)
    t, first = _t(c), c.step.kind == "adam_m_hat"
    beta, name = (beta1, "m") if first else (beta2, "v")
    words = (f"Both moments start at zero, so early on they are too small; dividing by 1 − β^t undoes that. "
             f"At step {t} the divisor is {1 - beta ** t:.6g}.")
    return f"Bias-corrected {name}̂", words, f"{name}̂ = {name} / (1 − {beta:g}^{t})"


def _adam_step(c: Context):
    lr, _, _, eps, _ = _optimizer(c)
    words = ("Each weight moves by the learning rate times its corrected mean gradient over the root of its "
             "corrected mean squared gradient. At step 1, m̂ = g and v̂ = g², so the step is −lr·g/|g|: every "
             f"weight with a gradient moves by about lr = {lr:g}, whatever the size of its gradient.")
    return "Adam step", words, f"step = −{lr:g} · m̂ / (√v̂ + {eps:g})"


def _param_new(c: Context):
    lr, _, _, _, decay = _optimizer(c)
    words = (f"The weight after the update: first shrunk a little towards zero by the decoupled weight decay "
             f"(× {1 - lr * decay:.6g}), then moved by the Adam step. The next training step's forward pass uses it.")
    return "Weight after the update", words, f"W = W·(1 − {lr:g}·{decay:g}) + step"


WORDS = {
    "tokens": _tokens, "embed": _embed, "pos_embed": _pos_embed, "resid_pre": _resid_pre,
    "qkv": _qkv, "rotary": _rotary, "attn_raw": _attn_raw, "attn_scaled": _attn_scaled, "mask": _mask,
    "attn_bias": _attn_bias,
    "attn_scores": _attn_scores, "pattern": _pattern, "z": _z, "concat": _concat, "attn_out": _attn_out,
    "residual": _residual, "normalized": _normalized, "pre": _pre, "pre_linear": _pre_linear, "post": _post,
    "mlp_out": _mlp_out, "logits": _logits, "probs": _probs,
    "token_type_embed": _token_type_embed, "mlm_dense": _mlm_dense, "mlm_act": _mlm_act, "pooler_out": _pooler_out,
    "mean_pooled": _mean_pooled, "sentence_embedding": _sentence_embedding,
    # a training trace's
    "cls": _cls, "class_logits": _class_logits, "class_probs": _class_probs, "targets": _targets,
    "token_losses": _token_losses, "loss": _loss, "lora": _lora, "grad": _grad, "grad_logits": _grad_logits,
    "grad_residual": _grad_residual, "grad_pattern": _grad_pattern, "grad_scores": _grad_scores,
    "param_value": _param_value, "param_grad": _param_grad, "adam_m": _adam_m, "adam_v": _adam_v,
    "adam_hat": _adam_hat, "adam_step": _adam_step, "param_new": _param_new,
    "lens_probs": _lens_probs,
}
"""Explanation key (a kind's `explanation` in tracer.trace.anatomy) -> (title, words, formula)."""


def explain(step: Step, trace: Trace, picture: Picture | None = None, cell: tuple[int, int] | None = None) -> Explanation:
    """What this step computes, in words and as a formula with its real sizes; with the picture
    and a cell, the formula worked through for that cell where the kind has one (WORKED)."""
    context = Context.of(step, trace)
    words = WORDS.get(anatomy.kind_of(step.kind).explanation, _generic)
    title, text, formula = words(context)
    # where the input first appears and where the prediction is made: what the model made of it
    note = (unfamiliar_note(trace) if step.kind == "tokens" and step.decode_step is None
            else unmasked_note(trace) if step.kind == "probs" else None)
    if note:
        text += f" Note: {note}."
    if step.cached:
        text = f"{text}\n\n{kv_cache_words(step)}"
    worked = ""
    if picture is not None and cell is not None and step.kind in WORKED and picture.valid(*cell):
        with np.errstate(all="ignore"):
            worked = WORKED[step.kind](context, picture, *cell) or ""
    return Explanation(title, text, formula, context.inputs, worked)


# -- a cell worked through with its own numbers -----------------------------------------------
def _n(value: float) -> str:
    return format_number(float(value), 10).replace("-", "−")


def _worked_pos_embed(c: Context, picture: Picture, row: int, col: int) -> str:
    value = float(c.step.data[picture.index(row, col)])
    if c.config.get("positional") != "sinusoidal":
        return f"W_pos[{row}, {col}] = {_n(value)}: a learned number, no formula behind it"
    d = c.d
    i2 = col - col % 2  # the even index 2i of the sin/cos pair this column belongs to
    angle = row / 10000 ** (i2 / d)
    fn, computed = ("sin", math.sin(angle)) if col % 2 == 0 else ("cos", math.cos(angle))
    return (f"PE({row}, {col}) = {fn}({row} / 10000^({i2}/{d})) = {fn}({angle:.3f}) = {_n(computed)}"
            f"   (recorded {_n(value)})")


def _worked_attn_scaled(c: Context, picture: Picture, row: int, col: int) -> str:
    """The cell's score scaled and not, and the softmax weight each would give it."""
    if picture.head is None:
        return ""
    raw_id = next((step_id for step_id in c.inputs if step_id.split("@")[0].endswith("hook_attn_raw")), None)
    if raw_id is None:
        return ""
    raw = np.asarray(c.trace[raw_id][picture.head, row], dtype=np.float64)
    place = anatomy.Place.of(c.step.id, c.trace)
    mask_id = anatomy.resolve("{attn}.hook_mask", place, c.trace)
    allowed = np.asarray(c.trace[mask_id][row], dtype=bool) if mask_id else np.ones_like(raw, dtype=bool)
    if allowed.shape != raw.shape or not allowed[col]:
        return "this key is masked: its weight is 0, scaled or not"

    def weight(scores: np.ndarray) -> float:
        scores = np.where(allowed, scores, -np.inf)
        e = np.exp(scores - scores[allowed].max())
        return float(e[col] / e.sum())

    root = math.sqrt(c.dh)
    return (f"q·k = {_n(raw[col])}, ÷ √{c.dh} = {_n(raw[col] / root)} → softmax weight "
            f"{_n(weight(raw / root))} with the scaling, {_n(weight(raw))} without it")


def _worked_normalized(c: Context, picture: Picture, row: int, col: int) -> str:
    """Mean, variance and (x − μ)/σ from the recorded input; γ and β are weights, not recorded."""
    source = c.inputs[0] if c.inputs else None
    if source is None:
        return ""
    x = np.asarray(c.trace[source], dtype=np.float64)
    if x.shape != c.step.shape or x.ndim != 2:
        return ""
    eps = c.config.get("layer_norm_eps", 1e-5)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    normed = (x - mean) / np.sqrt(var + eps)
    y = float(c.step.data[row, col])
    text = (f"position {row}: μ = {_n(mean[row, 0])}, σ² = {_n(var[row, 0])}; "
            f"(x{sub(col)} − μ) / √(σ² + ε) = ({_n(x[row, col])} − {_n(mean[row, 0])}) / {_n(math.sqrt(var[row, 0] + eps))} "
            f"= {_n(normed[row, col])}; · γ{sub(col)} + β{sub(col)} = {_n(y)} (recorded). γ and β are learned weights, not in the trace")
    column, out = normed[:, col], np.asarray(c.step.data[:, col], dtype=np.float64)
    if len(column) >= 2 and np.ptp(column) > 1e-6:  # y = γ·x̂ + β at every position: two unknowns
        gamma, beta = np.polyfit(column, out, 1)
        text += f"; this column's {len(column)} positions give γ{sub(col)} ≈ {_n(gamma)}, β{sub(col)} ≈ {_n(beta)}"
    return text


WORKED = {"pos_embed": _worked_pos_embed, "attn_scaled": _worked_attn_scaled, "normalized": _worked_normalized}
"""Kinds whose selected cell is worked through in the explain panel (it is redrawn as the cell moves)."""


def _span(first: int, last: int) -> str:
    return f"position {first}" if first == last else f"positions {first}…{last}"


def kv_cache_words(step: Step) -> str:
    """What a KV cache did at this step: which rows came from earlier steps, which this one computed."""
    c, new = step.cached, step.rows_shape[row_axis(step.axes)]
    cache = ("A KV cache keeps every layer's keys and values from the steps before, so a decoding step "
             "runs only its new token instead of the whole prefix again.")
    if new == 0:  # cross-attention's keys and values: the source does not change
        return (f"{cache} The source's keys and values were computed once, at the first decoding step; "
                f"this step read all {c} of them from the cache and computed none.")
    if step.kind in ("k", "v", "rot_k"):
        what = "keys" if step.kind != "v" else "values"
        return (f"{cache} {what.capitalize()} of {_span(0, c - 1)} come from the cache; this step computed only "
                f"{_span(c, c + new - 1)}, and added it to the cache.")
    if "query" in step.axes:
        text = (f"{cache} This step computed only the newest query's row ({_span(c, c + new - 1)}) against "
                f"every key; rows 0…{c - 1} are the earlier steps' rows, assembled here. Attention is "
                f"causal, so an earlier row never changes: re-running it would give the same numbers.")
        if step.kind in ("attn_raw", "attn_scaled"):
            text += (" Entries above the diagonal were never computed (the mask hides them); they are "
                     "filled in from the recorded queries and keys so the matrix reads as a full re-run's.")
        return text
    return (f"{cache} This step ran only {_span(c, c + new - 1)}; {_span(0, c - 1)} are the earlier steps' "
            f"values, unchanged because no position looks ahead.")


def _vector(trace: Trace, step_id: str | None, pos: int, head: int | None) -> np.ndarray | None:
    if step_id is None or head is None:
        return None
    data = trace[step_id]
    if pos >= data.shape[0] or head >= data.shape[1]:
        return None
    return np.asarray(data[pos, head], dtype=np.float64)


TOKENIZER_LIMIT = 64 * 1024**2  # a tokenizer.json larger than this is not read for names


@functools.lru_cache(maxsize=4)
def _folder_vocabulary(path: str) -> dict[int, str]:
    """id -> token from a model folder's tokenizer.json (BPE/WordPiece vocab dict, Unigram list,
    added tokens); {} when there is none or it cannot be read. No tokenizer library: plain JSON."""
    import orjson

    file = Path(path) / "tokenizer.json"
    try:
        if not file.is_file() or file.is_symlink() or file.stat().st_size > TOKENIZER_LIMIT:
            return {}
        document = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    if not isinstance(document, dict):
        return {}
    names: dict[int, str] = {}
    vocab = document["model"].get("vocab") if isinstance(document.get("model"), dict) else None
    if isinstance(vocab, dict):
        names.update((i, t) for t, i in vocab.items() if type(i) is int and isinstance(t, str))
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
        names.update((i, e[0]) for i, e in enumerate(vocab) if isinstance(e, list) and e and isinstance(e[0], str))
    added = document.get("added_tokens")
    for item in added if isinstance(added, list) else []:
        if isinstance(item, dict) and type(item.get("id")) is int and isinstance(item.get("content"), str):
            names[item["id"]] = item["content"]
    return names


def token_name(trace: Trace, step: Step, token_id: int) -> str | None:
    """The string of vocabulary entry `token_id`: from what the trace recorded (top-k lists, the
    input and output), else from the model folder's tokenizer.json when it is still there."""
    for item in step.extra.get("top_k", []):
        if isinstance(item, dict) and item.get("id") == token_id:
            return str(item.get("token"))
    for part in (trace.input, trace.output):
        ids, tokens = part.get("ids", []), part.get("tokens", [])
        if token_id in ids and len(ids) == len(tokens):
            return str(tokens[ids.index(token_id)])
    source = trace.model.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        return _folder_vocabulary(source["path"]).get(token_id)
    return None


def describe_cell(trace: Trace, picture: Picture, row: int, col: int) -> str:
    """One line about the selected cell; for attention scores, the dot product behind it."""
    step = picture.step
    if not picture.valid(row, col):
        return ""
    index = picture.index(row, col)
    value = step.data[index]
    if picture.wrap is not None:
        flat = index[0]
        text = f"{picture.row_axis} {flat} = {format_number(float(value), 12)}"
        name = token_name(trace, step, flat) if picture.row_axis == "vocab" else None
        if name is not None:
            text += f'  (token "{name}")'
        return text
    row_name = f'"{picture.row_name(row)}" ({row})' if picture.row_labels else str(row)
    col_name = f'"{picture.col_name(col)}" ({col})' if picture.col_labels else str(col)
    if step.kind == "tokens":
        return f'{picture.row_axis} {row} "{picture.row_name(row)}" → id {int(value)}'
    if step.kind == "mask":
        state = "allowed" if bool(value) else "forbidden (masked)"
        return f"query {row_name} → key {col_name}: {state}"
    shown = format_number(float(value), 12)
    head = f", {head_name(step, picture.head)}" if picture.head is not None else ""
    if step.kind not in ATTENTION_SCORES or picture.head is None:
        if picture.col_axis == "vocab":  # an encoder's logits/probs: every position over the vocabulary
            name = token_name(trace, step, col)
            col_name = f'{col} "{name}"' if name is not None else col_name
        return f"{picture.row_axis} {row_name} · {picture.col_axis} {col_name}{head}: {shown}"
    place = anatomy.Place.of(step.id, trace)
    q_id = anatomy.resolve("{attn}.hook_rot_q | {attn}.hook_q", place, trace)
    k_id = anatomy.resolve("{attn}.hook_rot_k | {attn}.hook_k", place, trace)
    kv_head = picture.head
    if q_id and k_id:  # grouped-query attention: query head h reads key/value head h // (heads per key/value head)
        q_step, k_step = trace.step(q_id), trace.step(k_id)
        columns = kv_columns(q_step, k_step)  # by head number: a --heads trace holds only some heads
        kv_head = columns[picture.head] if columns is not None and picture.head < len(columns) else None
        if kv_head is not None and 0 < (k_step.heads_of or 0) < (q_step.heads_of or 0):
            head += f" (key/value head {k_step.heads[kv_head] + 1}/{k_step.heads_of})"
    q = _vector(trace, q_id, row, picture.head)
    k = _vector(trace, k_id, col, kv_head)
    text = f"query {row_name} · key {col_name}{head}: "
    if q is None or k is None:
        return text + shown
    dot = float(q @ k)
    dh = q.shape[0]
    text += f"q{sub(row)}·k{sub(col)} = {format_number(dot, 12)}"
    if step.kind == "attn_raw":
        return text
    if (trace.model.get("config") or {}).get("attn_scale", True):
        text += f", ÷ √{dh} = {format_number(dot / math.sqrt(dh), 12)}"
    if step.kind == "attn_scaled":
        return text
    bias_id = anatomy.resolve("{attn}.hook_attn_bias", place, trace)
    if bias_id is not None:
        text += f", + position bias {format_number(float(trace[bias_id][picture.head, row, col]), 12)}"
    if not np.isfinite(float(value)) or (step.kind == "pattern" and picture.masked[row, col]):
        return text + ", masked → −∞" + (" → weight 0" if step.kind == "pattern" else "")
    if step.kind == "attn_scores":
        return text
    return text + f" → softmax weight {shown}"
