"""Two views over the whole pass, as small tables: one token's attention everywhere, and the logit lens.

Each is a modal screen over the trace screen; enter on a cell answers with where to go (the
trace screen makes the move), escape closes. What they show is worked out headless, in
tracer.tui.view.attention_map and tracer.tui.view.lens.
"""

from __future__ import annotations

from typing import Callable, ClassVar

from rich.text import Text

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tracer.text import visible
from tracer.tui.view.attention_map import AttentionMap, MapCell
from tracer.tui.view.lens import LensTable

TOKEN_WIDTH = 10

MODAL_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: 94%;
    height: 90%;
    border: thick $primary;
    background: $surface;
    padding: 0 1;
}}
{name} DataTable {{ height: 1fr; }}
{name} .hint {{ color: $text-muted; }}
"""


def token_text(token: str) -> str:
    token = visible(token.replace(" ", "␣").replace("\n", "⏎")) or "∅"
    return token if len(token) <= TOKEN_WIDTH else token[: TOKEN_WIDTH - 1] + "…"


class AttentionMapScreen(ModalScreen[MapCell | None]):
    """Layers × heads: where the chosen query token attends most, and how strongly."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,g,q", "close", "close")]
    DEFAULT_CSS = MODAL_CSS.format(name="AttentionMapScreen")

    def __init__(self, found: AttentionMap) -> None:
        super().__init__()
        self.map = found
        self.cells: dict[tuple[int, int], MapCell] = {}   # (table row, table column) -> cell

    def compose(self) -> ComposeResult:
        found = self.map
        t = f" at decoding step {found.decode_step}" if found.decode_step is not None else ""
        title = Text()
        title.append(f'Where "{token_text(found.query_token)}" (query {found.query}) attends most{t}', style="bold")
        title.append("   top key token and its weight, per layer and head", style="dim")
        with Vertical():
            yield Static(title)
            yield DataTable(id="attention-map", cursor_type="cell", zebra_stripes=False)
            yield Static("enter: open that pattern at that head, the cursor on this token's row · escape: close",
                         classes="hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        heads = max(len(row) for section in self.map.sections for row in section.cells)
        table.add_column("layer", key="layer")
        widest = max((row for section in self.map.sections for row in section.cells), key=len)
        for head in range(heads):  # named by the model's head (a --heads trace holds only some)
            number = widest[head].number if widest[head].number is not None else head
            table.add_column(f"head {number + 1}", key=f"head{head}")
        for section in self.map.sections:
            table.add_row(Text(section.title, style="bold cyan"), *[""] * heads)
            for layer, row in zip(section.layers, section.cells):
                index = table.row_count
                cells = []
                for head, cell in enumerate(row):
                    self.cells[(index, head + 1)] = cell
                    strong = "bold" if cell.weight >= 0.5 else ""
                    cells.append(Text(f"{token_text(cell.token)} {cell.weight:.2f}", style=strong))
                table.add_row(Text(f"layer {layer}"), *cells)
        first = min(self.cells) if self.cells else (0, 0)
        table.move_cursor(row=first[0], column=first[1], animate=False)
        table.focus()

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        cell = self.cells.get((event.coordinate.row, event.coordinate.column))
        if cell is not None:
            self.dismiss(cell)

    def action_close(self) -> None:
        self.dismiss(None)


class LensScreen(ModalScreen[str | None]):
    """The logit lens of one decoding step: each layer's top tokens, the chosen one marked.

    `table_at(offset)` gives the lens `offset` decoding steps (encoder-only: masked positions)
    from the first one shown, or (None, why not); t and T move through them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,l,q", "close", "close"),
        Binding("t", "move(1)", "next decoding step (encoder-only: masked position)"),
        Binding("T", "move(-1)", "previous one"),
    ]
    DEFAULT_CSS = MODAL_CSS.format(name="LensScreen")

    def __init__(self, table: LensTable, table_at: Callable[[int], tuple[LensTable | None, str | None]] | None = None,
                 moved_by: int = 0) -> None:
        super().__init__()
        self.table = table
        self.table_at = table_at
        self.moved_by = moved_by  # how far from the first table shown (not `offset`: a widget style)
        self.rows: list[str] = []    # step id per table row

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._title(), id="lens-title")
            yield DataTable(id="lens", cursor_type="row", zebra_stripes=False)
            yield Static("enter: open that layer's lens step · t / T: next / previous decoding step · escape: close",
                         classes="hint")

    def _title(self) -> Text:
        table = self.table
        title = Text()
        title.append(table.title[0].upper() + table.title[1:], style="bold")
        if table.chosen:
            title.append("   chosen: ")
            title.append(f"▶ {token_text(table.chosen['token'])}", style="bold green")
        title.append("   what each layer's output would predict, through the unembedding", style="dim")
        return title

    def on_mount(self) -> None:
        self._fill()
        self.query_one(DataTable).focus()

    def action_move(self, delta: int) -> None:
        if self.table_at is None:
            return
        table, why = self.table_at(self.moved_by + delta)
        if table is None:
            self.app.clear_notifications()
            self.notify(why or "no lens there", timeout=2, markup=False)
            return
        self.table, self.moved_by = table, self.moved_by + delta
        self.query_one("#lens-title", Static).update(self._title())
        self._fill()

    def _fill(self) -> None:
        data = self.query_one(DataTable)
        data.clear(columns=True)
        self.rows = []
        k = max((len(row.top) for row in self.table.rows), default=0)
        chosen = (self.table.chosen or {}).get("id")
        data.add_column("layer", key="layer")
        data.add_column("p(chosen)", key="chosen")
        for rank in range(k):
            data.add_column(f"#{rank + 1}", key=f"top{rank}")
        for row in self.table.rows:
            cells = []
            for item in row.top:
                mark = item["id"] == chosen
                cells.append(Text(f"{'▶' if mark else ' '}{token_text(item['token'])} {item['prob']:.2f}",
                                  style="bold green" if mark else ""))
            cells += [""] * (k - len(cells))
            p = f"{row.chosen_prob:.3f}" if row.chosen_prob is not None else "–"
            data.add_row(Text(row.label, style="bold" if row.label == "output" else ""), p, *cells)
            self.rows.append(row.step_id)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(self.rows[event.cursor_row])

    def action_close(self) -> None:
        self.dismiss(None)
