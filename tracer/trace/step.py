"""One recorded tensor of a trace, with everything needed to explain it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable

import numpy as np

# "decoder.1.cross_attn.hook_pattern" -> stack, layer, component, hook.
# A LoRA adapter's taps sit one module deeper: "blocks.0.attn.W_Q.hook_lora_a" (module W_Q).
_PREFIX = r"^(?:(?P<stack>encoder|decoder)\.)?(?:(?:blocks\.)?(?P<layer>\d+)\.)?"
_TAP = r"(?:(?P<component>[a-z_0-9]+)\.)?(?:(?P<module>W_[A-Za-z_0-9]+)\.)?hook_"
_NAME = re.compile(_PREFIX + _TAP + r"(?P<kind>[a-z_0-9]+)$")
PARAM_KINDS = ("value", "grad", "adam_m", "adam_v", "adam_m_hat", "adam_v_hat", "adam_step", "new")


@lru_cache(maxsize=1)
def _training_patterns() -> tuple[re.Pattern, re.Pattern]:
    """The names only a training trace has, compiled on first use (not before replay's first frame).

    A gradient at a tap: "blocks.0.attn.hook_pattern.grad" (kind "pattern.grad", of "pattern").
    Per-parameter quantities: "blocks.0.attn.W_Q.weight.adam_m" (component "attn", param
    "W_Q.weight", kind "adam_m"); a weight module (W_…) is part of the parameter, not a component."""
    tap_grad = re.compile(_PREFIX + _TAP + r"(?P<of>[a-z_0-9]+)\.grad$")
    param = re.compile(_PREFIX + r"(?:(?P<component>(?!W_)[a-z_0-9]+)\.)?(?P<param>[A-Za-z_0-9.]+)\.(?P<kind>"
                       + "|".join(PARAM_KINDS) + r")$")
    return tap_grad, param


@lru_cache(maxsize=8192)
def parse_name(name: str) -> dict:
    """Split a step name into stack, layer, component and kind (None where absent).

    Training traces add keys (None elsewhere): a tap's gradient has kind `<tap kind>.grad` and
    `of`, the tap's kind (`hook_pattern.grad`: kind `pattern.grad`, of `pattern`); a parameter's
    steps have `param` (`W_Q.weight`) and kinds `value`, `grad`, `adam_m`, …; `module` is a
    LoRA-wrapped projection's name (`W_Q`). Callers must not change the dict (it is cached).
    """
    match = _NAME.match(name)
    if match is None:
        tap_grad, param = _training_patterns()
        match = tap_grad.match(name) or param.match(name)
    if match is None:
        return {"stack": None, "layer": None, "component": None, "kind": name.rsplit(".", 1)[-1],
                "of": None, "param": None, "module": None}
    parts = match.groupdict()
    layer = parts["layer"]
    return {
        "stack": parts["stack"],
        "layer": int(layer) if layer is not None else None,
        "component": parts["component"],
        "kind": parts.get("kind") or f"{parts['of']}.grad",
        "of": parts.get("of"),
        "param": parts.get("param"),
        "module": parts.get("module"),
    }


def split_step_id(step_id: str) -> tuple[str, int | None, int | None]:
    """A step id -> (name, decoding step, training step).

    `decoder.0.hook_z@3` is decoding step 3; `blocks.0.attn.hook_pattern@s2` is training step 2
    of a `tracer finetune` trace; a plain name has neither. Raises ValueError for anything else.
    """
    name, sep, suffix = step_id.partition("@")
    if not sep:
        return name, None, None
    training = suffix.startswith("s")
    number = suffix[1:] if training else suffix
    if not (number.isascii() and number.isdigit()):  # int() alone would take "-3", " 3" and other scripts' digits
        raise ValueError(f"invalid {'training' if training else 'decoding'} step")
    return (name, None, int(number)) if training else (name, int(number), None)


def split_id(step_id: str) -> tuple[str, int | None]:
    """`decoder.0.hook_z@3` -> ("decoder.0.hook_z", 3); ids without `@t` have no decoding step."""
    name, t, _ = split_step_id(step_id)
    return name, t


def compute_stats(array: np.ndarray) -> dict:
    """min/max/mean/std over the finite values, and how many values are not finite."""
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating):
        finite_mask = np.isfinite(array)
        nonfinite = int(array.size - np.count_nonzero(finite_mask))
        finite = array[finite_mask] if nonfinite else array
    else:
        nonfinite, finite = 0, array
    if finite.size == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "nonfinite": nonfinite}
    wide = finite.astype(np.float64)
    return {
        "min": float(wide.min()),
        "max": float(wide.max()),
        "mean": float(wide.mean()),
        "std": float(wide.std()),
        "nonfinite": nonfinite,
    }


def row_axis(axes) -> int | None:
    """The axis a KV-cached pass adds rows to: the queries of an attention matrix, else the
    positions (`pos` first); None for a tensor with no position axis (the next token's logits)."""
    axes = tuple(axes)
    if "query" in axes:
        return axes.index("query")
    return 0 if axes and axes[0] == "pos" else None


def full_shape(shape, axes, cached: int) -> tuple[int, ...]:
    """The shape a KV-cached step's rows assemble to: `cached` more rows along its row axis."""
    axis = row_axis(axes) if cached else None
    if axis is None:
        return tuple(shape)
    return tuple(shape[:axis]) + (shape[axis] + cached,) + tuple(shape[axis + 1:])


def heads_kept(extra, count: int) -> tuple[list[int], int] | None:
    """A `heads` extra as (kept, of) when it describes a head axis of `count`: distinct ascending
    head numbers below `of`; None for anything else (a damaged or hostile file)."""
    if type(extra) is not dict:
        return None
    kept, of = extra.get("kept"), extra.get("of")
    if type(of) is not int or type(kept) is not list or len(kept) != count:
        return None
    if not all(type(h) is int for h in kept) or kept != sorted(set(kept)) or (kept and (kept[0] < 0 or kept[-1] >= of)):
        return None
    return kept, of


def kv_columns(query: "Step", keys: "Step") -> list[int] | None:
    """For each head `query` holds, the position along `keys`' head axis of the key/value head it
    reads: query head h reads h // (n_heads / kv_heads) under grouped-query attention. None when
    one is not recorded (a --heads filter) or the head counts do not divide."""
    total, kv_total = query.heads_of, keys.heads_of
    if not total or not kv_total or total % kv_total:
        return None
    column = {head: i for i, head in enumerate(keys.heads)}
    wanted = [column.get(head // (total // kv_total)) for head in query.heads]
    return None if None in wanted else wanted


@lru_cache(maxsize=64)
def dtype_name(dtype: np.dtype) -> str:
    """`str(dtype)`, one string per dtype however many steps have it (str() builds a new one each time)."""
    return str(dtype)


@lru_cache(maxsize=1024)
def shared_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One tuple for every step of the same shape (a pass's layers repeat the same dozen shapes)."""
    return shape


# The keys of `Step.meta()` that are the step's own metadata; any other key is an extra.
META_KEYS = frozenset({"index", "id", "name", "kind", "stack", "layer", "decode_step", "train_step", "shape", "dtype",
                       "axes", "labels", "stats", "cached"})


@dataclass(eq=False)
class Step:
    """A recorded tensor: its id, axes, token labels and stats; data and stats load on demand.

    `extra` holds what only some kinds carry: `top_k` and `chosen` on a `probs` step,
    `predictions` on an encoder-only model's `probs` step.

    A KV-cached decoding step (`cached = n`, n > 0) stores only what its pass computed: the rows
    after the first n of its position (or query) axis. Its Trace links it to the same tap one
    decoding step earlier; `data` and `shape` are then the full tensor, assembled from the rows of
    every step before it, and `rows` / `stored_shape` what was recorded.
    """

    id: str
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[str, ...]
    labels: dict[str, list[str]] = field(default_factory=dict)
    _stats: dict | None = None
    extra: dict = field(default_factory=dict)
    index: int = 0
    _array: np.ndarray | None = field(default=None, repr=False)
    _loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    cached: int = 0  # rows of the position (query) axis that came from earlier steps' KV cache
    stored_shape: tuple[int, ...] | None = None  # set when the step is assembled from cached rows
    _rows: np.ndarray | None = field(default=None, repr=False)
    _assemble: Callable[["Step"], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_array(cls, step_id: str, array: np.ndarray, axes, labels=None, extra=None, cached: int = 0) -> "Step":
        """A step recorded in memory (`cached`: a KV-cached step, the array its new rows only)."""
        array = np.asarray(array)
        if len(axes) != array.ndim:
            raise ValueError(f"{step_id}: {len(axes)} axes for a {array.ndim}-d tensor")
        return cls(
            id=step_id,
            shape=shared_shape(array.shape),
            dtype=dtype_name(array.dtype),
            axes=tuple(axes),
            labels=labels if type(labels) is dict else dict(labels or {}),  # a dict is kept: a pass's steps share one
            extra=dict(extra or {}),
            _array=array,
            cached=cached,
        )

    @property
    def heads(self) -> list[int]:
        """The model's head numbers (from 0) along the head axis, in order: every head, or those a
        `--heads` filter kept (the `heads` extra, `{"kept": [0, 2, 3], "of": 12}`); empty without a
        head axis. A `heads` extra that does not fit the axis is ignored."""
        if "head" not in self.axes:
            return []
        count = self.shape[self.axes.index("head")]
        kept = heads_kept(self.extra.get("heads"), count)
        return kept[0] if kept is not None else list(range(count))

    @property
    def heads_of(self) -> int | None:
        """How many heads the model has at this tap (None without a head axis)."""
        if "head" not in self.axes:
            return None
        kept = heads_kept(self.extra.get("heads"), self.shape[self.axes.index("head")])
        return kept[1] if kept is not None else self.shape[self.axes.index("head")]

    # The id never changes, so what it says is worked out once per step (the UI asks thousands
    # of times while it builds the outline).
    @cached_property
    def name(self) -> str:
        return split_id(self.id)[0]

    @cached_property
    def decode_step(self) -> int | None:
        return split_id(self.id)[1]

    @cached_property
    def train_step(self) -> int | None:
        """The training step (`@sN`) of a `tracer finetune` trace's step; None elsewhere."""
        return split_step_id(self.id)[2]

    @cached_property
    def _parts(self) -> dict:
        return parse_name(self.name)

    @property
    def kind(self) -> str:
        return self._parts["kind"]

    @property
    def stack(self) -> str | None:
        return self._parts["stack"]

    @property
    def layer(self) -> int | None:
        return self._parts["layer"]

    @property
    def component(self) -> str | None:
        """The sub-module the tap sits in: `attn`, `cross_attn`, `mlp`, `ln1`, … or None."""
        return self._parts["component"]

    @property
    def stats(self) -> dict:
        """min/max/mean/std/nonfinite, computed on first use (capture stays cheap)."""
        if self._stats is None:
            self._stats = compute_stats(self.data)
        return self._stats

    @property
    def data(self) -> np.ndarray:
        """The tensor, read from storage (or assembled from cached rows) the first time it is asked for."""
        if self._array is None:
            if self._assemble is not None:
                self._array = self._assemble(self)
            elif self._loader is None:
                raise ValueError(f"{self.id}: no data recorded")
            else:
                self._array = self._loader()
        return self._array

    @property
    def rows(self) -> np.ndarray:
        """What was recorded: the whole tensor, or a KV-cached step's new rows only."""
        if self.stored_shape is None:
            return self.data
        if self._rows is None:
            if self._loader is None:
                raise ValueError(f"{self.id}: no data recorded")
            self._rows = self._loader()
        return self._rows

    def peek(self) -> np.ndarray:
        """`data`, without keeping what had to be read or assembled (a tensor already held is
        returned as it is): for readers that need a step only for a moment, such as the
        assembly of a later step, so that walking a long trace never piles up its tensors."""
        if self._array is not None:
            return self._array
        if self._assemble is not None:
            return self._assemble(self)
        if self._loader is None:
            raise ValueError(f"{self.id}: no data recorded")
        return self._loader()

    def peek_rows(self) -> np.ndarray:
        """`rows`, without keeping what had to be read (see `peek`)."""
        if self.stored_shape is None:
            return self.peek()
        if self._rows is not None:
            return self._rows
        if self._loader is None:
            raise ValueError(f"{self.id}: no data recorded")
        return self._loader()

    @property
    def rows_shape(self) -> tuple[int, ...]:
        """The shape of `rows` (what a file stores)."""
        return self.stored_shape if self.stored_shape is not None else self.shape

    def link_cached(self, assemble: Callable[["Step"], np.ndarray]) -> None:
        """Make `data` and `shape` the full tensor, built by `assemble(step)` from this step's rows
        and the earlier steps' (the Trace does this for every step with `cached` rows, with one
        function for all of them: a decode has thousands)."""
        if self.stored_shape is None:
            axis = row_axis(self.axes)
            if axis is None:
                raise ValueError(f"{self.id}: cached rows, but no position axis in {list(self.axes)}")
            self.stored_shape = self.shape
            shape = list(self.shape)
            shape[axis] += self.cached
            self.shape = shared_shape(tuple(shape))
            if self._array is not None:  # recorded in memory: the array is the rows
                self._rows, self._array = self._array, None
        self._assemble = assemble

    def release(self) -> None:
        """Drop the loaded tensor if it can be loaded again (keeps memory flat when replaying)."""
        if self._assemble is not None:
            self._array = None
            if self._loader is not None:
                self._rows = None
        elif self._loader is not None:
            self._array = None

    def meta(self, stats: bool = True) -> dict:
        """The step's metadata in DESIGN.md's JSON layout, without the data (`stats=False`: without
        stats unless already computed, so that nothing is read or assembled)."""
        out = {
            "index": self.index,
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "stack": self.stack,
            "layer": self.layer,
            "decode_step": self.decode_step,
            "shape": list(self.rows_shape),
            "dtype": self.dtype,
            "axes": list(self.axes),
            "labels": self.labels,
            "stats": self.stats if stats else self._stats,
        }
        if out["stats"] is None:
            del out["stats"]
        if self.train_step is not None:  # only training traces carry the key
            out["train_step"] = self.train_step
        if self.cached:  # only KV-cached decoding steps carry the key
            out["cached"] = self.cached
        out.update(self.extra)
        return out
