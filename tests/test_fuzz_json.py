"""Property tests: any bytes, or any mutation of a valid export, give a Trace or a clean TracerError."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rich.console import Console

from tracer.errors import TracerError
from tracer.summary import print_summary
from tracer.trace.check import check_trace
from tracer.trace.export import write_json
from tracer.trace.load import read_json

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid_doc(tmp_path_factory, seq2seq_trace):
    path = tmp_path_factory.mktemp("fuzz") / "t.json"
    write_json(seq2seq_trace, path)
    return json.loads(path.read_text())


def read_or_refuse(tmp_path, raw: bytes):
    path = tmp_path / "f.json"
    path.write_bytes(raw)
    try:
        trace = read_json(path)
    except TracerError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    for step in trace.steps:   # a trace that loads is fully usable downstream
        step.stats, step.kind, step.layer
    check_trace(trace)
    print_summary(trace, Console(file=io.StringIO()))
    return trace


@FUZZ
@given(raw=st.binary(max_size=400))
def test_any_bytes(tmp_path, raw):
    read_or_refuse(tmp_path, raw)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "index", "shape", "dtype", "axes", "labels", "data", "null_as", "nonfinite_at", "top_k", "chosen", "predictions"]


@FUZZ
@given(data=st.data())
def test_mutated_steps(tmp_path, valid_doc, data):
    doc = json.loads(json.dumps(valid_doc))
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(["step", "header"]))
        if target == "header":
            key = data.draw(st.sampled_from(["format", "version", "model", "input", "output", "steps", "device", "created"]))
            doc[key] = data.draw(JSON_VALUES)
            continue
        if not isinstance(doc.get("steps"), list) or not doc["steps"]:
            break
        step = doc["steps"][data.draw(st.integers(0, len(doc["steps"]) - 1))]
        if isinstance(step, dict):
            step[data.draw(st.sampled_from(FIELDS))] = data.draw(JSON_VALUES)
    read_or_refuse(tmp_path, json.dumps(doc).encode())


@FUZZ
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 255))
def test_truncated_or_flipped_bytes(tmp_path, valid_doc, cut, flip):
    raw = bytearray(json.dumps(valid_doc).encode())
    position = cut % len(raw)
    raw[position] = flip
    read_or_refuse(tmp_path, bytes(raw))
    read_or_refuse(tmp_path, bytes(raw[:position]))
