"""Compare mode: one trace against another, step by step (numpy only, no Textual).

A `Comparison` holds one pair — A, the trace being stepped through, and B, the other — and what
comparing them found. Each step's figures (`StepDiff`) are worked out the first time the step is
shown; the whole `TraceDiff`, which "next most-changed step" needs, once, on first use. `shown()`
says what the tensor view draws for a step: the Δ heat map (B − A, on a diverging palette whose
zero is neutral) when the shapes line up, both tensors side by side when they do not, or one line
when the step is in one trace only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tracer.text import visible
from tracer.trace import Step, Trace
from tracer.trace.diff import DEFAULT_TOL, PARTED, UNALIGNED, StepDiff, TraceDiff, compare_steps, delta, diff, parting
from tracer.tui.view.explain import describe_cell
from tracer.tui.view.heads import head_name
from tracer.tui.view.picture import Picture, build_picture, format_number, levels_for

DELTA, SIDE, ONLY = "delta", "side", "only"   # what the tensor view shows for a step
# The pictures compare mode builds hold a made-up step (the Δ, or both tensors side by side): a
# name whose kind is none of tracer's, so nothing draws them as a mask or as token ids.
DELTA_ID = "compare.hook_delta"
SIDE_ID = "compare.hook_side"
SHOWN_KEPT = 32


@dataclass(frozen=True)
class Shown:
    """What compare mode draws for one step (at one head)."""

    mode: str                        # DELTA, SIDE or ONLY
    step_a: Step
    step_b: Step | None              # None: the step is in A only
    picture: Picture | None          # the Δ map or the two tensors side by side; None for ONLY
    message: str = ""                # ONLY: the line shown in place of the picture
    sides: tuple[Picture, Picture] | None = None  # SIDE: each tensor's own picture
    split: int = 0                   # SIDE: B's first column (A's columns, then one gap)


class Comparison:
    """Trace `a` (number `a_index` among the open traces) compared with trace `b`."""

    def __init__(self, a: Trace, b: Trace, a_index: int, b_index: int, tol: float = DEFAULT_TOL) -> None:
        self.a, self.b = a, b
        self.a_index, self.b_index = a_index, b_index
        self.tol = tol
        self.parted_at, self.parted_tokens = parting(a, b)
        self._whole: TraceDiff | None = None
        self._steps: dict[str, StepDiff] = {}
        self._shown: dict[tuple[str, int], Shown] = {}

    # -- figures --------------------------------------------------------------------------
    @property
    def trace_diff(self) -> TraceDiff:
        """Every step compared (computed once, the first time it is asked for)."""
        if self._whole is None:
            self._whole = diff(self.a, self.b, self.tol)
        return self._whole

    def most_changed(self) -> list[str]:
        """Ids of the steps that changed, the most changed first (`TraceDiff.most_changed`'s order)."""
        return [s.id for s in self.trace_diff.most_changed()]

    def rank(self, step_id: str) -> tuple[int, int] | None:
        """(place from 1, how many) of `step_id` among the most-changed steps, once those are known."""
        if self._whole is None:
            return None
        order = self.most_changed()
        return (order.index(step_id) + 1, len(order)) if step_id in order else None

    def step_diff(self, step_id: str) -> StepDiff | None:
        """The figures of one step in both traces (None: not in both), as `diff` gives them."""
        if self._whole is not None:
            return self._whole[step_id] if step_id in self._whole else None
        cached = self._steps.get(step_id)
        if cached is not None or step_id not in self.a or step_id not in self.b:
            return cached
        step_a, step_b = self.a.step(step_id), self.b.step(step_id)
        if self.parted_at is not None and step_a.decode_step is not None and step_a.decode_step > self.parted_at:
            # what `diff` says of these steps: their inputs differ, so their figures would say nothing
            found = StepDiff(step_id, step_a.kind, PARTED, step_a.shape, step_b.shape,
                             reason=f"after the decodes part at step {self.parted_at}")
        else:
            found = compare_steps(step_a, step_b, self.tol)
        self._steps[step_id] = found
        return found

    # -- pictures -------------------------------------------------------------------------
    def shown(self, step_id: str, head: int) -> Shown:
        """What the tensor view draws for step `step_id` of A at `head` (cached)."""
        key = (step_id, head)
        found = self._shown.get(key)
        if found is None:
            found = self._build(step_id, head)
            if len(self._shown) >= SHOWN_KEPT:
                self._shown.pop(next(iter(self._shown)))
            self._shown[key] = found
        return found

    def _build(self, step_id: str, head: int) -> Shown:
        step_a = self.a.step(step_id)
        if step_id not in self.b:
            from tracer.tui.view.viewer import nearest_step  # the viewer imports this module

            near = nearest_step(self.b, step_a).id if self.b.steps else None
            return Shown(ONLY, step_a, None, None,
                         message=f"{step_id} is only in trace {self.a_index + 1}: trace {self.b_index + 1} has no such step"
                                 + (f" (its nearest: {near})" if near else ""))
        step_b = self.b.step(step_id)
        picture = delta_picture(step_a, step_b, head, _mask(self.a, step_a))
        if picture is not None:
            return Shown(DELTA, step_a, step_b, picture)
        sides = (build_picture(step_a, head, _mask(self.a, step_a)), build_picture(step_b, head, _mask(self.b, step_b)))
        return Shown(SIDE, step_a, step_b, side_by_side(*sides), sides=sides, split=sides[0].cols + 1)


def _mask(trace: Trace, step: Step) -> np.ndarray | None:
    """The attention mask of a pattern step, so forbidden cells draw as masked (as the Viewer does)."""
    if step.kind != "pattern":
        return None
    mask_id = step.id.replace("hook_pattern", "hook_mask")
    return trace[mask_id] if mask_id in trace else None


def delta_picture(step_a: Step, step_b: Step, head: int = 0, mask: np.ndarray | None = None) -> Picture | None:
    """B − A as a picture on a diverging palette symmetric about 0; None when the shapes cannot be aligned.

    Token axes of different lengths are cut to the positions both have (as `delta` does), and
    their labels with them; `mask` (A's attention mask) marks forbidden cells of a pattern.
    """
    values = delta(step_a, step_b)
    if values is None:
        return None
    labels = {}
    for axis, names in (step_a.labels or {}).items():
        if axis in step_a.axes:
            labels[axis] = list(names)[: values.shape[step_a.axes.index(axis)]]
    picture = build_picture(Step.from_array(DELTA_ID, values, step_a.axes, labels), head,
                            None if mask is None else np.asarray(mask)[tuple(slice(0, n) for n in values.shape[-2:])])
    level, vmin, vmax = levels_for(picture.values, picture.masked, "diverging")
    return replace(picture, level=level, vmin=vmin, vmax=vmax, scale="diverging")


def side_by_side(left: Picture, right: Picture) -> Picture:
    """Two pictures in one grid, A's columns, a gap, then B's, on one colour scale (shapes that
    cannot be aligned: a wider model, another vocabulary). Cells past a side's end draw as masked."""
    rows, split = max(left.rows, right.rows), left.cols + 1
    values = np.full((rows, split + right.cols), np.nan)
    masked = np.ones(values.shape, dtype=bool)
    for picture, at in ((left, 0), (right, split)):
        values[: picture.rows, at: at + picture.cols] = picture.values
        masked[: picture.rows, at: at + picture.cols] = picture.masked | np.isnan(picture.values)
    if left.scale == right.scale == "ids":
        scale = "ids"
    else:
        finite = values[~masked]
        scale = "diverging" if finite.size and finite.min() < 0 < finite.max() else "sequential"
    level, vmin, vmax = levels_for(values, masked, "diverging" if scale == "diverging" else "sequential")

    def names(picture: Picture, count: int, of_rows: bool) -> list[str]:
        have = picture.row_labels if of_rows else picture.col_labels
        return [(have[i] if have and i < len(have) else str(i)) for i in range(count)]

    row_labels = None
    if left.row_labels or right.row_labels:
        row_labels = names(left, left.rows, True) + names(right, rows, True)[left.rows:]
    col_labels = None
    if left.col_labels or right.col_labels:
        col_labels = names(left, left.cols, False) + ["│"] + names(right, right.cols, False)
    return Picture(
        step=Step.from_array(SIDE_ID, values, (left.row_axis, left.col_axis)), values=values, masked=masked,
        level=level, row_axis=left.row_axis, col_axis=left.col_axis, row_labels=row_labels, col_labels=col_labels,
        scale=scale, vmin=vmin, vmax=vmax,  # no head: the grid is its own 2-D step (Shown.sides keeps each head)
    )


# -- words ----------------------------------------------------------------------------------
def describe_compared_cell(shown: Shown, trace_a: Trace, trace_b: Trace, row: int, col: int) -> str:
    """One line about the selected cell: A's value, B's and Δ (Δ map), or that side's cell (side by side)."""
    picture = shown.picture
    if picture is None or not picture.valid(row, col):
        return ""
    if shown.mode == SIDE:
        left, right = shown.sides
        if col < shown.split - 1:
            return "A  " + describe_cell(trace_a, left, row, col) if left.valid(row, col) else ""
        if col >= shown.split and right.valid(row, col - shown.split):
            return "B  " + describe_cell(trace_b, right, row, col - shown.split)
        return ""
    index = picture.index(row, col)
    value_a, value_b, change = (float(shown.step_a.data[index]), float(shown.step_b.data[index]),
                                float(picture.step.data[index]))
    if picture.wrap is not None:
        where = f"{picture.row_axis} {index[0]}"
    else:
        row_name = f'"{picture.row_name(row)}" ({row})' if picture.row_labels else str(row)
        col_name = f'"{picture.col_name(col)}" ({col})' if picture.col_labels else str(col)
        where = f"{picture.row_axis} {row_name} · {picture.col_axis} {col_name}"
    head = f", {head_name(shown.step_a, picture.head)}" if picture.head is not None else ""
    sign = "+" if change > 0 else ""
    return (f"{where}{head}: A {format_number(value_a, 12)}  B {format_number(value_b, 12)}"
            f"  Δ {sign}{format_number(change, 12)}")


def figure_lines(comparison: Comparison, step_id: str) -> list[tuple[str, str]]:
    """(label, text) lines for the explain panel: the step's diff figures in words, then which trace is which."""
    a, b = comparison.a_index + 1, comparison.b_index + 1
    lines: list[tuple[str, str]] = []
    found = comparison.step_diff(step_id)
    if found is None:
        lines.append(("figures", f"only in trace {a}: trace {b} has no step {step_id}"))
    elif found.status == UNALIGNED:
        lines.append(("figures", f"shapes cannot be aligned ({found.reason}): shown side by side, A left, B right"))
    elif found.status == PARTED:
        lines.append(("figures", f"not compared: {found.reason} (this step's inputs differ)"))
    else:
        lines += _compared_lines(found, comparison.tol)
    rank = comparison.rank(step_id)
    if rank is not None:
        lines.append(("rank", f"most changed {rank[0]} of {rank[1]} (d next, D previous)"))
    for name, number, trace in (("A", a, comparison.a), ("B", b, comparison.b)):
        lines.append((name, f'trace {number}  "{visible(trace.input.get("text", ""))}"'))
    return lines


def _compared_lines(found: StepDiff, tol: float) -> list[tuple[str, str]]:
    """The step's figures against the tolerance `tracer diff` applied to it: exact for integer data,
    --tol widened for a side stored as float16 (diff.step_tolerance)."""
    if found.exact:
        over = f"{found.changed} of {found.cells} cells differ (exact data)" if found.changed else "identical (exact data)"
    else:
        applied = found.tol if found.tol is not None else tol
        shown = f"{applied:g}" if applied == tol else f"{applied:g} (--tol {tol:g}, widened for float16 storage)"
        over = f"{found.changed} of {found.cells} cells over tolerance {shown}" if found.changed else f"within tolerance {shown}"
    lines = [("figures", f"max |Δ| {format_number(found.max_abs)}   rel L2 {format_number(found.rel_l2)}   "
                         f"cosine {found.cosine:.6f}   {over}")]
    notes = []
    if found.cropped:
        notes.append(f"compared {list(found.compared_shape)} of {list(found.shape_a)} / {list(found.shape_b)}")
    if found.nonfinite_differ:
        notes.append(f"{found.nonfinite_differ} non-finite cell(s) differ")
    if notes:
        lines.append(("", "; ".join(notes)))
    if found.kl is not None:
        lines.append(("probs", f"KL(A‖B) {format_number(found.kl)}"))
    for p in found.predictions:
        where = f"pos {p.pos}: " if p.pos is not None else ""
        chosen = (f"chosen {_token(p.chosen_a)} → {_token(p.chosen_b)}" if p.chosen_changed
                  else f"chosen {_token(p.chosen_a)} in both")
        top = f"top-{len(p.top_k_a)}: {p.top_k_changed} rank(s) changed" if p.top_k_changed else f"top-{len(p.top_k_a)} unchanged"
        lines.append(("", f"{where}{chosen}; p({_token(p.chosen_a)}) {format_number(p.prob_a)} → "
                          f"{format_number(p.prob_b)}; {top}"))
    return lines


def _token(chosen: dict) -> str:
    token = chosen.get("token")
    return f'"{visible(token)}"' if token is not None else f"id {chosen.get('id')}"

