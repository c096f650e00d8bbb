"""The logit lens as a table: layers down, each layer's top tokens across, the chosen token marked
(numpy only). The steps are recorded at capture time (tracer.capture.lens)."""

from __future__ import annotations

from dataclasses import dataclass

from tracer.trace import Step, Trace

LENS_KIND = "lens_probs"


@dataclass(frozen=True)
class LensRow:
    label: str               # "layer 0", …, "output"
    step_id: str
    top: list[dict]          # [{token, id, prob}], most likely first
    chosen_prob: float | None  # the chosen token's probability at this layer


@dataclass
class LensTable:
    title: str
    chosen: dict | None      # {token, id}
    rows: list[LensRow]


def has_lens(trace: Trace) -> bool:
    return any(step.kind == LENS_KIND for step in trace.steps)


def lens_table(trace: Trace, step: Step, position: int = 0) -> LensTable | None:
    """The lens of `step`'s decoding step (encoder-only: of its `position`-th masked position),
    one row per layer and a last row for the model's output; None without lens steps there."""
    t = step.decode_step
    lens = sorted(trace.find(kind=LENS_KIND, decode_step=t), key=lambda s: s.layer)
    probs = trace.find(kind="probs", decode_step=t)
    if not lens or not probs:
        return None
    out = probs[0]
    if "predictions" in out.extra:  # encoder-only: one table per masked position
        predictions = out.extra["predictions"]
        position = min(max(position, 0), len(predictions) - 1)
        item = predictions[position]
        chosen = item.get("chosen")
        rows = [LensRow(f"layer {s.layer}", s.id, s.extra["predictions"][position]["top_k"],
                        _prob(s.data[position], chosen)) for s in lens]
        rows.append(LensRow("output", out.id, item["top_k"], _prob(out.data[item["pos"]], chosen)))
        return LensTable(f"logit lens at position {item['pos']}", chosen, rows)
    chosen = out.extra.get("chosen")
    rows = [LensRow(f"layer {s.layer}", s.id, s.extra.get("top_k", []), _prob(s.data, chosen)) for s in lens]
    rows.append(LensRow("output", out.id, out.extra.get("top_k", []), _prob(out.data, chosen)))
    return LensTable(f"logit lens at decoding step {t}", chosen, rows)


def _prob(values, chosen: dict | None) -> float | None:
    if not chosen or not 0 <= chosen["id"] < values.shape[-1]:
        return None
    return float(values[chosen["id"]])
