"""The trace screen's views over the whole pass (issue 18): follow the dataflow and back, all
heads at once, find by value, export the tensor, one token's attention everywhere, the logit lens.

`PassViews` is the trace screen's base: its keys and actions live here, apart from the stepping
ones, and make the Viewer's moves (tracer.tui.view.viewer). It relies on what TraceScreen
provides: `viewer`, `apply` (redraw what a move changed) and `_notify`.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text

from textual.binding import Binding, BindingType
from textual.screen import Screen

from tracer.errors import TracerError
from tracer.tui.view.titles import fit_parts
from tracer.tui.view.heads import head_number, heads_held
from tracer.tui.widgets.heads_view import HeadsView
from tracer.tui.widgets.tensor_view import TensorView, legend_text
from tracer.tui.widgets.title_bar import FittedLine


class PassViews(Screen[None]):
    """Keys and actions of the views over the pass (the trace screen subclasses this)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "follow(0)", "go to the step this was computed from (its first input)", show=False),
        Binding("F", "follow(1)", "go to its second input", show=False),
        Binding("backspace", "back", "back to where f (or a jump) came from", show=False, key_display="backspace"),
        Binding("A", "all_heads", "all heads at once, on one colour scale (again: one head)", show=False),
        Binding("g", "attention_map", "where this row's query token attends, in every layer and head", show=False),
        Binding("l", "lens", "the logit lens of this decoding step: each layer's top tokens", show=False),
        Binding("m", "find_max", "cell cursor to the tensor's largest value", show=False),
        Binding("w", "find_token(0)", "go to the decoding step where a token is most probable", show=False),
        Binding("W", "find_token(1)", "the same, in the logit lens (which layer and step)", show=False),
        Binding("e", "export", "export this tensor as .npy into the working folder", show=False),
        Binding("E", "export_as", "export this tensor to a path (.npy, .csv or .json)", show=False),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | f / F, backspace | Go to the step this one was computed from (first / second input); back. |
    | A | All heads of the layer at once, on one shared colour scale. |
    | g | Where the query token under the cursor attends, in every layer and head. |
    | l | The logit lens of this decoding step. |
    | m, w / W | Cursor to the largest value; find where a token is most probable (output / lens). |
    | e / E | Export this tensor (.npy into the working folder / to a path asked for). |
    """

    def action_follow(self, which: int) -> None:
        self.apply(self.viewer.follow(which))

    def action_back(self) -> None:
        self.apply(self.viewer.back())

    def action_all_heads(self) -> None:
        self.apply(self.viewer.toggle_all_heads())

    def _hide_all_heads(self) -> None:
        """Back to the one tensor view (compare mode draws there, whatever all heads was)."""
        tensor, heads = self.query_one(TensorView), self.query_one(HeadsView)
        if heads.display:
            heads.display = False
            tensor.display = True

    def _draw_all_heads(self) -> None:
        """The small multiples in place of the tensor view while all heads are on (and the step has heads)."""
        viewer = self.viewer
        showing = viewer.showing_all_heads
        tensor, heads = self.query_one(TensorView), self.query_one(HeadsView)
        if heads.display != showing:
            heads.display = showing
            tensor.display = not showing
        if not showing:
            return
        picture = viewer.heads_picture()
        heads.show(picture, min(viewer.head, picture.n_heads - 1))
        step = viewer.step
        legend = legend_text(picture, "heatmap")
        legend.append(f"   scale: shared by all {picture.n_heads} heads", style="bold")
        held = heads_held(step)  # a --heads trace: "3 of 12 heads (1, 3, 4)"
        highlighted = head_number(step, min(viewer.head, picture.n_heads - 1)) + 1
        first = [(step.id, "bold", False), (f"   all {held}" if held.endswith(" heads") else f"   {held}", "bold yellow", False),
                 (f"   (h: head {highlighted} highlighted; A: one head)", "dim", True)]

        def fit(width: int) -> Text:
            text = Text(no_wrap=True, overflow="ellipsis")
            for part, style in fit_parts(first, width):
                text.append(part, style=style)
            text.append(f"   [{' × '.join(map(str, step.shape))}]", style="dim")
            text.append("\n")
            text.append_text(legend)
            return text

        self.query_one("#tensor-title", FittedLine).show(fit)

    def action_find_max(self) -> None:
        self.apply(self.viewer.find_max())

    def action_find_token(self, lens: int) -> None:
        where = "the logit lens (every layer)" if lens else "the output distributions"

        def find(text: str | None) -> None:
            if text and text.strip():
                self.apply(self.viewer.find_token(text, lens=bool(lens)))

        from tracer.tui.screens.dialogs import TextPrompt

        self.app.push_screen(TextPrompt(f"Find where a token is most probable, in {where}",
                                        placeholder="a token (milk) or its id (237)"), find)

    def action_export(self) -> None:
        self.export_to(None)

    def action_export_as(self) -> None:
        from tracer.tui.view.export import default_name

        def answer(value: str | None) -> None:
            if value is not None and value.strip():
                self.export_to(value)

        from tracer.tui.screens.dialogs import TextPrompt

        self.app.push_screen(TextPrompt(f"Export {self.viewer.step_id} to (a file or folder; .npy, .csv or .json)",
                                        value=default_name(self.viewer.step)), answer)

    def export_to(self, where: str | None) -> None:
        """Write the current tensor (None: `<step id>.npy` in the working folder) and say where it went."""
        from tracer.tui.view.export import export_step, target_path

        try:
            path = export_step(self.viewer.step, target_path(self.viewer.step, where))
        except TracerError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self._notify(f"exported {self.viewer.step_id} to {path.resolve()}")

    def action_attention_map(self) -> None:
        found, why = self.viewer.attention_map()
        if found is None:
            self._notify(why)
            return
        query = found.query

        def open_cell(cell) -> None:
            if cell is not None:
                self.apply(self.viewer.open_pattern(cell, query))

        from tracer.tui.screens.views import AttentionMapScreen  # its DataTable loads when first asked for, not at start-up

        self.app.push_screen(AttentionMapScreen(found), open_cell)

    def action_lens(self) -> None:
        table, why = self.viewer.lens_table()
        if table is None:
            self._notify(why)
            return

        def open_step(step_id: str | None) -> None:
            if step_id is not None:
                self.apply(self.viewer.jump(step_id))

        from tracer.tui.screens.views import LensScreen  # as above: not at start-up

        self.app.push_screen(LensScreen(table, self.viewer.lens_table), open_step)

