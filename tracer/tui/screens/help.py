"""The help screen: every key, generated from the bindings themselves so it cannot go stale."""

from __future__ import annotations

from typing import ClassVar, Iterable

from rich.table import Table
from rich.text import Text

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = (
    "tracer steps through a transformer's computation one recorded tensor at a time. "
    "Left: every step in computation order. Right: the tensor (one head at a time), "
    "what it computes, and at decoding steps the next-token candidates."
)


def key_rows(app, sections: Iterable[tuple[str, list[Binding]]]) -> list[tuple[str, str, str]]:
    """(section, keys, description) with every key bound to the same action on one row."""
    rows: list[tuple[str, str, str]] = []
    for section, bindings in sections:
        merged: dict[str, tuple[list[str], str]] = {}
        for binding in bindings:
            for key in binding.key.split(","):
                single = Binding(key.strip(), binding.action, binding.description, key_display=binding.key_display if "," not in binding.key else None)
                display = app.get_key_display(single)
                keys, description = merged.setdefault(binding.action, ([], binding.description))
                if display not in keys:
                    keys.append(display)
        for keys, description in merged.values():
            rows.append((section, " / ".join(keys), description))
    return rows


class HelpScreen(ModalScreen[None]):
    """Lists every key of the trace screen, the tensor view and the app."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "close help"),
    ]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%;
        max-width: 96;
        height: 90%;
        border: thick $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    def __init__(self, sections: list[tuple[str, list[Binding]]]) -> None:
        super().__init__()
        self._sections = sections

    def compose(self) -> ComposeResult:
        # One table per section, its heading a line of its own above it: in the keys column
        # (24 cells) a heading such as "Cells (tensor view focused; …)" was cut off.
        tables: dict[str, Table] = {}
        for section, keys, description in key_rows(self.app, self._sections):
            table = tables.get(section)
            if table is None:
                table = tables[section] = Table(box=None, show_header=False, expand=True, padding=(0, 1))
                table.add_column("keys", style="bold cyan", no_wrap=True, width=24)
                table.add_column("what", ratio=1)  # the room left goes to the words
            table.add_row(Text(keys), Text(description))
        with VerticalScroll():
            yield Static(Text("Keys", style="bold"))
            yield Static(Text(INTRO, style="dim"))
            for section, table in tables.items():
                yield Static(Text("\n" + section, style="bold underline"), classes="heading")
                yield Static(table)
            yield Static(Text("escape, ? or q closes this help", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)
