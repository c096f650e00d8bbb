"""One token's attention everywhere: for a query token, where every head of every layer looks
most (numpy only). Self-attention, and in a decoder cross-attention too, at the same pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.trace import Step, Trace
from tracer.tui.view.heads import head_number

QUERY_KINDS = ("attn_raw", "attn_scaled", "attn_scores", "pattern", "mask", "q", "rot_q", "z")
"""Steps whose rows are query tokens: their cell cursor's row picks the token."""


@dataclass(frozen=True)
class MapCell:
    step_id: str      # the pattern this cell reads
    layer: int
    head: int
    key: int          # the key position attended to most
    token: str        # its token
    weight: float     # its attention weight
    number: int | None = None  # the model's head (from 0): a --heads trace holds only some, `head` is the position


@dataclass
class MapSection:
    title: str        # "self-attention", "masked self-attention", "cross-attention"
    layers: list[int]
    cells: list[list[MapCell]]   # [layer][head]


@dataclass
class AttentionMap:
    query: int
    query_token: str
    decode_step: int | None
    sections: list[MapSection]

    @property
    def cell_count(self) -> int:
        return sum(len(row) for section in self.sections for row in section.cells)


def attention_map(trace: Trace, step: Step, query: int) -> AttentionMap | None:
    """Where query token `query` of `step`'s pass attends most in every layer and head; None
    when the pass has no attention pattern with that query row."""
    t = step.decode_step
    sections = []
    token = str(query)
    for component in ("attn", "cross_attn"):
        patterns = [s for s in trace.find(kind="pattern", stack=step.stack, decode_step=t, component=component)
                    if s.layer is not None and len(s.shape) == 3 and query < s.shape[1]]
        if not patterns:
            continue
        rows = []
        for pattern in sorted(patterns, key=lambda s: s.layer):
            weights = np.asarray(pattern.data)[:, query, :]                  # [head, key]
            keys = np.nanargmax(np.where(np.isfinite(weights), weights, -np.inf), axis=1)
            key_tokens = pattern.labels.get("key")
            rows.append([MapCell(pattern.id, pattern.layer, head, int(key),
                                 key_tokens[key] if key_tokens else str(key), float(weights[head, key]),
                                 head_number(pattern, head))
                         for head, key in enumerate(keys)])
            queries = pattern.labels.get("query")
            if queries:
                token = queries[query]
        sections.append(MapSection(section_title(trace, step, component), [row[0].layer for row in rows], rows))
    if not sections:
        return None
    return AttentionMap(query, token, t, sections)


def section_title(trace: Trace, step: Step, component: str) -> str:
    if component == "cross_attn":
        return "cross-attention"
    return "masked self-attention" if step.stack == "decoder" or trace.arch == "decoder" else "self-attention"
