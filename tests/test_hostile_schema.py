"""The one schema (issue 19, class 1): a trace is refused in one line, or safe for every consumer.

Cases are generated from the anatomy (every kind × wrong rank, wrong type, out of range,
oversized), then the issue's examples as regressions, then a property test: any JSON value put
in any field of a valid export is refused with one line (exit 1), or accepted and then survives
`check`, `export`, a save and `sessions`, the API, and (fewer examples) the UI stepping through
every step.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracer
from tracer.cli import cli
from tracer.errors import DamagedFile
from tracer.trace import Step, Trace
from tracer.trace.anatomy import KINDS
from tracer.trace.check import check_trace
from tracer.trace.export import write_json
from tracer.trace.load import read_json, trace_from_document
from tracer.trace.schema import DTYPES, FIXED_LAYOUT_KINDS, MAX_DEPTH
from tracer.trace import session as session_module
from tracer.trace.session import SessionStore, load_session

from session_helpers import synthetic_trace

HEADER = {
    "format": "tracer-trace", "version": 1, "model": {"name": "m", "arch": "decoder", "config": {}},
    "input": {"text": "a b", "tokens": ["a", "b"], "ids": [1, 2]}, "output": {"text": "", "tokens": [], "ids": []},
}


def one_step_doc(kind: str, shape: list, axes: list, **fields) -> dict:
    dtype = fields.pop("dtype", "float32")
    data = np.zeros(shape, dtype=dtype if dtype in DTYPES else "float32").tolist() if all(type(n) is int and 0 <= n < 100 for n in shape) else []
    step = {"id": f"hook_{kind}", "shape": shape, "dtype": dtype, "axes": axes, "data": data, **fields}
    return dict(copy.deepcopy(HEADER), steps=[step])


def verdict(document) -> str | None:
    """None when the JSON reader accepts `document`, else its one-line message."""
    try:
        trace_from_document(orjson.loads(json.dumps(document)))
    except DamagedFile as exc:
        message = str(exc)
        assert "\n" not in message
        return message
    return None


def anatomy_cases():
    """(kind, case, document, must_refuse) for every kind the anatomy knows."""
    for name, kind in KINDS.items():
        layout = list(kind.axes[0])
        shape = [2] * len(layout)
        yield name, "valid", one_step_doc(name, shape, layout), False
        wrong_rank = layout + ["extra"]
        yield name, "wrong rank", one_step_doc(name, shape + [2], wrong_rank), name in FIXED_LAYOUT_KINDS
        yield name, "scalar", one_step_doc(name, [], []), name in FIXED_LAYOUT_KINDS
        yield name, "shape of wrong type", one_step_doc(name, ["2"] * len(layout), layout), True
        yield name, "axes of wrong type", one_step_doc(name, shape, [1] * len(layout)), True
        yield name, "dtype of wrong type", one_step_doc(name, shape, layout, dtype="complex64"), True
        yield name, "negative size", one_step_doc(name, [-1] + shape[1:], layout), True
        yield name, "size beyond 64 bits", one_step_doc(name, [2**64] + shape[1:], layout), True
        yield name, "oversized tensor", one_step_doc(name, [2**21] * len(layout) if len(layout) > 1 else [2**41], layout), True
        yield name, "decoding step beyond 64 bits", dict(one_step_doc(name, shape, layout),
                                                          steps=[dict(one_step_doc(name, shape, layout)["steps"][0],
                                                                      id=f"hook_{name}@{2**70}")]), True
        yield name, "extra nested too deep", one_step_doc(name, shape, layout, note=nested(MAX_DEPTH + 5)), True
        yield name, "extra of wrong type", one_step_doc(name, shape, layout, top_k="a"), True


def nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


CASES = list(anatomy_cases())


@pytest.mark.parametrize("kind,case,document,must_refuse", CASES, ids=[f"{k}-{c}" for k, c, _, _ in CASES])
def test_every_kind_against_its_anatomy(kind, case, document, must_refuse):
    message = verdict(document)
    if must_refuse:
        assert message is not None, f"{kind}: {case} was accepted"
    else:
        assert message is None, message
        survives(trace_from_document(orjson.loads(json.dumps(document))))


def test_the_cases_cover_every_kind_and_are_many():
    assert {kind for kind, *_ in CASES} == set(KINDS)
    assert len(CASES) >= 12 * len(KINDS)


# -- the issue's examples -------------------------------------------------------------------------
def base_doc(tmp_path) -> dict:
    write_json(synthetic_trace(), tmp_path / "base.json")
    return json.loads((tmp_path / "base.json").read_text())


def step_of(doc: dict, step_id: str) -> dict:
    return next(step for step in doc["steps"] if step["id"] == step_id)


REGRESSIONS = {
    "positional encoding beside embeddings of another shape": lambda d: d["steps"].insert(2, dict(
        step_of(d, "encoder.hook_embed"), id="encoder.hook_pos_embed", shape=[2, 8], data=np.zeros((2, 8)).tolist())),
    "empty probs with a chosen": lambda d: step_of(d, "decoder.hook_probs@1").update(shape=[0], data=[]),
    "scalar tokens": lambda d: step_of(d, "encoder.hook_tokens").update(shape=[], axes=[], data=4),
    "scalar mask": lambda d: step_of(d, "encoder.0.attn.hook_mask").update(shape=[], axes=[], data=True),
    "2-D probs with a top-k": lambda d: step_of(d, "decoder.hook_probs@1").update(
        shape=[1, 10], axes=["pos", "vocab"], data=[step_of(d, "decoder.hook_probs@1")["data"]]),
    "decoding step beyond 64 bits": lambda d: step_of(d, "decoder.hook_probs@1").update(id=f"decoder.hook_probs@{2**64}"),
    "token id beyond 64 bits": lambda d: d["input"].update(ids=[2**64 - 1, 1, 2]),
    "created an integer": lambda d: d.update(created=5),
    "nested thousands deep in an extra field": lambda d: step_of(d, "encoder.hook_embed").update(note=nested(900)),
    "chosen id outside the vocabulary": lambda d: step_of(d, "decoder.hook_probs@1")["chosen"].update(id=10),
    "layer number beyond 64 bits": lambda d: step_of(d, "encoder.0.attn.hook_q").update(id=f"encoder.{2**70}.attn.hook_q"),
    "an empty steps list": lambda d: d.update(steps=[]),
    "two d_model lengths": lambda d: d["steps"].insert(2, dict(
        step_of(d, "encoder.hook_embed"), id="encoder.0.hook_resid_pre", shape=[3, 5], data=np.zeros((3, 5)).tolist())),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_the_issues_examples_are_refused_in_one_line(tmp_path, name):
    doc = base_doc(tmp_path)
    REGRESSIONS[name](doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    for args in (["replay", tmp_path / "bad.json", "--no-tui"], ["check", tmp_path / "bad.json"],
                 ["export", tmp_path / "bad.json", "-o", tmp_path / "out.json"]):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (name, args, result.output)


def test_the_same_examples_are_refused_by_the_session_reader(tmp_path, monkeypatch):
    """The session reader applies the same schema: one of the examples, written as a session."""
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "s"))
    trace = synthetic_trace()
    trace.steps[0] = Step.from_array("encoder.hook_tokens", np.array(4), ())  # scalar tokens
    trace = Trace(trace.steps, model=trace.model, device="cpu", input=trace.input, output=trace.output)
    with monkeypatch.context() as patch:  # written as a writer without the schema would write it
        patch.setattr(session_module, "validate_trace", lambda *_: None)
        folder = SessionStore().save("s", [trace])
    with pytest.raises(DamagedFile, match="a tokens step has axes"):
        load_session(folder)
    manifest = json.loads((folder / "session.json").read_text())
    manifest["created"] = 5
    (folder / "session.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["sessions"])
    assert result.exit_code == 0 and "damaged" in result.output and "'created' must be a string" in result.output


def test_a_null_prob_is_read_back_as_nan_and_the_writer_writes_only_what_reads_back(tmp_path):
    """A model producing NaN: its top-k probs are NaN, written as null; the reader takes them back."""
    trace = synthetic_trace()
    probs = trace.step("decoder.hook_probs@1")
    probs._array = np.full(10, np.nan, dtype=np.float32)
    probs.extra["top_k"][0]["prob"] = float("nan")
    write_json(trace, tmp_path / "nan.json")
    back = read_json(tmp_path / "nan.json").step("decoder.hook_probs@1")
    assert math.isnan(back.extra["top_k"][0]["prob"])
    store = SessionStore(tmp_path / "s")
    assert math.isnan(store.load(store.save("nan", [trace])).trace.step("decoder.hook_probs@1").extra["top_k"][0]["prob"])
    bad = synthetic_trace()
    bad.step("decoder.hook_probs@1").extra["chosen"]["id"] = 99  # outside its 10-entry vocabulary
    with pytest.raises(tracer.errors.TracerError, match="its reader would refuse"):
        store.save("bad", [bad])
    with pytest.raises(tracer.errors.TracerError, match="its reader would refuse"):
        write_json(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and store.list()[0].name == "nan"


def test_labels_that_do_not_fit_their_axis_are_dropped(tmp_path):
    doc = base_doc(tmp_path)
    step_of(doc, "encoder.hook_embed")["labels"] = {"pos": ["only one"], "nonsense": ["a", "b", "c"]}
    trace = trace_from_document(orjson.loads(json.dumps(doc)))
    assert trace.step("encoder.hook_embed").labels == {}
    survives(trace)


# -- consumers ------------------------------------------------------------------------------------
def survives(trace: Trace, tmp_path=None) -> None:
    """Everything but the UI reads the trace without an exception."""
    import tempfile
    from pathlib import Path

    from tracer.summary import print_summary

    check_trace(trace)
    trace.predictions()
    for step in trace.steps:
        step.stats, step.data  # noqa: B018
    print_summary(trace)
    folder = Path(tmp_path or tempfile.mkdtemp(prefix="tracer-hostile-"))
    write_json(trace, folder / "again.json")
    read_json(folder / "again.json")
    store = SessionStore(folder / "sessions")
    store.save("again", [trace], force=True)
    tracer.load(str(folder / "sessions" / "again")).steps[0].data  # noqa: B018
    result = CliRunner().invoke(cli, ["sessions", "--sessions-dir", str(folder / "sessions")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output


async def walk_in_ui(trace: Trace) -> None:
    from tracer.tui.app import TracerApp

    app = TracerApp([trace])
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(len(trace)):
            await pilot.press("v", "tab", "down", "v", "n")
        await pilot.press("q")
    assert app.return_code in (0, None)


# -- the property ---------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4) | st.sampled_from([0, -1, 2**63, 2**64 - 1, "", "pos", "vocab", "float32", [], {}]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "token", "prob", "pos", "x"]), inner, max_size=3),
    max_leaves=6,
)


def field_paths(value, path=()):
    """Every place in a document a value can be put (inside a tensor's data only its first entries)."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from field_paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value[:2]):
            yield from field_paths(child, path + (index,))


@pytest.fixture(scope="module")
def valid_doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("valid") / "t.json"
    write_json(synthetic_trace(), path)
    return json.loads(path.read_text())


def mutated(doc, data) -> dict:
    doc = copy.deepcopy(doc)
    paths = [p for p in field_paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON_VALUES)
    return doc


def accepted_or_one_line(tmp_path, doc):
    (tmp_path / "t.json").write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["replay", str(tmp_path / "t.json"), "--no-tui"])
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), result.output
    if result.exit_code:
        lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        return None
    return read_json(tmp_path / "t.json")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_in_any_field_is_refused_or_safe(tmp_path, valid_doc, data):
    trace = accepted_or_one_line(tmp_path, mutated(valid_doc, data))
    if trace is not None:
        survives(trace, tmp_path)
        result = CliRunner().invoke(cli, ["check", str(tmp_path / "t.json")])
        assert result.exit_code in (0, 1) and isinstance(result.exception, (SystemExit, type(None))), result.output


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_in_any_field_is_refused_or_the_ui_steps_through_it(tmp_path, valid_doc, data):
    trace = accepted_or_one_line(tmp_path, mutated(valid_doc, data))
    if trace is not None:
        asyncio.run(walk_in_ui(trace))
