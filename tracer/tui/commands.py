"""Find a step by name from the command palette (`/` opens it with only this provider)."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content
from textual.markup import escape


class StepFinder(Provider):
    """Every step of the open trace, matched on its id and its plain label.

    The rows come from the screen's Viewer; choosing one opens it on that screen. Prompts
    are `Content` (plain text) and help is escaped: token strings such as "[MASK]" must not
    be read as markup.
    """

    def _entries(self):
        viewer = self.screen.viewer
        bookmarked = viewer.bookmarked_steps()
        for step_id, text, where in viewer.step_rows():
            yield step_id, ("★ " + text if step_id in bookmarked else text), where

    async def discover(self) -> Hits:
        go = self.screen.go
        for step_id, text, where in self._entries():
            yield DiscoveryHit(Content(text), partial(go, step_id), text=text, help=escape(where) if where else None)

    async def search(self, query: str) -> Hits:
        go = self.screen.go
        matcher = self.matcher(query)
        for step_id, text, where in self._entries():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), partial(go, step_id), text=text, help=escape(where) if where else None)
