"""Sessions: save, replay without the model, export, list, remove, and the Python API."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import tracer
from tracer.cli import cli
from tracer.errors import BadInput, TracerError
from tracer.trace import session as session_mod
from tracer.trace.load import read_json
from tracer.trace.session import SessionStore
from tracer.trace.state import Bookmark, UIState

from session_helpers import (
    assert_bit_identical, assert_same_steps, model_folder, model_trace, run_without_torch, synthetic_trace,
)


@pytest.fixture
def store(tmp_path, monkeypatch) -> SessionStore:
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "sessions"))
    return SessionStore()


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    # a TracerError ends in SystemExit through TracerGroup; anything else would be a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# -- round trip ------------------------------------------------------------------------------
def test_round_trip_is_bit_identical_and_restores_state(store):
    traces = [synthetic_trace(0), model_trace("encoder-decoder")]
    state = UIState(trace=1, step="decoder.0.cross_attn.hook_pattern@2", head=1, view="numbers",
                    bookmarks=[Bookmark(0, "encoder.0.attn.hook_attn_scores", "the -inf is the mask"),
                               Bookmark(1, "decoder.hook_probs@1", "")])
    path = store.save("round", traces, state=state)
    assert path == store.root / "round"
    assert sorted(p.name for p in path.iterdir()) == [
        "session.json", "trace-0.meta.json", "trace-0.safetensors", "trace-1.meta.json", "trace-1.safetensors"]

    session = store.load("round")
    assert session.name == "round"
    assert session.state == state
    assert session.trace is session.traces[1]
    for want, got in zip(traces, session.traces):
        assert got.header() == want.header()
        assert_same_steps(want, got)
    # stats known at save time are kept; others are computed on demand, from the same data
    assert session.traces[0].steps[1]._stats == traces[0].steps[1]._stats
    assert session.traces[0].steps[4].stats == traces[0].steps[4].stats


def test_tensors_load_lazily_one_at_a_time(store):
    store.save("lazy", [synthetic_trace()])
    trace = store.load("lazy").traces[0]
    assert all(step._array is None for step in trace.steps)
    pattern = trace["encoder.0.attn.hook_pattern"]
    assert isinstance(pattern, np.ndarray) and pattern.shape == (2, 3, 3)
    assert [s.id for s in trace.steps if s._array is not None] == ["encoder.0.attn.hook_pattern"]
    trace.step("encoder.0.attn.hook_pattern").release()
    assert all(step._array is None for step in trace.steps)
    assert_bit_identical(trace["encoder.0.attn.hook_pattern"], pattern)


def test_resave_of_a_loaded_session_streams_its_tensors(store):
    original = synthetic_trace()
    store.save("first", [original])
    loaded = store.load("first")
    store.save("second", loaded.traces, state=loaded.state)
    assert all(step._array is None for step in loaded.traces[0].steps)  # read, written and dropped
    assert_same_steps(original, store.load("second").traces[0])


@pytest.mark.parametrize("exchange", [True, False])
def test_replayed_session_saved_over_itself(store, monkeypatch, exchange):
    """The UI's `s` on a replayed session: its tensors are read from the folder being replaced."""
    if not exchange:
        monkeypatch.setattr(session_mod, "_exchange", lambda a, b: False)
    original = synthetic_trace()
    store.save("inplace", [original])
    loaded = store.load("inplace")
    loaded.traces[0]["encoder.hook_embed"]  # one tensor already open, the rest not
    for _ in range(2):
        store.save("inplace", loaded.traces, state=UIState(head=1), force=True)
    assert_same_steps(original, loaded.traces[0])  # the replayed traces still read correctly
    again = store.load("inplace")
    assert again.state.head == 1
    assert_same_steps(original, again.traces[0])
    assert [p.name for p in store.root.iterdir()] == ["inplace"]


def test_state_pointing_outside_the_session_is_dropped(store):
    trace = synthetic_trace()
    store.save("odd", [trace], state=UIState(trace=5, step="nope", bookmarks=[Bookmark(0, "nope"), Bookmark(3, trace.ids[0]),
                                                                          Bookmark(0, trace.ids[1], "kept")]))
    state = store.load("odd").state
    assert state.trace == 0 and state.step is None
    assert state.bookmarks == [Bookmark(0, trace.ids[1], "kept")]


def test_run_save_then_replay_without_the_model(store, monkeypatch):
    folder = model_folder("encoder-decoder")
    ran = invoke("run", "ich bin piyush", "--model", folder, "--max-new-tokens", "3", "--save", "piyush", "--no-tui")
    assert ran.exit_code == 0, ran.output
    replayed = invoke("replay", "piyush", "--no-tui")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.output == ran.output
    assert "ich" in replayed.output and "decoding steps" in replayed.output

    opened = {}
    monkeypatch.setattr("tracer.tui.open_traces", lambda traces, **kw: opened.update(traces=traces, **kw))
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    store.save("piyush", store.load("piyush").traces, force=True,
               state=UIState(step="decoder.1.attn.hook_pattern@2", head=1, bookmarks=[Bookmark(0, "encoder.hook_embed", "x")]))
    assert invoke("replay", "piyush", "--play").exit_code == 0
    assert opened["session_name"] == "piyush" and opened["play"] is True
    assert opened["state"].step == "decoder.1.attn.hook_pattern@2" and opened["state"].head == 1
    assert opened["state"].bookmarks == [Bookmark(0, "encoder.hook_embed", "x")]
    assert opened["traces"][0].ids == model_trace("encoder-decoder", lens=True).ids  # `tracer run` records the lens


def test_save_export_then_replay_the_json(store, tmp_path):
    trace = model_trace("encoder-decoder")
    store.save("exp", [trace, synthetic_trace()])
    out = tmp_path / "exp.json"
    result = invoke("export", "exp", "-o", out)
    assert result.exit_code == 0, result.output
    assert "2 traces" in result.output  # told which one it wrote
    exported = read_json(out)
    assert exported.header() == trace.header()
    assert exported.ids == trace.ids
    for want, got in zip(trace.steps, exported.steps):
        assert np.array_equal(want.data, got.data, equal_nan=want.data.dtype.kind == "f"), want.id
        assert got.dtype == want.dtype and got.labels == want.labels and got.extra == want.extra
    # the export is itself replayable and shows the same as the session
    assert invoke("replay", out, "--no-tui").output == invoke("replay", "exp", "--no-tui").output.split("\n\n")[0] + "\n"
    assert invoke("check", out).exit_code == 0

    second = tmp_path / "second.json"
    assert invoke("export", "exp", "-o", second, "--trace", "2", "--precision", "3").exit_code == 0
    rounded = read_json(second)
    assert rounded.ids == synthetic_trace().ids
    embed = rounded["encoder.hook_embed"]
    assert np.allclose(embed, synthetic_trace()["encoder.hook_embed"], rtol=5e-3) and not np.array_equal(embed, synthetic_trace()["encoder.hook_embed"])
    bad = invoke("export", "exp", "-o", tmp_path / "x.json", "--trace", "3")
    assert bad.exit_code == 2 and "2 trace(s)" in bad.output


def test_python_api(store, monkeypatch):
    trace = model_trace("encoder-decoder")
    store.save("api", [trace])
    for source in (store.root / "api", str(store.root / "api"), "api"):
        t = tracer.load(source)
        assert isinstance(t["encoder.0.attn.hook_pattern"], np.ndarray)
        assert_bit_identical(t["decoder.0.cross_attn.hook_pattern@2"], trace["decoder.0.cross_attn.hook_pattern@2"])
        assert [s.id for s in t.steps] == trace.ids
        assert [s.id for s in t.find(kind="pattern", layer=0, decode_step=2)] == [
            "decoder.0.attn.hook_pattern@2", "decoder.0.cross_attn.hook_pattern@2"]
        assert t.steps[0].meta()["id"] == "encoder.hook_tokens"
    session = tracer.load_session("api")
    assert session.traces[0].ids == trace.ids and session.state == UIState()


# -- names, overwrite, concurrency -------------------------------------------------------------
@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "a..b", "x" * 129, "sp ace", "new\nline", "a\\b"])
def test_bad_names_are_refused(store, name):
    with pytest.raises(BadInput, match="invalid session name"):
        store.save(name, [synthetic_trace()])
    assert not store.root.exists() or not any(store.root.iterdir())


def test_good_names(store):
    for name in ("a", "piyush-1", "run_2.v3", "A+B"):
        store.save(name, [synthetic_trace()])
    assert [row.name for row in store.list()] == sorted(["a", "piyush-1", "run_2.v3", "A+B"])


def test_existing_session_needs_force(store):
    store.save("same", [synthetic_trace(0, "first")])
    created = store.load("same").manifest["created"]
    with pytest.raises(TracerError, match="already exists.*--force"):
        store.save("same", [synthetic_trace(1, "second")])
    assert store.load("same").traces[0].input["text"] == "first"
    store.save("same", [synthetic_trace(1, "second")], force=True)
    loaded = store.load("same")
    assert loaded.traces[0].input["text"] == "second"
    assert loaded.manifest["created"] == created
    assert_same_steps(synthetic_trace(1), loaded.traces[0])
    assert [p.name for p in store.root.iterdir()] == ["same"]  # nothing left beside it


def test_force_replaces_only_a_session_folder(store):
    (store.root / "notes").mkdir(parents=True)
    (store.root / "notes" / "diary.txt").write_text("mine")
    with pytest.raises(TracerError, match="not a session folder"):
        store.save("notes", [synthetic_trace()], force=True)
    assert (store.root / "notes" / "diary.txt").read_text() == "mine"


def test_force_replace_without_atomic_exchange(store, monkeypatch):
    """Where renameat2 is unavailable: rename the old aside, rename the new in, delete the old."""
    monkeypatch.setattr(session_mod, "_exchange", lambda a, b: False)
    store.save("swap", [synthetic_trace(0, "old")])
    store.save("swap", [synthetic_trace(1, "new")], force=True)
    assert store.load("swap").traces[0].input["text"] == "new"
    assert [p.name for p in store.root.iterdir()] == ["swap"]


@pytest.mark.parametrize("force", [False, True])
def test_concurrent_saves_of_one_name(store, force):
    texts = [f"writer {i}" for i in range(6)]
    traces = {text: synthetic_trace(i, text) for i, text in enumerate(texts)}
    outcomes = {}
    barrier = threading.Barrier(len(texts))

    def save(text):
        barrier.wait()
        try:
            store.save("race", [traces[text]], force=force)
            outcomes[text] = "ok"
        except TracerError as exc:
            outcomes[text] = str(exc)

    threads = [threading.Thread(target=save, args=(text,)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [text for text, outcome in outcomes.items() if outcome == "ok"]
    if force:
        assert len(winners) == len(texts), outcomes
    else:
        assert len(winners) == 1, outcomes
        assert all("already exists" in outcome for outcome in outcomes.values() if outcome != "ok")
    final = store.load("race").traces[0]
    assert final.input["text"] in winners
    assert_same_steps(traces[final.input["text"]], final)
    assert [p.name for p in store.root.iterdir()] == ["race"]


# -- listing and removing ------------------------------------------------------------------------
def test_sessions_list_and_json(store):
    assert "No sessions" in invoke("sessions").output
    store.save("one", [model_trace("encoder-decoder")])
    store.save("two", [synthetic_trace(), synthetic_trace(1)])
    listed = invoke("sessions")
    assert listed.exit_code == 0
    for text in ("one", "two", "tiny-encoder-decoder", "synthetic", "ich bin piyush", "2 traces", "KB"):
        assert text in listed.output
    rows = json.loads(invoke("sessions", "--json").output)
    assert [row["name"] for row in rows] == ["one", "two"]
    one = rows[0]
    trace = model_trace("encoder-decoder")
    assert one["model"] == "tiny-encoder-decoder" and one["input"] == "ich bin piyush"
    assert one["output"] == trace.output["text"] and one["steps"] == len(trace)
    assert one["size"] == sum(p.stat().st_size for p in (store.root / "one").iterdir())
    assert rows[1]["steps"] == 2 * len(synthetic_trace()) and rows[1]["traces"] == 2
    assert one["created"].endswith("Z")


def test_sessions_json_writes_what_a_terminal_would_act_on_as_escapes(store):
    """JSON escapes only controls below U+0020; a C1 control (U+009B is CSI on many terminals) or a bidi
    override in a saved input went to the screen raw. Now an escape: the same JSON, inert on screen."""
    text = "ich \x9b31m bin \u202e piyush ö"
    store.save("odd", [synthetic_trace(text=text)])
    output = invoke("sessions", "--json").output
    assert "\x9b" not in output and "\u202e" not in output and "ö" in output
    assert "\\u009b" in output and "\\u202e" in output
    assert json.loads(output)[0]["input"] == text


def test_sessions_list_shows_a_damaged_session_without_failing(store):
    store.save("good", [synthetic_trace()])
    store.save("bad", [synthetic_trace()])
    (store.root / "bad" / "session.json").write_text("{")
    rows = json.loads(invoke("sessions", "--json").output)
    assert [(r["name"], r["error"] is None) for r in rows] == [("bad", False), ("good", True)]
    assert "damaged" in invoke("sessions").output


def test_sessions_rm(store):
    store.save("doomed", [synthetic_trace()])
    kept = invoke("sessions", "rm", "doomed", input="n\n")
    assert kept.exit_code == 1 and (store.root / "doomed").exists()
    removed = invoke("sessions", "rm", "doomed", input="y\n")
    assert removed.exit_code == 0 and not (store.root / "doomed").exists()
    store.save("doomed", [synthetic_trace()])
    assert invoke("sessions", "rm", "doomed", "--yes").exit_code == 0
    assert list(store.root.iterdir()) == []
    missing = invoke("sessions", "rm", "doomed", "--yes")
    assert missing.exit_code == 2 and "no session named 'doomed'" in missing.output
    assert invoke("sessions", "rm", "../x", "--yes").exit_code == 2


def test_sessions_dir_option(tmp_path):
    other = tmp_path / "elsewhere"
    SessionStore(other).save("here", [synthetic_trace()])
    assert "here" in invoke("sessions", "--sessions-dir", other).output
    assert invoke("replay", "here", "--no-tui", "--sessions-dir", other).exit_code == 0
    assert invoke("sessions", "--sessions-dir", other, "rm", "here", "--yes").exit_code == 0
    assert not (other / "here").exists()


def test_replay_ui_saves_into_the_given_sessions_dir(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    SessionStore(other).save("here", [synthetic_trace(), synthetic_trace(1)])
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "default"))  # restored after the test
    seen = {}
    monkeypatch.setattr("tracer.tui.open_traces", lambda traces, **kw: seen.update(
        root=kw["store"].root, name=kw["session_name"], count=len(traces)))  # the store handed to the UI
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    assert invoke("replay", "here", "--sessions-dir", other).exit_code == 0
    assert seen == {"root": other, "name": "here", "count": 2}


def test_check_covers_every_trace_of_a_session(store):
    store.save("pair", [model_trace("encoder-decoder"), model_trace("decoder")])
    single = [int(invoke("check", store.root / "pair").output.split()[1])]
    for arch in ("encoder-decoder", "decoder"):
        store.save(arch, [model_trace(arch)])
        single.append(int(invoke("check", arch).output.split()[1]))
    assert single[0] == single[1] + single[2] > single[1]


def test_missing_session_is_a_clear_error(store):
    result = invoke("replay", "ghost", "--no-tui")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: no session or file named 'ghost' (sessions are looked for in {store.root})"]


# -- no torch --------------------------------------------------------------------------------------
def test_replay_export_list_check_run_without_torch(store, tmp_path):
    store.save("notorch", [model_trace("encoder-decoder")])
    out = tmp_path / "notorch.json"
    args = [["replay", "notorch", "--no-tui"], ["export", "notorch", "-o", str(out)], ["sessions"], ["sessions", "--json"],
            ["check", "notorch"], ["replay", str(out), "--no-tui"], ["check", str(out)], ["models"]]
    after = (f"import tracer\ntrace = tracer.load({str(store.root / 'notorch')!r})\n"
             "assert trace['encoder.0.attn.hook_pattern'].shape[0] == 2")
    run_without_torch(args, store.root, after=after)
    assert out.exists()


def test_session_folder_gets_normal_permissions(store):
    import stat

    umask = os.umask(0)
    os.umask(umask)
    path = store.save("perm", [synthetic_trace()])
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
