"""`tracer diff` and `tracer check --against`: read both sides, compare, print a table or JSON (no torch).

Exit codes follow diff(1): 0 equal within the tolerance, 1 the traces differ, 2 trouble (bad
usage, a missing or damaged file, a bad `NAME:N`), so a script can tell "differ" from "could not
compare".
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.errors import BadInput, TracerError
from tracer.text import json_for_terminal, visible
from tracer.trace.diff import COMPARED, UNALIGNED, StepDiff, TraceDiff, diff
from tracer.trace.trace import Trace

# `piyush:2` is the second trace of session piyush (session names never hold a colon)
_NTH = re.compile(r"^(?P<source>.+):(?P<number>\d+)$")


@dataclass
class Side:
    """One side of a comparison: what the user named, which of its traces, and the trace."""

    source: str
    number: int      # which of the source's traces, from 1
    count: int       # how many it holds
    trace: Trace

    def describe(self) -> dict:
        return {
            "source": self.source, "trace": self.number, "traces": self.count,
            "model": self.trace.model.get("name"), "arch": self.trace.arch, "device": self.trace.device,
            "input": self.trace.input.get("text"), "output": self.trace.output.get("text"),
            "steps": len(self.trace),
        }

    def label(self) -> str:
        return self.source if self.count == 1 else f"{self.source} (trace {self.number} of {self.count})"


def open_side(source: str, sessions_dir=None) -> Side:
    """SESSION, SESSION:N, a session folder or a JSON export -> one trace. Any failure is BadInput."""
    from tracer.trace.session import open_source

    number = None
    match = _NTH.match(source)
    if match and not Path(source).exists():
        source, number = match["source"], int(match["number"])
    try:
        session = open_source(source, sessions_dir)
    except BadInput:
        raise
    except TracerError as exc:  # exit 1 means "the traces differ": a file that cannot be read is trouble, 2
        raise BadInput(str(exc)) from None
    count = len(session.traces)
    if number is not None and not 1 <= number <= count:
        raise BadInput(f"{source}:{number}: {source} has {count} trace(s), numbered from 1")
    return Side(source, number or 1, count, session.traces[(number or 1) - 1])


def run_diff(source_a: str, source_b: str, *, tol: float, top: int, as_json: bool, sessions_dir=None,
             same_input: bool = False) -> int:
    """Compare B with A, print the result, and return the exit code (0 equal, 1 differ)."""
    a, b = open_side(source_a, sessions_dir), open_side(source_b, sessions_dir)
    result = diff(a.trace, b.trace, tol=tol)
    if same_input and a.trace.input.get("ids") != b.trace.input.get("ids"):
        click.echo(f"note: the inputs differ ({visible(a.trace.input.get('text'))!r} vs {visible(b.trace.input.get('text'))!r})",
                   err=True)
    if as_json:
        document = {"a": a.describe(), "b": b.describe(), **result.to_dict()}
        click.echo(json_for_terminal(document, indent=2, allow_nan=False))
    else:
        print_diff(result, a, b, top)
    return 0 if result.equal else 1


def run_diff_tui(source_a: str, source_b: str, *, tol: float, top: int, as_json: bool, sessions_dir=None,
                 can_run=lambda: True) -> int:
    """`tracer diff A B --tui`: the UI on both traces, in compare mode (no torch: it replays).
    Where the UI cannot run (not a terminal; `can_run` says so on stderr) the report is printed
    instead, with its exit code; after the UI, 0."""
    if as_json:
        raise BadInput("--tui and --json do not go together (--json is for scripts)")
    if not can_run():
        return run_diff(source_a, source_b, tol=tol, top=top, as_json=False, sessions_dir=sessions_dir)
    a, b = open_side(source_a, sessions_dir), open_side(source_b, sessions_dir)
    from tracer.tui import open_traces

    open_traces([a.trace, b.trace], compare=True, tol=tol)
    return 0


def print_diff(result: TraceDiff, a: Side, b: Side, top: int, console: Console | None = None) -> None:
    # a pipe gets full lines (no wrapping at 80 columns); a terminal gets its own width
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    for name, side in (("A", a), ("B", b)):
        t = side.trace
        console.print(Text(f"{name}  ", style="bold") + Text(visible(
            f"{side.label()} · {t.model.get('name', '?')} · {t.device} · "
            f"{t.input.get('text', '')!r} → {t.output.get('text', '')!r}")))
    shown = result.most_changed(top) if top else []
    if shown:
        total = len(result.most_changed())
        table = Table(title=f"most-changed steps ({len(shown)} of {total} that changed)", title_justify="left")
        table.add_column("step", no_wrap=True)
        table.add_column("max |Δ|", justify="right")
        table.add_column("rel L2", justify="right")
        table.add_column("cosine", justify="right")
        table.add_column("cells changed", justify="right")
        table.add_column("over tol", justify="center")
        table.add_column("note")
        for step in shown:
            if step.status == UNALIGNED:
                table.add_row(Text(step.id), "", "", "", "", "yes", Text(f"cannot align: {step.reason}"))
                continue
            table.add_row(Text(step.id), f"{step.max_abs:.3g}", f"{step.rel_l2:.3g}", f"{step.cosine:.6f}",
                          f"{step.changed} of {step.cells}", "yes" if step.over_tol else "", Text(visible(_note(step))))
        console.print(table)
    for line in result.summary():
        console.print(Text(visible(line)))
    for what, ids in (("only in A", result.only_in_a), ("only in B", result.only_in_b),
                      ("shapes that cannot be aligned", [s.id for s in result.unaligned])):
        if ids:
            console.print(Text(visible(f"{what}: {_some(ids)}")), soft_wrap=True)


def _some(ids: list[str], n: int = 8) -> str:
    """The first few ids, and how many more (--json lists them all)."""
    more = f", … {len(ids) - n} more (--json lists all)" if len(ids) > n else ""
    return ", ".join(ids[:n]) + more


def _note(step: StepDiff) -> str:
    parts = []
    if step.status == COMPARED and step.cropped:
        parts.append(f"compared {list(step.compared_shape)} of {list(step.shape_a)} / {list(step.shape_b)}")
    if step.nonfinite_differ:
        parts.append(f"{step.nonfinite_differ} non-finite cell(s) differ")
    if step.exact and step.changed:
        parts.append("integer/boolean: compared exactly")
    if step.kind == "probs" and step.status == COMPARED:
        if step.kl is not None:
            parts.append(f"KL {step.kl:.3g}")
        for p in step.predictions:
            where = f"pos {p.pos}: " if p.pos is not None else ""
            if p.chosen_changed:
                parts.append(f"{where}chosen {_tok(p.chosen_a)} → {_tok(p.chosen_b)}")
            parts.append(f"{where}p({_tok(p.chosen_a)}) {p.prob_a:.3f} → {p.prob_b:.3f}")
            if p.top_k_changed:
                parts.append(f"{where}top-{len(p.top_k_a)}: {p.top_k_changed} rank(s) changed")
    return "; ".join(parts)


def _tok(chosen: dict) -> str:
    token = chosen.get("token")
    return repr(token) if token is not None else f"id {chosen.get('id')}"
