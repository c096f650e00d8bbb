"""The one validation of a trace's header and step metadata, shared by the JSON reader
(tracer.trace.load) and the session reader (tracer.trace.session).

Each check takes a `fail(message)` callback that raises (the reader's DamagedFile, naming its
file), so both readers refuse the same documents with the same words. The step check is also the
session reader's hot path at replay start-up (one call per step), so it is written to be cheap
when the metadata is good: exact type tests, no generator expressions, and the axes of each
distinct kind checked once per trace (`seen_axes`). Messages are built only on failure.

What a step may be is the anatomy's (tracer.trace.anatomy): the kinds read by their axes
(FIXED_LAYOUT_KINDS) have one of their layouts (so a rank they are recorded at), a `probs` step with a prediction is 1-D
(2-D with per-position predictions), token ids fall inside its vocabulary. Numbers that reach
numpy (ids, shapes, decoding steps) fit in 64 bits, free-form fields (an extra, `model.config`)
nest at most MAX_DEPTH deep, and a trace's `d_model` and `vocab` are one length throughout
(`validate_consistency`). A document these accept is safe for every consumer: `check`, export,
`sessions`, the API and the UI. The writers run the same checks before writing
(`validate_trace`), so nothing is written that could not be read back.
"""

from __future__ import annotations

import math

from tracer.trace.anatomy import KINDS
from tracer.trace.step import parse_name, split_step_id
from tracer.trace.trace import FORMAT, FORMAT_VERSION, READABLE_VERSIONS

DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64", "bool"})
INT64_MAX = 2**63 - 1
MAX_ID_CHARS = 512              # a hook name with its decoding step; real ones are under 60
MAX_RANK = 16
MAX_ELEMENTS = 2**40            # one tensor; a bound on what the metadata may claim, not a budget
MAX_DEPTH = 32                  # nesting of a free-form field (orjson itself writes at most 254)
MAX_NODES = 2_000_000           # values in the free-form fields of one document
MAX_LAYER = 2**31 - 1
SAME_LENGTH_AXES = ("d_model", "vocab")  # one length across a whole trace
# Kinds that other code reads by their axes (the summary, check, the UI's token and prediction
# panels): each has one of its anatomy layouts. Other kinds may be recorded at any rank (an
# imported model's tap, a hand-built trace): the UI and check treat them generically.
FIXED_LAYOUT_KINDS = frozenset({"tokens", "mask", "logits", "probs"})
_PREDICTION_KINDS = ("probs", "logits")
_CHECKED_HEADER_KEYS = frozenset({"steps", "format", "version", "created", "device", "tracer_version", "precision"})
_CHECKED_PART_KEYS = frozenset({"text", "tokens", "ids"})
_STATS_NUMBERS = ("min", "max", "mean", "std")


def _is_id(value) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def check_nesting(value, fail, where: str, depth: int = MAX_DEPTH) -> None:
    """A free-form JSON value nests at most `depth` deep and holds at most MAX_NODES values."""
    pending, nodes = [(value, 0)], 0
    while pending:
        item, level = pending.pop()
        nodes += 1
        if level > depth:
            fail(f"{where} nests more than {depth} deep")
        if nodes > MAX_NODES:
            fail(f"{where} holds more than {MAX_NODES} values")
        if type(item) is dict:
            pending.extend((child, level + 1) for child in item.values())
        elif type(item) is list:
            pending.extend((child, level + 1) for child in item)
        elif type(item) is int and not -INT64_MAX - 1 <= item <= INT64_MAX:
            fail(f"{where} holds an integer beyond 64 bits")


# -- header --------------------------------------------------------------------------------
def validate_header(document, fail, header_only: bool = False) -> None:
    """Check a trace's header fields (a JSON export's top level; a session trace's `trace`);
    `header_only`: the steps are checked by the caller (a writer)."""
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
    if not document["steps"] and not header_only:
        fail("'steps' is empty (a trace records at least one step)")
    # the fields the summary, the check and the UI read
    for key in ("input", "output"):
        part = document[key]
        if not isinstance(part.get("text", ""), str):
            fail(f"'{key}.text' must be a string")
        if not isinstance(part.get("tokens", []), list) or not all(isinstance(t, str) for t in part.get("tokens", [])):
            fail(f"'{key}.tokens' must be a list of strings")
        if not isinstance(part.get("ids", []), list) or not all(_is_id(i) for i in part.get("ids", [])):
            fail(f"'{key}.ids' must be a list of integers (token ids, 0 to 2^63-1)")
    model = document["model"]
    if not isinstance(model.get("name", ""), str) or not isinstance(model.get("arch", ""), str):
        fail("'model.name' and 'model.arch' must be strings")
    if not isinstance(model.get("config", {}), dict):
        fail("'model.config' must be an object")
    if not isinstance(document.get("capture", {}), dict):
        fail("'capture' must be an object")
    for key in ("created", "device", "tracer_version"):
        if document.get(key) is not None and type(document[key]) is not str:
            fail(f"'{key}' must be a string, not {type(document[key]).__name__}")
    for key, value in document.items():  # the free-form fields; steps and the lists above are checked already
        if key in ("input", "output"):
            for part_key, part_value in value.items():
                if part_key not in _CHECKED_PART_KEYS:
                    check_nesting(part_value, fail, f"'{key}.{part_key}'")
        elif key not in _CHECKED_HEADER_KEYS:
            check_nesting(value, fail, f"'{key}'")
    precision = document.get("precision")
    if precision is not None and not (type(precision) is int and 1 <= precision <= 9):
        fail(f"'precision' must be a number of significant digits from 1 to 9, not {precision!r}")


# -- step metadata ---------------------------------------------------------------------------
def validate_meta(item, position: int, fail, seen_axes: set | None = None) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    """Check a step's id, index, shape, dtype and axes; returns them as (id, shape, dtype, axes).

    `seen_axes` (one set per trace) remembers (kind, axes) pairs already found valid, so the
    thousands of steps of a session check their axes once per distinct kind. Labels are stored
    differently by the two formats; each reader resolves them, then keeps `usable_labels`.
    """
    if type(item) is not dict:
        fail(f"step {position} is not an object")
    step_id = item.get("id")
    if type(step_id) is not str or not step_id:
        fail(f"step {position} has no id")
    if len(step_id) > MAX_ID_CHARS:
        fail(f"step {position} has an id of {len(step_id)} characters (at most {MAX_ID_CHARS})")
    try:
        name, t, s = split_step_id(step_id)  # `@t` a decoding step, `@sN` a training step (tracer finetune)
    except ValueError as exc:
        fail(f"step id {step_id!r} has an {exc}")
    digits = len(step_id) - len(name) - (2 if s is not None else 1)  # after "@" or "@s"
    if (t is not None or s is not None) and digits > 18:  # within 64 bits
        fail(f"step id {step_id!r} has an invalid {'training' if s is not None else 'decoding'} step")
    parts = parse_name(name)  # cached: the Step asks for the same parts again
    if parts["layer"] is not None and parts["layer"] > MAX_LAYER:
        fail(f"step id {step_id!r} has an invalid layer number")
    if item.get("index", position) != position:
        fail(f"step {step_id!r} is out of order (index {item.get('index')!r} at position {position})")
    shape = item.get("shape")
    if type(shape) is not list or len(shape) > MAX_RANK:
        fail(f"step {step_id!r} has an invalid shape {shape!r}")
    for n in shape:
        if type(n) is not int or not 0 <= n <= INT64_MAX:
            fail(f"step {step_id!r} has an invalid shape {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        fail(f"step {step_id!r} claims {math.prod(shape)} values (at most {MAX_ELEMENTS} in one tensor)")
    dtype = item.get("dtype")
    if type(dtype) is not str or dtype not in DTYPES:
        fail(f"step {step_id!r} has an unsupported dtype {dtype!r}")
    axes = item.get("axes")
    if type(axes) is not list or len(axes) != len(shape):
        fail(f"step {step_id!r}: axes {axes!r} do not match shape {shape!r}")
    kind = parts["kind"]
    if kind in _PREDICTION_KINDS and shape and shape[-1] == 0:
        fail(f"step {step_id!r}: a {kind} step needs at least one vocabulary entry, not shape {shape}")
    key = None
    if seen_axes is not None:
        try:
            key = (kind, tuple(axes))
            if key in seen_axes:
                return step_id, tuple(shape), dtype, key[1]
        except TypeError:  # a list or dict among the axes: not hashable, and not valid either
            key = None
    for axis in axes:
        if type(axis) is not str or len(axis) > MAX_ID_CHARS:
            fail(f"step {step_id!r}: axes {axes!r} do not match shape {shape!r}")
    if key is not None:
        seen_axes.add(key)
    return step_id, tuple(shape), dtype, tuple(axes)


def usable_labels(labels: dict, shape: tuple, axes: tuple) -> dict:
    """The labels that name one of the step's axes with one token per position; the others are
    dropped, as capture leaves them out (tracer.trace.anatomy.token_labels)."""
    kept = labels
    for axis, tokens in labels.items():
        if axis not in axes or len(tokens) != shape[axes.index(axis)]:
            kept = {a: t for a, t in labels.items() if a in axes and len(t) == shape[axes.index(a)]}
            break
    return kept


def usable_stats(stats):
    """Saved stats the UI can show ({min, max, mean, std: number or null, nonfinite: count}), else
    None: they are worked out again from the tensor."""
    if type(stats) is not dict or not _is_id(stats.get("nonfinite")):
        return None
    for key in _STATS_NUMBERS:
        if key not in stats or not (stats[key] is None or type(stats[key]) in (int, float)):
            return None
    return stats


def validate_consistency(steps, fail) -> None:
    """The steps as the anatomy describes them, checked once each step's own metadata (and, by the
    readers, its tensor) is: a kind of FIXED_LAYOUT_KINDS has one of its layouts of axes; each of SAME_LENGTH_AXES
    has one length in the steps of known kinds; a pass's token embedding and positional encoding
    have one shape (they are added)."""
    lengths: dict[str, tuple[int, str]] = {}
    embeds: dict[tuple, tuple[tuple, str]] = {}
    checked: set = set()  # (kind, axes, shape) already checked: the same answer again (a decode repeats them)
    for step in steps:
        kind = step.kind
        known = KINDS.get(kind)
        if known is None:
            continue
        shape = step.shape
        layout = (kind, step.axes, shape)
        if layout not in checked:
            checked.add(layout)
            if kind in FIXED_LAYOUT_KINDS and step.axes not in known.axes:
                layouts = " or ".join(str(list(layout)) for layout in known.axes)
                fail(f"step {step.id!r}: a {kind} step has axes {layouts}, not {list(step.axes)}")
            for axis, n in zip(step.axes, shape):
                if axis in SAME_LENGTH_AXES:
                    first = lengths.setdefault(axis, (n, step.id))
                    if first[0] != n:
                        fail(f"step {step.id!r}: its {axis} is {n}, but step {first[1]!r}'s is {first[0]}")
        if kind in ("embed", "pos_embed"):
            first = embeds.setdefault((step.stack, step.decode_step), (shape, step.id))
            if first[0] != shape:
                fail(f"step {step.id!r} has shape {list(shape)}, but step {first[1]!r} beside it has "
                     f"{list(first[0])} (the two are added)")


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


def _valid_choice(entry, with_prob: bool, vocab: int | None) -> bool:
    if not (isinstance(entry, dict) and type(entry.get("token")) is str and _is_id(entry.get("id"))):
        return False
    if vocab is not None and entry["id"] >= vocab:
        return False
    # a prob is null where the model's probabilities were not finite (JSON has no NaN)
    return not with_prob or _is_number(entry.get("prob")) or entry.get("prob", 0) is None


def validate_cached(item: dict, step_fail) -> int:
    """A KV-cached step's `cached`: how many rows came from earlier steps (0 when absent)."""
    cached = item.get("cached", 0)
    if not (type(cached) is int and cached >= 0):
        step_fail("cached must be a count of rows (an integer ≥ 0)")
    return cached


def _restore_nan(choices: list) -> None:
    for entry in choices:
        if entry["prob"] is None:
            entry["prob"] = math.nan


def validate_extra(extra: dict, step_fail, shape: tuple | None = None, kind: str | None = None) -> dict:
    """The extras other code reads (top_k, chosen, predictions) must have their documented shape;
    on a `probs` step (where they are read) their ids fall inside its vocabulary and its rank is
    what they say. A null prob is read back as NaN. Any other extra is free-form, bounded in nesting."""
    on_probs = shape is not None and kind == "probs"
    rank = len(shape) if on_probs else None
    vocab = shape[-1] if on_probs and shape else None
    top_k_ok = lambda v: isinstance(v, list) and all(_valid_choice(e, True, vocab) for e in v)  # noqa: E731
    if "top_k" in extra:
        if not top_k_ok(extra["top_k"]):
            step_fail("top_k must be a list of {token, id, prob}, ids inside the vocabulary")
        _restore_nan(extra["top_k"])
    if "chosen" in extra and not _valid_choice(extra["chosen"], False, vocab):
        step_fail("chosen must be {token, id}, its id inside the vocabulary")
    if rank is not None and rank != 1 and ("top_k" in extra or "chosen" in extra):
        step_fail(f"a step with top_k or chosen is one position's probabilities (1-D), not {rank}-D")
    if "predictions" in extra:
        predictions = extra["predictions"]
        positions = shape[0] if rank == 2 else None
        if rank is not None and rank != 2:
            step_fail(f"a step with predictions holds every position's probabilities (2-D), not {rank}-D")
        if not isinstance(predictions, list) or not all(
            isinstance(p, dict) and _is_id(p.get("pos")) and (positions is None or p["pos"] < positions)
            and top_k_ok(p.get("top_k")) and _valid_choice(p.get("chosen"), False, vocab) for p in predictions
        ):
            step_fail("predictions must be a list of {pos, token, top_k, chosen}, inside the tensor")
        for p in predictions:
            _restore_nan(p["top_k"])
    for key, value in extra.items():
        if key not in ("top_k", "chosen", "predictions"):
            check_nesting(value, step_fail, f"extra field {key!r}")
    return extra


def validate_trace(trace, fail) -> None:
    """What a writer checks before writing: the trace as its reader would check it."""
    validate_header(dict(trace.header(), steps=[]), fail, header_only=True)
    if not trace.steps:
        fail("the trace has no steps")
    seen: set = set()
    for position, step in enumerate(trace.steps):
        item = {"index": position, "id": step.id, "shape": list(step.shape), "dtype": step.dtype, "axes": list(step.axes)}
        validate_meta(item, position, fail, seen)
        if step.extra:
            validate_extra(dict(step.extra), lambda m, step_id=step.id: fail(f"step {step_id!r}: {m}"),
                           tuple(step.shape), step.kind)
    validate_consistency(trace.steps, fail)
