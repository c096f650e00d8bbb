"""Property tests of the session reader: any damage to any file gives a usable session or a clean TracerError."""

from __future__ import annotations

import io
import re
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tracer.errors import TracerError
from tracer.summary import print_summary
from tracer.trace.check import check_trace
from tracer.trace.session import SessionStore, load_session
from tracer.trace.state import UIState, Bookmark

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FILES = ["session.json", "trace-0.meta.json", "trace-0.safetensors"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, seq2seq_trace):
    root = tmp_path_factory.mktemp("fuzz-sessions")
    state = UIState(step="encoder.0.attn.hook_pattern", head=1, bookmarks=[Bookmark(0, "encoder.hook_tokens", "start")])
    return SessionStore(root).save("s", [seq2seq_trace], state=state)


def damaged_copy(pristine, tmp_path, name: str, change) -> object:
    folder = tmp_path / "copy"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(pristine, folder)
    path = folder / name
    path.write_bytes(change(path.read_bytes()))
    return folder


def open_fully_or_refuse(folder) -> None:
    """Either a TracerError with a one-line message, or a session whose every tensor reads."""
    try:
        session = load_session(folder)
        for trace in session.traces:
            for step in trace.steps:
                step.data, step.stats
            check_trace(trace)
            print_summary(trace, Console(file=io.StringIO()))
    except TracerError as exc:
        assert str(exc) and "\n" not in str(exc)
    first_screen_agrees(folder)


def first_screen_agrees(folder) -> None:
    """Replay's reader (the first passes, then the rest) refuses whatever the full read refuses;
    where both accept, they read the same steps. (It may refuse more: a pass index that lies.)"""
    try:
        full = [t.ids for t in load_session(folder).traces]
    except TracerError:
        full = None
    try:
        lazy = load_session(folder, first_screen=True).traces
        for trace in lazy:
            trace.complete()
        read = [t.ids for t in lazy]
    except TracerError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert read == full


@FUZZ
@given(name=st.sampled_from(FILES), cut=st.integers(0, 10**6), byte=st.integers(0, 255), truncate=st.booleans())
def test_flipped_or_truncated_bytes(pristine, tmp_path, name, cut, byte, truncate):
    def change(raw: bytes) -> bytes:
        position = cut % max(1, len(raw))
        return raw[:position] if truncate else raw[:position] + bytes([byte]) + raw[position + 1:]

    open_fully_or_refuse(damaged_copy(pristine, tmp_path, name, change))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def json_paths(doc, prefix=()):
    """Every (path) to a value inside a JSON document, for picking one to replace."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from json_paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for index, value in enumerate(doc[:6]):
            yield from json_paths(value, prefix + (index,))


@FUZZ
@given(data=st.data())
def test_mutated_json_values(pristine, tmp_path, data):
    name = data.draw(st.sampled_from(FILES[:2]))
    doc = json.loads((pristine / name).read_text())
    paths = [p for p in json_paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(JSON_VALUES)

    def change(_raw: bytes) -> bytes:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = replacement
        return json.dumps(doc).encode()

    open_fully_or_refuse(damaged_copy(pristine, tmp_path, name, change))


@pytest.mark.parametrize("field,value,message", [
    (("trace", "model", "config"), [None], "'model.config' must be an object"),     # crashed `check` (found by the fuzz)
    (("trace", "input", "tokens"), "ich bin", "'input.tokens' must be a list of strings"),
    (("trace", "output", "ids"), [1.5], "'output.ids' must be a list of integers"),
])
def test_session_header_fields_are_validated_like_an_exports(pristine, tmp_path, field, value, message):
    def change(raw: bytes) -> bytes:
        doc = json.loads(raw)
        target = doc
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value
        return json.dumps(doc).encode()

    folder = damaged_copy(pristine, tmp_path, "trace-0.meta.json", change)
    with pytest.raises(TracerError, match=re.escape(message)):
        load_session(folder)
