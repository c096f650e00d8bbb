"""Find a step by name from the command palette (`/` opens it with only this provider)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.markup import escape

from tracer.tui.outline import chosen_tokens, group_path, leaf_label


_LABELS: dict[int, tuple[object, list[tuple[str, str, str]]]] = {}


def _labels(trace) -> list[tuple[str, str, str]]:
    """(id, searchable text, where in the outline) per step, worked out once per trace."""
    cached = _LABELS.get(id(trace))
    if cached is not None and cached[0] is trace:
        return cached[1]
    rows = []
    chosen = chosen_tokens(trace)
    for step in trace.steps:
        where = " › ".join(label for _, label in group_path(step, trace, chosen))
        rows.append((step.id, f"{step.id}  {leaf_label(step, trace)}", where))
    if len(_LABELS) > 8:
        _LABELS.clear()
    _LABELS[id(trace)] = (trace, rows)
    return rows


class StepFinder(Provider):
    """Every step of the open trace, matched on its id and its plain label.

    Prompts are `Content` (plain text) and help is escaped: token strings such as "[MASK]"
    must not be read as markup.
    """

    def _entries(self):
        screen = self.app.trace_screen
        trace = screen.trace
        bookmarked = {b.step for b in self.app.bookmarks if b.trace == screen.trace_index}
        for step_id, text, where in _labels(trace):
            yield step_id, ("★ " + text if step_id in bookmarked else text), where

    async def discover(self) -> Hits:
        screen = self.app.trace_screen
        for step_id, text, where in self._entries():
            yield DiscoveryHit(Content(text), partial(screen.go, step_id), text=text, help=escape(where) if where else None)

    async def search(self, query: str) -> Hits:
        screen = self.app.trace_screen
        matcher = self.matcher(query)
        for step_id, text, where in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(screen.go, step_id), text=text, help=escape(where) if where else None)
