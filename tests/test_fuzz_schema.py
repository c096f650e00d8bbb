"""Property test of the one schema: for generated step metadata, a session and a JSON export
holding the same steps are accepted alike, or refused with the same message.

The session reader checks its steps with a per-trace cache of axes already found valid (its
start-up path); the JSON reader checks every step in full. This is what keeps the two in step.
"""

from __future__ import annotations

import orjson
import numpy as np
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from tracer.errors import DamagedFile
from tracer.trace import Step
from tracer.trace.load import trace_from_document
from tracer.trace.schema import DTYPES
from tracer.trace.session import load_session
from tracer.trace.tensor_file import write_tensors

HEADER = {
    "format": "tracer-trace", "version": 1, "model": {"name": "m", "arch": "decoder", "config": {}},
    "input": {"text": "a b", "tokens": ["a", "b"], "ids": [1, 2]}, "output": {"text": "", "tokens": [], "ids": []},
}
AXES = ["pos", "d_model", "head"]


@st.composite
def step_meta(draw, position: int) -> dict:
    """Plausible metadata with, now and then, one field or another wrong (each about 1 in 6)."""
    def odd() -> bool:
        return draw(st.integers(0, 5)) == 0

    if odd():
        step_id = draw(st.sampled_from([f"decoder.{position}.attn.hook_z@x{position}", f"hook_z@{position}@1", "", position, None]))
    else:
        step_id = draw(st.sampled_from([f"blocks.{position}.hook_resid_post", f"decoder.{position}.attn.hook_z@{position + 1}"]))
    item = {"id": step_id}
    if odd():
        item["index"] = draw(st.sampled_from([position + 1, position - 1, True, "0", None]))
    elif draw(st.booleans()):
        item["index"] = position
    if odd():
        item["shape"] = draw(st.lists(st.integers(0, 3) | st.sampled_from([-1, True, 2.0, "2", None]), max_size=3)
                             | st.sampled_from([None, "3", {}]))
    else:
        item["shape"] = draw(st.lists(st.integers(0, 3), max_size=3))
    item["dtype"] = draw(st.sampled_from(["float8", "object", 3, None])) if odd() else draw(st.sampled_from(sorted(DTYPES)))
    length = len(item["shape"]) if isinstance(item["shape"], list) else 1
    if odd():
        axis = st.sampled_from(AXES) | st.sampled_from([1, None, ["pos"], {"a": 1}])
        item["axes"] = draw(st.lists(axis, min_size=length, max_size=length) | st.lists(axis, max_size=3)
                            | st.sampled_from([None, "pos"]))
    else:  # from a small pool, so that steps of one trace share axes (the session reader caches them)
        item["axes"] = draw(st.lists(st.sampled_from(AXES), min_size=length, max_size=length))
    if odd():
        item["top_k"] = draw(st.sampled_from([[{"token": "a"}], "a", [{"token": "a", "id": 1, "prob": "p"}]]))
    elif draw(st.booleans()):
        item["top_k"] = [{"token": "a", "id": 1, "prob": 0.5}]
    return item


@st.composite
def step_lists(draw) -> list[dict]:
    return [draw(step_meta(position)) for position in range(draw(st.integers(1, 4)))]


def has_data(item: dict) -> bool:
    """Whether a tensor can be made for this metadata (a real tensor file and JSON data need one)."""
    shape = item.get("shape")
    return (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(item.get("dtype"), str) and item["dtype"] in DTYPES)


def zeros(item: dict) -> np.ndarray:
    return np.zeros(item["shape"], dtype=item["dtype"])


def verdict(read, prefix: str):
    """None if the reader accepts; otherwise its message without the file name in front."""
    try:
        return read()
    except DamagedFile as exc:
        message = str(exc)
        assert message.startswith(prefix), message
        return message[len(prefix):]


def json_verdict(items: list[dict]):
    steps = []
    for item in items:
        json_item = dict(item, labels={"pos": ["a", "b"]})
        json_item["data"] = zeros(item).tolist() if has_data(item) else []
        steps.append(json_item)
    return verdict(lambda: trace_from_document(orjson.loads(orjson.dumps(dict(HEADER, steps=steps)))), "trace: ")


def session_verdict(folder, items: list[dict]):
    folder.mkdir(exist_ok=True)
    meta = folder / "trace-0.meta.json"
    steps = [dict(item, labels={"pos": 0}) for item in items]
    meta.write_bytes(orjson.dumps({
        "format": "tracer-session-trace", "version": 1, "tensors": "trace-0.safetensors",
        "label_sets": [["a", "b"]], "trace": dict(HEADER, steps=steps),
    }))
    tensors = [Step(id=item["id"], shape=tuple(item["shape"]), dtype=item["dtype"], axes=(), _array=zeros(item))
               for item in items if has_data(item) and isinstance(item["id"], str)]
    write_tensors(tensors, folder / "trace-0.safetensors")
    (folder / "session.json").write_bytes(orjson.dumps({
        "format": "tracer-session", "version": 1, "name": "s",
        "traces": [{"meta": "trace-0.meta.json", "tensors": "trace-0.safetensors"}],
    }))
    return verdict(lambda: load_session(folder).traces[0], f"{meta}: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=step_lists())
def test_session_and_json_readers_accept_and_refuse_the_same_step_metadata(tmp_path, items):
    from_json = json_verdict(items)
    from_session = session_verdict(tmp_path / "s", items)
    if isinstance(from_json, str) or isinstance(from_session, str):
        assert from_session == from_json
        return
    assert [(s.id, s.shape, s.dtype, s.axes, s.extra) for s in from_session.steps] == \
           [(s.id, s.shape, s.dtype, s.axes, s.extra) for s in from_json.steps]


def test_the_generated_metadata_holds_good_and_bad_steps():
    """The property above is worth something only if the generator makes both kinds."""
    accepted = find(step_lists(), lambda items: not isinstance(json_verdict(items), str), settings=settings(database=None))
    refused = find(step_lists(), lambda items: isinstance(json_verdict(items), str), settings=settings(database=None))
    assert accepted and refused
