"""The Viewer: where the user is in the open traces, and every move the keys make (no Textual).

One object owns the open traces, the position (trace, step, head, cell), the view mode and
the bookmarks. Each move is a plain method that returns a `Change` saying what changed, or,
when the move is impossible, nothing changed and a message for the user ("this is the first
layer"). Screens map keys to these moves and redraw what the change names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tracer.trace import Step, Trace
from tracer.trace.state import VIEWS, Bookmark, UIState
from tracer.tui.view.outline import chosen_tokens, group_path, leaf_label
from tracer.tui.view.picture import Picture, build_picture, head_count

PICTURES_KEPT = 32        # pictures cached (a 128×128 pattern costs ~1 ms to build again)


@dataclass(frozen=True)
class Change:
    """What a move changed. Nothing changed (false) means the move was impossible; `message`
    then says why. A successful move may carry a message too ("bookmark removed")."""

    trace: bool = False       # another trace is open: outline, title, bookmarks marks
    step: bool = False        # another step: tensor, panels, outline cursor
    head: bool = False        # same step, another head
    view: bool = False        # heat map ⇄ numbers
    bookmarks: bool = False   # a bookmark was added or removed
    message: str | None = None

    def __bool__(self) -> bool:
        return self.trace or self.step or self.head or self.view or self.bookmarks


def refused(message: str) -> Change:
    return Change(message=message)


class Viewer:
    """The open traces and where the user is in them; `Viewer(traces, state)` restores a saved place."""

    def __init__(self, traces: Sequence[Trace], state: UIState | None = None) -> None:
        if not traces:
            raise ValueError("the viewer needs at least one trace")
        self.traces: list[Trace] = list(traces)
        self.trace_index = 0
        self.step_id = self.traces[0].steps[0].id if self.traces[0].steps else ""
        self.head = 0
        self.view = "heatmap"
        self.cell: tuple[int, int] = (0, 0)
        self.bookmarks: list[Bookmark] = []
        self._pictures: dict[tuple, Picture] = {}
        self._rows: dict[int, tuple[Trace, list[tuple[str, str, str]]]] = {}
        self.restore(state or UIState())

    # -- where we are -------------------------------------------------------------------
    @property
    def trace(self) -> Trace:
        return self.traces[self.trace_index]

    @property
    def step(self) -> Step:
        return self.trace.step(self.step_id)

    def picture(self) -> Picture:
        """The current step (its current head) as the tensor view draws it, cached."""
        step = self.step
        heads = head_count(step)
        key = (id(self.trace), step.id, min(self.head, heads - 1) if heads else None)
        picture = self._pictures.get(key)
        if picture is None:
            mask = None
            if step.kind == "pattern":  # forbidden cells are drawn as masked, not as small weights
                mask_id = step.id.replace("hook_pattern", "hook_mask")
                if mask_id in self.trace:
                    mask = self.trace[mask_id]
            picture = build_picture(step, self.head, mask)
            if len(self._pictures) >= PICTURES_KEPT:
                self._pictures.pop(next(iter(self._pictures)))
            self._pictures[key] = picture
        return picture

    def forget_pictures(self) -> None:
        """Drop the cached pictures (the benchmark draws every picture afresh)."""
        self._pictures.clear()

    # -- saved state ------------------------------------------------------------------------
    def restore(self, state: UIState) -> Change:
        """Go back to a saved place: trace, step, head, cell, view and bookmarks (what no longer fits is dropped)."""
        self.bookmarks = [
            Bookmark(b.trace, b.step, b.note) for b in state.bookmarks
            if 0 <= b.trace < len(self.traces) and b.step in self.traces[b.trace]
        ]
        self.head = max(0, state.head)
        self.view = state.view if state.view in VIEWS else "heatmap"
        index = state.trace if 0 <= state.trace < len(self.traces) else 0
        self.cell = state.cell
        self.trace_index = index
        self.step_id = state.step if state.step in self.trace else self._first_id()
        self._fit_cell()
        return Change(trace=True, step=True, head=True, view=True, bookmarks=True)

    def to_state(self) -> UIState:
        """Where the user is and what they marked, for a session to save."""
        return UIState(
            trace=self.trace_index, step=self.step_id, head=self.head, view=self.view,
            bookmarks=[Bookmark(b.trace, b.step, b.note) for b in self.bookmarks], cell=self.cell,
        )

    # -- moves: steps -------------------------------------------------------------------------
    def go(self, step_id: str) -> Change:
        """Open `step_id` in the current trace."""
        if step_id not in self.trace:
            return refused(f"no step {step_id} in this trace")
        if step_id == self.step_id:
            return Change()
        self.step_id = step_id
        self._fit_cell()
        return Change(step=True)

    def next_step(self) -> Change:
        index = self.step.index
        if index + 1 >= len(self.trace):
            return refused("last step of the trace")
        return self.go(self.trace.steps[index + 1].id)

    def previous_step(self) -> Change:
        index = self.step.index
        if index == 0:
            return refused("first step of the trace")
        return self.go(self.trace.steps[index - 1].id)

    def layer(self, delta: int) -> Change:
        """The same step in the layer `delta` away (same kind, component and decoding step)."""
        step = self.step
        if step.layer is None:
            return refused("this step is not inside a layer")
        target = step.layer + delta
        matches = self.trace.find(kind=step.kind, component=step.component, stack=step.stack,
                                  decode_step=step.decode_step, layer=target)
        if matches:
            return self.go(matches[0].id)
        layers = {s.layer for s in self.trace.find(stack=step.stack) if s.layer is not None}
        if target < min(layers):
            return refused("this is the first layer")
        if target > max(layers):
            return refused("this is the last layer")
        return refused(f"layer {target} has no {step.name}")

    def decoding_step(self, delta: int) -> Change:
        """The same step at the decoding step `delta` away; from the encoder, the same kind of
        step in the decoder at the first decoding step (or that step's start)."""
        step, trace = self.step, self.trace
        steps = trace.decode_steps
        if not steps:
            return refused("this trace has no decoding steps")
        t = step.decode_step
        if t is None:
            if delta < 0:
                return refused("the encoder runs before the first decoding step")
            same_kind = [s for s in trace.find(decode_step=steps[0], kind=step.kind)
                         if s.layer == step.layer and s.component == step.component]
            return self.go((same_kind or trace.find(decode_step=steps[0]))[0].id)
        target = f"{step.name}@{t + delta}"
        if target in trace:
            return self.go(target)
        if t + delta < steps[0]:
            if trace.arch == "encoder-decoder":
                return refused("first decoding step (the encoder has no decoding steps)")
            return refused("this is the first decoding step")
        if t + delta > steps[-1]:
            return refused("this is the last decoding step")
        return refused(f"no decoding step {t + delta}")

    def find(self, query: str) -> Change:
        """The next step (after this one, wrapping round) whose id or label holds every word of `query`."""
        if query in self.trace:
            return self.go(query)
        matches = self.matches(query)
        if not matches:
            return refused(f"no step matches {query!r}")
        order = {step_id: self.trace.step(step_id).index for step_id in matches}
        here = self.step.index
        later = [s for s in matches if order[s] > here]
        return self.go((later or matches)[0])

    def matches(self, query: str) -> list[str]:
        """Ids of the steps whose id or label holds every word of `query` (any case), in trace order."""
        words = query.lower().split()
        return [step_id for step_id, text, where in self.step_rows()
                if all(word in f"{text} {where}".lower() for word in words)]

    def step_rows(self) -> list[tuple[str, str, str]]:
        """(id, searchable text, where in the outline) per step of the current trace, worked out once."""
        trace = self.trace
        cached = self._rows.get(id(trace))
        if cached is not None and cached[0] is trace:
            return cached[1]
        chosen = chosen_tokens(trace)
        rows = []
        for step in trace.steps:
            where = " › ".join(label for _, label in group_path(step, trace, chosen))
            rows.append((step.id, f"{step.id}  {leaf_label(step, trace)}", where))
        self._rows[id(trace)] = (trace, rows)
        return rows

    # -- moves: head, cell, view ----------------------------------------------------------------
    def next_head(self, delta: int = 1) -> Change:
        heads = head_count(self.step)
        if not heads:
            return refused("this step has no heads")
        self.head = (min(self.head, heads - 1) + delta) % heads
        self._fit_cell()
        return Change(head=True)

    def set_cell(self, row: int, col: int) -> None:
        """The cell cursor moved (the tensor view keeps it inside the picture)."""
        self.cell = (max(0, row), max(0, col))

    def toggle_view(self) -> Change:
        self.view = "numbers" if self.view == "heatmap" else "heatmap"
        return Change(view=True)

    def _fit_cell(self) -> None:
        """Keep the cell cursor inside the picture now shown (a smaller tensor, a shorter vector)."""
        if not self.trace.steps:
            return
        try:
            picture = self.picture()
        except Exception:  # noqa: BLE001 - a step that cannot be drawn: the screen says why when it draws it
            self.cell = (0, 0)
            return
        row = min(self.cell[0], max(0, picture.rows - 1))
        col = min(self.cell[1], max(0, picture.cols - 1))
        if picture.wrap is not None:
            while col > 0 and not picture.valid(row, col):
                col -= 1
        self.cell = (row, col)

    # -- moves: traces ---------------------------------------------------------------------------
    def other_trace(self) -> Change:
        """The next open trace, at the same place: the same step, or the nearest of its kind."""
        if len(self.traces) < 2:
            return refused("only one trace is open (i traces a new sentence)")
        return self.open_trace((self.trace_index + 1) % len(self.traces), keep_place=True)

    def add_trace(self, trace: Trace) -> Change:
        """A newly traced sentence: keep the others open and show it from its first step."""
        self.traces.append(trace)
        return self.open_trace(len(self.traces) - 1)

    def open_trace(self, index: int, step_id: str | None = None, keep_place: bool = False) -> Change:
        """Show trace `index` at `step_id`, at the step nearest the current one (`keep_place`), or at its first step."""
        here = self.step if keep_place and self.step_id in self.trace else None
        self.trace_index = index
        if step_id is None or step_id not in self.trace:
            step_id = nearest_step(self.trace, here).id if here is not None else self._first_id()
        self.step_id = step_id
        self._fit_cell()
        return Change(trace=True, step=True)

    def _first_id(self) -> str:
        return self.trace.steps[0].id if self.trace.steps else ""

    # -- bookmarks ---------------------------------------------------------------------------------
    def bookmark_for(self, step_id: str | None = None) -> Bookmark | None:
        step_id = self.step_id if step_id is None else step_id
        for bookmark in self.bookmarks:
            if bookmark.trace == self.trace_index and bookmark.step == step_id:
                return bookmark
        return None

    def bookmarked_steps(self) -> set[str]:
        """Ids of the bookmarked steps of the current trace."""
        return {b.step for b in self.bookmarks if b.trace == self.trace_index}

    def add_bookmark(self, note: str = "", step_id: str | None = None) -> Change:
        step_id = self.step_id if step_id is None else step_id
        if step_id not in self.trace:
            return refused(f"no step {step_id} in this trace")
        if self.bookmark_for(step_id) is not None:
            return refused("this step is already bookmarked (b removes it)")
        self.bookmarks.append(Bookmark(self.trace_index, step_id, note.strip()))
        return Change(bookmarks=True)

    def remove_bookmark(self, step_id: str | None = None) -> Change:
        existing = self.bookmark_for(step_id)
        if existing is None:
            return refused("this step has no bookmark")
        self.bookmarks.remove(existing)
        return Change(bookmarks=True, message="bookmark removed")

    def next_bookmark(self) -> Change:
        """The first bookmarked step after this one in the current trace, wrapping round."""
        marked = [s for s in self.bookmarked_steps() if s in self.trace]
        if not marked:
            return refused("no bookmarks in this trace (b adds one)")
        order = sorted(marked, key=lambda step_id: self.trace.step(step_id).index)
        here = self.step.index
        later = [s for s in order if self.trace.step(s).index > here]
        return self.go((later or order)[0])


def nearest_step(trace: Trace, step: Step) -> Step:
    """The step of `trace` that best matches `step` of another trace (for comparing two sentences):
    the same id; else the same kind in the same layer and component at the nearest decoding step;
    else the same kind anywhere; else the first step."""
    if step.id in trace:
        return trace.step(step.id)
    candidates = [s for s in trace.steps if s.kind == step.kind and s.layer == step.layer
                  and s.stack == step.stack and s.component == step.component]
    if not candidates:
        candidates = [s for s in trace.steps if s.kind == step.kind]
    if not candidates:
        return trace.steps[0]
    t = step.decode_step

    def distance(s: Step) -> tuple[int, int]:
        if t is None or s.decode_step is None:
            return (0 if s.decode_step == t else 1, s.index)
        return (abs(s.decode_step - t), s.index)

    return min(candidates, key=distance)
