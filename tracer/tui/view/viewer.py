"""The Viewer: where the user is in the open traces, and every move the keys make (no Textual).

One object owns the open traces, the position (trace, step, head, cell), the view mode, compare
mode (the current trace against another: `tracer.tui.view.compare`) and the bookmarks. Each move
is a plain method that returns a `Change` saying what changed, or, when the move is impossible,
nothing changed and a message for the user ("this is the first layer"). Screens map keys to
these moves and redraw what the change names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from tracer.trace import Step, Trace, anatomy
from tracer.trace.state import VIEWS, Bookmark, UIState
if TYPE_CHECKING:  # compare mode (and tracer.trace.diff), the attention map and the lens load when first used
    from tracer.tui.view.attention_map import AttentionMap, MapCell
    from tracer.tui.view.compare import Comparison, Shown
    from tracer.tui.view.lens import LensTable
from tracer.tui.view.heads import HeadsPicture, build_heads
from tracer.tui.view.outline import chosen_tokens, group_path, leaf_label, quoted
from tracer.tui.view.picture import Picture, build_picture, format_number, head_count

PICTURES_KEPT = 32        # pictures cached (a 128×128 pattern costs ~1 ms to build again)
HISTORY_KEPT = 100        # places `back` can return to


# a NamedTuple, not a frozen dataclass: as immutable, and cheap to define before the first frame
class Change(NamedTuple):
    """What a move changed. Nothing changed (false) means the move was impossible; `message`
    then says why. A successful move may carry a message too ("bookmark removed")."""

    trace: bool = False       # another trace is open: outline, title, bookmarks marks
    step: bool = False        # another step: tensor, panels, outline cursor
    head: bool = False        # same step, another head
    view: bool = False        # heat map ⇄ numbers
    bookmarks: bool = False   # a bookmark was added or removed
    cell: bool = False        # the cell cursor was moved by a move (find the largest value)
    message: str | None = None

    def __bool__(self) -> bool:
        return self.trace or self.step or self.head or self.view or self.bookmarks or self.cell


def refused(message: str) -> Change:
    return Change(message=message)


class Viewer:
    """The open traces and where the user is in them; `Viewer(traces, state)` restores a saved place."""

    def __init__(self, traces: Sequence[Trace], state: UIState | None = None, tol: float | None = None) -> None:
        """`tol`: the tolerance compare mode's figures use (None: `tracer diff`'s default)."""
        if not traces:
            raise ValueError("the viewer needs at least one trace")
        self.traces: list[Trace] = list(traces)
        self.trace_index = 0
        self.step_id = self._first_id()
        self.head = 0
        self.view = "heatmap"
        self.cell: tuple[int, int] = (0, 0)
        self.bookmarks: list[Bookmark] = []
        self.all_heads = False  # per-head steps show every head at once, on one colour scale
        self.history: list[tuple[int, str, int, tuple[int, int]]] = []  # (trace, step, head, cell) for `back`
        self._pictures: dict[tuple, Picture] = {}
        self._heads: dict[tuple, HeadsPicture] = {}
        self._rows: dict[int, tuple[Trace, list[tuple[str, str, str]]]] = {}
        self.tol = tol
        self.comparison: Comparison | None = None   # compare mode: the current trace against another
        self._comparisons: dict[tuple[int, int], Comparison] = {}  # by (A, B) index: each pair compared once
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
            picture = build_picture(step, self.head, self._mask_for(step))
            if len(self._pictures) >= PICTURES_KEPT:
                self._pictures.pop(next(iter(self._pictures)))
            self._pictures[key] = picture
        return picture

    def _mask_for(self, step: Step) -> np.ndarray | None:
        """A pattern's attention mask: forbidden cells are drawn as masked, not as small weights."""
        if step.kind != "pattern":
            return None
        mask_id = step.id.replace("hook_pattern", "hook_mask")
        return self.trace[mask_id] if mask_id in self.trace else None

    def forget_pictures(self) -> None:
        """Drop the cached pictures (the benchmark draws every picture afresh)."""
        self._pictures.clear()
        self._heads.clear()

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
        if self.comparison is not None:  # still against the same other trace, if there is one
            self._compare_against(self.comparison.b_index)
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
        if not self.trace.loaded_steps:
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
        before = self.trace_index
        change = self.open_trace((self.trace_index + 1) % len(self.traces), keep_place=True)
        if self.comparison is not None:  # comparing A with B: o swaps them (B − A becomes A − B)
            other = self.comparison.b_index
            self._compare_against(before if other == self.trace_index else other)
        return change

    def add_trace(self, trace: Trace) -> Change:
        """A newly traced sentence: keep the others open and show it from its first step."""
        self.traces.append(trace)
        change = self.open_trace(len(self.traces) - 1)
        if self.comparison is not None:  # the new trace against the one it was compared with
            self._compare_against(self.comparison.b_index)
        return change

    def open_trace(self, index: int, step_id: str | None = None, keep_place: bool = False) -> Change:
        """Show trace `index` at `step_id`, at the step nearest the current one (`keep_place`), or at its first step."""
        here = self.step if keep_place and self.step_id in self.trace else None
        self.trace_index = index
        if step_id is None or step_id not in self.trace:
            step_id = nearest_step(self.trace, here).id if here is not None else self._first_id()
        self.step_id = step_id
        self._fit_cell()
        return Change(trace=True, step=True)

    # -- compare mode -------------------------------------------------------------------------------
    def toggle_compare(self) -> Change:
        """Compare the current trace with the next one; again, with the one after (more than two
        traces open); after the last, compare mode ends."""
        if len(self.traces) < 2:
            return refused("compare needs a second trace (i traces a new sentence)")
        n = len(self.traces)
        if self.comparison is None:
            self._compare_against((self.trace_index + 1) % n)
            return Change(trace=True, step=True)
        following = (self.comparison.b_index + 1) % n
        if following == self.trace_index:
            self.comparison = None
            return Change(trace=True, step=True, message="compare mode off")
        self._compare_against(following)
        return Change(trace=True, step=True)

    def compare_with(self, index: int) -> Change:
        """Compare the current trace with trace `index` (from 0)."""
        if not 0 <= index < len(self.traces) or index == self.trace_index:
            return refused(f"no other trace {index + 1} to compare with")
        self._compare_against(index)
        return Change(trace=True, step=True)

    def _compare_against(self, index: int) -> None:
        if index == self.trace_index or not 0 <= index < len(self.traces):
            self.comparison = None
            return
        key = (self.trace_index, index)
        comparison = self._comparisons.get(key)
        if comparison is None:
            from tracer.trace.diff import DEFAULT_TOL
            from tracer.tui.view.compare import Comparison

            tol = DEFAULT_TOL if self.tol is None else self.tol
            comparison = self._comparisons[key] = Comparison(self.trace, self.traces[index], *key, tol=tol)
        self.comparison = comparison

    def compared(self) -> Shown | None:
        """What compare mode shows for the current step and head (None: not comparing)."""
        if self.comparison is None or not self.trace.steps:
            return None
        heads = head_count(self.step)
        return self.comparison.shown(self.step_id, min(self.head, heads - 1) if heads else 0)

    def most_changed(self, delta: int = 1) -> Change:
        """The next (`delta` 1) or previous (-1) step in the order of `TraceDiff.most_changed`;
        from a step that did not change, the most changed (or with -1, the least changed that did)."""
        if self.comparison is None:
            return refused("not comparing (c compares this trace with another)")
        order = self.comparison.most_changed()
        if not order:
            return refused("no step changed between the two traces")
        if self.step_id in order:
            target = order.index(self.step_id) + delta
            if target < 0:
                return refused("this is the most changed step")
            if target >= len(order):
                return refused("this is the least changed step of those that changed")
        else:
            target = 0 if delta > 0 else len(order) - 1
        return self.go(order[target])

    def _first_id(self) -> str:
        first = self.trace.loaded_steps  # a long decode's first pass is read before its later ones
        return first[0].id if first else ""

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


    # -- moves: follow the dataflow, and back ------------------------------------------------------
    def sources(self) -> list[str]:
        """The recorded steps the current one was computed from (the explain panel's "from")."""
        return [step_id for step_id in anatomy.sources(self.step_id, self.trace) if step_id]

    def follow(self, which: int = 0) -> Change:
        """Go to the `which`-th step the current one was computed from; `back` returns."""
        found = self.sources()
        if not found:
            return refused("this step is computed from the input itself")
        if not 0 <= which < len(found):
            return refused(f"this step is computed from {len(found)} step{'s' if len(found) > 1 else ''} only")
        return self.jump(found[which])

    def jump(self, step_id: str, head: int | None = None, cell: tuple[int, int] | None = None) -> Change:
        """Open `step_id` (at `head`, the cursor on `cell`), remembering where we were for `back`."""
        if step_id not in self.trace:
            return refused(f"no step {step_id} in this trace")
        here = (self.trace_index, self.step_id, self.head, self.cell)
        moved = step_id != self.step_id
        self.step_id = step_id
        if head is not None:
            self.head = head
        if cell is not None:
            self.cell = cell
        self._fit_cell()
        if (self.trace_index, self.step_id, self.head, self.cell) == here:
            return Change()
        self.history = (self.history + [here])[-HISTORY_KEPT:]
        return Change(step=moved, head=not moved, cell=True)

    def back(self) -> Change:
        """Return to where the last `follow` (or jump) left from."""
        if not self.history:
            return refused("nothing to go back to (f follows a step to what it was computed from)")
        trace_index, step_id, head, cell = self.history.pop()
        if trace_index >= len(self.traces) or step_id not in self.traces[trace_index]:
            return refused("that step is no longer open")
        other_trace = trace_index != self.trace_index
        self.trace_index, self.step_id, self.head, self.cell = trace_index, step_id, head, cell
        self._fit_cell()
        return Change(trace=other_trace, step=True, cell=True)

    # -- all heads at once -------------------------------------------------------------------------
    def toggle_all_heads(self) -> Change:
        if not self.all_heads and head_count(self.step) is None:
            return refused("this step has no heads (all heads: q, k, v, scores, pattern, z)")
        self.all_heads = not self.all_heads
        return Change(view=True)

    @property
    def showing_all_heads(self) -> bool:
        """All heads are on and the current step has heads (elsewhere the one-tensor view shows)."""
        return self.all_heads and head_count(self.step) is not None

    def heads_picture(self) -> HeadsPicture:
        """Every head of the current step on one colour scale, cached."""
        step = self.step
        key = (id(self.trace), step.id)
        picture = self._heads.get(key)
        if picture is None:
            picture = build_heads(step, self._mask_for(step))
            if len(self._heads) >= 4:  # a 12-head 128×128 layer is ~2 MB of levels
                self._heads.pop(next(iter(self._heads)))
            self._heads[key] = picture
        return picture

    # -- find by value -------------------------------------------------------------------------------
    def find_max(self) -> Change:
        """Put the cell cursor on the current tensor's largest value (switching head if need be)."""
        step = self.step
        data = np.asarray(step.data)
        if data.size == 0:
            return refused("this tensor is empty")
        values = np.where(np.isfinite(data), data, -np.inf) if data.dtype.kind == "f" else data
        if data.dtype.kind == "f" and not np.isfinite(data).any():
            return refused("this tensor has no finite values")
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(values)), data.shape))
        head = index[step.axes.index("head")] if head_count(step) is not None else None
        picture = build_picture(step, head or 0, self._mask_for(step))
        change = self.jump(step.id, head=head, cell=picture.cell_of(index))
        shown = format_number(float(data[index]))
        where = ", ".join(f"{axis} {i}" for axis, i in zip(step.axes, index))
        return Change(head=change.head, cell=change.cell, message=f"largest value {shown} at {where}")

    def token_id(self, text: str) -> int | None:
        """The vocabulary id of a token named by its text (as the trace knows it) or by its id."""
        text = text.strip()
        if text.lstrip("#").isdigit() and not text.startswith("##"):
            return int(text.lstrip("#"))
        from tracer.tui.view.lens import LENS_KIND

        known: dict[str, int] = {}
        trace = self.trace
        for side in (trace.input, trace.output):
            for token, token_id in zip(side.get("tokens", []), side.get("ids", [])):
                known.setdefault(token, token_id)
        for step in trace.steps:
            if step.kind not in ("probs", LENS_KIND):
                continue
            lists = [step.extra.get("top_k", [])] + [p.get("top_k", []) for p in step.extra.get("predictions", [])]
            for item in (entry for entry in lists for entry in entry):
                known.setdefault(item["token"], item["id"])
        if text in known:
            return known[text]
        folded = {token.lower(): token_id for token, token_id in reversed(known.items())}
        return folded.get(text.lower())

    def find_token(self, text: str, lens: bool = False) -> Change:
        """Go to the decoding step (in the lens: the layer and decoding step) where the token
        `text` is most probable, the cursor on its probability."""
        token_id = self.token_id(text)
        if token_id is None:
            return refused(f"{quoted(text.strip())} is not a token this trace names; give its id (a number)")
        from tracer.tui.view.lens import LENS_KIND

        kind = LENS_KIND if lens else "probs"
        best = None
        for step in self.trace.find(kind=kind):
            data = np.asarray(step.data)
            if data.ndim == 0 or not 0 <= token_id < data.shape[-1]:
                continue
            column = data[..., token_id].reshape(-1)
            row = int(np.argmax(column))
            if best is None or column[row] > best[0]:
                best = (float(column[row]), step, (row, token_id) if data.ndim == 2 else (token_id,))
        if best is None:
            where = "lens steps (traced with --no-lens?)" if lens else "output distributions"
            return refused(f"this trace has no {where} with token id {token_id}")
        prob, step, index = best
        change = self.jump(step.id, cell=self.picture_for(step).cell_of(index))
        if step.decode_step is not None:
            where = f"decoding step {step.decode_step}"
        else:  # encoder-only: a row per position (the lens: per masked position)
            predictions = step.extra.get("predictions") if lens else None
            where = f"position {predictions[index[0]]['pos'] if predictions else index[0]}"
        at = f"layer {step.layer} of " if lens else ""
        return Change(step=change.step, head=change.head, cell=change.cell,
                      message=f"token {token_id} is most probable ({prob:.3f}) at {at}{where}")

    def picture_for(self, step: Step) -> Picture:
        return build_picture(step, 0, self._mask_for(step))

    # -- one token's attention everywhere ------------------------------------------------------------
    def attention_map(self) -> tuple[AttentionMap | None, str | None]:
        """For the query token under the cell cursor: every layer's and head's strongest key
        (or None, and why not)."""
        from tracer.tui.view.attention_map import QUERY_KINDS, attention_map

        step = self.step
        if step.kind not in QUERY_KINDS or step.layer is None:
            return None, "open an attention step (scores, pattern, q, z) and put the cursor on a query token's row"
        found = attention_map(self.trace, step, self.cell[0])
        if found is None:
            return None, "this pass has no attention pattern for that token"
        return found, None

    def open_pattern(self, cell: MapCell, query: int) -> Change:
        """A cell of the attention map: its pattern, at its head, the cursor on the query's row and the key."""
        return self.jump(cell.step_id, head=cell.head, cell=(query, cell.key))

    # -- the logit lens -------------------------------------------------------------------------------
    def lens_table(self, offset: int = 0) -> tuple[LensTable | None, str | None]:
        """The logit lens of the current decoding step, or of the one `offset` away (encoder-only:
        of the masked position `offset` from the first), or None and why not. Nothing moves."""
        from tracer.tui.view.lens import has_lens, lens_table

        trace, step = self.trace, self.step
        if not has_lens(trace):
            return None, "this trace has no logit lens (it was traced with --no-lens, or by an older tracer)"
        if trace.arch == "encoder":
            predictions = trace.find(kind="probs")[0].extra.get("predictions") or []
            if not 0 <= offset < len(predictions):
                return None, "no other masked position"
            return lens_table(trace, step, offset), None
        if step.decode_step is None:
            return None, "the logit lens is per decoding step: open a step of one (t)"
        steps = trace.decode_steps
        index = steps.index(step.decode_step) + offset
        if not 0 <= index < len(steps):
            return None, "this is the first decoding step" if index < 0 else "this is the last decoding step"
        return lens_table(trace, trace.find(decode_step=steps[index])[0]), None


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
