"""Write a Trace as DESIGN.md's JSON: arrays through orjson's numpy encoder, never tolist()."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import BadInput
from tracer.text import visible
from tracer.errors import TracerError
from tracer.trace.atomic import atomic_write
from tracer.trace.schema import validate_trace
from tracer.trace.trace import Trace

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def round_significant(array: np.ndarray, digits: int) -> np.ndarray:
    """Round floats to `digits` significant digits (non-finite values pass through)."""
    wide = array.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(wide)))
        scale = np.where(np.isfinite(magnitude), 10.0 ** (digits - 1 - magnitude), 1.0)
        rounded = np.round(wide * scale) / scale
    return np.where(np.isfinite(wide) & (wide != 0), rounded, wide)


def nonfinite_fields(array: np.ndarray) -> dict:
    """How to restore the values JSON writes as null: `null_as`, plus positions when they differ."""
    if not np.issubdtype(array.dtype, np.floating):
        return {}
    flat = array.reshape(-1)
    where = np.flatnonzero(~np.isfinite(flat))
    if where.size == 0:
        return {}
    kinds = {"-inf": np.isneginf(flat[where]), "inf": np.isposinf(flat[where]), "nan": np.isnan(flat[where])}
    present = [name for name, hits in kinds.items() if hits.any()]
    if len(present) == 1:
        return {"null_as": present[0]}
    return {"null_as": "nan", "nonfinite_at": {name: where[kinds[name]] for name in ("-inf", "inf") if kinds[name].any()}}


def step_json(step, precision: int | None = None) -> bytes:
    array = step.data
    if precision is not None and np.issubdtype(array.dtype, np.floating):
        array = round_significant(array, precision)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)  # orjson encodes float16 arrays only via float32
    # orjson reads C-contiguous buffers only; ascontiguousarray makes a 0-d array 1-d, so a scalar is written as one
    array = np.ascontiguousarray(array) if array.ndim else array.item()
    body = step.meta()
    body.update(nonfinite_fields(step.data))
    body["data"] = array
    return orjson.dumps(body, option=_OPTIONS)


def _refuse_writing(message: str):
    raise TracerError(f"not writing a trace its reader would refuse: {message}")


def refuse_session_folder(path: str | os.PathLike) -> None:
    """An export never goes into a session folder (it would replace or orphan the session's own
    files). Links are resolved first, so a link to a session folder is refused too."""
    from tracer.trace.session import MANIFEST

    folder = Path(path).resolve().parent
    if (folder / MANIFEST).is_file():
        raise BadInput(f"{visible(path)}: is inside session folder {visible(folder)}; write the export elsewhere")


def write_json(trace: Trace, path: str | os.PathLike, precision: int | None = None) -> None:
    """Stream the trace to `path` one step at a time, atomically.

    With `precision`, floats are rounded to that many significant digits and the header says
    `"precision": N` (the fewest digits any rounding so far kept: a trace read from a rounded
    export stays rounded).
    """
    if precision is not None and not 1 <= precision <= 9:
        raise ValueError("precision must be between 1 and 9 significant digits")
    refuse_session_folder(path)
    validate_trace(trace, _refuse_writing)
    header = trace.header()
    if precision is not None:  # recorded, so that a reader (and `tracer check`) knows the floats are rounded
        header["precision"] = min(precision, trace.precision or precision)
    header = orjson.dumps(header, option=_OPTIONS)
    with atomic_write(path) as out:
        out.write(header[:-1] + b',"steps":[')
        for position, step in enumerate(trace.steps):
            if position:
                out.write(b",")
            out.write(step_json(step, precision))
            step.release()
        out.write(b"]}")
