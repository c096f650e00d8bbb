"""The UI state a session remembers: where the user was and what they marked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

VIEWS = ("heatmap", "numbers")


@dataclass
class Bookmark:
    trace: int          # index into the session's traces
    step: str           # step id
    note: str = ""


@dataclass
class UIState:
    trace: int = 0                  # which trace is open
    step: str | None = None         # current step id (None: the first step)
    head: int = 0                   # head shown for per-head tensors
    view: str = "heatmap"           # heatmap | numbers
    bookmarks: list[Bookmark] = field(default_factory=list)
    cell: tuple[int, int] = (0, 0)  # the cell cursor (row, column) in the tensor shown

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UIState":
        """Lenient on absent fields, strict on types (a session file is untrusted input)."""
        if not isinstance(data, dict):
            raise ValueError("ui state must be an object")
        state = cls()
        if isinstance(data.get("trace"), int) and data["trace"] >= 0:
            state.trace = data["trace"]
        if isinstance(data.get("step"), str):
            state.step = data["step"]
        if isinstance(data.get("head"), int) and data["head"] >= 0:
            state.head = data["head"]
        cell = data.get("cell")
        if isinstance(cell, (list, tuple)) and len(cell) == 2 and all(isinstance(v, int) and v >= 0 for v in cell):
            state.cell = (cell[0], cell[1])
        if data.get("view") in VIEWS:
            state.view = data["view"]
        bookmarks = data.get("bookmarks")
        for item in bookmarks if isinstance(bookmarks, list) else []:  # a damaged file may hold anything here
            if isinstance(item, dict) and isinstance(item.get("trace"), int) and isinstance(item.get("step"), str):
                state.bookmarks.append(Bookmark(item["trace"], item["step"], str(item.get("note", ""))))
        return state
