"""JSON export details: non-finite values, precision, and reading an export back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tracer.errors import DamagedFile
from tracer.trace import Step, Trace
from tracer.trace.export import write_json
from tracer.trace.load import read_json


def tiny_trace(*arrays_and_kinds):
    steps = [Step.from_array(f"encoder.0.attn.hook_{kind}", a, axes) for a, kind, axes in arrays_and_kinds]
    return Trace(steps, model={"name": "m", "arch": "encoder"}, device="cpu", input={"text": "x"}, output={"text": "y"})


def test_nonfinite_values_are_null_and_come_back(tmp_path):
    mixed = np.array([[1.5, -np.inf], [np.nan, np.inf]], dtype=np.float32)
    masked = np.array([[0.25, -np.inf], [0.5, -np.inf]], dtype=np.float32)
    trace = tiny_trace((mixed, "attn_raw", ("query", "key")), (masked, "attn_scores", ("query", "key")))
    write_json(trace, tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["steps"][0]["data"] == [[1.5, None], [None, None]]
    assert doc["steps"][0]["stats"]["nonfinite"] == 3
    assert doc["steps"][1]["null_as"] == "-inf"
    back = read_json(tmp_path / "t.json")
    np.testing.assert_array_equal(back["encoder.0.attn.hook_attn_raw"], mixed)
    np.testing.assert_array_equal(back["encoder.0.attn.hook_attn_scores"], masked)


def test_full_float32_precision_round_trips_bit_identical(seq2seq_trace, tmp_path):
    write_json(seq2seq_trace, tmp_path / "t.json")
    back = read_json(tmp_path / "t.json")
    assert back.ids == seq2seq_trace.ids
    for step in seq2seq_trace.steps:
        again = back.step(step.id)
        assert again.dtype == step.dtype and again.labels == step.labels and again.extra == step.extra
        np.testing.assert_array_equal(again.data, step.data)


def test_precision_rounds_to_significant_digits(tmp_path):
    values = np.array([123456.7, 0.000123456, -3.14159265, 0.0], dtype=np.float32)
    write_json(tiny_trace((values, "attn_raw", ("key",))), tmp_path / "t.json", precision=3)
    assert json.loads((tmp_path / "t.json").read_text())["steps"][0]["data"] == [123000.0, 0.000123, -3.14, 0.0]


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(format="something-else"), "not a tracer trace"),
    (lambda d: d.update(version=99), "unsupported trace version 99"),
    (lambda d: d["steps"].reverse(), "out of order"),
    (lambda d: d["steps"][0].update(shape=[7]), "metadata says [7]"),
    (lambda d: d["steps"][1].update(data="abc"), "data"),
    (lambda d: d["steps"][1]["data"][0].__setitem__(0, "x"), "not numbers"),
    (lambda d: d["steps"][1].update(dtype="object"), "unsupported dtype"),
])
def test_damaged_exports_are_refused_with_a_reason(seq2seq_trace, tmp_path, mutate, message):
    write_json(seq2seq_trace, tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DamagedFile, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_json(tmp_path / "bad.json")


def test_truncated_json_is_refused(seq2seq_trace, tmp_path):
    write_json(seq2seq_trace, tmp_path / "t.json")
    raw = (tmp_path / "t.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DamagedFile, match="not valid JSON"):
        read_json(tmp_path / "cut.json")


def test_failed_export_leaves_the_previous_file(seq2seq_trace, tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    path.write_text("previous")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tracer.trace.export.step_json", boom)
    with pytest.raises(OSError):
        write_json(seq2seq_trace, path)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_an_export_gets_ordinary_file_permissions(seq2seq_trace, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_json(seq2seq_trace, tmp_path / "shared.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("shape", [(0,), (0, 8), (2, 0), (1, 0, 0), (2, 0, 3), (3, 1, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_zero_size_tensors_of_any_shape_round_trip(tmp_path, shape, dtype):
    """orjson writes a (1, 0, 0) tensor as `[[]]`, which parses as (1, 0): the reader must still
    take it back as (1, 0, 0) (it refused such exports; found by tests/test_fuzz_schema.py)."""
    axes = tuple(f"a{i}" for i in range(len(shape)))
    write_json(tiny_trace((np.zeros(shape, dtype=dtype), "empty", axes)), tmp_path / "t.json")
    back = read_json(tmp_path / "t.json").steps[0]
    assert back.data.shape == shape and back.data.dtype == dtype


def test_an_empty_list_does_not_stand_in_for_a_tensor_with_values(tmp_path):
    write_json(tiny_trace((np.zeros((2, 3), dtype=np.float32), "x", ("a", "b"))), tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["steps"][0]["data"] = [[], []]
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(DamagedFile, match=r"data has shape \[2, 0\], metadata says \[2, 3\]"):
        read_json(tmp_path / "t.json")


def test_an_export_records_its_precision_and_a_reader_keeps_it(tmp_path):
    """`tracer check` needs to know an export's floats are rounded (it failed 10 of 266 checks on
    a --precision 4 export): the header says `"precision": N`, and `Trace.precision` carries it on."""
    from tracer.trace.session import SessionStore

    values = np.array([0.123456, 2.0, -7.654321], dtype=np.float32)
    full, rounded = tmp_path / "full.json", tmp_path / "p4.json"
    write_json(tiny_trace((values, "attn_raw", ("key",))), full)
    assert "precision" not in json.loads(full.read_text()) and read_json(full).precision is None
    write_json(tiny_trace((values, "attn_raw", ("key",))), rounded, precision=4)
    assert json.loads(rounded.read_text())["precision"] == 4
    back = read_json(rounded)
    assert back.precision == 4 and back.steps[0].data.tolist() == pytest.approx([0.1235, 2.0, -7.654], rel=1e-6)

    # a session saved from the rounded trace stays rounded, and so does any export of it
    reopened = SessionStore(tmp_path / "s").load(SessionStore(tmp_path / "s").save("p4", [back]))
    assert reopened.trace.precision == 4
    for asked, recorded in ((None, 4), (6, 4), (2, 2)):
        again = tmp_path / f"again-{asked}.json"
        write_json(reopened.trace, again, precision=asked)
        assert json.loads(again.read_text())["precision"] == recorded


@pytest.mark.parametrize("value", [0, 10, 4.0, "4", True])
def test_an_export_with_a_nonsense_precision_is_refused(tmp_path, value):
    path = tmp_path / "t.json"
    write_json(tiny_trace((np.zeros(2, dtype=np.float32), "x", ("key",))), path)
    doc = json.loads(path.read_text())
    doc["precision"] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(DamagedFile, match="'precision' must be a number of significant digits from 1 to 9"):
        read_json(path)


# -- a large export: its size said first, refused without room, memory near one step ----------------
def kv_trace(gpt_model, new_tokens=6):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    loaded = load_model(gpt_model)
    loaded.tokenizer.stop_ids = set()  # decode every step asked for
    return trace_text(loaded, "the cat sat on the mat and the dog", max_new_tokens=new_tokens)


@pytest.mark.parametrize("precision", [None, 3, 6])
def test_the_estimate_is_within_its_bound_of_the_file_written(gpt_model, seq2seq_trace, bert_model, tmp_path, precision):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model
    from tracer.trace.export import ESTIMATE_BOUND, estimated_size

    bert = trace_text(load_model(bert_model), "the cat sat on the [MASK]")
    for name, trace in (("gpt", kv_trace(gpt_model)), ("seq2seq", seq2seq_trace), ("bert", bert)):
        guess = estimated_size(trace, precision)
        write_json(trace, tmp_path / f"{name}.json", precision)
        actual = (tmp_path / f"{name}.json").stat().st_size
        assert abs(guess - actual) <= ESTIMATE_BOUND * actual, (name, precision, guess, actual)


def test_export_of_a_saved_kv_trace_assembles_nothing_and_keeps_nothing(gpt_model, tmp_path, monkeypatch):
    from tracer.trace.session import SessionStore

    store = SessionStore(tmp_path / "sessions")
    store.save("kv", [kv_trace(gpt_model)])
    trace = store.load("kv").trace
    assert any(step.cached for step in trace.steps)
    assembled = []
    original = Trace._assembled
    monkeypatch.setattr(Trace, "_assembled", lambda self, step: assembled.append(step.id) or original(self, step))
    write_json(trace, tmp_path / "kv.json")
    assert assembled == []  # rows only: not even stats assemble a full view
    assert all(step._array is None and step._rows is None for step in trace.steps)  # each step released
    back = read_json(tmp_path / "kv.json")
    last = f"blocks.0.attn.hook_pattern@{trace.decode_steps[-1]}"
    monkeypatch.setattr(Trace, "_assembled", original)
    np.testing.assert_array_equal(back[last], trace[last])  # the reader still assembles the full view
    assert "stats" not in json.loads((tmp_path / "kv.json").read_text())["steps"][trace.step(last).index]


def test_the_cli_says_the_size_first_and_refuses_without_room(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from click.testing import CliRunner

    from tracer.cli import cli
    from tracer.trace.export import estimated_size

    sessions = tmp_path / "sessions"
    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    made = runner.invoke(cli, ["run", "ich bin piyush", "--save", "s", "--sessions-dir", str(sessions), "--no-tui",
                               "--export", str(tmp_path / "run.json")])
    assert made.exit_code == 0, made.output
    assert "exporting" in made.stderr and "about" in made.stderr
    ok = runner.invoke(cli, ["export", "s", "-o", str(tmp_path / "ok.json"), "--sessions-dir", str(sessions)])
    assert ok.exit_code == 0, ok.output
    line = next(line for line in ok.stderr.splitlines() if line.startswith("exporting"))
    from tracer.trace.session import SessionStore
    from tracer.text import human_size
    assert human_size(estimated_size(SessionStore(sessions).load("s").trace)) in line

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    refused = runner.invoke(cli, ["export", "s", "-o", str(tmp_path / "full.json"), "--sessions-dir", str(sessions)])
    assert refused.exit_code == 1
    error = refused.stderr.strip().splitlines()[-1]
    assert "needs about" in error and "free" in error and "Traceback" not in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json", "run.json", "sessions"]  # nothing left behind
