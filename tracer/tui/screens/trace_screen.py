"""TraceScreen: coordinates the navigator, the tensor view and the panels for one open trace.

Widgets draw what this screen hands them and post what the user did (a node selected, a
cell highlighted); the screen owns where we are (trace, step, head, view) and every key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.command import CommandPalette
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Static

from tracer.text import visible
from tracer.errors import TracerError
from tracer.trace import Step, Trace
from tracer.trace.state import Bookmark
from tracer.tui.commands import StepFinder
from tracer.tui.explain import describe_cell, explain
from tracer.tui.outline import build_outline, quoted
from tracer.tui.picture import Picture, build_picture, head_count
from tracer.tui.screens.dialogs import TextPrompt
from tracer.tui.screens.help import HelpScreen
from tracer.tui.widgets.key_bar import KeyBar
from tracer.tui.widgets.navigator import StepNavigator
from tracer.tui.widgets.panels import ExplainPanel, NextTokenPanel
from tracer.tui.widgets.tensor_view import TensorView, legend_text

if TYPE_CHECKING:
    from tracer.tui.app import TracerApp

# Seconds per step for autoplay, slowest first; + and - move along this list.
SPEEDS = (3.0, 2.0, 1.2, 0.8, 0.5, 0.3, 0.15, 0.08)
DEFAULT_SPEED = 3
VIEW_NAMES = {"heatmap": "heat map", "numbers": "numbers"}


def session_slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40] or "session"


class TraceScreen(Screen[None]):
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
        Binding("o", "other_trace", "other trace", show=False),
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
    | i | Trace a new sentence; o switches between traces. |
    | s | Save the session. |
    | ? | Help.  q: quit. |
    """

    COMMANDS = {StepFinder}
    AUTO_FOCUS = "#tensor"

    def __init__(self) -> None:
        super().__init__()
        self.trace_index = 0
        self.step_id: str = ""
        self.head = 0
        self.view = "heatmap"
        self.playing = False
        self.speed = DEFAULT_SPEED
        self._play_timer = None
        self._pictures: dict[tuple, Picture] = {}

    @property
    def tracer_app(self) -> "TracerApp":
        return self.app  # type: ignore[return-value]

    @property
    def trace(self) -> Trace:
        return self.tracer_app.traces[self.trace_index]

    @property
    def step(self) -> Step:
        return self.trace.step(self.step_id)

    # -- layout --------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Horizontal(id="body"):
            yield StepNavigator(id="navigator")
            with Vertical(id="main"):
                yield Static(id="tensor-title")
                yield TensorView(id="tensor")
                yield Static(id="inspect")
                with Horizontal(id="bottom"):
                    yield ExplainPanel(id="explain")
                    yield NextTokenPanel(id="next-token")
        yield KeyBar(self.BINDINGS)

    def on_mount(self) -> None:
        self.tracer_app.trace_screen = self
        self.tracer_app.trace_screen_ready()

    # -- where we are ---------------------------------------------------------------
    def open_trace(self, index: int, step_id: str | None = None) -> None:
        """Show trace `index` (from the app's list), at `step_id` or its first step."""
        self.trace_index = index
        self._pictures.clear()
        trace = self.trace
        self.query_one(StepNavigator).load(build_outline(trace))
        self._update_bookmarks()
        self._update_title()
        if step_id is None or step_id not in trace:
            step_id = trace.steps[0].id
        self.step_id = ""  # force a full redraw, even of the same step id
        self.go(step_id)

    def go(self, step_id: str) -> None:
        """Make `step_id` the current step and redraw everything that depends on it."""
        if step_id not in self.trace:
            return
        same_step = step_id == self.step_id
        self.step_id = step_id
        step = self.step
        picture = self.picture()
        view = self.query_one(TensorView)
        view.show(picture, self.view)
        self._update_tensor_title(picture)
        self._update_inspect(picture, *view.cursor)
        if same_step:  # another head or view: the panels and the tree have not changed
            return
        self.query_one(ExplainPanel).show(explain(step, self.trace), step)
        self.query_one(NextTokenPanel).show(self.trace, step)
        self.query_one(StepNavigator).show_current(step_id)

    def picture(self) -> Picture:
        step = self.step
        heads = head_count(step)
        head = min(self.head, heads - 1) if heads else None
        key = (self.trace_index, step.id, head)
        picture = self._pictures.get(key)
        if picture is None:
            mask = None
            if step.kind == "pattern":
                mask_id = step.id.replace("hook_pattern", "hook_mask")
                if mask_id in self.trace:
                    mask = self.trace[mask_id]
            picture = build_picture(step, self.head, mask)
            if len(self._pictures) > 32:
                self._pictures.pop(next(iter(self._pictures)))
            self._pictures[key] = picture
        return picture

    def _update_title(self) -> None:
        trace = self.trace
        text = Text()
        text.append("tracer", style="bold")
        text.append(visible(f" · {trace.model.get('name', '?')} · {trace.device} · "))
        text.append(quoted(trace.input.get("text", "")))
        output = trace.output.get("text")
        if output is not None and trace.arch != "encoder":
            text.append(" → ")
            text.append(quoted(output))
        elif trace.arch == "encoder" and trace.output.get("tokens"):
            text.append(" → ")
            text.append(quoted(" ".join(trace.output["tokens"])))
        traces = len(self.tracer_app.traces)
        if traces > 1:
            text.append(f"   trace {self.trace_index + 1}/{traces}", style="dim")
        if self.playing:
            text.append(f"   ▶ playing, {SPEEDS[self.speed]:g} s/step (a pause, +/- speed)", style="bold green")
        text.no_wrap, text.overflow = True, "ellipsis"
        self.query_one("#title", Static).update(text, layout=False)  # fixed height: no relayout

    def _update_tensor_title(self, picture: Picture) -> None:
        step = self.step
        text = Text()
        text.append(step.id, style="bold")
        if picture.head is not None:
            text.append(f"   head {picture.head + 1}/{picture.n_heads}", style="bold yellow")
        text.append(f"   [{' × '.join(map(str, step.shape))}]", style="dim")
        text.append(f"   {VIEW_NAMES[self.view]}", style="dim")
        if picture.wrap is not None:
            text.append(f"   {picture.length} values, {picture.wrap} per row", style="dim")
        note = self._bookmark_for(step.id)
        if note is not None:
            text.append("   ★ ", style="bold yellow")
            text.append(note.note or "bookmarked")
        text.append("\n")
        text.append_text(legend_text(picture, self.view))
        text.no_wrap, text.overflow = True, "ellipsis"  # two fixed lines, even at 80 columns
        self.query_one("#tensor-title", Static).update(text, layout=False)

    # -- messages from widgets -------------------------------------------------------
    def on_step_navigator_step_chosen(self, event: StepNavigator.StepChosen) -> None:
        self.go(event.step_id)

    def on_tensor_view_cell_highlighted(self, event: TensorView.CellHighlighted) -> None:
        if event.view.picture is not None:
            self._update_inspect(event.view.picture, event.row, event.col)

    def _update_inspect(self, picture: Picture, row: int, col: int) -> None:
        line = Text()
        line.append("cell  ", style="bold cyan")
        line.append(visible_token_line(describe_cell(self.trace, picture, row, col)))
        self.query_one("#inspect", Static).update(line, layout=False)

    # -- navigation -------------------------------------------------------------------
    def _notify(self, message: str) -> None:
        """A short hint (end of trace, no such layer): replaces the previous one, never piles up."""
        self.app.clear_notifications()
        self.notify(message, timeout=2, markup=False)

    def action_next(self) -> bool:
        index = self.step.index
        if index + 1 >= len(self.trace):
            self._notify("last step of the trace")
            self._stop_playing()
            return False
        self.go(self.trace.steps[index + 1].id)
        return True

    def action_prev(self) -> None:
        index = self.step.index
        if index == 0:
            self._notify("first step of the trace")
            return
        self.go(self.trace.steps[index - 1].id)

    def action_layer(self, delta: int) -> None:
        step = self.step
        if step.layer is None:
            self._notify("this step is not inside a layer")
            return
        matches = self.trace.find(kind=step.kind, component=step.component, stack=step.stack,
                                  decode_step=step.decode_step, layer=step.layer + delta)
        if not matches:
            self._notify(f"no layer {step.layer + delta}")
            return
        self.go(matches[0].id)

    def action_head(self, delta: int) -> None:
        heads = head_count(self.step)
        if not heads:
            self._notify("this step has no heads")
            return
        self.head = (min(self.head, heads - 1) + delta) % heads
        self.go(self.step_id)

    def action_decode(self, delta: int) -> None:
        step, trace = self.step, self.trace
        steps = trace.decode_steps
        if not steps:
            self._notify("this trace has no decoding steps")
            return
        t = step.decode_step
        if t is None:
            if delta > 0:
                self.go(trace.find(decode_step=steps[0])[0].id)
            else:
                self._notify("the encoder runs before the first decoding step")
            return
        target = f"{step.name}@{t + delta}"
        if target in trace:
            self.go(target)
        elif t + delta < steps[0] and trace.arch == "encoder-decoder":
            self._notify("first decoding step (the encoder has no decoding steps)")
        else:
            self._notify(f"no decoding step {t + delta}")

    def action_find(self) -> None:
        self.app.push_screen(CommandPalette(providers=[StepFinder], placeholder="Find a step… (e.g. cross_attn pattern@2)"))

    def action_toggle_view(self) -> None:
        self.view = "numbers" if self.view == "heatmap" else "heatmap"
        self.go(self.step_id)

    # -- bookmarks --------------------------------------------------------------------
    def _bookmark_for(self, step_id: str) -> Bookmark | None:
        for bookmark in self.tracer_app.bookmarks:
            if bookmark.trace == self.trace_index and bookmark.step == step_id:
                return bookmark
        return None

    def _update_bookmarks(self) -> None:
        marked = {b.step for b in self.tracer_app.bookmarks if b.trace == self.trace_index}
        self.query_one(StepNavigator).set_bookmarks(marked)

    def action_bookmark(self) -> None:
        existing = self._bookmark_for(self.step_id)
        if existing is not None:
            self.tracer_app.bookmarks.remove(existing)
            self._update_bookmarks()
            self.go(self.step_id)
            self._notify("bookmark removed")
            return
        step_id = self.step_id

        def add(note: str | None) -> None:
            if note is None:
                return
            self.add_bookmark(step_id, note)

        self.app.push_screen(TextPrompt(f"Bookmark {step_id}: note (optional)", placeholder="what is interesting here"), add)

    def add_bookmark(self, step_id: str, note: str = "") -> None:
        self.tracer_app.bookmarks.append(Bookmark(self.trace_index, step_id, note.strip()))
        self._update_bookmarks()
        if step_id == self.step_id:
            self.go(step_id)

    def action_next_bookmark(self) -> None:
        marked = [b.step for b in self.tracer_app.bookmarks if b.trace == self.trace_index and b.step in self.trace]
        if not marked:
            self._notify("no bookmarks in this trace (b adds one)")
            return
        order = sorted(marked, key=lambda step_id: self.trace.step(step_id).index)
        current = self.step.index
        later = [s for s in order if self.trace.step(s).index > current]
        self.go((later or order)[0])

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
        if self.tracer_app.retrace is None:
            self._notify("no model is loaded here (a replayed session): use `tracer run TEXT` to trace new input")
            return

        def run(text: str | None) -> None:
            if text and text.strip():
                self.notify("tracing…", timeout=3)
                self._retrace(text)

        self.app.push_screen(TextPrompt("New input: a sentence to trace", placeholder="ich bin piyush"), run)

    @work(thread=True, exclusive=True, group="retrace")
    def _retrace(self, text: str) -> None:
        try:
            trace = self.tracer_app.retrace(text)
        except TracerError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", markup=False)
            return
        except Exception as exc:  # the model failing must not take the UI down
            self.app.call_from_thread(self.notify, f"tracing failed: {exc}", severity="error", markup=False)
            return
        self.app.call_from_thread(self.add_trace, trace)

    def add_trace(self, trace: Trace) -> None:
        self.tracer_app.traces.append(trace)
        self.open_trace(len(self.tracer_app.traces) - 1)

    def action_other_trace(self) -> None:
        traces = self.tracer_app.traces
        if len(traces) < 2:
            self._notify("only one trace is open (i traces a new sentence)")
            return
        self.open_trace((self.trace_index + 1) % len(traces))

    # -- save, help, quit -----------------------------------------------------------------
    def action_save(self) -> None:
        name = self.tracer_app.session_name
        if name:
            self._save(name, force=True)
            return

        def answer(value: str | None) -> None:
            if value and value.strip():
                self._save(value.strip(), force=False)

        default = session_slug(self.tracer_app.traces[0].input.get("text", ""))
        self.app.push_screen(TextPrompt("Save session as", value=default), answer)

    def _save(self, name: str, force: bool) -> None:
        try:
            from tracer.trace.session import SessionStore
        except ImportError:
            self.notify("saving sessions is not available in this build", severity="error")
            return
        app = self.tracer_app
        try:
            path = SessionStore(None).save(name, app.traces, state=app.ui_state(), force=force)
        except TracerError as exc:
            self.notify(str(exc), severity="error", markup=False)
            return
        app.session_name = name
        self.notify(f"saved session {name!r} ({path})", markup=False)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.help_sections()))

    def help_sections(self) -> list[tuple[str, list[Binding]]]:
        from textual.app import App

        app_bindings = [b for b in App.BINDINGS if isinstance(b, Binding) and b.action == "quit"]
        return [
            ("Steps", [b for b in self.BINDINGS if isinstance(b, Binding)]),
            ("Cells (tensor view focused; tab switches focus)", [b for b in TensorView.BINDINGS if isinstance(b, Binding)]),
            ("Outline (when focused; tab switches focus)", [b for b in StepNavigator.BINDINGS if isinstance(b, Binding)]),
            ("App", app_bindings + [Binding("ctrl+p", "command_palette", "command palette (find steps, themes)")]),
        ]

    def action_quit(self) -> None:
        self.app.exit()


def visible_token_line(text: str) -> str:
    """Cell descriptions quote tokens; keep a newline inside a token from breaking the line,
    and escape other control characters."""
    return visible(text.replace("\n", "⏎"))

