"""Which taps and decoding steps a traced run records (`tracer run --only/--layers/--steps`).

A tap the filter leaves out gets no hook, so it costs nothing; a decoding step left out is run but
not kept. Each decoding step's probabilities (`hook_probs`) are always kept: they hold the choices.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tracer.errors import BadInput
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

    @classmethod
    def parse(cls, only=(), layers: str | None = None, steps: str | None = None) -> "TapFilter":
        return cls(tuple(only or ()), parse_ranges(layers, "--layers"), parse_ranges(steps, "--steps"))

    @property
    def empty(self) -> bool:
        return not self.only and self.layers is None and self.steps is None

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
        return out
