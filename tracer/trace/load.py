"""Read a trace back from a JSON export (session folders: tracer.trace.session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import DamagedFile
from tracer.reading import read_regular
from tracer.trace.schema import (
    usable_labels, validate_cached, validate_consistency, validate_extra, validate_header, validate_labels, validate_meta,
)
from tracer.trace.step import META_KEYS, Step, full_shape, parse_name
from tracer.trace.trace import Trace

# Reading a JSON export holds it all in memory as Python objects (~3x the file); larger traces
# belong in a session, whose tensors load one at a time.
MAX_JSON_BYTES = 768 * 1024**2
_NULL_VALUES = {"nan": np.nan, "-inf": -np.inf, "inf": np.inf}
_STEP_META = META_KEYS | {"data", "null_as", "nonfinite_at"}  # a JSON step also carries its data


def read_json(path: str | os.PathLike) -> Trace:
    path = Path(path)
    raw = read_regular(path, MAX_JSON_BYTES, what="JSON", advice="; save the trace as a session instead")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DamagedFile(f"{path}: not valid JSON ({exc})") from None
    return trace_from_document(document, source=str(path))


def trace_from_document(document, source: str = "trace") -> Trace:
    """Validate a parsed JSON export and build the Trace; every problem names itself."""
    def fail(message: str):
        raise DamagedFile(f"{source}: {message}")

    validate_header(document, fail)
    steps = []
    for position, item in enumerate(document["steps"]):
        steps.append(step_from_json(item, position, fail))
    validate_consistency(steps, fail)
    try:
        return Trace(
            steps,
            model=document["model"],
            device=str(document.get("device", "unknown")),
            input=document["input"],
            output=document["output"],
            created=document.get("created") or None,
            tracer_version=str(document.get("tracer_version", "unknown")),
            precision=document.get("precision"),
            capture=document.get("capture"),
        )
    except ValueError as exc:
        fail(str(exc))


def step_from_json(item, position: int, fail) -> Step:
    step_id, shape, dtype, axes = validate_meta(item, position, fail)
    step_fail = lambda m: fail(f"step {step_id!r}: {m}")  # noqa: E731
    cached = validate_cached(item, step_fail)
    labels = usable_labels(validate_labels(item.get("labels", {}), step_id, fail), full_shape(shape, axes, cached), axes)
    array = array_from_json(item.get("data"), shape, dtype, item, step_fail)
    extra = validate_extra({key: value for key, value in item.items() if key not in _STEP_META}, step_fail, shape, parse_name(step_id.partition("@")[0])["kind"])
    return Step(
        id=step_id, shape=shape, dtype=dtype, axes=axes,
        labels=labels, extra=extra, _array=array, cached=cached,
    )


def _empty_as(array: np.ndarray, shape) -> np.ndarray:
    """A zero-size tensor's nesting stops at its first empty axis: `[0, 8]` is written `[]`,
    `[1, 0, 0]` is `[[]]`; give it back the dimensions JSON cannot spell."""
    if array.size == 0 and 0 in shape and array.shape == tuple(shape[: shape.index(0) + 1]):
        return array.reshape(shape)
    return array


def array_from_json(data, shape, dtype: str, item: dict, fail) -> np.ndarray:
    """Nested lists -> array of `shape`; nulls restored as the step's `null_as` value."""
    is_float = dtype.startswith("float")
    null_as = item.get("null_as", "nan")
    nonfinite_at = item.get("nonfinite_at") or {}
    if not isinstance(null_as, str) or null_as not in _NULL_VALUES:
        fail(f"null_as must be one of {', '.join(_NULL_VALUES)}")
    if not isinstance(nonfinite_at, dict) or not all(
        key in _NULL_VALUES and isinstance(where, list) and all(type(i) is int and 0 <= i < int(np.prod(shape)) for i in where)
        for key, where in nonfinite_at.items()
    ):
        fail("nonfinite_at must map -inf/inf/nan to positions inside the tensor")
    null_value = _NULL_VALUES[null_as]
    try:
        if is_float:
            array = _empty_as(np.array(data, dtype=object), shape)
            if array.shape != shape:
                fail(f"data has shape {list(array.shape)}, metadata says {list(shape)}")
            flat = array.reshape(-1)
            nulls = np.equal(flat, None)
            flat[nulls] = null_value
            if not all(type(v) in (int, float) for v in flat[~nulls]):
                fail("data holds values that are not numbers")
            out = flat.astype(dtype).reshape(shape)
            for name, where in nonfinite_at.items():
                out.reshape(-1)[np.asarray(where, dtype=np.int64)] = _NULL_VALUES[name]
            return out
        array = _empty_as(np.array(data), shape)
        if array.shape != shape:
            fail(f"data has shape {list(array.shape)}, metadata says {list(shape)}")
        expected = bool if dtype == "bool" else int
        if array.size and not all(type(v) is expected for v in array.reshape(-1).tolist()):
            fail(f"data holds values that are not {dtype}")
        return array.astype(dtype).reshape(shape)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        fail(f"data does not fit its shape and dtype ({exc})")
