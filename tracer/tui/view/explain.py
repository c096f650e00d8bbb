"""Plain words for every kind of step: what it computes, the formula with this step's real
sizes, which recorded steps it was computed from, and what one cell of it means (no Textual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tracer.trace import Step, Trace, anatomy
from tracer.trace.check import relative_buckets
from tracer.tui.view.outline import quoted
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
    words = f"{role[0]}: {role[1]}. x is multiplied by W_{kind.upper()} and split into {H} heads of {dh} numbers; each head looks for something different."
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
    formula = f"{kind.upper()} = x·W_{kind.upper()}: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)} = {n}×{H} heads×{dh}"
    if H * dh != d:
        formula = f"{kind.upper()} = x·W_{kind.upper()}: ({_size(n, d)})·({_size(d, H * dh)}) → {n}×{H} heads×{dh}"
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
    words = ("The scores are divided by √d_head so they do not grow with the head's size; large scores "
             "would make softmax pick a single key and stop learning.")
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
    distances = np.array(BUCKET_PICTURE_DISTANCES)
    found = relative_buckets(-distances, not decoder, buckets, max_distance)
    return " ".join(f"{d}→{b}" for d, b in zip(distances.tolist(), found.tolist())) + "."


def _mask(c: Context):
    Tq, Tk = _query_key(c)
    title = f"Attention mask ({c.where})"
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
    words = f"The {H} heads' outputs are placed side by side: {H} × {dh} = {H * dh} numbers per position."
    return f"Concatenate heads ({c.where})", words, f"[head₀ … head{sub(H - 1)}]: {c.n}×{H}×{dh} → {_size(c.n, H * dh)}"


def _attn_out(c: Context):
    n, d = c.n, c.d
    title = "Output projection" + (" (cross-attention)" if c.step.kind == "cross_attn_out" else "")
    words = "A learned matrix W_O mixes the heads back together into the residual stream's dimensions."
    return title, words, f"concat·W_O: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)}"


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
    if c.config.get("norm_type") in ("rmsnorm", "rmsnorm_t5") and component not in ("ln_embed", "ln_mlm"):
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


WORDS = {
    "tokens": _tokens, "embed": _embed, "pos_embed": _pos_embed, "resid_pre": _resid_pre,
    "qkv": _qkv, "rotary": _rotary, "attn_raw": _attn_raw, "attn_scaled": _attn_scaled, "mask": _mask,
    "attn_bias": _attn_bias,
    "attn_scores": _attn_scores, "pattern": _pattern, "z": _z, "concat": _concat, "attn_out": _attn_out,
    "residual": _residual, "normalized": _normalized, "pre": _pre, "pre_linear": _pre_linear, "post": _post,
    "mlp_out": _mlp_out, "logits": _logits, "probs": _probs,
    "token_type_embed": _token_type_embed, "mlm_dense": _mlm_dense, "mlm_act": _mlm_act, "pooler_out": _pooler_out,
    "mean_pooled": _mean_pooled, "sentence_embedding": _sentence_embedding,
}
"""Explanation key (a kind's `explanation` in tracer.trace.anatomy) -> (title, words, formula)."""


def explain(step: Step, trace: Trace) -> Explanation:
    """What this step computes, in words and as a formula with its real sizes."""
    context = Context.of(step, trace)
    words = WORDS.get(anatomy.kind_of(step.kind).explanation, _generic)
    title, text, formula = words(context)
    return Explanation(title, text, formula, context.inputs)


def _vector(trace: Trace, step_id: str | None, pos: int, head: int) -> np.ndarray | None:
    if step_id is None:
        return None
    data = trace[step_id]
    if pos >= data.shape[0] or head >= data.shape[1]:
        return None
    return np.asarray(data[pos, head], dtype=np.float64)


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
        tokens = {item["id"]: item["token"] for item in step.extra.get("top_k", [])}
        if flat in tokens:
            text += f'  (token "{tokens[flat]}")'
        return text
    row_name = f'"{picture.row_name(row)}" ({row})' if picture.row_labels else str(row)
    col_name = f'"{picture.col_name(col)}" ({col})' if picture.col_labels else str(col)
    if step.kind == "tokens":
        return f'{picture.row_axis} {row} "{picture.row_name(row)}" → id {int(value)}'
    if step.kind == "mask":
        state = "allowed" if bool(value) else "forbidden (masked)"
        return f"query {row_name} → key {col_name}: {state}"
    shown = format_number(float(value), 12)
    head = f", head {picture.head + 1}/{picture.n_heads}" if picture.head is not None else ""
    if step.kind not in ATTENTION_SCORES or picture.head is None:
        return f"{picture.row_axis} {row_name} · {picture.col_axis} {col_name}{head}: {shown}"
    place = anatomy.Place.of(step.id, trace)
    q_id = anatomy.resolve("{attn}.hook_rot_q | {attn}.hook_q", place, trace)
    k_id = anatomy.resolve("{attn}.hook_rot_k | {attn}.hook_k", place, trace)
    kv_head = picture.head
    if q_id and k_id:  # grouped-query attention: query head h reads key/value head h // (heads per key/value head)
        H, Hkv = trace.step(q_id).shape[1], trace.step(k_id).shape[1]
        if 0 < Hkv < H and H % Hkv == 0:
            kv_head = picture.head // (H // Hkv)
            head += f" (key/value head {kv_head + 1}/{Hkv})"
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
