"""Plain words for every kind of step: what it computes, the formula with this step's real
sizes, which recorded steps it was computed from, and what one cell of it means (no Textual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tracer.trace import Step, Trace
from tracer.tui.outline import quoted
from tracer.tui.picture import Picture, format_number

ATTENTION_SCORES = ("attn_raw", "attn_scaled", "attn_scores", "pattern")
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def sub(number: int) -> str:
    return str(number).translate(_SUBSCRIPT)


@dataclass
class Explanation:
    title: str
    words: str
    formula: str
    inputs: list[str] = field(default_factory=list)


class _Names:
    """Ids of a step's neighbours in the same forward pass (same stack, layer and decoding step)."""

    def __init__(self, step: Step, trace: Trace):
        self.trace, self.step = trace, step
        self.t = step.decode_step
        name = step.name
        self.stack_prefix = f"{step.stack}." if step.stack else ""
        if step.layer is not None:
            blocks = "blocks." if f"blocks.{step.layer}." in name else ""
            self.layer_prefix = f"{self.stack_prefix}{blocks}{step.layer}."
            self.blocks = blocks
        else:
            self.layer_prefix, self.blocks = self.stack_prefix, ""
        config = trace.model.get("config", {})
        self.pre_norm = config.get("norm") == "pre"
        self.cross = step.stack == "decoder" and trace.arch == "encoder-decoder"

    def id(self, name: str, t: int | None | str = "same") -> str | None:
        t = self.t if t == "same" else t
        step_id = name if t is None else f"{name}@{t}"
        return step_id if step_id in self.trace else None

    def layer(self, rest: str, layer: int | None = None) -> str | None:
        if layer is None:
            return self.id(self.layer_prefix + rest)
        return self.id(f"{self.stack_prefix}{self.blocks}{layer}.{rest}")

    def top(self, rest: str) -> str | None:
        return self.id(self.stack_prefix + rest)

    def layer_output(self, layer: int) -> str | None:
        """The last recorded residual-stream value of a layer (what the next one reads)."""
        if self.pre_norm:
            return self.layer("hook_resid_post", layer)
        return self.layer("ln3.hook_normalized" if self.cross else "ln2.hook_normalized", layer)

    def stack_output(self) -> str | None:
        final = self.top("ln_final.hook_normalized")
        if final:
            return final
        layers = [s.layer for s in self.trace.find(stack=self.step.stack, decode_step=self.t) if s.layer is not None]
        return self.layer_output(max(layers)) if layers else None

    def encoder_output(self) -> str | None:
        final = self.id("encoder.ln_final.hook_normalized", None)
        if final:
            return final
        layers = [s.layer for s in self.trace.find(stack="encoder") if s.layer is not None]
        if not layers:
            return None
        last = max(layers)
        return self.id(f"encoder.{last}.hook_resid_post" if self.pre_norm else f"encoder.{last}.ln2.hook_normalized", None)


def inputs_of(step: Step, trace: Trace) -> list[str]:
    """The recorded steps this one was computed from, in the same forward pass."""
    n = _Names(step, trace)
    kind, component = step.kind, step.component
    L = n.layer
    pre, cross = n.pre_norm, n.cross
    attn = f"{component}." if component in ("attn", "cross_attn") else "attn."
    found: list[str | None] = []
    if kind in ("embed", "pos_embed"):
        found = [n.top("hook_tokens")]
    elif kind == "resid_pre":
        if step.layer == 0:
            found = [n.top("hook_embed"), n.top("hook_pos_embed")]
        else:
            found = [n.layer_output(step.layer - 1)]
    elif kind in ("q", "k", "v"):
        if component == "cross_attn":
            if kind == "q":
                found = [L("ln2.hook_normalized") if pre else L("ln1.hook_normalized")]
            else:
                found = [n.encoder_output()]
        else:
            found = [L("ln1.hook_normalized") if pre else L("hook_resid_pre")]
    elif kind in ("rot_q", "rot_k"):
        found = [L(attn + "hook_" + kind[-1])]
    elif kind == "attn_raw":
        found = [L(attn + "hook_rot_q") or L(attn + "hook_q"), L(attn + "hook_rot_k") or L(attn + "hook_k")]
    elif kind == "attn_scaled":
        found = [L(attn + "hook_attn_raw")]
    elif kind == "attn_scores":
        found = [L(attn + "hook_attn_scaled"), L(attn + "hook_mask")]
    elif kind == "pattern":
        found = [L(attn + "hook_attn_scores")]
    elif kind == "z":
        found = [L(attn + "hook_pattern"), L(attn + "hook_v")]
    elif kind == "concat":
        found = [L(attn + "hook_z")]
    elif kind == "attn_out":
        found = [L("attn.hook_concat")]
    elif kind == "cross_attn_out":
        found = [L("cross_attn.hook_concat")]
    elif kind == "resid_mid":
        found = [L("hook_resid_pre"), L("hook_attn_out")]
    elif kind == "resid_mid_cross":
        found = [L("hook_resid_mid") if pre else L("ln1.hook_normalized"), L("hook_cross_attn_out")]
    elif kind == "normalized":
        if component == "ln_final":
            layers = [s.layer for s in trace.find(stack=step.stack, decode_step=step.decode_step) if s.layer is not None]
            found = [n.layer("hook_resid_post", max(layers))] if layers else []
        elif component == "ln1":
            found = [L("hook_resid_pre") if pre else L("hook_resid_mid")]
        elif component == "ln2":
            if pre:
                found = [L("hook_resid_mid")]
            else:
                found = [L("hook_resid_mid_cross") if cross else L("hook_resid_post")]
        elif component == "ln3":
            found = [L("hook_resid_mid_cross") if pre else L("hook_resid_post")]
    elif kind in ("pre", "pre_linear"):
        if pre:
            found = [L("ln3.hook_normalized") if cross else L("ln2.hook_normalized")]
        else:
            found = [L("ln2.hook_normalized") if cross else L("ln1.hook_normalized")]
    elif kind == "post":
        found = [L("mlp.hook_pre"), L("mlp.hook_pre_linear")]
    elif kind == "mlp_out":
        found = [L("mlp.hook_post")]
    elif kind == "resid_post":
        if pre:
            base = L("hook_resid_mid_cross") if cross else L("hook_resid_mid")
        else:
            base = L("ln2.hook_normalized") if cross else L("ln1.hook_normalized")
        found = [base, L("hook_mlp_out")]
    elif kind == "logits":
        found = [n.stack_output()]
    elif kind == "probs":
        found = [n.top("hook_logits")]
    elif kind == "mask":
        found = [n.top("hook_tokens")]
    return [step_id for step_id in found if step_id]


def _size(*dims) -> str:
    return "×".join(str(d) for d in dims)


def explain(step: Step, trace: Trace) -> Explanation:
    """What this step computes, in words and as a formula with its real sizes."""
    config = trace.model.get("config", {})
    kind, component = step.kind, step.component
    shape = step.shape
    d = config.get("d_model") or (shape[-1] if shape else 0)
    H = config.get("n_heads") or 1
    dh = d // H if H else d
    dff = config.get("d_ff", "d_ff")
    activation = config.get("activation", "relu")
    cross = component == "cross_attn"
    decoder_side = step.stack == "decoder" or trace.arch == "decoder"
    where = "cross-attention" if cross else "masked self-attention" if decoder_side else "self-attention"
    inputs = inputs_of(step, trace)
    n = shape[0] if shape else 0
    title, words, formula = kind, "", ""

    if kind == "tokens":
        title = "Tokenize"
        if step.decode_step is None:
            words = ("The text is cut into pieces the model has a vocabulary entry for, and each piece becomes "
                     "an integer id. These ids are all the model ever sees of the text.")
            formula = f"text → {n} tokens → {n} ids"
        else:
            words = (f"The decoder's input at step {step.decode_step}: the start token and every token chosen "
                     "so far. The decoder re-reads this whole prefix at every step and predicts what comes next.")
            formula = f"{n} tokens → {n} ids"
    elif kind == "embed":
        title = "Token embedding"
        scaled = config.get("scale_embeddings", True)
        words = ("Each token id picks one row of the embedding table E: a learned vector of "
                 f"{d} numbers that stands for the token.")
        formula = f"E[ids]: ({n}) ids → {_size(n, d)}"
        if scaled:
            words += " As in the paper, it is multiplied by √d_model so it is not drowned out by the positions."
            formula += f", × √{d} = × {math.sqrt(d):.2f}"
    elif kind == "pos_embed":
        title = "Positional encoding"
        if config.get("positional") == "learned":
            words = "Attention alone ignores word order, so each position has a learned vector that is added to the token's."
            formula = f"W_pos[0:{n}] → {_size(n, d)}, added to the embedding"
        else:
            words = ("Attention alone ignores word order, so each position gets a fixed pattern of sines and "
                     "cosines at different frequencies, added to the token's embedding.")
            formula = f"PE(pos, 2i) = sin(pos / 10000^(2i/{d})), PE(pos, 2i+1) = cos(…) → {_size(n, d)}"
    elif kind == "resid_pre":
        title = f"Input to layer {step.layer}"
        if step.layer == 0:
            words = "What enters the first layer: token embedding plus positional encoding, one vector per position."
            formula = f"x = embedding + positions: {_size(n, d)}"
        else:
            words = (f"What enters layer {step.layer}: the output of layer {step.layer - 1}. This running vector "
                     "per position is the residual stream every sub-layer reads from and adds to.")
            formula = f"x: {_size(n, d)}"
    elif kind in ("q", "k", "v"):
        role = {"q": ("Queries", "what each position is looking for"),
                "k": ("Keys", "what each position offers to be found by"),
                "v": ("Values", "what each position hands over when it is attended to")}[kind]
        title = f"{role[0]} ({where})"
        words = f"{role[0]}: {role[1]}. x is multiplied by W_{kind.upper()} and split into {H} heads of {dh} numbers; each head looks for something different."
        if cross:
            words += (" In cross-attention the queries come from the decoder (what the next word needs) and the keys "
                      "and values from the encoder's output (the source sentence).")
        formula = f"{kind.upper()} = x·W_{kind.upper()}: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)} = {n}×{H} heads×{dh}"
    elif kind in ("rot_q", "rot_k"):
        title = f"Rotary position embedding ({'Q' if kind == 'rot_q' else 'K'})"
        words = ("RoPE rotates pairs of numbers in each query and key by an angle that grows with the position, "
                 "so Q·K depends on how far apart two positions are.")
        formula = f"rotate pairs by pos·θᵢ: {_size(*shape)}"
    elif kind in ATTENTION_SCORES or kind == "mask":
        Tq, Tk = (shape[-2], shape[-1]) if len(shape) >= 2 else (n, n)
        if kind == "attn_raw":
            title = f"Q·Kᵀ ({where})"
            words = ("Every query is compared with every key by a dot product: one score per (query, key) pair "
                     "and head. A large score means 'this key is what I am looking for'.")
            formula = f"Q·Kᵀ: ({_size(Tq, dh)})·({_size(dh, Tk)}) → {_size(Tq, Tk)} per head, {H} heads"
        elif kind == "attn_scaled":
            title = f"Scale by √dₖ ({where})"
            words = ("The scores are divided by √d_head so they do not grow with the head's size; large scores "
                     "would make softmax pick a single key and stop learning.")
            formula = f"Q·Kᵀ ÷ √{dh} = ÷ {math.sqrt(dh):.2f}: {_size(Tq, Tk)} per head"
        elif kind == "mask":
            title = f"Attention mask ({where})"
            causal = decoder_side and not cross
            if causal:
                words = ("Which keys each query may look at (lit = allowed, ░ = forbidden). The decoder may not look "
                         "ahead: query i sees keys 0…i only, so it cannot read the answer it is predicting.")
                formula = f"allowed(i, j) = j ≤ i: {_size(Tq, Tk)}"
            else:
                words = ("Which keys each query may look at (lit = allowed, ░ = forbidden). With one sentence there "
                         "is no padding, so every key is allowed.")
                formula = f"allowed(i, j) = key j is not padding: {_size(Tq, Tk)}"
        elif kind == "attn_scores":
            title = f"Masked scores ({where})"
            words = ("Forbidden (query, key) pairs are set to −∞, shown as ░, so softmax gives them exactly zero weight.")
            formula = f"scores = scaled where mask, else −∞: {_size(Tq, Tk)} per head"
        else:
            title = f"Softmax: attention weights ({where})"
            words = ("Softmax along each row turns scores into weights that are positive and sum to 1: how much "
                     "each query position takes from each key position.")
            formula = f"softmax over keys: exp(sᵢⱼ) / Σⱼ exp(sᵢⱼ), {_size(Tq, Tk)} per head, rows sum to 1"
    elif kind == "z":
        Tk = "Tk"
        v_id = inputs[-1] if inputs else None
        if v_id:
            Tk = trace.step(v_id).shape[0]
        title = f"Weights · V ({where})"
        words = ("Each query position's output for each head: the average of the value vectors, weighted by "
                 "the softmax weights.")
        formula = f"pattern·V: ({_size(n, Tk)})·({_size(Tk, dh)}) → {_size(n, dh)} per head"
    elif kind == "concat":
        title = f"Concatenate heads ({where})"
        words = f"The {H} heads' outputs are placed side by side: {H} × {dh} = {d} numbers per position."
        formula = f"[head₀ … head{sub(H - 1)}]: {n}×{H}×{dh} → {_size(n, d)}"
    elif kind in ("attn_out", "cross_attn_out"):
        title = "Output projection" + (" (cross-attention)" if kind == "cross_attn_out" else "")
        words = "A learned matrix W_O mixes the heads back together into the residual stream's dimensions."
        formula = f"concat·W_O: ({_size(n, d)})·({_size(d, d)}) → {_size(n, d)}"
    elif kind in ("resid_mid", "resid_mid_cross", "resid_post"):
        what = {"resid_mid": "self-attention", "resid_mid_cross": "cross-attention", "resid_post": "feed-forward network"}[kind]
        title = f"Residual add after the {what}"
        words = (f"The {what}'s output is added to its input, so what came before flows past the sub-layer "
                 "unchanged and the sub-layer only has to learn a correction.")
        formula = f"x + sublayer(x): {_size(n, d)} + {_size(n, d)} → {_size(n, d)}"
    elif kind == "normalized":
        title = "Final layer norm" if component == "ln_final" else f"Layer norm ({component})"
        words = ("Each position's vector is shifted to mean 0 and scaled to variance 1, then scaled and shifted "
                 "by learned γ and β. It keeps the numbers in a steady range from layer to layer.")
        eps = config.get("layer_norm_eps", 1e-5)
        formula = f"(x − mean) / √(var + {eps:g}) · γ + β over {d} numbers, for each of {n} positions"
    elif kind == "pre":
        title = "Feed-forward: first linear layer"
        words = (f"Each position on its own is projected up from {d} to {dff} numbers: the network gets room to "
                 "compute features of the token in its context.")
        formula = f"x·W_in + b: ({_size(n, d)})·({_size(d, dff)}) → {_size(n, dff)}"
    elif kind == "pre_linear":
        title = "Feed-forward: value branch (SwiGLU)"
        words = "The second projection of SwiGLU; the gate multiplies it element by element."
        formula = f"x·W_in + b: ({_size(n, d)})·({_size(d, dff)}) → {_size(n, dff)}"
    elif kind == "post":
        name = {"relu": "ReLU", "gelu": "GELU", "swiglu": "SwiGLU"}.get(activation, activation)
        title = f"Feed-forward: activation ({name})"
        explain_act = {
            "relu": "ReLU keeps positive numbers and turns negatives into 0.",
            "gelu": "GELU is a smooth ReLU: negatives are squashed towards 0, positives kept.",
            "swiglu": "SwiGLU gates one projection with SiLU of the other, element by element.",
        }.get(activation, "")
        words = explain_act + " It is the layer's non-linearity: without it the two linear layers would collapse into one."
        formula = {"relu": f"max(0, pre): {_size(n, dff)}", "gelu": f"pre·Φ(pre): {_size(n, dff)}",
                   "swiglu": f"SiLU(gate) ⊙ value: {_size(n, dff)}"}.get(activation, f"{_size(n, dff)}")
    elif kind == "mlp_out":
        title = "Feed-forward: second linear layer"
        words = f"Back down from {dff} to {d} numbers per position, ready to be added to the residual stream."
        formula = f"post·W_out + b: ({_size(n, dff)})·({_size(dff, d)}) → {_size(n, d)}"
    elif kind == "logits":
        V = shape[-1] if shape else "V"
        title = "Logits"
        if trace.arch == "encoder":
            words = "Every position's final vector is compared with every token's embedding: one score per vocabulary token."
            formula = f"x·Eᵀ: ({_size(n, d)})·({_size(d, V)}) → {_size(*shape)}"
        else:
            words = ("The last position's final vector is compared with every token's embedding by a dot product: "
                     "one score per token in the vocabulary. Higher means more likely next.")
            formula = f"x_last·Eᵀ: ({d})·({_size(d, V)}) → {V}"
    elif kind == "probs":
        V = shape[-1] if shape else "V"
        title = "Next-token probabilities"
        chosen = step.extra.get("chosen")
        words = "Softmax over the vocabulary turns the logits into probabilities that sum to 1."
        if chosen:
            words += f" Greedy decoding picks the most likely token: {quoted(chosen['token'])}."
        if step.extra.get("predictions"):
            title = "Masked-token predictions"
            words += " At each masked position the most likely token fills the gap."
        formula = f"softmax(logits) over {V} tokens"
    else:
        words = "A recorded intermediate value."
        formula = _size(*shape)
    return Explanation(title, words, formula, inputs)


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
    names = _Names(step, trace)
    attn = f"{step.component}."
    q = _vector(trace, names.layer(attn + "hook_rot_q") or names.layer(attn + "hook_q"), row, picture.head)
    k = _vector(trace, names.layer(attn + "hook_rot_k") or names.layer(attn + "hook_k"), col, picture.head)
    text = f"query {row_name} · key {col_name}{head}: "
    if q is None or k is None:
        return text + shown
    dot = float(q @ k)
    dh = q.shape[0]
    text += f"q{sub(row)}·k{sub(col)} = {format_number(dot, 12)}"
    if step.kind == "attn_raw":
        return text
    text += f", ÷ √{dh} = {format_number(dot / math.sqrt(dh), 12)}"
    if step.kind == "attn_scaled":
        return text
    if not np.isfinite(float(value)) or (step.kind == "pattern" and picture.masked[row, col]):
        return text + ", masked → −∞" + (" → weight 0" if step.kind == "pattern" else "")
    if step.kind == "attn_scores":
        return text
    return text + f" → softmax weight {shown}"
