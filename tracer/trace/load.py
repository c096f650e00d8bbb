"""Read a trace back from a JSON export (session folders: tracer.trace.session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import DamagedFile
from tracer.trace.step import META_KEYS, Step, split_id
from tracer.trace.trace import FORMAT, FORMAT_VERSION, Trace

DTYPES = {"float16", "float32", "float64", "int32", "int64", "bool"}
# Reading a JSON export holds it all in memory as Python objects (~3x the file); larger traces
# belong in a session, whose tensors load one at a time.
MAX_JSON_BYTES = 768 * 1024**2
_NULL_VALUES = {"nan": np.nan, "-inf": -np.inf, "inf": np.inf}
_STEP_META = META_KEYS | {"data", "null_as", "nonfinite_at"}  # a JSON step also carries its data


def read_json(path: str | os.PathLike) -> Trace:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DamagedFile(
                f"{path}: {size / 1024**2:.0f} MB is too large to read as JSON (limit {MAX_JSON_BYTES // 1024**2} MB); "
                "save the trace as a session instead"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise DamagedFile(f"{path}: cannot read ({exc.strerror or exc})") from None
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
    try:
        return Trace(
            steps,
            model=document["model"],
            device=str(document.get("device", "unknown")),
            input=document["input"],
            output=document["output"],
            created=str(document.get("created") or "") or None,
            tracer_version=str(document.get("tracer_version", "unknown")),
        )
    except ValueError as exc:
        fail(str(exc))


def validate_header(document, fail) -> None:
    """Check a trace's header fields (shared by JSON exports and session metadata)."""
    if not isinstance(document, dict):
        fail("not a tracer trace (the top level is not an object)")
    if document.get("format") != FORMAT:
        fail(f"not a tracer trace (format is {document.get('format')!r}, expected {FORMAT!r})")
    version = document.get("version")
    if version != FORMAT_VERSION:
        fail(f"unsupported trace version {version!r} (this tracer reads version {FORMAT_VERSION})")
    for key, kind in (("model", dict), ("input", dict), ("output", dict), ("steps", list)):
        if not isinstance(document.get(key), kind):
            fail(f"'{key}' is missing or is not a {kind.__name__}")
    # the fields the summary, the check and the UI read
    for key in ("input", "output"):
        part = document[key]
        if not isinstance(part.get("text", ""), str):
            fail(f"'{key}.text' must be a string")
        if not isinstance(part.get("tokens", []), list) or not all(isinstance(t, str) for t in part.get("tokens", [])):
            fail(f"'{key}.tokens' must be a list of strings")
        if not isinstance(part.get("ids", []), list) or not all(type(i) is int for i in part.get("ids", [])):
            fail(f"'{key}.ids' must be a list of integers")
    model = document["model"]
    if not isinstance(model.get("name", ""), str) or not isinstance(model.get("arch", ""), str):
        fail("'model.name' and 'model.arch' must be strings")
    if not isinstance(model.get("config", {}), dict):
        fail("'model.config' must be an object")


def validate_meta(item, position: int, fail) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    """Check a step's metadata (shared by JSON exports and session manifests)."""
    if not isinstance(item, dict):
        fail(f"step {position} is not an object")
    step_id = item.get("id")
    if not isinstance(step_id, str) or not step_id:
        fail(f"step {position} has no id")
    name, _ = _safe_split(step_id, fail)
    if item.get("index", position) != position:
        fail(f"step {step_id!r} is out of order (index {item.get('index')!r} at position {position})")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        fail(f"step {step_id!r} has an invalid shape {shape!r}")
    dtype = item.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        fail(f"step {step_id!r} has an unsupported dtype {dtype!r}")
    axes = item.get("axes")
    if not isinstance(axes, list) or len(axes) != len(shape) or not all(isinstance(a, str) for a in axes):
        fail(f"step {step_id!r}: axes {axes!r} do not match shape {shape!r}")
    labels = item.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in labels.values()
    ):
        fail(f"step {step_id!r} has invalid labels")
    return step_id, tuple(shape), dtype, tuple(axes)


def _safe_split(step_id: str, fail):
    try:
        return split_id(step_id)
    except ValueError:
        fail(f"step id {step_id!r} has an invalid decoding step")


def _is_number(value) -> bool:
    return type(value) in (int, float)


def _valid_choice(entry, with_prob: bool) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("token"), str) and type(entry.get("id")) is int
        and (not with_prob or _is_number(entry.get("prob")))
    )


def validate_extra(extra: dict, step_fail) -> dict:
    """The extras other code reads (top_k, chosen, predictions) must have their documented shape."""
    top_k_ok = lambda v: isinstance(v, list) and all(_valid_choice(e, True) for e in v)  # noqa: E731
    if "top_k" in extra and not top_k_ok(extra["top_k"]):
        step_fail("top_k must be a list of {token, id, prob}")
    if "chosen" in extra and not _valid_choice(extra["chosen"], False):
        step_fail("chosen must be {token, id}")
    if "predictions" in extra:
        predictions = extra["predictions"]
        if not isinstance(predictions, list) or not all(
            isinstance(p, dict) and type(p.get("pos")) is int and top_k_ok(p.get("top_k"))
            and _valid_choice(p.get("chosen"), False) for p in predictions
        ):
            step_fail("predictions must be a list of {pos, token, top_k, chosen}")
    return extra


def step_from_json(item, position: int, fail) -> Step:
    step_id, shape, dtype, axes = validate_meta(item, position, fail)
    step_fail = lambda m: fail(f"step {step_id!r}: {m}")  # noqa: E731
    array = array_from_json(item.get("data"), shape, dtype, item, step_fail)
    extra = validate_extra({key: value for key, value in item.items() if key not in _STEP_META}, step_fail)
    return Step(
        id=step_id, shape=shape, dtype=dtype, axes=axes,
        labels=item.get("labels", {}), extra=extra, _array=array,
    )


def _empty_as(array: np.ndarray, shape) -> np.ndarray:
    """A zero-size tensor of any shape (`[0, 8]`) is written as `[]`."""
    return array.reshape(shape) if array.size == 0 and 0 in shape and array.shape == (0,) else array


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
