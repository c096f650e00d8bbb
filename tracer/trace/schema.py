"""The one validation of a trace's header and step metadata, shared by the JSON reader
(tracer.trace.load) and the session reader (tracer.trace.session).

Each check takes a `fail(message)` callback that raises (the reader's DamagedFile, naming its
file), so both readers refuse the same documents with the same words. The step check is also the
session reader's hot path at replay start-up (one call per step), so it is written to be cheap
when the metadata is good: exact type tests, no generator expressions, and the axes of each
distinct kind checked once per trace (`seen_axes`). Messages are built only on failure.
"""

from __future__ import annotations

from tracer.trace.step import split_id
from tracer.trace.trace import FORMAT, FORMAT_VERSION, READABLE_VERSIONS

DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64", "bool"})


# -- header --------------------------------------------------------------------------------
def validate_header(document, fail) -> None:
    """Check a trace's header fields (a JSON export's top level; a session trace's `trace`)."""
    if not isinstance(document, dict):
        fail("not a tracer trace (the top level is not an object)")
    if document.get("format") != FORMAT:
        fail(f"not a tracer trace (format is {document.get('format')!r}, expected {FORMAT!r})")
    version = document.get("version")
    if version not in READABLE_VERSIONS:
        fail(f"unsupported trace version {version!r} (this tracer reads versions 1 to {FORMAT_VERSION})")
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
    if not isinstance(document.get("capture", {}), dict):
        fail("'capture' must be an object")
    precision = document.get("precision")
    if precision is not None and not (type(precision) is int and 1 <= precision <= 9):
        fail(f"'precision' must be a number of significant digits from 1 to 9, not {precision!r}")


# -- step metadata ---------------------------------------------------------------------------
def validate_meta(item, position: int, fail, seen_axes: set | None = None) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    """Check a step's id, index, shape, dtype and axes; returns them as (id, shape, dtype, axes).

    `seen_axes` (one set per trace) remembers axes tuples already found valid, so the thousands
    of steps of a session check their axes once per distinct kind. Labels are stored differently
    by the two formats and are checked by each reader (`validate_labels` for JSON).
    """
    if type(item) is not dict:
        fail(f"step {position} is not an object")
    step_id = item.get("id")
    if type(step_id) is not str or not step_id:
        fail(f"step {position} has no id")
    if "@" in step_id:  # only an id with a decoding step can fail to split
        try:
            split_id(step_id)
        except ValueError:
            fail(f"step id {step_id!r} has an invalid decoding step")
    if item.get("index", position) != position:
        fail(f"step {step_id!r} is out of order (index {item.get('index')!r} at position {position})")
    shape = item.get("shape")
    if type(shape) is not list:
        fail(f"step {step_id!r} has an invalid shape {shape!r}")
    for n in shape:
        if type(n) is not int or n < 0:
            fail(f"step {step_id!r} has an invalid shape {shape!r}")
    dtype = item.get("dtype")
    if type(dtype) is not str or dtype not in DTYPES:
        fail(f"step {step_id!r} has an unsupported dtype {dtype!r}")
    axes = item.get("axes")
    if type(axes) is not list or len(axes) != len(shape):
        fail(f"step {step_id!r}: axes {axes!r} do not match shape {shape!r}")
    key = None
    if seen_axes is not None:
        try:
            key = tuple(axes)
            if key in seen_axes:
                return step_id, tuple(shape), dtype, key
        except TypeError:  # a list or dict among the axes: not hashable, and not valid either
            key = None
    for axis in axes:
        if type(axis) is not str:
            fail(f"step {step_id!r}: axes {axes!r} do not match shape {shape!r}")
    if key is not None:
        seen_axes.add(key)
    return step_id, tuple(shape), dtype, tuple(axes)


def validate_labels(labels, step_id: str, fail) -> dict:
    """A JSON step's `labels`: each axis named maps to a list of token strings."""
    if type(labels) is not dict:
        fail(f"step {step_id!r} has invalid labels")
    for tokens in labels.values():
        if type(tokens) is not list or not all(type(t) is str for t in tokens):
            fail(f"step {step_id!r} has invalid labels")
    return labels


def _is_number(value) -> bool:
    return type(value) in (int, float)


def _valid_choice(entry, with_prob: bool) -> bool:
    return (
        isinstance(entry, dict) and isinstance(entry.get("token"), str) and type(entry.get("id")) is int
        and (not with_prob or _is_number(entry.get("prob")))
    )


def validate_cached(item: dict, step_fail) -> int:
    """A KV-cached step's `cached`: how many rows came from earlier steps (0 when absent)."""
    cached = item.get("cached", 0)
    if not (type(cached) is int and cached >= 0):
        step_fail("cached must be a count of rows (an integer ≥ 0)")
    return cached


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
