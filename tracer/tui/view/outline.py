"""The step navigator's outline: a trace's steps grouped as the paper draws them (no Textual).

Tokenize → embedding and positions → encoder layer L (self-attention, feed-forward) →
decoder step t → "token" (per layer: masked self-attention, cross-attention, feed-forward)
→ logits and probabilities. Steps keep computation order; groups only add structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracer.text import visible
from tracer.trace import Step, Trace, anatomy

ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "swiglu": "SwiGLU"}


@dataclass
class Node:
    """A line of the navigator: a group (children) or a step (step_id)."""

    key: str
    label: str
    step_id: str | None = None
    children: list["Node"] = field(default_factory=list)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def quoted(token: str) -> str:
    """A token or text from the trace, quoted for display (control characters escaped)."""
    return f'"{visible(token)}"'


def chosen_tokens(trace: Trace) -> dict[int, str]:
    """The token chosen at each decoding step, in one pass over the trace."""
    chosen = {}
    for step in trace.steps:
        token = (step.extra.get("chosen") or {}).get("token") if step.kind == "probs" else None
        if token is not None and step.decode_step is not None:
            chosen.setdefault(step.decode_step, token)
    return chosen


def leaf_label(step: Step, trace: Trace) -> str:
    """The step's line in the outline: its kind's label, with what this trace adds to it."""
    kind = step.kind
    if kind == "post":
        activation = trace.model.get("config", {}).get("activation", "")
        return f"activation {ACTIVATIONS.get(activation, activation)}".strip()
    if kind == "tokens":
        return "Tokenize" if step.decode_step is None else "tokens so far"
    if kind == "normalized":
        # Llama's and T5's norms are RMSNorms (BERT's embedding and MLM norms are layer norms in any case)
        rms = trace.model.get("config", {}).get("norm_type") in ("rmsnorm", "rmsnorm_t5") \
            and step.component not in ("ln_embed", "ln_mlm")
        name = "RMSNorm" if rms else "layer norm"
        return f"final {name}" if step.component == "ln_final" else name
    if kind == "probs":
        chosen = step.extra.get("chosen")
        if chosen:
            return f"probabilities → {quoted(chosen['token'])}"
    return anatomy.kind_of(kind).label


def group_path(step: Step, trace: Trace, chosen: dict[int, str] | None = None) -> list[tuple[str, str]]:
    """(key, label) of each group the step sits in, outermost first.

    `chosen` is `chosen_tokens(trace)`; pass it when labelling many steps (it is one pass over
    the trace, so working it out per step made the outline quadratic in the trace's length).
    """
    arch = trace.arch
    path: list[tuple[str, str]] = []
    t = step.decode_step
    prefix = ""
    if t is not None:
        token = (chosen if chosen is not None else chosen_tokens(trace)).get(t)
        arrow = f" → {quoted(token)}" if token is not None else ""
        name = "Decoder step" if arch == "encoder-decoder" else "Step"
        path.append((f"t{t}", f"{name} {t}{arrow}"))
        prefix = f"t{t}."
    group, group_label = anatomy.outline_group(step.kind, step.component, step.stack, arch) or (None, "")
    if step.layer is not None:
        stack = step.stack
        if stack == "encoder":
            layer_label = f"Encoder layer {step.layer}"
        elif stack == "decoder" and arch == "encoder-decoder":
            layer_label = f"Decoder layer {step.layer}"
        else:
            layer_label = f"Layer {step.layer}"
        layer_key = f"{prefix}{stack or 'blocks'}.{step.layer}"
        path.append((layer_key, layer_label))
        if group is not None and group not in anatomy.STACK_GROUPS:
            path.append((f"{layer_key}.{group}", group_label))
    elif group in anatomy.STACK_GROUPS:
        path.append((f"{prefix}{step.stack}.{group}", group_label))
    if step.train_step is not None:  # tracer finetune: training step, then forward / loss / backward / update
        s, phase = step.train_step, anatomy.phase_of(step.kind)
        outer = f"s{s}.{phase}"
        inner = [(f"{outer}.{key}", label) for key, label in path if label != anatomy.PHASES[phase]]
        return [(f"s{s}", f"Training step {s}"), (outer, anatomy.PHASES[phase])] + inner
    return path


def build_outline(trace: Trace) -> Node:
    """The whole trace as a tree of groups with one leaf per step, in computation order."""
    root = Node("root", visible(trace.model.get("name", "trace")))
    groups: dict[str, Node] = {}
    chosen = chosen_tokens(trace)
    for step in trace.steps:
        parent = root
        for key, label in group_path(step, trace, chosen):
            node = groups.get(key)
            if node is None:
                node = groups[key] = Node(key, label)
                parent.children.append(node)
            parent = node
        parent.children.append(Node(step.id, leaf_label(step, trace), step_id=step.id))
    return root
