"""Compare two traces step by step: how much each tensor changed, and where they first differ.

Steps are aligned by id. For each step in both traces: the largest absolute difference, the
relative L2 distance and the cosine similarity (in float64, over the cells finite on both
sides); on a probability step also the KL divergence, how the top-k ranking changed and what
became of the chosen token. Token axes (`pos`, `query`, `key`) of different lengths are
compared over the positions both have; any other shape difference is listed, not compared.
Decoding steps are compared while both decodes chose the same tokens: from the step where
they part, the inputs of the later steps differ and comparing them would say nothing.

Numpy only, never torch: `tracer diff` and the UI's compare mode run on saved sessions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tracer.errors import BadInput
from tracer.trace.step import Step
from tracer.trace.trace import Trace

# A step differs when its largest |Δ| exceeds TOL × max(1, its largest |value|). 1e-4 is about
# 800 float32 ulps (eps 1.2e-7): the same computation with its sums in another order (CPU vs
# CUDA kernels, another BLAS blocking, KV cache vs full re-run) differs by 1e-7…1e-5 relative
# through a few layers of float32, which passes; another input token or a changed weight moves
# values by 1e-2 or more, which does not. The max(1, …) makes it absolute for values below 1
# (probabilities, attention weights: a change of 1e-4 in a weight is noise). Half precision
# needs more: float16 (eps 1e-3) about --tol 1e-2, bfloat16 (eps 8e-3) about --tol 5e-2.
DEFAULT_TOL = 1e-4

# A trace stored as float16 (`tracer run --store-dtype float16`) holds each value rounded to 11
# significant bits: off by at most u = 2⁻¹¹ ≈ 4.9e-4 of its size, so of the step's scale. Each
# float16 side widens a step's tolerance by u (whatever --tol says, 0 included: rounding is not a
# difference): a float16 and a float32 trace of one run are equal within tol + u, two float16
# traces of runs that agree within tol are equal within tol + 2u, and a changed token or weight
# (1e-2 and more) still shows.
FLOAT16_ROUNDOFF = 2.0 ** -11

# axes indexed by token position: two inputs of different lengths are compared position by position
TOKEN_AXES = frozenset({"pos", "query", "key"})

TOP_K = 5  # ranks compared when a probability step recorded no top-k of its own

# why a step in both traces was not compared
COMPARED, UNALIGNED, PARTED = "compared", "unaligned", "parted"


@dataclass(frozen=True)
class PredictionDiff:
    """One distribution's prediction in both traces (one per decoding step; one per masked position)."""

    pos: int | None          # the position predicted (encoder-only models), None for a decoding step
    chosen_a: dict           # {"id": …, "token": …} (token None where the trace did not name it)
    chosen_b: dict
    prob_a: float            # A's probability of A's chosen token
    prob_b: float            # B's probability of A's chosen token
    top_k_a: tuple[int, ...]
    top_k_b: tuple[int, ...]

    @property
    def chosen_changed(self) -> bool:
        return self.chosen_a.get("id") != self.chosen_b.get("id")

    @property
    def chosen_prob_change(self) -> float:
        """How much probability B gives A's chosen token, minus A's (negative: B is less sure)."""
        return self.prob_b - self.prob_a

    @property
    def top_k_changed(self) -> int:
        """Ranks of the top-k holding another token in B (0: the same ranking)."""
        k = min(len(self.top_k_a), len(self.top_k_b))
        return sum(x != y for x, y in zip(self.top_k_a[:k], self.top_k_b[:k])) + abs(len(self.top_k_a) - len(self.top_k_b))


@dataclass(frozen=True)
class StepDiff:
    """One step id found in both traces, and what comparing its two tensors found."""

    id: str
    kind: str
    status: str                          # COMPARED, UNALIGNED (shapes) or PARTED (after the decodes part)
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    compared_shape: tuple[int, ...] | None = None  # the overlap compared (smaller than a shape where cropped)
    reason: str = ""                     # why not compared, in words
    max_abs: float = 0.0                 # largest |a - b| over cells finite on both sides
    rel_l2: float = 0.0                  # ‖a - b‖ / max(‖a‖, ‖b‖) over those cells
    cosine: float = 1.0                  # a·b / (‖a‖ ‖b‖); 1 when both are zero, 0 when one is
    scale: float = 1.0                   # max(1, largest |value|): the tolerance is relative to it
    changed: int = 0                     # cells over the tolerance, non-finite mismatches included
    cells: int = 0                       # cells compared
    nonfinite_differ: int = 0            # cells non-finite on a side and not the same value on the other
    tol: float | None = None             # the tolerance applied: --tol, widened for float16 storage (step_tolerance)
    exact: bool = False                  # integer or boolean data: any change is a difference
    kl: float | None = None              # probability steps: KL(A ‖ B), the largest over rows
    predictions: tuple[PredictionDiff, ...] = ()
    over_tol: bool = False

    @property
    def cropped(self) -> bool:
        return self.compared_shape is not None and (self.compared_shape != self.shape_a or self.compared_shape != self.shape_b)

    @property
    def relative_max(self) -> float:
        """max |Δ| / scale: the figure compared with the tolerance."""
        return self.max_abs / self.scale

    @property
    def chosen_changed(self) -> bool:
        return any(p.chosen_changed for p in self.predictions)

    def to_dict(self) -> dict:
        out = {
            "id": self.id, "kind": self.kind, "status": self.status, "over_tol": self.over_tol,
            "shape_a": list(self.shape_a), "shape_b": list(self.shape_b),
            "compared_shape": None if self.compared_shape is None else list(self.compared_shape),
            "cropped": self.cropped, "reason": self.reason,
            "max_abs": _json_float(self.max_abs), "rel_l2": _json_float(self.rel_l2), "cosine": _json_float(self.cosine),
            "scale": _json_float(self.scale), "changed": self.changed, "cells": self.cells,
            "nonfinite_differ": self.nonfinite_differ, "exact": self.exact, "tol": self.tol,
        }
        if self.kind == "probs" and self.status == COMPARED:
            out["kl"] = _json_float(self.kl)
            out["predictions"] = [
                {"pos": p.pos, "chosen_a": p.chosen_a, "chosen_b": p.chosen_b, "chosen_changed": p.chosen_changed,
                 "prob_a": _json_float(p.prob_a), "prob_b": _json_float(p.prob_b),
                 "chosen_prob_change": _json_float(p.chosen_prob_change),
                 "top_k_a": list(p.top_k_a), "top_k_b": list(p.top_k_b), "top_k_changed": p.top_k_changed}
                for p in self.predictions
            ]
        return out


@dataclass
class TraceDiff:
    """Every step of two traces, compared. `d["encoder.0.attn.hook_pattern"]` is that step's StepDiff."""

    tol: float
    steps: list[StepDiff]                # ids in both traces, in A's computation order
    only_in_a: list[str]
    only_in_b: list[str]
    input_lengths: tuple[int, int]       # tokens of each input
    decode_lengths: tuple[int, int]      # decoding steps of each trace
    parted_at: int | None = None         # the decoding step whose chosen tokens differ first
    parted_tokens: tuple[dict, dict] | None = None  # what A and B chose there
    _by_id: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._by_id = {s.id: s for s in self.steps}

    def __getitem__(self, step_id: str) -> StepDiff:
        try:
            return self._by_id[step_id]
        except KeyError:
            raise KeyError(f"no step {step_id!r} in both traces") from None

    def __contains__(self, step_id: object) -> bool:
        return step_id in self._by_id

    @property
    def compared(self) -> list[StepDiff]:
        return [s for s in self.steps if s.status == COMPARED]

    @property
    def unaligned(self) -> list[StepDiff]:
        return [s for s in self.steps if s.status == UNALIGNED]

    @property
    def parted(self) -> list[StepDiff]:
        return [s for s in self.steps if s.status == PARTED]

    @property
    def over_tol(self) -> list[StepDiff]:
        """Steps whose difference exceeds the tolerance, unaligned shapes included, in A's order."""
        return [s for s in self.steps if s.over_tol]

    @property
    def first_over_tol(self) -> str | None:
        """The id of the first step (in computation order) whose difference exceeds the tolerance."""
        return next((s.id for s in self.steps if s.over_tol), None)

    @property
    def inputs_differ_in_length(self) -> bool:
        return self.input_lengths[0] != self.input_lengths[1]

    @property
    def equal(self) -> bool:
        """Steps in both traces, every one within the tolerance; decodes that never part; inputs of one length.

        Steps on one side only do not count against it (a filtered trace, a longer decode): they
        are listed. Two traces with no step in common (another architecture) are not equal.
        """
        return bool(self.steps) and not self.over_tol and self.parted_at is None and not self.inputs_differ_in_length

    def most_changed(self, n: int | None = None) -> list[StepDiff]:
        """Steps that changed at all, the most changed first: unaligned shapes, then non-finite
        mismatches, then by relative L2 (ties by max |Δ| relative to the step's scale)."""
        changed = [s for s in self.steps
                   if s.status == UNALIGNED or (s.status == COMPARED and (s.changed or s.max_abs > 0 or s.chosen_changed))]
        changed.sort(key=lambda s: (s.status == UNALIGNED, s.nonfinite_differ > 0, _sortable(s.rel_l2), _sortable(s.relative_max)),
                     reverse=True)
        return changed if n is None else changed[:n]

    def summary(self) -> list[str]:
        """The findings in words, one line each."""
        lines = [
            f"{len(self.steps)} steps in both: {len(self.compared)} compared, {len(self.over_tol)} over tolerance {self.tol:g}"
            + (f", {len(self.unaligned)} with shapes that cannot be aligned" if self.unaligned else "")
            + (f", {len(self.parted)} after the decodes part" if self.parted else "")
            + f"; {len(self.only_in_a)} only in A, {len(self.only_in_b)} only in B"
        ]
        if any(s.tol is not None and s.tol > self.tol for s in self.compared):
            lines.append(f"float16-stored values: tolerance widened by {FLOAT16_ROUNDOFF:.2g} for each float16 side "
                         "(its rounding)")
        if not self.steps:
            lines.append("no step in both traces: nothing to compare")
        first = self.first_over_tol
        lines.append(f"first step over tolerance: {first}" if first else "no step over tolerance")
        largest = max(self.compared, key=lambda s: _sortable(s.relative_max), default=None)
        if largest is not None and largest.max_abs == 0 and not any(s.changed for s in self.compared):
            lines.append("every compared value is identical")
        elif largest is not None:
            lines.append(f"largest difference: max |Δ| {largest.max_abs:.3g} ({largest.relative_max:.3g} of its scale)"
                         f" at {largest.id}")
        if self.parted_at is not None:
            a, b = self.parted_tokens
            lines.append(f"decodes part at step {self.parted_at}: A chose {_token(a)}, B chose {_token(b)}")
        elif self.decode_lengths[0] != self.decode_lengths[1]:
            lines.append(f"decodes agree on every step both have ({self.decode_lengths[0]} vs {self.decode_lengths[1]} steps)")
        if self.inputs_differ_in_length:
            a, b = self.input_lengths
            lines.append(f"inputs differ in length ({a} vs {b} tokens): token axes compared over the first positions both have"
                         f" ({sum(s.cropped for s in self.compared)} steps cropped)")
        lines.append("equal within tolerance" if self.equal else "traces differ")
        return lines

    def to_dict(self) -> dict:
        """A JSON-ready dict (non-finite figures as null); `tracer diff --json` prints it."""
        return {
            "format": "tracer-diff", "version": 1, "tol": self.tol, "equal": self.equal,
            "first_over_tol": self.first_over_tol, "parted_at": self.parted_at,
            "parted_tokens": None if self.parted_tokens is None else {"a": self.parted_tokens[0], "b": self.parted_tokens[1]},
            "input_lengths": list(self.input_lengths), "decode_lengths": list(self.decode_lengths),
            "counts": {
                "in_both": len(self.steps), "compared": len(self.compared), "over_tol": len(self.over_tol),
                "unaligned": len(self.unaligned), "parted": len(self.parted),
                "only_in_a": len(self.only_in_a), "only_in_b": len(self.only_in_b),
            },
            "only_in_a": list(self.only_in_a), "only_in_b": list(self.only_in_b),
            "steps": [s.to_dict() for s in self.steps],
        }


# -- the public entry points -----------------------------------------------------------------------
def diff(a: Trace, b: Trace, tol: float = DEFAULT_TOL) -> TraceDiff:
    """Compare trace `b` with trace `a`, step by step (see the module docstring)."""
    if not (tol >= 0 and math.isfinite(tol)):
        raise BadInput(f"the tolerance must be a finite number >= 0, not {tol!r}")
    parted_at, parted_tokens = _parting(a, b)
    steps = []
    for step_a in a.steps:
        if step_a.id not in b:
            continue
        step_b = b.step(step_a.id)
        if parted_at is not None and step_a.decode_step is not None and step_a.decode_step > parted_at:
            steps.append(StepDiff(step_a.id, step_a.kind, PARTED, step_a.shape, step_b.shape,
                                  reason=f"after the decodes part at step {parted_at}"))
            continue
        steps.append(_with_released(compare_steps, step_a, step_b, tol))
    return TraceDiff(
        tol=tol,
        steps=steps,
        only_in_a=[s.id for s in a.steps if s.id not in b],
        only_in_b=[s.id for s in b.steps if s.id not in a],
        input_lengths=(len(a.input.get("tokens") or []), len(b.input.get("tokens") or [])),
        decode_lengths=(len(a.decode_steps), len(b.decode_steps)),
        parted_at=parted_at,
        parted_tokens=parted_tokens,
    )


def compare_steps(step_a: Step, step_b: Step, tol: float = DEFAULT_TOL) -> StepDiff:
    """Compare two recordings of one step (their overlap, where token axes differ in length)."""
    base = dict(id=step_a.id, kind=step_a.kind, shape_a=tuple(step_a.shape), shape_b=tuple(step_b.shape))
    overlap, reason = _overlap(step_a, step_b)
    if overlap is None:
        return StepDiff(status=UNALIGNED, reason=reason, over_tol=True, **base)
    region = tuple(slice(0, n) for n in overlap)
    x, y = step_a.data[region], step_b.data[region]
    exact = not (np.issubdtype(x.dtype, np.floating) and np.issubdtype(y.dtype, np.floating))
    tol = 0.0 if exact else step_tolerance(x, y, tol)
    figures = _figures(x, y, tol)
    kl, predictions = (None, ())
    if step_a.kind == "probs" and not exact:
        kl = _kl(x, y)
        predictions = _predictions(step_a, step_b, x, y)
    over = figures["changed"] > 0 or any(p.chosen_changed for p in predictions)
    return StepDiff(status=COMPARED, compared_shape=tuple(overlap), exact=exact, kl=kl, predictions=predictions,
                    over_tol=over, tol=tol, **figures, **base)


def step_tolerance(x: np.ndarray, y: np.ndarray, tol: float) -> float:
    """`tol`, widened by float16's rounding for each side stored as float16 (FLOAT16_ROUNDOFF)."""
    return tol + FLOAT16_ROUNDOFF * ((x.dtype == np.float16) + (y.dtype == np.float16))


def delta(step_a: Step, step_b: Step) -> np.ndarray | None:
    """B − A over the cells both have (float64), for a Δ heat map; None when shapes cannot be aligned.

    Where both sides hold the same non-finite value (a masked −∞) the delta is 0; where they
    hold different non-finite values (or a number and a non-finite) it is NaN.
    """
    overlap, _ = _overlap(step_a, step_b)
    if overlap is None:
        return None
    region = tuple(slice(0, n) for n in overlap)
    x = step_a.data[region].astype(np.float64)
    y = step_b.data[region].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out = y - x
    special = ~(np.isfinite(x) & np.isfinite(y))
    if special.any():
        out[special] = np.where(_same_special(x[special], y[special]), 0.0, np.nan)
    return out


def parting(a: Trace, b: Trace) -> tuple[int | None, tuple[dict, dict] | None]:
    """The first decoding step at which the decodes of `a` and `b` chose different tokens, and the
    two tokens chosen there; (None, None) when they never part. Cheap: no tensor is read (the UI's
    compare mode compares step by step and needs to know which steps `diff` would call parted)."""
    return _parting(a, b)


# -- alignment ------------------------------------------------------------------------------------
def _overlap(step_a: Step, step_b: Step) -> tuple[tuple[int, ...] | None, str]:
    """The shape both steps have (token axes cut to the shorter), or None and why not."""
    if tuple(step_a.axes) != tuple(step_b.axes) or len(step_a.shape) != len(step_b.shape):
        return None, f"axes [{', '.join(step_a.axes)}] vs [{', '.join(step_b.axes)}]"
    overlap = []
    for axis, m, n in zip(step_a.axes, step_a.shape, step_b.shape):
        if m != n and axis not in TOKEN_AXES:
            return None, f"shape {list(step_a.shape)} vs {list(step_b.shape)} ({axis} differs)"
        overlap.append(min(m, n))
    return tuple(overlap), ""


def _parting(a: Trace, b: Trace) -> tuple[int | None, tuple[dict, dict] | None]:
    """The first decoding step both traces have at which they chose different tokens."""
    chosen_a, chosen_b = _chosen_by_step(a), _chosen_by_step(b)
    for t in sorted(set(chosen_a) & set(chosen_b)):
        if chosen_a[t].get("id") != chosen_b[t].get("id"):
            return t, (chosen_a[t], chosen_b[t])
    return None, None


def _chosen_by_step(trace: Trace) -> dict[int, dict]:
    """Decoding step -> the token chosen there, from the probability steps (else the output ids)."""
    chosen = {}
    for step in trace.steps:
        if step.kind == "probs" and step.decode_step is not None and isinstance(step.extra.get("chosen"), dict):
            chosen[step.decode_step] = dict(step.extra["chosen"])
    ids = trace.output.get("ids") or []
    tokens = trace.output.get("tokens") or []
    for t in trace.decode_steps:
        if t not in chosen and t - 1 < len(ids):  # a trace filtered to fewer steps still says what it chose
            chosen[t] = {"id": ids[t - 1], "token": tokens[t - 1] if t - 1 < len(tokens) else None}
    return chosen


# -- the figures ----------------------------------------------------------------------------------
def _figures(x: np.ndarray, y: np.ndarray, tol: float) -> dict:
    """max |Δ|, relative L2, cosine, scale and the changed cells of two arrays of one shape."""
    a = x.astype(np.float64, copy=False).ravel()
    b = y.astype(np.float64, copy=False).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    nonfinite_differ = 0
    if not finite.all():
        nonfinite_differ = int(np.count_nonzero(~_same_special(a[~finite], b[~finite])))
        a, b = a[finite], b[finite]
    if a.size == 0:
        return dict(max_abs=0.0, rel_l2=0.0, cosine=1.0, scale=1.0, changed=nonfinite_differ,
                    cells=int(x.size), nonfinite_differ=nonfinite_differ)
    d = np.abs(a - b)
    scale = max(1.0, float(np.abs(a).max()), float(np.abs(b).max()))
    norm_a, norm_b, norm_d = math.sqrt(_dot(a, a)), math.sqrt(_dot(b, b)), math.sqrt(_dot(d, d))
    rel_l2 = norm_d / max(norm_a, norm_b) if max(norm_a, norm_b) > 0 else 0.0
    if norm_a > 0 and norm_b > 0:
        cosine = _dot(a, b) / (norm_a * norm_b)
    else:
        cosine = 1.0 if norm_a == norm_b else 0.0
    return dict(
        max_abs=float(d.max()), rel_l2=rel_l2, cosine=cosine, scale=scale,
        changed=int(np.count_nonzero(d > tol * scale)) + nonfinite_differ,
        cells=int(x.size), nonfinite_differ=nonfinite_differ,
    )


def _dot(u: np.ndarray, v: np.ndarray) -> float:
    # einsum, not np.dot: a BLAS dot goes through OpenBLAS's thread pool, which on a busy machine
    # took 10 ms per 1 MB tensor instead of einsum's 0.2 ms (measured on 2 shared cores)
    return float(np.einsum("i,i->", u, v))


def _same_special(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cells holding one non-finite value on both sides (−∞ and −∞, NaN and NaN)."""
    with np.errstate(invalid="ignore"):
        return (a == b) | (np.isnan(a) & np.isnan(b))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) over the last axis, the largest over rows; inf where q is 0 and p is not."""
    p = np.atleast_1d(p).astype(np.float64)
    q = np.atleast_1d(q).astype(np.float64)
    if p.size == 0:
        return 0.0
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(terms.sum(axis=-1).max())


def _predictions(step_a: Step, step_b: Step, x: np.ndarray, y: np.ndarray) -> tuple[PredictionDiff, ...]:
    """The chosen token and top-k of each distribution: the one of a decoding step, or each masked position's."""
    rows = []
    if x.ndim == 1:
        rows.append((None, x, y, step_a.extra, step_b.extra))
    elif x.ndim == 2:
        by_pos_b = {item.get("pos"): item for item in step_b.extra.get("predictions", []) if isinstance(item, dict)}
        for item in step_a.extra.get("predictions", []):
            pos = item.get("pos") if isinstance(item, dict) else None
            if isinstance(pos, int) and 0 <= pos < x.shape[0]:
                rows.append((pos, x[pos], y[pos], item, by_pos_b.get(pos, {})))
    out = []
    for pos, p, q, meta_a, meta_b in rows:
        chosen_a, chosen_b = _chosen(meta_a, p), _chosen(meta_b, q)
        top_a, top_b = _top_k(meta_a, p), _top_k(meta_b, q)
        k = chosen_a["id"]
        inside = isinstance(k, int) and 0 <= k < p.shape[0]
        out.append(PredictionDiff(
            pos=pos, chosen_a=chosen_a, chosen_b=chosen_b,
            prob_a=float(p[k]) if inside else math.nan, prob_b=float(q[k]) if inside else math.nan,
            top_k_a=top_a, top_k_b=top_b,
        ))
    return tuple(out)


def _chosen(meta: dict, probs: np.ndarray) -> dict:
    chosen = meta.get("chosen")
    if isinstance(chosen, dict) and isinstance(chosen.get("id"), int):
        return {"id": chosen["id"], "token": chosen.get("token")}
    return {"id": int(np.argmax(probs)), "token": None}


def _top_k(meta: dict, probs: np.ndarray) -> tuple[int, ...]:
    recorded = meta.get("top_k")
    if isinstance(recorded, list) and recorded and all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in recorded):
        return tuple(e["id"] for e in recorded)
    ranked = np.argsort(-np.nan_to_num(probs.astype(np.float64), nan=-np.inf), kind="stable")
    return tuple(int(i) for i in ranked[:TOP_K])


# -- helpers --------------------------------------------------------------------------------------
def _with_released(compare, step_a: Step, step_b: Step, tol: float) -> StepDiff:
    """Compare, then drop tensors this comparison read from disk, so a diff of two large sessions
    holds two steps in memory at a time (tensors already loaded, or recorded in memory, stay)."""
    loaded = step_a._array is not None, step_b._array is not None
    try:
        return compare(step_a, step_b, tol)
    finally:
        for step, was_loaded in zip((step_a, step_b), loaded):
            if not was_loaded:
                step.release()


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _sortable(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def _token(chosen: dict) -> str:
    token = chosen.get("token")
    return repr(token) if token is not None else f"id {chosen.get('id')}"
