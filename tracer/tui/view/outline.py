"""The step navigator's outline: a trace's steps grouped as the paper draws them (no Textual).

Tokenize → embedding and positions → encoder layer L (self-attention, feed-forward) →
decoder step t → "token" (per layer: masked self-attention, cross-attention, feed-forward)
→ logits and probabilities. Steps keep computation order; groups only add structure.

A group's lines are worked out when it is first opened (or walked), not when the outline is
built: the first screen of a 40-step decode (9,360 steps) shows forty folded decoding steps and
the one opened, so building every group up front was most of replay's start-up on big traces.
A trace whose later passes are not read yet (`Trace.later_passes`) shows them folded, from what
the session's pass index says of them; opening one reads them.
"""

from __future__ import annotations

from tracer.text import visible
from tracer.trace import Step, Trace, anatomy

ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "swiglu": "SwiGLU"}


class Node:
    """A line of the navigator: a group (children) or a step (step_id).

    A group built by `build_outline` holds its steps until its children are first asked for;
    `has_children` says whether it has any without working them out."""

    def __init__(self, key: str, label: str, step_id: str | None = None, children: list["Node"] | None = None,
                 *, _steps: list[Step] | None = None, _depth: int = 0, _outline: "_Outline | None" = None,
                 _decoding: int | None = None) -> None:
        self.key = key
        self.label = label
        self.step_id = step_id
        self._children = children if children is not None else []
        self._steps = _steps      # not yet grouped: these steps, at this depth of their group paths
        self._depth = _depth
        self._outline = _outline
        self._decoding = _decoding  # a decoding step not read yet: its steps are asked for when opened
        self._by_key: dict[str, Node] | None = None

    def __repr__(self) -> str:
        return f"Node({self.key!r}, {self.label!r}, step_id={self.step_id!r})"

    @property
    def children(self) -> list["Node"]:
        if self._decoding is not None:  # reads the trace's later passes (once, for all of them)
            t, self._decoding = self._decoding, None
            self._steps = self._outline.trace.find(decode_step=t)
        if self._steps is not None:
            self._grow()
        return self._children

    @property
    def has_children(self) -> bool:
        return self._decoding is not None or bool(self._steps) or bool(self._children)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def child(self, key: str) -> "Node | None":
        """The child line with this key (a group's key, a step's id), or None."""
        if self._by_key is None:
            self._by_key = {node.key: node for node in self.children}
        return self._by_key.get(key)

    def path_to(self, step_id: str) -> list["Node"] | None:
        """The lines from this (root) node's children down to the step's own line, opening only
        the groups on the way; None if the step is not in the outline."""
        outline = self._outline
        if outline is None:  # a tree built by hand: search it
            return _search(self, step_id)
        if step_id not in outline.trace:
            return None
        step = outline.trace.step(step_id)
        keys = [key for key, _ in outline.path(step)] + [step.id]
        node, path = self, []
        for key in keys:
            node = node.child(key)
            if node is None:
                return None
            path.append(node)
        return path

    def _grow(self) -> None:
        """Group the steps held by the next element of their group paths, in computation order:
        a group where its first step is, a step's line where the step is."""
        steps, self._steps = self._steps, None
        outline, depth = self._outline, self._depth
        groups: dict[str, Node] = {}
        children = self._children
        for step in steps:
            key_label = outline.top(step) if depth == 0 else outline.element(step, depth)
            if key_label is None:
                children.append(Node(step.id, leaf_label(step, outline.trace), step_id=step.id))
                continue
            node = groups.get(key_label[0])
            if node is None:
                node = groups[key_label[0]] = Node(*key_label, _steps=[], _depth=depth + 1, _outline=outline)
                children.append(node)
            node._steps.append(step)
        if depth == 0:  # the passes not read yet, folded
            arch = outline.trace.arch
            for later in outline.later:
                t = later.decode_step
                children.append(Node(*decoding_group(t, arch, outline.chosen.get(t)), _depth=1, _outline=outline,
                                     _decoding=t))


def _search(node: Node, step_id: str) -> list[Node] | None:
    for child in node.children:
        if child.step_id == step_id:
            return [child]
        below = _search(child, step_id)
        if below is not None:
            return [child] + below
    return None


class _Outline:
    """What the lazy groups of one outline share: the trace, its chosen tokens, the paths worked out."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.chosen = chosen_tokens(trace)
        self.later = trace.later_passes  # not read when built (the root holds the steps read then): folded
        self._paths: dict[str, list[tuple[str, str]]] = {}
        self._decoding: dict[int, tuple[str, str]] = {}

    def path(self, step: Step) -> list[tuple[str, str]]:
        path = self._paths.get(step.id)
        if path is None:
            path = self._paths[step.id] = group_path(step, self.trace, self.chosen)
        return path

    def element(self, step: Step, depth: int) -> tuple[str, str] | None:
        path = self.path(step)
        return path[depth] if depth < len(path) else None

    def top(self, step: Step) -> tuple[str, str] | None:
        """The outermost group of a step (its path's first element). A decoding step's is its
        decoding step's group, worked out once per decoding step, not once per step."""
        t = step.decode_step
        if t is None or step.train_step is not None:
            return self.element(step, 0)
        top = self._decoding.get(t)
        if top is None:
            top = self._decoding[t] = self.element(step, 0)
        return top


def quoted(token: str) -> str:
    """A token or text from the trace, quoted for display (control characters escaped)."""
    return f'"{visible(token)}"'


def chosen_tokens(trace: Trace) -> dict[int, str]:
    """The token chosen at each decoding step, in one pass over the trace (over the passes read so
    far, and what the session's pass index says of the others: the same tokens, checked when read)."""
    chosen = {}
    for step in trace.loaded_steps:
        if not step.extra:  # most steps: `chosen` is an extra, on a probs step
            continue
        token = (step.extra.get("chosen") or {}).get("token") if step.kind == "probs" else None
        if token is not None and step.decode_step is not None:
            chosen.setdefault(step.decode_step, token)
    for later in trace.later_passes:
        if later.chosen is not None:
            chosen.setdefault(later.decode_step, later.chosen)
    return chosen


def decoding_group(t: int, arch: str, token: str | None) -> tuple[str, str]:
    """(key, label) of decoding step t's group: `Step 3 → "dog"`."""
    arrow = f" → {quoted(token)}" if token is not None else ""
    name = "Decoder step" if arch == "encoder-decoder" else "Step"
    return f"t{t}", f"{name} {t}{arrow}"


def leaf_label(step: Step, trace: Trace) -> str:
    """The step's line in the outline: its kind's label, with what this trace adds to it."""
    kind = step.kind
    if kind == "post":
        activation = trace.model.get("config", {}).get("activation", "")
        return f"activation {ACTIVATIONS.get(activation, activation)}".strip()
    if kind == "tokens":
        return "Tokenize" if step.decode_step is None else "tokens so far"
    if kind == "normalized":
        name = "RMSNorm" if anatomy.is_rms_norm(trace.model.get("config"), step.component) else "layer norm"
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
        path.append(decoding_group(t, arch, (chosen if chosen is not None else chosen_tokens(trace)).get(t)))
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
    """The whole trace as a tree of groups with one leaf per step, in computation order (each
    group's lines worked out when first asked for)."""
    return Node("root", visible(trace.model.get("name", "trace")), _steps=list(trace.loaded_steps), _outline=_Outline(trace))
