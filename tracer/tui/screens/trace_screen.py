"""TraceScreen: maps keys to the Viewer's moves and draws what they changed.

The Viewer (tracer.tui.view) owns where we are (trace, step, head, cell, view) and the
bookmarks; widgets draw what this screen hands them and post what the user did (a node
selected, a cell highlighted). The screen knows nothing of the app that holds it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, ClassVar

from rich.text import Text

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.command import CommandPalette
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tracer.input_notes import input_notes
from tracer.text import visible
from tracer.errors import TracerError
from tracer.trace import Step, Trace
from tracer.tui.commands import StepFinder
# (the dialogs and the help screen are imported where they open: not before the first frame)
from tracer.tui.view.explain import WORKED, describe_cell, explain
from tracer.tui.view.outline import build_outline
from tracer.tui.view import Change, Viewer
from tracer.tui.view.heads import head_name, head_number
from tracer.tui.view.picture import Picture
from tracer.tui.view.titles import fit_parts, screen_title
from tracer.tui.widgets.key_bar import KeyBar
from tracer.tui.widgets.navigator import StepNavigator
from tracer.tui.widgets.panels import ExplainPanel, NextTokenPanel, explanation_text
from tracer.tui.widgets.tensor_view import TensorView, legend_text
from tracer.tui.widgets.title_bar import FittedLine
from tracer.tui.screens.pass_views import PassViews
from tracer.tui.widgets.heads_view import HeadsView

if TYPE_CHECKING:  # compare mode loads when first used (it brings tracer.trace.diff)
    from tracer.tui.view.compare import Shown

# Seconds per step for autoplay, slowest first; + and - move along this list.
SPEEDS = (3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.15, 0.08)
DEFAULT_SPEED = 3
VIEW_NAMES = {"heatmap": "heat map", "numbers": "numbers"}


def session_slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40] or "session"


class TraceScreen(PassViews):
    """The step-through view of one trace (the app may hold several; `o` switches)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n,space,right", "next", "next", key_display="n"),
        Binding("p,left", "prev", "prev", key_display="p"),
        Binding("right_square_bracket", "layer(1)", "layer", key_display="]"),
        Binding("left_square_bracket", "layer(-1)", "prev layer", show=False, key_display="["),
        Binding("h", "head(1)", "head"),
        Binding("H", "head(-1)", "prev head", show=False),
        Binding("t", "decode(1)", "dec step"),
        Binding("T", "decode(-1)", "prev dec step", show=False),
        Binding("slash", "find", "find", key_display="/"),
        Binding("b", "bookmark", "mark"),
        Binding("B", "next_bookmark", "next bookmark", show=False),
        Binding("v", "toggle_view", "view"),
        Binding("a", "autoplay", "play"),
        Binding("plus,equals_sign", "speed(1)", "play faster", show=False, key_display="+"),
        Binding("minus", "speed(-1)", "play slower", show=False, key_display="-"),
        Binding("i", "new_input", "new input"),
        Binding("o", "other_trace", "other trace, same step", show=False),
        Binding("c", "compare", "compare with the next trace (Δ = B − A)", show=False),
        Binding("d", "most_changed(1)", "next most-changed step", show=False),
        Binding("D", "most_changed(-1)", "prev most-changed step", show=False),
        Binding("s", "save", "save"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | n / space / → | Next step. |
    | p / ← | Previous step. |
    | ] / [ | Same step in the next / previous layer. |
    | h / H | Next / previous head. |
    | t / T | Same step at the next / previous decoding step. |
    | / | Find a step by name (command palette). |
    | b / B | Bookmark this step (with a note) or remove its bookmark / go to the next bookmark. |
    | v | Heat map / numbers. |
    | a, + / - | Autoplay on/off, faster / slower. |
    | i | Trace a new sentence; o switches to the next trace, at the same step. |
    | c | Compare with the next trace: Δ heat map (B − A), or side by side; again: the trace after, then off. |
    | d / D | In compare mode: the next / previous most-changed step. |
    | s | Save the session. |
    | ? | Help.  q: quit. |
    """

    COMMANDS = {StepFinder}
    AUTO_FOCUS = "#tensor"

    def __init__(
        self,
        viewer: Viewer,
        *,
        retrace: Callable[[str], Trace] | None = None,
        store=None,
        session_name: str | None = None,
        play: bool = False,
    ) -> None:
        """`retrace`: text -> Trace, for tracing a new sentence (None: no model here). `store`:
        the `tracer.trace.session.SessionStore` that `s` saves into (None: its default folder)."""
        super().__init__()
        self.viewer = viewer
        self.retrace = retrace
        self.store = store
        self.session_name = session_name
        self.playing = False
        self.speed = DEFAULT_SPEED
        self._play_on_mount = play
        self._play_timer = None
        # the problems of steps that could not be drawn, one line each (tracer.tui.open_traces
        # turns them into the exit code once the UI closes)
        self.step_errors: list[str] = []

    # -- where we are (the viewer's; kept here for tests and callers) --------------------
    @property
    def trace_index(self) -> int:
        return self.viewer.trace_index

    @property
    def step_id(self) -> str:
        return self.viewer.step_id

    @property
    def head(self) -> int:
        return self.viewer.head

    @head.setter
    def head(self, head: int) -> None:
        self.viewer.head = head

    @property
    def view(self) -> str:
        return self.viewer.view

    @property
    def trace(self) -> Trace:
        return self.viewer.trace

    @property
    def step(self) -> Step:
        return self.viewer.step

    # -- layout --------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield FittedLine(id="title")
        with Horizontal(id="body"):
            yield StepNavigator(id="navigator")
            with Vertical(id="main"):
                yield FittedLine(id="tensor-title")
                yield TensorView(id="tensor")
                yield HeadsView(id="heads")
                yield Static(id="inspect")
                with Horizontal(id="bottom"):
                    yield ExplainPanel(id="explain")
                    yield NextTokenPanel(id="next-token")
        yield KeyBar(self.BINDINGS)

    def on_mount(self) -> None:
        self.draw(Change(trace=True, step=True, bookmarks=True))
        if self._play_on_mount:
            self.start_playing()

    # -- drawing what a move changed -----------------------------------------------------
    def apply(self, change: Change) -> Change:
        """Tell the user what the viewer said, and redraw what the move changed."""
        if change.message:
            self._notify(change.message)
        if change:
            self.draw(change)
        return change

    def draw(self, change: Change) -> None:
        viewer = self.viewer
        trace, step = viewer.trace, viewer.step
        navigator = self.query_one(StepNavigator)
        if change.trace:
            navigator.load(build_outline(trace))
            self._update_title()
            for note in input_notes(trace):  # also in the explain panel, at Tokenize / the prediction
                self.notify(note, severity="warning", timeout=12, markup=False)
        if change.trace or change.bookmarks:
            navigator.set_bookmarks(viewer.bookmarked_steps())
        shown = viewer.compared()
        picture = None
        if shown is not None:
            self._hide_all_heads()
            self._draw_compared(shown)
        else:
            try:
                picture = viewer.picture()
            except Exception as exc:  # noqa: BLE001 - one step that cannot be drawn must not end the UI
                self._cannot_draw(step, "the tensor", exc)
            else:
                self.query_one(TensorView).show(picture, viewer.view, viewer.cell)
                self._update_tensor_title(picture)
                self._draw_all_heads()
                self._update_inspect(picture, *viewer.cell)
        if shown is not None:
            if change.trace or change.step:  # another head or view: the panels have not changed
                self._explain_compared(step)
        elif change.trace or change.step or (step.kind in WORKED and picture is not None):
            try:  # another head or view: only a worked cell changes
                self.query_one(ExplainPanel).show(explain(step, trace, picture, viewer.cell), step)
            except Exception as exc:  # noqa: BLE001
                self._cannot_draw(step, "the explanation", exc)
        if change.trace or change.step:
            try:
                self.query_one(NextTokenPanel).show(trace, step)
            except Exception as exc:  # noqa: BLE001
                self._cannot_draw(step, "the prediction", exc)
            navigator.show_current(step.id)

    def _cannot_draw(self, step: Step, what: str, exc: Exception) -> None:
        """Say in one line, where the tensor would be, why this step cannot be drawn; the UI goes on."""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        message = f"{step.id}: {what} cannot be drawn ({first})"
        self.step_errors.append(message)
        if what == "the tensor":
            self.query_one(TensorView).show(None)
            self.query_one("#inspect", Static).update("", layout=False)
        line = Text(visible(message), style="bold red", no_wrap=True, overflow="ellipsis")
        self.query_one("#tensor-title", FittedLine).show(lambda width: line)

    def go(self, step_id: str) -> None:
        """Open `step_id` (from the outline, the finder, or a caller that set the head or view)."""
        change = self.viewer.go(step_id)
        self.apply(change if change or change.message else Change(head=True))

    def _update_title(self) -> None:
        viewer = self.viewer
        playing = None
        if self.playing:
            speed = f"{SPEEDS[self.speed]:g} s/step"
            playing = [f"▶ playing, {speed} (a pause, +/- speed)", f"▶ playing, {speed}", "▶ playing"]

        def fit(width: int) -> Text:
            text = Text(no_wrap=True, overflow="ellipsis")
            comparing = viewer.comparison.b_index + 1 if viewer.comparison is not None else None
            for part, style in screen_title(viewer.trace, viewer.trace_index + 1, len(viewer.traces), playing, width,
                                            comparing):
                text.append(part, style=style)
            return text

        self.query_one("#title", FittedLine).show(fit)
        self._update_key_bar()

    def _update_tensor_title(self, picture: Picture) -> None:
        step = self.viewer.step
        first: list[tuple[str, str, bool]] = [(step.id, "bold", False)]  # (text, style, may shorten)
        if picture.head is not None:
            first.append((f"   {head_name(picture.step, picture.head)}", "bold yellow", False))
        note = self.viewer.bookmark_for(step.id)
        if note is not None:  # only the note gives way to keep ★ in sight; the details after it may be cut
            first += [("   ★ ", "bold yellow", False), (visible(note.note) or "bookmarked", "", True)]
        view = "numbers" if picture.scale == "ids" else self.viewer.view  # token ids are always numbers
        details = [f"   [{' × '.join(map(str, step.shape))}]", f"   {VIEW_NAMES[view]}"]
        if picture.wrap is not None:
            details.append(f"   {picture.length} values, {picture.wrap} per row")
        if picture.head is not None:
            details.append("   scale: per head (A: all heads, shared)")
        legend = legend_text(picture, self.viewer.view)

        def fit(width: int) -> Text:
            text = Text(no_wrap=True, overflow="ellipsis")  # two fixed lines, even at 80 columns
            for part, style in fit_parts(first, width):
                text.append(part, style=style)
            for part in details:
                text.append(part, style="dim")
            text.append("\n")
            text.append_text(legend)
            # the stats cover every head, the colours this one: said where it fits whole (not at 80 columns)
            scale_note = (f"   colours: head {head_number(picture.step, picture.head) + 1}'s range"
                          if picture.head is not None else "")
            if scale_note and legend.cell_len + len(scale_note) <= width:
                text.append(scale_note, style="dim")
            return text

        self.query_one("#tensor-title", FittedLine).show(fit)

    # -- messages from widgets -------------------------------------------------------
    def on_step_navigator_step_chosen(self, event: StepNavigator.StepChosen) -> None:
        self.go(event.step_id)

    def on_tensor_view_cell_highlighted(self, event: TensorView.CellHighlighted) -> None:
        self.viewer.set_cell(event.row, event.col)
        shown = self.viewer.compared()
        if shown is not None:
            self._update_compared_inspect(shown, event.row, event.col)
        elif event.view.picture is not None:
            self._update_inspect(event.view.picture, event.row, event.col)
            step = self.viewer.step
            if step.kind in WORKED:  # the explain panel works this cell through
                self.query_one(ExplainPanel).show(explain(step, self.viewer.trace, event.view.picture, self.viewer.cell), step)

    def _update_inspect(self, picture: Picture, row: int, col: int) -> None:
        line = Text()
        line.append("cell  ", style="bold cyan")
        line.append(visible_token_line(describe_cell(self.viewer.trace, picture, row, col)))
        self.query_one("#inspect", Static).update(line, layout=False)

    # -- keys: each is one of the viewer's moves ---------------------------------------------
    def _notify(self, message: str) -> None:
        """A short hint (end of trace, no such layer): replaces the previous one, never piles up."""
        self.app.clear_notifications()
        self.notify(message, timeout=2, markup=False)

    def action_next(self) -> bool:
        change = self.apply(self.viewer.next_step())
        if not change:
            self._stop_playing()
        return bool(change)

    def action_prev(self) -> None:
        self.apply(self.viewer.previous_step())

    def action_layer(self, delta: int) -> None:
        self.apply(self.viewer.layer(delta))

    def action_head(self, delta: int) -> None:
        self.apply(self.viewer.next_head(delta))

    def action_decode(self, delta: int) -> None:
        self.apply(self.viewer.decoding_step(delta))

    def action_find(self) -> None:
        self.app.push_screen(CommandPalette(providers=[StepFinder], placeholder="Find a step… (e.g. cross_attn pattern@2)"))

    def action_toggle_view(self) -> None:
        self.apply(self.viewer.toggle_view())

    # -- bookmarks --------------------------------------------------------------------
    def action_bookmark(self) -> None:
        if self.viewer.bookmark_for() is not None:
            self.apply(self.viewer.remove_bookmark())
            return
        step_id = self.viewer.step_id

        def add(note: str | None) -> None:
            if note is not None:
                self.add_bookmark(step_id, note)

        from tracer.tui.screens.dialogs import TextPrompt
        self.app.push_screen(TextPrompt(f"Bookmark {step_id}: note (optional)", placeholder="what is interesting here"), add)

    def add_bookmark(self, step_id: str, note: str = "") -> None:
        self.apply(self.viewer.add_bookmark(note, step_id))

    def action_next_bookmark(self) -> None:
        self.apply(self.viewer.next_bookmark())

    # -- autoplay ---------------------------------------------------------------------
    def action_autoplay(self) -> None:
        if self.playing:
            self._stop_playing()
        else:
            self.start_playing()

    def start_playing(self) -> None:
        self.playing = True
        self._restart_timer()
        self._update_title()

    def _stop_playing(self) -> None:
        if self._play_timer is not None:
            self._play_timer.stop()
            self._play_timer = None
        if self.playing:
            self.playing = False
            self._update_title()

    def _restart_timer(self) -> None:
        if self._play_timer is not None:
            self._play_timer.stop()
        self._play_timer = self.set_interval(SPEEDS[self.speed], self._tick)

    def _tick(self) -> None:
        if self.playing and self.app.screen is self:
            self.action_next()

    def action_speed(self, delta: int) -> None:
        self.speed = min(max(self.speed + delta, 0), len(SPEEDS) - 1)
        if self.playing:
            self._restart_timer()
        self._update_title()
        self._notify(f"autoplay: {SPEEDS[self.speed]:g} s per step")

    # -- other traces -------------------------------------------------------------------
    def action_new_input(self) -> None:
        if self.retrace is None:
            self._notify("no model is loaded here (a replayed session): use `tracer run TEXT` to trace new input")
            return

        def run(text: str | None) -> None:
            if text and text.strip():
                self.notify("tracing…", timeout=3)
                self._retrace(text)

        from tracer.tui.screens.dialogs import TextPrompt
        self.app.push_screen(TextPrompt("New input: a sentence to trace", placeholder="ich bin piyush"), run)

    @work(thread=True, exclusive=True, group="retrace")
    def _retrace(self, text: str) -> None:
        try:
            trace = self.retrace(text)
        except TracerError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", markup=False)
            return
        except Exception as exc:  # the model failing must not take the UI down
            self.app.call_from_thread(self.notify, f"tracing failed: {exc}", severity="error", markup=False)
            return
        self.app.call_from_thread(self.add_trace, trace)

    def add_trace(self, trace: Trace) -> None:
        self.apply(self.viewer.add_trace(trace))

    def action_other_trace(self) -> None:
        self.apply(self.viewer.other_trace())

    # -- compare mode (the Viewer holds the pair; tracer.tui.view.compare builds what is drawn) ----------
    COMPARE_HINTS: ClassVar[list[Binding]] = [
        Binding("c", "compare", "compare"),
        Binding("d", "most_changed(1)", "most changed"),
    ]

    def action_compare(self) -> None:
        self.apply(self.viewer.toggle_compare())

    def action_most_changed(self, delta: int) -> None:
        self.apply(self.viewer.most_changed(delta))

    def _update_key_bar(self) -> None:
        """With two traces open the bar offers `c compare`; in compare mode also `d most changed`."""
        if len(self.viewer.traces) < 2:
            hints = self.BINDINGS
        else:
            extra = self.COMPARE_HINTS if self.viewer.comparison is not None else self.COMPARE_HINTS[:1]
            at = next(i for i, b in enumerate(self.BINDINGS) if isinstance(b, Binding) and b.key == "s")
            hints = [*self.BINDINGS[:at], *extra, *self.BINDINGS[at:]]
        self.query_one(KeyBar).set_bindings(hints)

    def _draw_compared(self, shown: Shown) -> None:
        from tracer.tui.view.compare import ONLY, SIDE  # compare mode loads when first used

        viewer, view = self.viewer, self.query_one(TensorView)
        if shown.picture is None:
            view.show_message(shown.message)
        else:
            view.show(shown.picture, viewer.view, viewer.cell)
        comparison = viewer.comparison
        a, b = comparison.a_index + 1, comparison.b_index + 1
        step = shown.step_a
        if shown.mode == ONLY:
            what = f"   only in trace {a}"
        elif shown.mode == SIDE:
            what = f"   side by side: A = trace {a} | B = trace {b}"
        else:
            what = f"   Δ = trace {b} − trace {a}"
        first: list[tuple[str, str, bool]] = [(step.id, "bold", True), (what, "bold magenta", True)]
        picture = shown.picture
        headed = shown.sides[0] if shown.sides else picture  # side by side: the head is A's picture's
        if headed is not None and headed.head is not None:
            first.append((f"   {head_name(headed.step, headed.head)}", "bold yellow", False))
        shapes = f"   [{' × '.join(map(str, step.shape))}]"
        if shown.step_b is not None and shown.step_b.shape != step.shape:
            shapes += f" vs [{' × '.join(map(str, shown.step_b.shape))}]"
        details = [shapes, f"   {VIEW_NAMES[viewer.view]}"]
        legend = legend_text(picture, viewer.view) if picture is not None else Text(shown.message, style="dim")

        def fit(width: int) -> Text:
            text = Text(no_wrap=True, overflow="ellipsis")
            # one cell to spare: the details after these parts end in the ellipsis, not the head
            for part, style in fit_parts(first, width - 1):
                text.append(part, style=style)
            for part in details:
                text.append(part, style="dim")
            text.append("\n")
            text.append_text(legend)
            return text

        self.query_one("#tensor-title", FittedLine).show(fit)
        self._update_compared_inspect(shown, *view.cursor)

    def _update_compared_inspect(self, shown: Shown, row: int, col: int) -> None:
        from tracer.tui.view.compare import describe_compared_cell

        line = Text()
        line.append("cell  ", style="bold cyan")
        viewer = self.viewer
        line.append(visible_token_line(describe_compared_cell(shown, viewer.comparison.a, viewer.comparison.b, row, col)))
        self.query_one("#inspect", Static).update(line, layout=False)

    def _explain_compared(self, step: Step) -> None:
        """The diff figures first, then what the step computes."""
        from tracer.tui.view.compare import figure_lines

        text = Text()
        for label, words in figure_lines(self.viewer.comparison, step.id):
            text.append(f"{label:<9}", style="bold magenta")
            text.append(visible(words) + "\n")
        text.append("\n")
        text.append_text(explanation_text(explain(step, self.viewer.trace), step))
        self.query_one(ExplainPanel).set_text(text)

    # -- save, help, quit -----------------------------------------------------------------
    def action_save(self) -> None:
        if self.session_name:
            self._save(self.session_name, force=True)
            return

        def answer(value: str | None) -> None:
            if value and value.strip():
                self._save(value.strip(), force=False)

        default = session_slug(self.viewer.traces[0].input.get("text", ""))
        from tracer.tui.screens.dialogs import TextPrompt
        self.app.push_screen(TextPrompt("Save session as", value=default), answer)

    def _save(self, name: str, force: bool) -> None:
        store = self.store
        if store is None:
            try:
                from tracer.trace.session import SessionStore
            except ImportError:
                self.notify("saving sessions is not available in this build", severity="error")
                return
            store = SessionStore(None)
        try:
            taken = not force and store.path_of(name).exists()
        except TracerError as exc:  # not a valid session name
            self.notify(str(exc), severity="error", markup=False)
            return
        if taken:  # ask here: the command line's --force is no use inside the UI

            def replace(yes: bool | None) -> None:
                if yes:
                    self._save(name, force=True)
                else:
                    self._notify(f"not saved: session {name!r} is left as it was")

            from tracer.tui.screens.dialogs import Confirm
            self.app.push_screen(Confirm(f"A session named {name!r} already exists in {store.root}. Replace it?"), replace)
            return
        try:
            path = store.save(name, self.viewer.traces, state=self.viewer.to_state(), force=force)
        except TracerError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        self.session_name = name
        self.notify(f"saved session {name!r} ({path})", markup=False)

    def action_help(self) -> None:
        from tracer.tui.screens.help import HelpScreen
        self.app.push_screen(HelpScreen(self.help_sections()))

    def help_sections(self) -> list[tuple[str, list[Binding]]]:
        from textual.app import App

        app_bindings = [b for b in App.BINDINGS if isinstance(b, Binding) and b.action == "quit"]
        return [
            ("Steps", [b for b in self.BINDINGS if isinstance(b, Binding)]),
            ("Cells (tensor view focused; tab switches focus)", [b for b in TensorView.BINDINGS if isinstance(b, Binding)]),
            ("Views over the pass", [b for b in PassViews.BINDINGS if isinstance(b, Binding)]),
            ("Outline (when focused; tab switches focus)", [b for b in StepNavigator.BINDINGS if isinstance(b, Binding)]),
            ("App", app_bindings + [Binding("ctrl+p", "command_palette", "command palette (find steps, themes)")]),
        ]

    def action_quit(self) -> None:
        self.remember_place()
        self.app.exit()

    def remember_place(self) -> None:
        """A saved session remembers where it was left (its UI state; the traces are not rewritten),
        so `tracer replay NAME` reopens here. A trace that is not saved has nothing to remember into."""
        if not self.session_name:
            return
        try:
            store = self.store
            if store is None:  # as _save: the default sessions folder
                from tracer.trace.session import SessionStore

                store = SessionStore(None)
            store.remember_place(self.session_name, self.viewer.to_state(), self.viewer.traces)
        except (TracerError, OSError, ImportError):
            pass  # quitting must not fail: the session keeps the place it was saved with


def visible_token_line(text: str) -> str:
    """Cell descriptions quote tokens; keep a newline inside a token from breaking the line,
    and escape other control characters."""
    return visible(text.replace("\n", "⏎"))
