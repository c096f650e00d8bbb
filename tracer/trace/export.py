"""Write a Trace as DESIGN.md's JSON: arrays through orjson's numpy encoder, never tolist()."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import BadInput
from tracer.text import human_size, visible
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
    """One step as JSON. A KV-cached step writes its new rows only (docs/format.md), and its stats
    only when already computed: computing them would assemble the full tensor from every earlier step."""
    array = step.rows
    if precision is not None and np.issubdtype(array.dtype, np.floating):
        array = round_significant(array, precision)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)  # orjson encodes float16 arrays only via float32
    # orjson reads C-contiguous buffers only; ascontiguousarray makes a 0-d array 1-d, so a scalar is written as one
    array = np.ascontiguousarray(array) if array.ndim else array.item()
    body = step.meta(stats=not step.cached)
    body.update(nonfinite_fields(step.rows))
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


# Bytes orjson writes per number, its comma included. Measured on GPT-2-small-shaped traces (random
# weights) and the bundled models' (tests/test_export.py holds the estimate to ESTIMATE_BOUND):
# float32 at full precision takes 10.9 (its shortest round-trip form, up to 9 digits, sign, point
# and exponent), a float rounded to p digits about p + 3.4; bools 5.5 ("true," / "false,").
FLOAT_BYTES = 11.0
ROUNDED_EXTRA_BYTES = 3.5
BOOL_BYTES = 5.5
INT_BYTES = 6.0          # token ids of up to 5 digits
STATS_BYTES = 110        # {"min":…,"max":…,"mean":…,"std":…,"nonfinite":0}
ESTIMATE_BOUND = 0.2     # the estimate is within ±20 % of the file written (tests/test_export.py)


def number_bytes(dtype: str, precision: int | None) -> float:
    """Bytes per value of `dtype` in the JSON (see FLOAT_BYTES)."""
    if dtype == "bool":
        return BOOL_BYTES
    if dtype.startswith("int"):
        return INT_BYTES
    if precision is not None:
        return precision + ROUNDED_EXTRA_BYTES
    return FLOAT_BYTES


def data_bytes(shape, dtype: str, precision: int | None = None) -> int:
    """Estimated bytes of a tensor written as nested lists: its numbers plus two brackets per list."""
    size = math.prod(shape)
    lists, width = 1, 1
    for length in shape[:-1]:
        width *= length
        lists += width
    return int(size * number_bytes(dtype, precision)) + 2 * lists


def estimated_size(trace: Trace, precision: int | None = None) -> int:
    """The JSON export's size in bytes, from the steps' shapes and dtypes (no tensor is read): the
    metadata exactly, the data at `number_bytes` per value (within ESTIMATE_BOUND)."""
    total = len(orjson.dumps(trace.header(), option=_OPTIONS)) + 12
    for step in trace.steps:
        meta = len(orjson.dumps(step.meta(stats=False), option=_OPTIONS))
        stats = STATS_BYTES if step._stats is None and not step.cached else 0
        total += meta + stats + data_bytes(step.rows_shape, step.dtype, precision) + 10
    return total


def check_room(path: str | os.PathLike, size: int) -> None:
    """Refuse (one line) an export of about `size` bytes where the target's file system has less free."""
    folder = Path(path).resolve().parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the folder does not exist (yet): writing it fails with its own error
    if free < size:
        raise TracerError(f"{visible(path)}: the export needs about {human_size(size)}, "
                          f"but {visible(folder)} has only {human_size(free)} free")


def write_json(trace: Trace, path: str | os.PathLike, precision: int | None = None, progress=None) -> None:
    """Stream the trace to `path` one step at a time, atomically; `progress(done, total)` is told
    after each step. Memory stays near one step: each step is released once written (a session's
    tensors are read again on demand), and a KV-cached step's full view is never assembled.

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
            if progress is not None:
                progress(position + 1, len(trace.steps))
        out.write(b"]}")
