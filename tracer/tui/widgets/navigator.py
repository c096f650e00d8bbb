"""StepNavigator: the trace as a tree in computation order; the current step highlighted."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text

from textual.binding import Binding, BindingType
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from tracer.tui.outline import Node

CURRENT_MARK = " ◂"
BOOKMARK_MARK = "★ "


class StepNavigator(Tree[str]):
    """Groups fold; only the path to the current step is kept open, so the tree stays short.

    Enter (or a click) on a step opens it: the tree posts `Tree.NodeSelected`, the screen
    handles it. Space is left to the screen (next step) rather than toggling a group.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "screen.next", "next step", show=False),
    ]

    DEFAULT_CSS = """
    StepNavigator {
        background: $panel;
        scrollbar-size-vertical: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("steps", id=id)
        self.show_root = False
        self.auto_expand = True
        self._leaves: dict[str, TreeNode[str]] = {}
        self._labels: dict[str, str] = {}
        self._current: str | None = None
        self._bookmarked: set[str] = set()

    def load(self, outline: Node) -> None:
        """Replace the tree with a trace's outline (all groups folded)."""
        self.clear()
        self._leaves.clear()
        self._labels.clear()
        self._current = None

        def add(parent: TreeNode[str], node: Node) -> None:
            if node.step_id is not None:
                self._labels[node.step_id] = node.label
                self._leaves[node.step_id] = parent.add_leaf(self._label(node.step_id), data=node.step_id)
                return
            group = parent.add(Text(node.label), data=None, expand=False)
            for child in node.children:
                add(group, child)

        for child in outline.children:
            add(self.root, child)
        self.root.expand()

    def _label(self, step_id: str) -> Text:
        """Labels are Text, never markup: token strings like "[MASK]" must show as typed."""
        text = Text()
        if step_id in self._bookmarked:
            text.append(BOOKMARK_MARK, style="bold yellow")
        text.append(self._labels[step_id])
        if step_id == self._current:
            text.append(CURRENT_MARK, style="bold")
            text.stylize("bold")
        return text

    def set_bookmarks(self, step_ids: set[str]) -> None:
        changed = self._bookmarked ^ step_ids
        self._bookmarked = set(step_ids)
        for step_id in changed:
            if step_id in self._leaves:
                self._leaves[step_id].set_label(self._label(step_id))

    def show_current(self, step_id: str) -> None:
        """Open the path to this step, fold the previous one, and put the cursor on it."""
        node = self._leaves.get(step_id)
        if node is None:
            return
        previous, self._current = self._current, step_id
        keep: set[int] = set()
        ancestor = node.parent
        while ancestor is not None:
            keep.add(id(ancestor))
            ancestor = ancestor.parent
        if previous is not None and previous in self._leaves:
            old = self._leaves[previous]
            old.set_label(self._label(previous))
            ancestor = old.parent
            while ancestor is not None and not ancestor.is_root:
                if id(ancestor) not in keep and ancestor.is_expanded:
                    ancestor.collapse()
                ancestor = ancestor.parent
        # expand()/collapse() invalidate every line of the tree even when nothing changes:
        # call them only for real changes, so moving within a group repaints two lines.
        ancestor = node.parent
        while ancestor is not None:
            if not ancestor.is_expanded:
                ancestor.expand()
            ancestor = ancestor.parent
        node.set_label(self._label(step_id))
        _ = self._tree_lines  # rebuild line numbers after folding, so the cursor lands on the node
        self.move_cursor(node)
