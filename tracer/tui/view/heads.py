"""All heads at once: every head of a per-head step as small multiples on one colour scale (numpy only).

`build_heads` turns a step with a `head` axis into one grid per head and colour levels on a
scale shared by all of them (so "this head is brighter" means larger values, not a different
scale). `fit_layout` picks how many panels go side by side for the room there is, and `sampled`
shrinks each grid to its panel, keeping in every block its most extreme value (a sharp peak of
attention must not be averaged away).
"""

from __future__ import annotations

from typing import NamedTuple

from dataclasses import dataclass

import numpy as np

from tracer.trace import Step
from tracer.tui.view.picture import LEVELS, head_count, levels_for

TITLE_ROWS = 1   # each panel's "head N" line
GAP = 1          # columns between panels


@dataclass
class HeadsPicture:
    """(heads, rows, cols) values, masked cells and levels on one shared scale."""

    step: Step
    values: np.ndarray      # masked cells hold nan
    masked: np.ndarray
    level: np.ndarray
    row_axis: str
    col_axis: str
    scale: str              # sequential | diverging
    vmin: float
    vmax: float
    length: int | None = None   # (as Picture: the legend reads it; never a wrapped vector here)

    @property
    def n_heads(self) -> int:
        return self.values.shape[0]

    @property
    def rows(self) -> int:
        return self.values.shape[1]

    @property
    def cols(self) -> int:
        return self.values.shape[2]


def head_number(step: Step, position: int) -> int:
    """The model's head (from 0) at `position` along the step's head axis: a `--heads` trace's
    steps hold only some heads (`Step.heads`), so position and head number differ there."""
    heads = step.heads
    return heads[position] if 0 <= position < len(heads) else position


def head_name(step: Step, position: int) -> str:
    """'head 4/12': the head at `position` as the head picker counts (from 1), out of the model's heads."""
    return f"head {head_number(step, position) + 1}/{step.heads_of or len(step.heads)}"


def heads_held(step: Step) -> str:
    """'12 heads', or for a `--heads` trace '3 of 12 heads (4, 6, 7)' (counted from 1)."""
    heads, total = step.heads, step.heads_of or len(step.heads)
    if len(heads) == total:
        return f"{total} heads"
    return f"{len(heads)} of {total} heads ({', '.join(str(h + 1) for h in heads)})"


def build_heads(step: Step, mask: np.ndarray | None = None) -> HeadsPicture:
    """Every head of `step` on one colour scale; `mask` ([query, key], true = may attend) marks
    forbidden cells of a pattern as masked, as in the one-head picture."""
    if head_count(step) is None:
        raise ValueError(f"{step.id} has no head axis")
    axes = list(step.axes)
    at = axes.index("head")
    data = np.moveaxis(np.asarray(step.data), at, 0).astype(np.float64)
    axes.pop(at)
    if data.ndim == 2:  # one value per head and position: a column each
        data, axes = data[:, :, None], [axes[0], "value"]
    elif data.ndim > 3:
        data = data.reshape(data.shape[0], data.shape[1], -1)
    masked = ~np.isfinite(data)
    if mask is not None and mask.shape == data.shape[1:]:
        masked |= ~mask.astype(bool)[None]
    values = np.where(masked, np.nan, data)
    finite = values[~masked]
    scale = "diverging" if finite.size and finite.min() < 0 < finite.max() else "sequential"
    level, vmin, vmax = levels_for(values, masked, scale)
    return HeadsPicture(step, values, masked, level, axes[0], axes[1], scale, vmin, vmax)


ZOOMS = (6, 4, 2)  # a small grid is drawn larger: each value `zoom` cells wide and zoom/2 rows tall


class Layout(NamedTuple):
    """How the panels sit: `columns` side by side, each `width` cells and `height` text rows,
    showing `rows` × `cols` (sampled) values, each `zoom` cells wide and `zoom` half-rows tall
    (two half-rows per text row, drawn with ▀)."""

    columns: int
    width: int
    height: int
    rows: int
    cols: int
    zoom: int = 1

    def panel_rows(self, n_heads: int) -> int:
        return -(-n_heads // self.columns)


def fit_layout(n_heads: int, rows: int, cols: int, width: int, height: int) -> Layout:
    """The arrangement that shows the most of every head in `width` × `height` cells (then: the largest)."""
    best, best_key = None, None
    for columns in range(1, n_heads + 1):
        room_width = (width - GAP * (columns - 1)) // columns
        room_height = height // -(-n_heads // columns) - TITLE_ROWS
        if room_width < 1 or room_height < 1:
            continue
        layout = next((Layout(columns, cols * zoom, -(-rows * zoom // 2), rows, cols, zoom) for zoom in ZOOMS
                       if cols * zoom <= room_width and -(-rows * zoom // 2) <= room_height), None)
        if layout is None:
            shown_rows, shown_cols = min(rows, room_height * 2), min(cols, room_width)
            layout = Layout(columns, shown_cols, -(-shown_rows // 2), shown_rows, shown_cols)
        key = (layout.rows * layout.cols, layout.width * layout.height)
        if best_key is None or key > best_key:
            best, best_key = layout, key
    return best or Layout(n_heads, 1, 1, min(rows, 2), 1)


def zoomed(levels: np.ndarray, masked: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    """(heads, half-rows, cells): each value repeated `zoom` times down (in half-rows) and across."""
    if zoom == 1:
        return levels, masked
    grow = lambda a: np.repeat(np.repeat(a, zoom, axis=1), zoom, axis=2)  # noqa: E731
    return grow(levels), grow(masked)


def sampled(picture: HeadsPicture, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(levels, masked), each (heads, rows, cols): every block of the grid shrunk to one cell,
    the cell taking the block's value farthest from the scale's middle (diverging: from 0; sequential: the largest)."""
    level, masked = picture.level, picture.masked
    if rows >= picture.rows and cols >= picture.cols:
        return level, masked
    row_starts = _starts(picture.rows, rows)
    col_starts = _starts(picture.cols, cols)
    high = np.where(masked, -1, level)
    top = np.maximum.reduceat(np.maximum.reduceat(high, row_starts, axis=1), col_starts, axis=2)
    all_masked = top < 0
    if picture.scale == "diverging":
        low = np.where(masked, LEVELS, level)
        bottom = np.minimum.reduceat(np.minimum.reduceat(low, row_starts, axis=1), col_starts, axis=2)
        middle = (LEVELS - 1) / 2
        top = np.where(middle - bottom > top - middle, bottom, top)
    return np.where(all_masked, 0, top).astype(np.int16), all_masked


def _starts(size: int, parts: int) -> np.ndarray:
    """Start indices of `parts` near-equal blocks of `size` items."""
    parts = max(1, min(parts, size))
    return (np.arange(parts) * size) // parts
