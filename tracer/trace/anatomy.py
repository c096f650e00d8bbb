"""The anatomy of the model: one description of every kind of recorded step (no torch, no Textual).

A step's kind is its hook name's last part without `hook_` (`encoder.0.attn.hook_pattern` →
`pattern`). For each kind, `KINDS` says its axes, its line and group in the outline, the key of
its words in the explain panel, and which recorded steps it is computed from. Capture, `tracer
check`, the outline and the explain panel all read it, so a new kind is one `Kind` here plus its
words in the explanation table (`tracer/tui/view/explain.py`) and its row in `docs/format.md` (a test
prints the row). A kind missing here (a trace from a newer tracer, an imported model's extra
tap) still works everywhere, generically: `kind_of` gives axes from its rank, the group of the
module it sits in, its name as label and a generic explanation.

"Computed from" is a list of rules; the first whose conditions hold gives the sources. A source
is a reference, read from where the step sits:

    "hook_resid_mid"           a step of the same layer (for a step outside any layer: of its stack)
    "ln1.hook_normalized"      a module's tap in the same layer
    "{attn}.hook_q"            a tap of the step's own attention module (attn or cross_attn)
    "stack:hook_tokens"        a tap of the stack itself, outside its layers
    "output"                   what the step's own layer hands on
    "previous_layer:output"    in the layer before (`output`: what a layer or stack hands on)
    "last_layer:hook_resid_post"   in the stack's last layer
    "encoder:output"           the encoder's (its single pass, no decoding step)
    "{module}.hook_lora_b"     a tap of the step's own LoRA-wrapped projection (`attn.W_Q`)
    "a | b"                    the first of a, b that was recorded
    "…?"                       optional: left out where not recorded (a rotary model has no pos_embed)

Conditions name `Place` fields: arch, norm, stack, layer, component, cross, first_layer, embed_norm.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Container, NamedTuple

from tracer.trace.step import parse_name, split_id, split_step_id

# -- the words a description is made of ------------------------------------------------

BY_MODULE = "module"
"""Group of a kind that sits in the sub-layer of its module: attention steps, norms (see MODULE_GROUPS)."""

PATH_SCOPES = ("", "stack", "previous_layer", "last_layer", "encoder")


# The records below are NamedTuples, not frozen dataclasses: as immutable, and about a tenth of the
# cost to define (this module loads before replay's first frame; four frozen dataclasses were ~2 ms).
class Rule(NamedTuple):
    """Where a step comes from: `sources` (references, see the module docstring) when `when` holds."""

    sources: tuple[str, ...]
    when: tuple[tuple[str, object], ...] = ()

    def holds(self, place: "Place") -> bool:
        return all(getattr(place, field) == value for field, value in self.when)


def rule(*sources: str, **when) -> Rule:
    """`rule("ln1.hook_normalized", norm="pre")`: computed from those sources under those conditions."""
    return Rule(tuple(sources), tuple(when.items()))


class Kind(NamedTuple):
    """One kind of recorded step."""

    name: str                          # the hook name's last part without `hook_`: "pattern"
    axes: tuple[tuple[str, ...], ...]  # its axes, one layout per rank it is recorded at
    summary: str                       # what it is, in a few words (docs/format.md)
    label: str                         # its line in the outline
    group: str | None                  # outline group (GROUPS), BY_MODULE, or None: directly in its layer/at the top
    explanation: str                   # key of its words in the explain panel's table
    computed_from: tuple[Rule, ...] = ()
    source_axes: tuple[str, ...] = ()  # in cross-attention these axes run over the source's tokens

    def axes_for(self, rank: int) -> tuple[str, ...]:
        """Its axes at this rank; generic ones (`dim0`, `dim1`, …) for a rank it is not known at."""
        for layout in self.axes:
            if len(layout) == rank:
                return layout
        return generic_axes(rank)


class Group(NamedTuple):
    """A group of the outline; some read differently on the decoder side or in an encoder-only model."""

    label: str
    decoder_label: str | None = None       # in a causal (decoder-side) stack
    encoder_only_label: str | None = None  # in an encoder-only model


class Place(NamedTuple):
    """Where a step sits, and the model facts its dataflow depends on."""

    arch: str
    norm: str                 # "pre" or "post" (the paper's, and the default)
    stack: str | None         # encoder, decoder, or None for a single-stack model
    layer: int | None
    component: str | None     # the module the tap sits in: attn, cross_attn, mlp, ln1, …
    t: int | None             # decoding step
    s: int | None = None      # training step (`@sN`, a `tracer finetune` trace)
    module: str | None = None # a LoRA-wrapped projection the tap sits in (`W_Q`)
    embed_norm: bool = False  # the embeddings pass through a layer norm (`ln_embed`, BERT) before layer 0

    @classmethod
    def of(cls, step_id: str, trace) -> "Place":
        """The place of `step_id` in `trace` (anything with `.arch` and `.model`)."""
        config = trace.model.get("config")
        norm = config.get("norm", "post") if isinstance(config, dict) else "post"
        embed_norm = bool(config.get("embed_norm", False)) if isinstance(config, dict) else False
        return _place(step_id, trace.arch, norm, embed_norm)

    @property
    def cross(self) -> bool:
        """The layer has cross-attention (the decoder of an encoder-decoder)."""
        return self.stack == "decoder" and self.arch == "encoder-decoder"

    @property
    def causal(self) -> bool:
        """The decoder side: self-attention may not look ahead."""
        return self.stack == "decoder" or self.arch == "decoder"

    @property
    def first_layer(self) -> bool:
        return self.layer == 0


@lru_cache(maxsize=16384)  # check and the explain panel ask for the same steps' places again and again
def _place(step_id: str, arch: str, norm: str, embed_norm: bool = False) -> Place:
    name, t, s = split_step_id(step_id)
    parts = parse_name(name)
    return Place(arch, norm, parts["stack"], parts["layer"], parts["component"], t, s, parts["module"], embed_norm)


# -- the model ---------------------------------------------------------------------------

STACKS = {"encoder-decoder": ("encoder", "decoder"), "encoder": (None,), "decoder": (None,)}
"""The stacks of each architecture, in the order they run; None is a single stack (`blocks.L.*`)."""

POS_D = (("pos", "d_model"),)
POS_HEAD = (("pos", "head", "d_head"),)
SCORES = (("head", "query", "key"),)
POS_FF = (("pos", "d_ff"),)
VECTOR = (("d_model",),)                # one vector for the whole input (pooled outputs)
VOCAB = (("vocab",), ("pos", "vocab"))  # the last position's next token, or every position (encoder-only)

# The sub-layer a module's taps belong to. Norms are numbered in the order they are used:
# ln1 around self-attention, ln2 around the next sub-layer, ln3 around a decoder's FFN.
MODULE_GROUPS = {"attn": "attn", "cross_attn": "cross", "mlp": "mlp", "ln1": "attn", "ln2": "cross", "ln3": "mlp",
                 "ln_embed": "embed", "ln_mlm": "out"}
MODULE_GROUPS_WITHOUT_CROSS = {"ln2": "mlp"}  # in a layer without cross-attention ln2 is the FFN's norm

GROUPS = {
    "embed": Group("Embedding + positions"),
    "attn": Group("Self-attention", decoder_label="Masked self-attention"),
    "cross": Group("Cross-attention"),
    "mlp": Group("Feed-forward"),
    "out": Group("Logits and probabilities", encoder_only_label="Masked-token predictions"),
    "pooled": Group("Pooled output"),
    # a training trace (tracer finetune)
    "head": Group("Classification head"),
    "loss": Group("Loss"),
    "backward": Group("Backward pass"),
    "update": Group("AdamW update"),
    "lens": Group("Logit lens"),
}
STACK_GROUPS = ("embed", "out", "pooled", "head", "loss")  # groups of steps outside the layers; the others sit inside a layer

# What a layer hands to the next: post-norm's last norm, or pre-norm's last residual sum.
LAYER_OUTPUT = (rule("hook_resid_post", norm="pre"), rule("ln3.hook_normalized", cross=True), rule("ln2.hook_normalized"))
# What a stack hands on (to the output head, or to cross-attention): the final norm, else its last layer's output.
STACK_OUTPUT = "ln_final.hook_normalized | last_layer:output"

_FFN_INPUT = (rule("ln3.hook_normalized", norm="pre", cross=True), rule("ln2.hook_normalized", norm="pre"),
              rule("ln2.hook_normalized", cross=True), rule("ln1.hook_normalized"))
_KV_INPUT = (rule("encoder:output", component="cross_attn"), rule("ln1.hook_normalized", norm="pre"), rule("hook_resid_pre"))

_KINDS = (
    Kind("tokens", (("pos",),), "token ids (labels hold the strings)", "tokens", None, "tokens"),
    Kind("embed", POS_D, "token embedding (× √d_model as in the paper)", "token embedding", "embed", "embed",
         (rule("stack:hook_tokens"),)),
    Kind("token_type_embed", POS_D, "token-type (segment) embedding, type 0's row at every position (BERT)",
         "token-type embedding", "embed", "token_type_embed", (rule("stack:hook_tokens"),)),
    Kind("pos_embed", POS_D, "positional encoding (not with rotary positions)", "positional encoding", "embed",
         "pos_embed", (rule("stack:hook_tokens"),)),
    Kind("resid_pre", POS_D, "the sum entering layer L", "layer input x", None, "resid_pre",
         (rule("stack:ln_embed.hook_normalized", first_layer=True, embed_norm=True),
          rule("stack:hook_embed", "stack:hook_token_type_embed?", "stack:hook_pos_embed?", first_layer=True),
          rule("previous_layer:output"))),
    Kind("q", POS_HEAD, "queries", "Q  queries", BY_MODULE, "qkv",
         (rule("ln2.hook_normalized", component="cross_attn", norm="pre"),
          rule("ln1.hook_normalized", component="cross_attn"),
          rule("ln1.hook_normalized", norm="pre"), rule("hook_resid_pre"))),
    Kind("k", POS_HEAD, "keys", "K  keys", BY_MODULE, "qkv", _KV_INPUT, source_axes=("pos",)),
    Kind("v", POS_HEAD, "values", "V  values", BY_MODULE, "qkv", _KV_INPUT, source_axes=("pos",)),
    Kind("rot_q", POS_HEAD, "queries after the rotary rotation", "Q rotated (RoPE)", BY_MODULE, "rotary",
         (rule("{attn}.hook_q"),)),
    Kind("rot_k", POS_HEAD, "keys after the rotary rotation", "K rotated (RoPE)", BY_MODULE, "rotary",
         (rule("{attn}.hook_k"),), source_axes=("pos",)),
    Kind("attn_raw", SCORES, "Q·Kᵀ", "Q·Kᵀ", BY_MODULE, "attn_raw",
         (rule("{attn}.hook_rot_q | {attn}.hook_q", "{attn}.hook_rot_k | {attn}.hook_k"),), source_axes=("key",)),
    Kind("attn_scaled", SCORES, "÷ √d_head", "÷ √dₖ", BY_MODULE, "attn_scaled",
         (rule("{attn}.hook_attn_raw"),), source_axes=("key",)),
    Kind("attn_bias", SCORES, "relative position bias: one learned number per (distance bucket, head), T5",
         "+ position bias", BY_MODULE, "attn_bias", (rule("stack:hook_tokens"),), source_axes=("key",)),
    Kind("mask", (("query", "key"),), "mask, bool (true = may attend; a decoder: causal, and within the sliding "
         "window where the config has one)", "mask", BY_MODULE, "mask",
         (rule("stack:hook_tokens"),), source_axes=("key",)),
    Kind("attn_scores", SCORES, "masked scores (pre-softmax; T5: raw + position bias, then masked)", "masked scores",
         BY_MODULE, "attn_scores",
         (rule("{attn}.hook_attn_scaled | {attn}.hook_attn_raw", "{attn}.hook_attn_bias?", "{attn}.hook_mask"),),
         source_axes=("key",)),
    Kind("pattern", SCORES, "softmax over the keys", "softmax", BY_MODULE, "pattern",
         (rule("{attn}.hook_attn_scores"),), source_axes=("key",)),
    Kind("z", POS_HEAD, "weights · V", "weights · V", BY_MODULE, "z", (rule("{attn}.hook_pattern", "{attn}.hook_v"),)),
    # n_heads·d_head wide: d_model only where d_head = d_model / n_heads (not in T5 or a Llama with head_dim)
    Kind("concat", (("pos", "d_concat"),), "heads concatenated (n_heads·d_head wide)", "concat heads", BY_MODULE,
         "concat", (rule("{attn}.hook_z"),)),
    Kind("attn_out", POS_D, "self-attention's output projection", "output projection", "attn", "attn_out",
         (rule("attn.hook_concat"),)),
    Kind("resid_mid", POS_D, "residual add after self-attention", "residual add", "attn", "residual",
         (rule("hook_resid_pre", "hook_attn_out"),)),
    Kind("cross_attn_out", POS_D, "cross-attention's output projection", "output projection", "cross", "attn_out",
         (rule("cross_attn.hook_concat"),)),
    Kind("resid_mid_cross", POS_D, "residual add after cross-attention", "residual add", "cross", "residual",
         (rule("hook_resid_mid", "hook_cross_attn_out", norm="pre"), rule("ln1.hook_normalized", "hook_cross_attn_out"))),
    Kind("normalized", POS_D, "layer norm (or RMSNorm) output, after its learned scale (and shift) "
         "(`lnN`, `ln_final`, BERT's `ln_embed` and `ln_mlm`)", "layer norm", BY_MODULE, "normalized",
         (rule("last_layer:hook_resid_post", component="ln_final"),
          rule("stack:hook_embed", "stack:hook_token_type_embed?", "stack:hook_pos_embed?", component="ln_embed"),
          rule("stack:hook_mlm_act", component="ln_mlm"),
          rule("hook_resid_pre", component="ln1", norm="pre"), rule("hook_resid_mid", component="ln1"),
          rule("hook_resid_mid", component="ln2", norm="pre"),
          rule("hook_resid_mid_cross", component="ln2", cross=True), rule("hook_resid_post", component="ln2"),
          rule("hook_resid_mid_cross", component="ln3", norm="pre"), rule("hook_resid_post", component="ln3"))),
    Kind("pre", POS_FF, "FFN first linear (SwiGLU: the gate)", "linear 1", "mlp", "pre", _FFN_INPUT),
    Kind("pre_linear", POS_FF, "SwiGLU's ungated branch", "linear (value branch)", "mlp", "pre_linear", _FFN_INPUT),
    Kind("post", POS_FF, "FFN after the activation", "activation", "mlp", "post",
         (rule("mlp.hook_pre", "mlp.hook_pre_linear?"),)),
    Kind("mlp_out", POS_D, "FFN output", "linear 2", "mlp", "mlp_out", (rule("mlp.hook_post"),)),
    Kind("resid_post", POS_D, "residual add after the FFN", "residual add", "mlp", "residual",
         (rule("hook_resid_mid_cross", "hook_mlp_out", norm="pre", cross=True),
          rule("hook_resid_mid", "hook_mlp_out", norm="pre"),
          rule("ln2.hook_normalized", "hook_mlp_out", cross=True), rule("ln1.hook_normalized", "hook_mlp_out"))),
    Kind("mlm_dense", POS_D, "BERT's MLM transform: a dense layer on the last hidden states", "MLM dense", "out",
         "mlm_dense", (rule("stack:output"),)),
    Kind("mlm_act", POS_D, "the MLM transform's activation (its layer norm follows as `ln_mlm`)", "MLM activation",
         "out", "mlm_act", (rule("stack:hook_mlm_dense"),)),
    Kind("logits", VOCAB, "next-token scores (encoder-only: every position's)", "logits", "out", "logits",
         (rule("stack:ln_mlm.hook_normalized | stack:output"),)),
    Kind("probs", VOCAB, "softmax of the logits", "probabilities", "out", "probs", (rule("stack:hook_logits"),)),
    Kind("lens_probs", VOCAB, "logit lens: the layer's output through the final norm (if any) and the unembedding, "
         "softmaxed (encoder-only: the masked positions'; top_k extra)", "what this layer would predict", "lens",
         "lens_probs", (rule("output"),)),
    Kind("pooler_out", VECTOR, "BERT's pooled output: tanh(W·h[CLS] + b)", "pooled [CLS]", "pooled", "pooler_out",
         (rule("stack:output"),)),
    Kind("mean_pooled", VECTOR, "mean of the last hidden states over the tokens (sentence-transformers)",
         "mean pooling", "pooled", "mean_pooled", (rule("stack:output"),)),
    Kind("sentence_embedding", VECTOR, "the mean divided by its length: a unit vector (sentence-transformers)",
         "sentence embedding", "pooled", "sentence_embedding", (rule("stack:hook_mean_pooled"),)),
)

# -- a training trace (tracer finetune; every id ends in @sN) ---------------------------------

POS_OUT = (("pos", "d_out"),)   # a projection's output: d_model, or d_ff for an FFN's first linear
# The loss reads the vocabulary head's logits (a translation model's decoder's), or a classifier's.
_LOSS_INPUT = (rule("decoder.hook_logits", "hook_targets", arch="encoder-decoder"),
               rule("classifier.hook_class_logits", "hook_targets", arch="encoder"),
               rule("hook_logits", "hook_targets"))

_TRAINING_KINDS = (
    Kind("cls", (("d_model",),), "the encoder's final vector at position 0 ([CLS]), what a classifier reads",
         "h₀ ([CLS])", "head", "cls", (rule("stack:output"),)),
    Kind("class_logits", (("label",),), "a classification head's score per class: W·h₀ + b", "class scores", "head",
         "class_logits", (rule("classifier.hook_cls"),)),
    Kind("class_probs", (("label",),), "softmax of the class scores", "class probabilities", "head", "class_probs",
         (rule("classifier.hook_class_logits"),)),
    Kind("targets", (("pos",),), "what each loss position must predict: the next token, or the class",
         "targets", "loss", "targets"),
    Kind("token_losses", (("pos",),), "−log p(target) at each position", "loss per position", "loss",
         "token_losses", _LOSS_INPUT),
    Kind("loss", (("value",),), "the loss: the mean of the per-position losses", "loss", "loss", "loss",
         (rule("hook_token_losses"),)),
    Kind("base_out", POS_OUT, "a LoRA-wrapped projection's frozen part, W·x + b", "frozen W·x + b", BY_MODULE, "lora"),
    Kind("lora_a", (("pos", "rank"),), "LoRA's down-projection A·x", "A·x  (rank r)", BY_MODULE, "lora"),
    Kind("lora_b", POS_OUT, "LoRA's up-projection B·(A·x)", "B·A·x", BY_MODULE, "lora", (rule("{module}.hook_lora_a"),)),
    Kind("lora_out", POS_OUT, "the low-rank correction (α/r)·B·A·x", "× α/r", BY_MODULE, "lora",
         (rule("{module}.hook_lora_b"),)),
    Kind("adapted_out", POS_OUT, "frozen part + low-rank correction: what flows on", "W·x + (α/r)·B·A·x",
         BY_MODULE, "lora", (rule("{module}.hook_base_out", "{module}.hook_lora_out"),)),
)

# The gradient at a tap (`hook_pattern.grad`): one kind per tapped kind, with its axes.
_GRAD_WORDS = {"logits": "grad_logits", "class_logits": "grad_logits", "pattern": "grad_pattern",
               "attn_scores": "grad_scores", "resid_mid": "grad_residual", "resid_mid_cross": "grad_residual",
               "resid_post": "grad_residual", "attn_out": "grad_residual", "cross_attn_out": "grad_residual",
               "mlp_out": "grad_residual"}
_GRAD_KINDS = tuple(
    Kind(f"{kind.name}.grad", kind.axes, f"the loss's gradient at a `{kind.name}` tap", f"∂L/∂ {kind.label}", "backward",
         _GRAD_WORDS.get(kind.name, "grad"), source_axes=kind.source_axes)
    for kind in _KINDS + _TRAINING_KINDS if kind.name not in ("tokens", "mask", "targets", "token_losses", "loss")
)

# A trained weight's update (`blocks.0.attn.W_Q.weight.adam_m`), in the order it is recorded.
PARAM_AXES = (("d_out", "d_in"), ("vocab", "d_model"), ("position", "d_model"), ("rank", "d_in"),
              ("d_out", "rank"), ("label", "d_model"), ("d_out",), ("label",))
_PARAM_KINDS = (
    Kind("value", PARAM_AXES, "a trained weight before this step's update", "W before", "update", "param_value"),
    Kind("grad", PARAM_AXES, "the weight's gradient dL/dW", "∂L/∂W", "update", "param_grad"),
    Kind("adam_m", PARAM_AXES, "AdamW's first moment: m = β₁·m + (1 − β₁)·g", "m  first moment", "update", "adam_m"),
    Kind("adam_v", PARAM_AXES, "AdamW's second moment: v = β₂·v + (1 − β₂)·g²", "v  second moment", "update", "adam_v"),
    Kind("adam_m_hat", PARAM_AXES, "bias-corrected first moment m / (1 − β₁ᵗ)", "m̂  bias-corrected", "update",
         "adam_hat"),
    Kind("adam_v_hat", PARAM_AXES, "bias-corrected second moment v / (1 − β₂ᵗ)", "v̂  bias-corrected", "update",
         "adam_hat"),
    Kind("adam_step", PARAM_AXES, "the Adam step −lr·m̂ / (√v̂ + ε)", "step", "update", "adam_step"),
    Kind("new", PARAM_AXES, "the weight after the update: W·(1 − lr·λ) + step", "W after", "update", "param_new"),
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in _KINDS + _TRAINING_KINDS + _GRAD_KINDS + _PARAM_KINDS}
"""Every kind tracer knows, in computation order (a training trace's after a run's)."""

PHASES = {"forward": "Forward pass", "loss": "Loss", "backward": "Backward pass", "update": "AdamW update"}
"""The parts of one training step, in the order they are recorded."""


def phase_of(kind: str) -> str:
    """Which part of a training step a step of `kind` belongs to (a key of PHASES)."""
    group = kind_of(kind).group
    return group if group in ("loss", "backward", "update") else "forward"


# -- reading it ----------------------------------------------------------------------------

def is_rms_norm(config, component: str | None) -> bool:
    """Whether the norm `component` (ln1, ln_final, …) of a model with `config` is an RMSNorm
    (Llama's, T5's: no mean subtracted, no shift). BERT's embedding and MLM-head norms are layer
    norms whatever the model's `norm_type`."""
    return (isinstance(config, dict) and config.get("norm_type") in ("rmsnorm", "rmsnorm_t5")
            and component not in ("ln_embed", "ln_mlm"))


def generic_axes(rank: int) -> tuple[str, ...]:
    """Axes for a tensor nothing is known about: `dim0`, `dim1`, … (no token labels)."""
    return tuple(f"dim{i}" for i in range(rank))


def kind_of(kind: str) -> Kind:
    """The description of `kind`; a generic one for a kind tracer does not know."""
    known = KINDS.get(kind)
    if known is not None:
        return known
    return Kind(kind, (), "", kind, BY_MODULE, "")


def is_known(kind: str) -> bool:
    return kind in KINDS


def axes_for(kind: str, rank: int) -> tuple[str, ...]:
    """The axes of a `kind` tensor of this rank (generic ones where they are not known)."""
    return kind_of(kind).axes_for(rank)


def token_labels(name: str, axes, own: list[str], source: list[str] | None, shape=None) -> dict[str, list[str]]:
    """Token strings for the token axes of a step named `name`.

    Queries are the pass's own tokens; in cross-attention, the kind's `source_axes` run over
    the source's. An axis whose length differs from its tokens (given `shape`) gets none.
    """
    parts = parse_name(name)
    kind = kind_of(parts["kind"])
    cross = parts["component"] == "cross_attn"
    labels = {}
    for index, axis in enumerate(axes):
        if axis not in ("pos", "query", "key"):
            continue
        tokens = source if cross and axis in kind.source_axes else own
        if tokens is not None and (shape is None or shape[index] == len(tokens)):
            labels[axis] = tokens
    return labels


def step_name(stack: str | None, layer: int | None, path: str) -> str:
    """The hook name of `path` (`attn.hook_q`) in a stack's layer (None: the stack itself).

    The encoder-decoder numbers its layers under each stack (`decoder.0.`); a single stack
    names them as TransformerLens does (`blocks.0.`)."""
    prefix = f"{stack}." if stack else ""
    if layer is not None:
        prefix += f"{layer}." if stack else f"blocks.{layer}."
    return prefix + path


def group_of(kind: str, place: Place) -> str | None:
    """The outline group (a key of GROUPS) a step of `kind` at `place` sits in, or None."""
    group = kind_of(kind).group
    if group == BY_MODULE:
        component = place.component
        if not place.cross and component in MODULE_GROUPS_WITHOUT_CROSS:
            return MODULE_GROUPS_WITHOUT_CROSS[component]
        return MODULE_GROUPS.get(component)
    return group


def group_label(group: str, place: Place) -> str:
    """How a group reads at `place`."""
    found = GROUPS[group]
    if place.causal and found.decoder_label:
        return found.decoder_label
    if place.arch == "encoder" and found.encoder_only_label:
        return found.encoder_only_label
    return found.label


@lru_cache(maxsize=4096)  # the outline asks for every step each time it is built
def outline_group(kind: str, component: str | None, stack: str | None, arch: str) -> tuple[str, str] | None:
    """(group, label) of a step's outline group, or None: `group_of` and `group_label` in one."""
    place = Place(arch, "post", stack, None, component, None)  # the group depends on nothing else
    group = group_of(kind, place)
    return (group, group_label(group, place)) if group is not None else None


def computed_from(kind: str, place: Place) -> tuple[str, ...]:
    """The references of the steps a `kind` step at `place` is computed from (the first rule that holds)."""
    return _first(kind_of(kind).computed_from, place)


def _first(rules: tuple[Rule, ...], place: Place) -> tuple[str, ...]:
    for candidate in rules:
        if candidate.holds(place):
            return candidate.sources
    return ()


def sources(step_id: str, trace) -> list[str | None]:
    """The ids of the recorded steps `step_id` was computed from, in order; None for a required
    one that is not in the trace (optional ones that are not recorded are left out)."""
    place = Place.of(step_id, trace)
    found = []
    for ref in computed_from(parse_name(split_id(step_id)[0])["kind"], place):
        step = resolve(ref, place, trace)
        if step is not None or not ref.endswith("?"):
            found.append(step)
    return found


def resolve(ref: str, place: Place, recorded: Container[str]) -> str | None:
    """The id of the recorded step `ref` names, seen from `place`; None if it is not recorded."""
    for term in ref.removesuffix("?").split("|"):
        found = _resolve_term(term.strip(), place, recorded)
        if found is not None:
            return found
    return None


def _resolve_term(term: str, place: Place, recorded: Container[str]) -> str | None:
    scope, _, path = term.rpartition(":")
    at = _scoped(scope, place, recorded)
    if at is None:
        return None
    if path == "output":
        if at.layer is None:
            return resolve(STACK_OUTPUT, at, recorded)
        refs = _first(LAYER_OUTPUT, at)
        return resolve(refs[0], at, recorded) if refs else None
    attn = place.component if place.component in ("attn", "cross_attn") else "attn"
    path = path.replace("{attn}", attn)
    if "{module}" in path:
        path = path.replace("{module}", ".".join(part for part in (place.component, place.module) if part))
    step_id = with_step(step_name(at.stack, at.layer, path), at.t, at.s)
    return step_id if step_id in recorded else None


def _scoped(scope: str, place: Place, recorded: Container[str]) -> Place | None:
    if scope == "":
        return place
    if scope == "stack":
        return place._replace(layer=None)
    if scope == "previous_layer":
        return place._replace(layer=place.layer - 1) if place.layer else None
    if scope == "last_layer":
        last = last_layer(place.stack, place.t, recorded, place.s)
        return place._replace(layer=last) if last is not None else None
    if scope == "encoder":
        return place._replace(stack="encoder", layer=None, component=None, t=None, module=None)
    raise ValueError(f"unknown scope {scope!r} in a reference (one of {', '.join(PATH_SCOPES[1:])})")


def last_layer(stack: str | None, t: int | None, recorded: Container[str], s: int | None = None) -> int | None:
    """The stack's last layer in pass t (layers are found by their `hook_resid_pre`)."""
    count = 0
    while with_step(step_name(stack, count, "hook_resid_pre"), t, s) in recorded:
        count += 1
    return count - 1 if count else None


def with_step(name: str, t: int | None, s: int | None = None) -> str:
    """A step's id: its hook name, plus `@t` in decoding step t, or `@sN` in training step N."""
    if s is not None:
        return f"{name}@s{s}"
    return name if t is None else f"{name}@{t}"
