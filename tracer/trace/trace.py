"""A Trace: every recorded step of one run, in computation order, with lookups."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Iterator

import numpy as np

from tracer import __version__
from tracer.trace.step import Step

FORMAT = "tracer-trace"
FORMAT_VERSION = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Trace:
    """Recorded steps plus what was run: model, device, input and output.

    `trace["encoder.0.attn.hook_pattern"]` is a numpy array; `trace.find(kind="pattern",
    layer=0)` filters steps.
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
    ):
        self.steps: list[Step] = list(steps)
        for index, step in enumerate(self.steps):
            step.index = index
        self._by_id = {step.id: step for step in self.steps}
        if len(self._by_id) != len(self.steps):
            raise ValueError("a trace's step ids must be unique")
        self.model = model
        self.device = device
        self.input = input
        self.output = output
        self.created = created or utc_now()
        self.tracer_version = tracer_version
        # significant digits its floats were rounded to (read from an export written with
        # --precision N); None: full precision, as recorded
        self.precision = precision

    # -- lookups -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __contains__(self, step_id: object) -> bool:
        return step_id in self._by_id

    def __getitem__(self, step_id: str) -> np.ndarray:
        return self.step(step_id).data

    def step(self, step_id: str) -> Step:
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
        return [s for s in self.steps if all(getattr(s, key) == value for key, value in wanted.items())]

    @property
    def ids(self) -> list[str]:
        return [step.id for step in self.steps]

    @property
    def decode_steps(self) -> list[int]:
        """The decoding steps recorded (1, 2, …), empty for a single-pass trace."""
        return sorted({s.decode_step for s in self.steps if s.decode_step is not None})

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
        return header

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
