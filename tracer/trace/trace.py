"""A Trace: every recorded step of one run, in computation order, with lookups."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from tracer import __version__
from tracer.collector import collector_paused
from tracer.trace.step import Step, kv_columns, row_axis, split_id

FORMAT = "tracer-trace"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 2 adds KV-cached decoding steps (a step's `cached` rows) and a trace's `capture`
(how it was recorded); a version-1 file is a version-2 file without either."""

# What a KV-cached step's earlier rows hold at key positions their pass had not reached yet: the
# causal mask hides them, so the model never computed them. An attention's scores are -inf there
# and its weights 0, as in a full re-run; Q·Kᵀ (and ÷ √d) are filled in from the recorded queries
# and keys (see Trace._fill_scores), so the assembled matrix equals a full re-run's.
_NOT_REACHED = {"attn_scores": -np.inf, "pattern": 0.0, "mask": False}


class LaterPass(NamedTuple):
    """A decoding pass of a trace not read yet, as the first screen shows it (folded)."""

    decode_step: int | None
    steps: int
    chosen: str | None  # the token the pass chose (its probs step's `chosen`), None if it has none


class Later(NamedTuple):
    """The passes a Trace has not read yet, and how to read them.

    A session reader that opens a long decode for the UI reads the passes the first screen shows
    and hands the rest over as this: `read()` returns every later step (checked as a full read
    checks them, against what `passes` says) or raises DamagedFile."""

    passes: tuple[LaterPass, ...]
    read: Callable[[], list[Step]]


def check_steps(steps: list[Step], held: dict | None = None) -> None:
    """What a Trace needs of the steps it is given (ValueError otherwise): ids unique, among
    themselves and against those it `held` already; cached rows only on a tensor with a position
    (or query) axis, where they are assembled."""
    ids = {step.id for step in steps}
    if len(ids) != len(steps) or (held and not ids.isdisjoint(held)):
        raise ValueError("a trace's step ids must be unique")
    for step in steps:
        if step.cached and step.stored_shape is None and row_axis(step.axes) is None:
            raise ValueError(f"{step.id}: cached rows, but no position axis in {list(step.axes)}")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Trace:
    """Recorded steps plus what was run: model, device, input and output.

    `trace["encoder.0.attn.hook_pattern"]` is a numpy array; `trace.find(kind="pattern",
    layer=0)` filters steps.

    A trace opened with `later` passes (tracer.trace.session, for replay's first frame) holds the
    first passes only; anything that needs a later step reads them all first (`complete`), so the
    API is the same either way. `loaded_steps` and `later_passes` are what the first screen uses.
    """

    def __init__(
        self,
        steps: Iterable[Step],
        *,
        model: dict,
        device: str,
        input: dict,
        output: dict,
        created: str | None = None,
        tracer_version: str = __version__,
        precision: int | None = None,
        capture: dict | None = None,
        later: Later | None = None,
    ):
        self._steps: list[Step] = []
        self._by_id: dict[str, Step] = {}
        self._by_decoding: tuple | None = None  # see _decoding
        self._later = later
        self._add(list(steps))
        self.model = model
        self.device = device
        self.input = input
        self.output = output
        self.created = created or utc_now()
        self.tracer_version = tracer_version
        # significant digits its floats were rounded to (read from an export written with
        # --precision N); None: full precision, as recorded
        self.precision = precision
        # how it was recorded: {"kv_cache": bool, "filter": {...}} (None: a version-1 trace, not said)
        self.capture = capture

    def _add(self, steps: list[Step]) -> None:
        """Index `steps` after those held (a long decode has ~9,000 steps, opened at replay's start);
        ValueError, with nothing changed, for steps a trace cannot hold (`check_steps`)."""
        check_steps(steps, self._by_id)
        by_id, start = self._by_id, len(self._steps)
        for index, step in enumerate(steps, start):
            step.index = index
            by_id[step.id] = step
        self._steps.extend(steps)
        assemble = self._assembled
        for step in steps:
            if step.cached:
                step.link_cached(assemble)

    # -- passes not read yet ---------------------------------------------------------
    @property
    def steps(self) -> list[Step]:
        """Every step, in computation order (later passes are read first, if any are pending)."""
        if self._later is not None:
            self.complete()
        return self._steps

    @property
    def loaded_steps(self) -> list[Step]:
        """The steps read so far: all of them, or the first passes of a trace with `later_passes`."""
        return self._steps

    @property
    def later_passes(self) -> tuple[LaterPass, ...]:
        """The passes not read yet (empty once complete)."""
        return self._later.passes if self._later is not None else ()

    def complete(self) -> None:
        """Read the later passes, if any (raises DamagedFile if they are damaged; nothing changes then)."""
        later = self._later
        if later is None:
            return
        with collector_paused():  # thousands of steps, no cycles: the collector would only walk them
            steps = later.read()
            self._add(steps)  # checks the steps first: on an error nothing has changed
            self._later = None

    # -- lookups -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._steps) + sum(p.steps for p in self.later_passes)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __contains__(self, step_id: object) -> bool:
        if step_id in self._by_id:
            return True
        if not self._maybe_later(step_id):
            return False
        self.complete()
        return step_id in self._by_id

    def _maybe_later(self, step_id: object) -> bool:
        """Whether an id not among the steps read may be in a later pass: only an id of a decoding
        step not read yet may (each decoding step is one pass, read whole, as the reader checks)."""
        if self._later is None or type(step_id) is not str:
            return False
        try:
            t = split_id(step_id)[1]
        except ValueError:
            return False
        return t is not None and t not in self._decoding() and any(p.decode_step == t for p in self._later.passes)

    def __getitem__(self, step_id: str) -> np.ndarray:
        return self.step(step_id).data

    def step(self, step_id: str) -> Step:
        if step_id not in self._by_id and self._maybe_later(step_id):
            self.complete()
        try:
            return self._by_id[step_id]
        except KeyError:
            raise KeyError(f"no step {step_id!r} in this trace") from None

    def find(self, name=None, *, kind=None, layer=None, decode_step=None, stack=None, component=None) -> list[Step]:
        """Steps matching every filter given (None means any)."""
        wanted = {
            "name": name, "kind": kind, "layer": layer, "decode_step": decode_step,
            "stack": stack, "component": component,
        }
        wanted = {key: value for key, value in wanted.items() if value is not None}
        if decode_step is not None:  # the UI asks per decoding step: look in that one's steps only
            if self._later is not None and decode_step not in self._decoding():
                self.complete()
            pool = self._decoding().get(decode_step, [])
        else:
            pool = self.steps
        return [s for s in pool if all(getattr(s, key) == value for key, value in wanted.items())]

    def _decoding(self) -> dict[int, list[Step]]:
        """The steps of each decoding step read so far, in order (worked out on first use; again
        if steps were added or replaced since)."""
        key = (id(self._steps), len(self._steps))
        if self._by_decoding is None or self._by_decoding[0] != key:
            index: dict[int, list[Step]] = {}
            for step in self._steps:
                t = step.decode_step
                if t is not None:
                    index.setdefault(t, []).append(step)
            self._by_decoding = (key, index)
        return self._by_decoding[1]

    @property
    def ids(self) -> list[str]:
        return [step.id for step in self.steps]

    @property
    def decode_steps(self) -> list[int]:
        """The decoding steps recorded (1, 2, …), empty for a single-pass trace."""
        later = {p.decode_step for p in self.later_passes if p.decode_step is not None}
        return sorted(set(self._decoding()) | later)

    @property
    def arch(self) -> str:
        return self.model.get("arch", "unknown")

    def header(self) -> dict:
        """Everything but the steps, in DESIGN.md's JSON layout (`precision` only when rounded)."""
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "tracer_version": self.tracer_version,
            "created": self.created,
            "model": self.model,
            "device": self.device,
            "input": self.input,
            "output": self.output,
        }
        if self.precision is not None:
            header["precision"] = self.precision
        if self.capture is not None:
            header["capture"] = self.capture
        return header

    # -- KV-cached steps ---------------------------------------------------------
    def _chain(self, step: Step) -> list[Step]:
        """The same tap at decoding steps 1 … t, as far back as it was recorded."""
        chain = [step]
        while chain[-1].cached and chain[-1].decode_step is not None:
            earlier = self._by_id.get(f"{chain[-1].name}@{chain[-1].decode_step - 1}")
            if earlier is None:
                break
            chain.append(earlier)
        return chain[::-1]

    def _assembled(self, step: Step) -> np.ndarray:
        """A KV-cached step's full tensor: the rows of steps 1 … t along its position (query) axis,
        an attention matrix's earlier rows widened to every key. Rows not recorded (an earlier step
        left out by a filter) are NaN."""
        axis = row_axis(step.axes)
        chain = self._chain(step)
        blocks = [s.peek_rows() for s in chain]  # not kept: assembling every step must not hold every row
        missing = chain[0].cached  # rows before the earliest step recorded (a filter left those steps out)
        have = missing + sum(block.shape[axis] for block in blocks[:-1])
        if have != step.cached:
            raise ValueError(f"{step.id}: {have} earlier rows where {step.cached} are cached")
        full = step.shape
        if missing:
            gap = list(full)
            gap[axis] = missing
            blocks.insert(0, np.full(gap, np.nan if blocks[-1].dtype.kind == "f" else 0, dtype=blocks[-1].dtype))
        if "key" in step.axes and "query" in step.axes:  # earlier rows saw fewer keys: widen them
            key = step.axes.index("key")
            fill = _NOT_REACHED.get(step.kind, np.nan)
            widened = []
            for block in blocks:
                if block.shape[key] < full[key]:
                    pad = [(0, 0)] * block.ndim
                    pad[key] = (0, full[key] - block.shape[key])
                    block = np.pad(block, pad, constant_values=fill)
                widened.append(block)
            blocks = widened
        out = np.concatenate(blocks, axis=axis)
        if step.kind in ("attn_raw", "attn_scaled") and "key" in step.axes:
            self._fill_scores(step, out)
        if step.kind == "attn_bias" and out.ndim == 3 and out.shape[1] <= out.shape[2]:
            # T5's causal (unidirectional) buckets put every later key in the bucket of distance 0:
            # each row's unreached entries hold the bias on its diagonal, as a full re-run computes
            for row in range(out.shape[1]):
                gap = np.isnan(out[:, row])
                if gap.any():
                    out[:, row] = np.where(gap, out[:, row, row:row + 1], out[:, row])
        return out

    def _fill_scores(self, step: Step, out: np.ndarray) -> None:
        """Q·Kᵀ at the (masked) entries no pass computed, from the recorded queries and keys."""
        unreached = np.isnan(out)
        if not unreached.any():
            return
        base = step.name.rsplit(".hook_", 1)[0]
        t = step.decode_step
        pick = lambda *names: next((self._by_id[f"{base}.{n}@{t}"] for n in names if f"{base}.{n}@{t}" in self), None)  # noqa: E731
        q, k = pick("hook_rot_q", "hook_q"), pick("hook_rot_k", "hook_k")
        if q is None or k is None:
            return  # not recorded (a filter left them out): the entries stay NaN
        columns = kv_columns(q, k)                                             # grouped-query attention, --heads
        if columns is None:
            return
        q, k = q.peek().astype(np.float64), k.peek()[:, columns].astype(np.float64)  # (pos, head, d_head)
        raw = np.einsum("qhd,khd->hqk", q, k)
        if step.kind == "attn_scaled":
            raw = raw / np.sqrt(q.shape[-1])
        if raw.shape == out.shape:
            out[unreached] = raw[unreached]

    def predictions(self) -> list[dict]:
        """What the model chose, in order: one entry per decoding step (or masked position).

        Each entry: {"step": t or position, "top_k": [...], "chosen": {...} or None}.
        """
        out = []
        for step in self.find(kind="probs"):
            if "top_k" in step.extra:
                out.append({"step": step.decode_step, "top_k": step.extra["top_k"], "chosen": step.extra.get("chosen")})
            for item in step.extra.get("predictions", []):
                out.append({"step": item["pos"], "top_k": item["top_k"], "chosen": item.get("chosen")})
        return out
