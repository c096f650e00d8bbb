"""What the tensor view draws: a step turned into a 2-D grid of colour levels (numpy only).

No Textual here (the headless view package): the widget only turns levels into coloured
cells, so this module is easy to test and fast to reason about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.trace import Step

TOKEN_AXES = ("pos", "query", "key")
WRAP = 32                 # a long 1-D vector (vocab) is drawn as rows of this many values
LEVELS = 64               # colour levels in a palette (equal neighbours merge into one segment)


def _ramp(stops: list[tuple[float, tuple[int, int, int]]], n: int = LEVELS) -> list[str]:
    """n hex colours interpolated linearly between (position, rgb) stops."""
    positions = np.array([p for p, _ in stops])
    rgb = np.array([c for _, c in stops], dtype=float)
    x = np.linspace(0.0, 1.0, n)
    channels = [np.interp(x, positions, rgb[:, i]) for i in range(3)]
    return ["#%02x%02x%02x" % tuple(int(round(ch[j])) for ch in channels) for j in range(n)]


# Sequential (inferno-like): dark purple for small, bright yellow for large. The lowest level is
# kept clear of a dark terminal's black, so a matrix of zeros still shows its extent.
SEQUENTIAL = _ramp([(0.0, (64, 36, 116)), (0.3, (96, 22, 110)), (0.6, (200, 60, 70)), (0.85, (245, 150, 30)), (1.0, (252, 240, 120))])
# Diverging: blue negative, near-black zero, red positive.
DIVERGING = _ramp([(0.0, (80, 160, 255)), (0.4, (30, 60, 120)), (0.5, (28, 28, 32)), (0.6, (120, 40, 30)), (1.0, (255, 120, 70))])
PALETTES = {"sequential": SEQUENTIAL, "diverging": DIVERGING}
MASKED_GLYPH = "░"


@dataclass
class Picture:
    """A step (one head of it, if per-head) as a grid: rows × cols of values and colour levels.

    `masked` marks cells that are not values to colour: −∞ scores, non-finite numbers, and
    positions the attention mask forbids. `level` is the palette index of every cell.
    """

    step: Step
    values: np.ndarray            # (rows, cols) float64, masked cells hold nan
    masked: np.ndarray            # (rows, cols) bool
    level: np.ndarray             # (rows, cols) int, 0..LEVELS-1
    row_axis: str
    col_axis: str
    row_labels: list[str] | None  # token strings, or None (numbered)
    col_labels: list[str] | None
    scale: str                    # sequential | diverging | ids
    vmin: float
    vmax: float
    head: int | None = None       # head shown, for per-head tensors
    n_heads: int | None = None
    wrap: int | None = None       # 1-D vector wrapped into rows of `wrap`
    length: int | None = None     # its length

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def cols(self) -> int:
        return self.values.shape[1]

    def valid(self, row: int, col: int) -> bool:
        """False for the padding after the last value of a wrapped vector."""
        if self.wrap is None:
            return 0 <= row < self.rows and 0 <= col < self.cols
        return 0 <= row * self.wrap + col < (self.length or 0) and 0 <= col < self.wrap

    def index(self, row: int, col: int) -> tuple[int, ...]:
        """Index of the cell (row, col) into the step's full tensor."""
        if self.wrap is not None:
            return (row * self.wrap + col,)
        step = self.step
        if len(step.axes) <= 1:
            return (row,)[:len(step.axes)]  # a scalar is drawn as one cell
        shape = [size for axis, size in zip(step.axes, step.shape) if self.head is None or axis != "head"]
        # more than two axes besides the head (a kind tracer does not know): build_picture
        # flattened the trailing ones into the columns
        rest = [row, *map(int, np.unravel_index(col, shape[1:]))] if len(shape) > 2 else [row, col]
        if self.head is None:
            return tuple(rest)
        at = step.axes.index("head")
        return tuple(self.head if i == at else rest.pop(0) for i in range(len(step.axes)))

    def cell_of(self, index: tuple[int, ...]) -> tuple[int, int]:
        """The (row, col) showing the tensor's element `index` (the inverse of `index`; the head is dropped)."""
        if self.wrap is not None:
            return divmod(int(index[0]), self.wrap)
        step = self.step
        if len(step.axes) <= 1:
            return (int(index[0]) if step.axes else 0, 0)
        keep = [i for i, axis in enumerate(step.axes) if self.head is None or axis != "head"]
        rest = [int(index[i]) for i in keep]
        if len(rest) == 1:
            return (rest[0], 0)
        if len(rest) > 2:
            shape = [step.shape[i] for i in keep]
            return (rest[0], int(np.ravel_multi_index(rest[1:], shape[1:])))
        return (rest[0], rest[1])

    def row_name(self, row: int) -> str:
        if self.wrap is not None:
            return str(row * self.wrap)
        return self.row_labels[row] if self.row_labels else str(row)

    def col_name(self, col: int) -> str:
        return self.col_labels[col] if self.col_labels else str(col)


def head_count(step: Step) -> int | None:
    return step.shape[step.axes.index("head")] if "head" in step.axes else None


def levels_for(values: np.ndarray, masked: np.ndarray, scale: str) -> tuple[np.ndarray, float, float]:
    """Palette levels for every cell, with the (vmin, vmax) the scale spans."""
    finite = values[~masked]
    finite = finite[np.isfinite(finite)]  # the padding after a wrapped vector's end is nan
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.int16), 0.0, 0.0
    lo, hi = float(finite.min()), float(finite.max())
    if scale == "diverging":
        bound = max(abs(lo), abs(hi)) or 1.0
        vmin, vmax = -bound, bound
    else:
        vmin, vmax = (min(lo, 0.0), hi) if lo >= 0 else (lo, hi)
    span = (vmax - vmin) or 1.0
    with np.errstate(invalid="ignore"):
        scaled = (np.nan_to_num(values, nan=vmin) - vmin) / span * (LEVELS - 1)
    return np.clip(np.rint(scaled), 0, LEVELS - 1).astype(np.int16), vmin, vmax


def build_picture(step: Step, head: int = 0, mask: np.ndarray | None = None) -> Picture:
    """Turn a step into what the tensor view shows (one head at a time).

    `mask` ([query, key] bool, true = may attend) marks forbidden cells of an attention
    pattern as masked: their weight is exactly 0, but "not allowed" must not look like "small".
    """
    data = np.asarray(step.data)
    axes = list(step.axes)
    n_heads = head_count(step)
    shown_head = None
    if n_heads is not None:
        shown_head = min(max(head, 0), n_heads - 1)
        at = axes.index("head")
        data = np.take(data, shown_head, axis=at)
        axes.pop(at)
    wrap = length = None
    if data.ndim == 0:
        data, axes = data.reshape(1, 1), ["value", "value"]
    elif data.ndim == 1:
        if axes[0] in TOKEN_AXES:
            data, axes = data.reshape(-1, 1), [axes[0], "value"]
        else:
            length = data.shape[0]
            wrap = WRAP if length > WRAP else length
            rows = -(-length // wrap)
            padded = np.full(rows * wrap, np.nan)
            padded[:length] = data
            data, axes = padded.reshape(rows, wrap), [axes[0], axes[0]]
    elif data.ndim > 2:
        # No kind tracer records has more than two axes besides the head; an unknown kind's
        # trailing axes are flattened into the columns (Picture.index undoes it).
        data = data.reshape(data.shape[0], -1)
    values = data.astype(np.float64)
    if step.kind == "mask" or step.dtype == "bool":
        masked = ~data.astype(bool)
        values = np.where(masked, np.nan, 1.0)
        scale = "sequential"
    else:
        masked = ~np.isfinite(values)
        if wrap is not None:  # the padding after the last value is not a masked value
            masked.reshape(-1)[length:] = False
        if mask is not None and mask.shape == values.shape:
            masked |= ~mask.astype(bool)
        finite = values[~masked]
        finite = finite[np.isfinite(finite)]
        scale = "diverging" if finite.size and finite.min() < 0 < finite.max() else "sequential"
        if step.kind == "tokens":
            scale = "ids"
        values = np.where(masked, np.nan, values)
    level, vmin, vmax = levels_for(values, masked, "diverging" if scale == "diverging" else "sequential")
    labels = step.labels or {}
    row_axis, col_axis = axes[0], axes[1]
    return Picture(
        step=step, values=values, masked=masked, level=level,
        row_axis=row_axis, col_axis=col_axis,
        row_labels=labels.get(row_axis) if wrap is None else None,
        col_labels=labels.get(col_axis) if wrap is None else None,
        scale=scale, vmin=vmin, vmax=vmax, head=shown_head, n_heads=n_heads,
        wrap=wrap, length=length,
    )


def format_number(value: float, width: int = 8) -> str:
    """A number in at most `width` cells: fixed point where it reads well, else exponent."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "−∞" if value < 0 else "∞"
    magnitude = abs(value)
    if value == 0 or 1e-3 <= magnitude < 10 ** (width - 5):
        text = f"{value:.3f}"
    else:
        text = f"{value:.1e}"
    return text if len(text) <= width else f"{value:.0e}"
