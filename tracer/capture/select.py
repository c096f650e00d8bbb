"""Which taps, heads and decoding steps a traced run records (`tracer run --only/--layers/--heads/--steps`).

A tap the filter leaves out gets no hook, so it costs nothing; a decoding step left out is run but
not kept. Each decoding step's probabilities (`hook_probs`) are always kept: they hold the choices.
With `--heads`, a tap with a head axis (queries, keys, values, scores, pattern, z) keeps only those
heads, sliced where the model ran, before anything is copied to the host; keys and values under
grouped-query attention keep the key/value heads the chosen query heads read. Such a step says
which of the model's heads it holds (its `heads` extra: `{"kept": [0, 2, 3], "of": 12}`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tracer.errors import BadInput
from tracer.trace import anatomy
from tracer.trace.step import parse_name

ALWAYS = "hook_probs"  # the last tap of a head: what decoding chose, read back by the trace's predictions


def parse_ranges(text: str | None, what: str) -> frozenset[int] | None:
    """'0,2-3' -> {0, 2, 3}; None stays None."""
    if text is None:
        return None
    numbers: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise BadInput(f"{what} {text!r}: expected numbers and ranges such as 0,2-3") from None
        if low < 0 or high < low:
            raise BadInput(f"{what} {text!r}: {part.strip()!r} is not a range")
        numbers.update(range(low, high + 1))
    return frozenset(numbers)


@dataclass(frozen=True)
class TapFilter:
    """`only`: hook-name patterns (fnmatch, `blocks.*.attn.hook_pattern`; any of them); `layers`:
    layer numbers (taps outside every layer, the embeddings and the head, stay); `steps`: decoding
    steps. None (or empty `only`) selects everything."""

    only: tuple[str, ...] = ()
    layers: frozenset[int] | None = None
    steps: frozenset[int] | None = None
    heads: frozenset[int] | None = None  # query heads, numbered from 0 as the model's tensors index them

    @classmethod
    def parse(cls, only=(), layers: str | None = None, steps: str | None = None, heads: str | None = None) -> "TapFilter":
        return cls(tuple(only or ()), parse_ranges(layers, "--layers"), parse_ranges(steps, "--steps"),
                   parse_ranges(heads, "--heads"))

    @property
    def empty(self) -> bool:
        return not self.only and self.layers is None and self.steps is None and self.heads is None

    def check_heads(self, n_heads: int) -> None:
        """Refuse (one line) heads the model does not have."""
        if self.heads is not None and max(self.heads) >= n_heads:
            raise BadInput(f"--heads {max(self.heads)}: the model has {n_heads} heads, numbered 0-{n_heads - 1}")

    def kept_heads(self, name: str, axes, count: int, n_heads: int, kv_heads: int) -> list[int] | None:
        """The heads a tap keeps along its head axis of `count` heads (None: all of them): the
        chosen query heads, or at a key/value tap with fewer heads (grouped-query attention) the
        key/value heads they read (query head h reads key/value head h // (n_heads / kv_heads))."""
        if self.heads is None or "head" not in axes or name.endswith(ALWAYS):
            return None
        if count == n_heads:
            return sorted(self.heads)
        if count == kv_heads and n_heads % kv_heads == 0:
            return sorted({h // (n_heads // kv_heads) for h in self.heads})
        return None  # a head axis of another size: kept whole

    def taps(self, name: str) -> bool:
        """Whether the tap `name` gets a hook."""
        if name.endswith(ALWAYS):
            return True
        layer = parse_name(name)["layer"]
        if self.layers is not None and layer is not None and layer not in self.layers:
            return False
        return not self.only or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.only)

    def keeps_step(self, t: int | None) -> bool:
        """Whether decoding step t's pass is kept (the encoder's pass, t None, always is)."""
        return self.steps is None or t is None or t in self.steps

    def to_dict(self) -> dict:
        """What the trace's `capture.filter` says (sorted lists; absent keys select everything)."""
        out: dict = {}
        if self.only:
            out["only"] = list(self.only)
        if self.layers is not None:
            out["layers"] = sorted(self.layers)
        if self.steps is not None:
            out["steps"] = sorted(self.steps)
        if self.heads is not None:
            out["heads"] = sorted(self.heads)
        return out


def slicing_heads(record, select: TapFilter, n_heads: int, kv_heads: int, kept: dict[str, dict]):
    """`record(name, value)` wrapped so that a value with a head axis (after its batch axis) keeps only
    `select`'s heads: an indexing op where the value is (the GPU's memory, for a model there), so the
    host copy carries only them. `kept` collects each sliced tap's `heads` extra: {"kept": [...], "of": n}."""
    def sliced(name: str, value) -> None:
        axes = anatomy.axes_for(parse_name(name)["kind"], value.ndim - 1)
        at = axes.index("head") + 1 if "head" in axes else None
        heads = select.kept_heads(name, axes, value.shape[at], n_heads, kv_heads) if at is not None else None
        if heads is not None:
            index = [slice(None)] * value.ndim
            index[at] = heads
            kept[name] = {"kept": heads, "of": value.shape[at]}
            value = value[tuple(index)]
        record(name, value)

    return sliced
