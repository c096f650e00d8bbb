"""Replay's first frame reads only what it shows: of a long decode, the passes up to the saved place
(the session's pass index says where each pass ends in the files); the Trace reads and checks the
rest when first asked, and the UI asks as soon as its first frame is up. Nothing else changes: the
same steps, the same tensors, the same first screen, the same errors for a damaged file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from session_helpers import assert_same_steps
from tui_helpers import screen_lines
from tracer.capture.run import generate
from tracer.cli import cli
from tracer.errors import DamagedFile
from tracer.nn.loading import load_model
from tracer.trace.session import SessionStore, load_session
from tracer.trace.state import Bookmark, UIState
from tracer.tui.app import TracerApp


@pytest.fixture(scope="module", params=[("en-gpt-tiny", "the cat drank the"), ("de-en-tiny", "ich bin piyush")],
                ids=["decoder", "encoder-decoder"])
def decode(request, tmp_path_factory):
    """A KV-cached decode of six new tokens, saved as session "long" in a store of its own."""
    name, text = request.param
    trace = generate(load_model(name), text, max_new_tokens=6, traced=True).trace
    store = SessionStore(tmp_path_factory.mktemp("sessions"))
    store.save("long", [trace])
    return store, trace


def fresh_copy(store: SessionStore, tmp_path: Path) -> Path:
    """The session copied, to damage or change without touching the module's."""
    folder = tmp_path / "long"
    folder.mkdir()
    for item in store.path_of("long").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    return folder


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "session.json").read_text())


def set_manifest(folder: Path, manifest: dict) -> None:
    (folder / "session.json").write_text(json.dumps(manifest, indent=2))


def test_the_manifest_indexes_each_pass_where_it_ends_in_both_files(decode):
    store, trace = decode
    folder = store.path_of("long")
    passes = manifest_of(folder)["traces"][0]["passes"]
    runs = [t for i, t in enumerate(s.decode_step for s in trace.steps) if i == 0 or trace.steps[i - 1].decode_step != t]
    assert [p["decode_step"] for p in passes] == runs
    assert passes[-1]["steps"] == len(trace)
    meta = (folder / "trace-0.meta.json").read_bytes()
    (length,) = struct.unpack("<Q", (folder / "trace-0.safetensors").read_bytes()[:8])
    header = (folder / "trace-0.safetensors").read_bytes()[8:8 + length]
    for p in passes[:-1]:  # the files cut there and closed parse as the first passes, and only them
        steps = orjson.loads(meta[:p["meta"]] + b"]}}")["trace"]["steps"]
        assert [s["id"] for s in steps] == trace.ids[:p["steps"]]
        assert list(orjson.loads(header[:p["tensors"]] + b"}")) == trace.ids[:p["steps"]]
    chosen = {s.decode_step: s.extra["chosen"]["token"] for s in trace.steps if s.kind == "probs" and "chosen" in s.extra}
    assert [p["chosen"] for p in passes if p["decode_step"] is not None] == [chosen[t] for t in trace.decode_steps]
    # written piece by piece, the files are still what orjson writes for the whole at once
    assert meta == orjson.dumps(orjson.loads(meta), option=orjson.OPT_SERIALIZE_NUMPY)
    assert header.rstrip(b" ") == orjson.dumps(orjson.loads(header))


def test_a_single_pass_session_has_no_index(tmp_path):
    trace = generate(load_model("en-bert-tiny"), "the cat drank the [MASK]", traced=True).trace
    SessionStore(tmp_path).save("one", [trace])
    assert "passes" not in manifest_of(tmp_path / "one")["traces"][0]


def test_the_first_screen_reads_the_first_pass_and_the_rest_on_demand(decode):
    store, trace = decode
    lazy = load_session(store.path_of("long"), first_screen=True).traces[0]
    first_pass = next(i for i, s in enumerate(trace.steps) if s.decode_step != trace.steps[0].decode_step)
    assert len(lazy.loaded_steps) == first_pass and len(lazy.later_passes) >= 5
    assert len(lazy) == len(trace)  # known from the index, nothing read
    assert lazy.decode_steps == trace.decode_steps
    last = trace.steps[-1].id
    assert f"{trace.steps[0].name}@999" not in lazy and lazy.later_passes  # not a pass of this trace: nothing read
    assert last in lazy and not lazy.later_passes  # a later pass's step: the rest is read
    assert_same_steps(load_session(store.path_of("long")).traces[0], lazy)
    assert_same_steps(trace, lazy)


@pytest.mark.parametrize("ask", ["steps", "find", "item", "predictions", "iter"])
def test_any_question_about_a_later_pass_reads_it_first(decode, ask):
    store, trace = decode
    lazy = load_session(store.path_of("long"), first_screen=True).traces[0]
    last = trace.steps[-1]
    answer = {
        "steps": lambda: [s.id for s in lazy.steps],
        "find": lambda: [s.id for s in lazy.find(kind="probs")],
        "item": lambda: lazy[last.id].tolist(),
        "predictions": lambda: lazy.predictions(),
        "iter": lambda: [s.id for s in lazy],
    }[ask]()
    expected = {
        "steps": lambda: trace.ids, "find": lambda: [s.id for s in trace.find(kind="probs")],
        "item": lambda: trace[last.id].tolist(), "predictions": lambda: trace.predictions(), "iter": lambda: trace.ids,
    }[ask]()
    assert answer == expected and not lazy.later_passes


def test_a_saved_place_and_bookmarks_read_the_passes_up_to_theirs(decode, tmp_path):
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    at = trace.find(kind="pattern", decode_step=4)[0].id
    marked = trace.find(kind="probs", decode_step=3)[0].id
    saved = UIState(step=at, bookmarks=[Bookmark(0, marked, "")])
    assert SessionStore(tmp_path).remember_place("long", saved, [trace])
    session = load_session(folder, first_screen=True)
    lazy = session.traces[0]
    assert {s.decode_step for s in lazy.loaded_steps} - {None} == {1, 2, 3, 4}
    assert session.state.step == at and [b.step for b in session.state.bookmarks] == [marked]
    assert lazy.later_passes  # restoring the place read nothing more


async def first_and_settled_frames(traces, state):
    """The screen at the first frame (on_ready, before the later passes are read) and once settled."""
    seen = {}

    class Probe(TracerApp):
        CSS_PATH = str(Path(__file__).parents[1] / "tracer" / "tui" / "app.tcss")

        def on_ready(self):
            seen["first"] = screen_lines(self)
            seen["pending"] = [len(t.later_passes) for t in self.viewer.traces]
            super().on_ready()
            seen["after"] = [len(t.later_passes) for t in self.viewer.traces]

    app = Probe(traces, state=state)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
    return seen


@pytest.mark.parametrize("place", ["start", "later"])
async def test_the_first_frame_is_the_one_a_full_read_draws(decode, tmp_path, place):
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    if place == "later":  # reopened at decoding step 4's attention pattern, its heads' second
        state = UIState(step=trace.find(kind="pattern", decode_step=4)[-1].id, head=1)
        assert SessionStore(tmp_path).remember_place("long", state, [trace])
    eager, lazy = load_session(folder), load_session(folder, first_screen=True)
    full = await first_and_settled_frames(eager.traces, eager.state)
    first = await first_and_settled_frames(lazy.traces, lazy.state)
    assert first["pending"][0] > 0 and first["after"] == [0]  # drawn before the rest was read; read at once after
    assert first["first"] == full["first"]


def test_replay_opens_a_long_session_from_its_first_pass(decode, tmp_path, monkeypatch):
    """`tracer replay` (the UI, headless) draws its first frame before it reads the later passes."""
    store, _ = decode
    seen = {}

    def run_headless(self, *args, **kwargs):
        seen["pending"] = [len(t.later_passes) for t in self.viewer.traces]

        async def walk():
            async with self.run_test(size=(100, 30)) as pilot:
                await pilot.press("q")
        import asyncio
        asyncio.run(walk())
        seen["after"] = [len(t.later_passes) for t in self.viewer.traces]

    monkeypatch.setattr(TracerApp, "run", run_headless)
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)
    result = CliRunner().invoke(cli, ["replay", "long", "--sessions-dir", str(store.root)])
    assert result.exit_code == 0, result.output
    assert seen["pending"][0] > 0 and seen["after"] == [0]


def damage_a_late_step(folder: Path) -> None:
    """The last step's shape in the metadata no longer matches its tensor (same byte length)."""
    meta = (folder / "trace-0.meta.json").read_bytes()
    document = orjson.loads(meta)
    last = document["trace"]["steps"][-1]
    last["shape"] = last["shape"][::-1] if len(set(last["shape"])) > 1 else last["shape"] + [1]
    (folder / "trace-0.meta.json").write_bytes(orjson.dumps(document))
    # the manifest's index still points at the same bytes for the first passes: the edit is late
    again = orjson.dumps(document)
    assert again[:manifest_of(folder)["traces"][0]["passes"][0]["meta"]] == meta[:manifest_of(folder)["traces"][0]["passes"][0]["meta"]]


def damage_a_late_tensor_entry(folder: Path) -> None:
    """The tensors' header claims one byte too few for the last tensor (same header length)."""
    path = folder / "trace-0.safetensors"
    raw = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + length].decode()
    at = header.rindex('"data_offsets":[')
    start, end = header[at:].split("[", 1)[1].split("]", 1)[0].split(",")
    fixed = header[:at] + header[at:].replace(f"[{start},{end}]", f"[{start},{int(end) - 1}]".ljust(len(f"[{start},{end}]")), 1)
    raw[8:8 + length] = fixed.encode()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [damage_a_late_step, damage_a_late_tensor_entry], ids=["meta", "tensors"])
def test_damage_in_a_later_pass_is_refused_as_a_full_read_refuses_it(decode, tmp_path, damage, monkeypatch):
    store, _ = decode
    folder = fresh_copy(store, tmp_path)
    damage(folder)
    with pytest.raises(DamagedFile) as eager:
        load_session(folder)
    lazy = load_session(folder, first_screen=True).traces[0]  # the first passes are sound
    with pytest.raises(DamagedFile) as later:
        lazy.complete()
    assert str(later.value) == str(eager.value)
    assert lazy.later_passes  # nothing half-read: asking again says the same
    with pytest.raises(DamagedFile):
        lazy.steps

    def run_headless(self, *args, **kwargs):
        async def walk():
            async with self.run_test(size=(100, 30)) as pilot:
                await pilot.pause()
        import asyncio
        asyncio.run(walk())

    monkeypatch.setattr(TracerApp, "run", run_headless)
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)
    result = CliRunner().invoke(cli, ["replay", str(folder)])
    assert result.exit_code == 1 and result.output == f"Error: {eager.value}\n"


def test_an_index_that_does_not_fit_is_ignored(decode, tmp_path):
    """Cut inside a step, pointing past the file, or not a list: the whole trace is read at once."""
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    manifest = manifest_of(folder)
    good = manifest["traces"][0]["passes"]
    for bad in ([dict(good[0], meta=good[0]["meta"] - 7)] + good[1:],
                [dict(good[0], tensors=10**9)] + good[1:],
                [dict(good[0], steps=good[0]["steps"] - 1)] + good[1:],
                [good[1], good[0]] + good[2:],
                "passes", None):
        manifest["traces"][0]["passes"] = bad
        set_manifest(folder, manifest)
        lazy = load_session(folder, first_screen=True).traces[0]
        assert not lazy.later_passes, bad
        assert_same_steps(trace, lazy)


def test_an_index_that_lies_about_a_later_pass_is_refused(decode, tmp_path):
    store, _ = decode
    folder = fresh_copy(store, tmp_path)
    manifest = manifest_of(folder)
    manifest["traces"][0]["passes"][-1]["chosen"] = "something else"
    set_manifest(folder, manifest)
    lazy = load_session(folder, first_screen=True).traces[0]
    assert lazy.later_passes[-1].chosen == "something else"
    with pytest.raises(DamagedFile, match="do not match the pass index in session.json"):
        lazy.complete()


def test_a_session_without_an_index_still_opens(decode, tmp_path):
    """Sessions saved before the index: read whole, as before."""
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    manifest = manifest_of(folder)
    del manifest["traces"][0]["passes"]
    set_manifest(folder, manifest)
    lazy = load_session(folder, first_screen=True).traces[0]
    assert not lazy.later_passes and len(lazy.loaded_steps) == len(trace)


def test_a_streamed_save_writes_the_same_index(decode, tmp_path):
    from tracer.trace.session_writer import SessionWriter

    store, saved = decode
    model = "de-en-tiny" if saved.arch == "encoder-decoder" else "en-gpt-tiny"
    trace = generate(load_model(model), saved.input["text"], max_new_tokens=6, traced=True).trace  # its own: add() moves its tensors to disk
    with SessionWriter(SessionStore(tmp_path), "long") as writer:
        writer.add(list(trace.steps))
        writer.commit(trace)
    SessionStore(tmp_path).save("again", [trace])  # the same trace saved whole
    streamed, whole = manifest_of(tmp_path / "long")["traces"][0], manifest_of(tmp_path / "again")["traces"][0]
    assert streamed["passes"] == whole["passes"] and len(streamed["passes"]) == len(trace.decode_steps) + (trace.arch == "encoder-decoder")
    lazy = load_session(tmp_path / "long", first_screen=True).traces[0]
    assert lazy.later_passes
    assert_same_steps(load_session(tmp_path / "again").traces[0], lazy)


def test_an_index_beside_a_step_count_that_is_not_one_is_ignored(decode, tmp_path):
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    manifest = manifest_of(folder)
    manifest["traces"][0]["steps"] = None  # `tracer sessions` shows no count; the index cannot be checked against it
    set_manifest(folder, manifest)
    lazy = load_session(folder, first_screen=True).traces[0]
    assert not lazy.later_passes and lazy.ids == trace.ids


def test_later_steps_a_trace_cannot_hold_change_nothing():
    """An id the first passes hold already, or cached rows without a position axis: ValueError from
    complete(), the trace as it was (its later passes still to read)."""
    import numpy as np

    from tracer.trace import Step, Trace
    from tracer.trace.trace import Later, LaterPass

    first = [Step.from_array("blocks.0.hook_resid_pre@1", np.zeros((3, 2), np.float32), ("pos", "d_model"))]
    for later in ([Step.from_array("blocks.0.hook_resid_pre@1", np.zeros((1, 2), np.float32), ("pos", "d_model"))],
                  [Step.from_array("hook_logits@2", np.zeros(5, np.float32), ("vocab",), cached=3)]):
        trace = Trace(first, model={"name": "m", "arch": "decoder"}, device="cpu", input={"text": "x"}, output={"text": "y"},
                      later=Later((LaterPass(2, 1, None),), lambda later=later: later))
        with pytest.raises(ValueError):
            trace.complete()
        assert trace.later_passes and trace.loaded_steps == first and trace.step(first[0].id) is first[0]
        assert later[0].index == 0 and later[0].stored_shape is None  # not touched


@pytest.mark.parametrize("key", ["steps", "meta", "tensors", "decode_step", "chosen"])
def test_an_index_entry_without_one_of_its_keys_is_ignored(decode, tmp_path, key):
    """Found by the fuzz test: a byte flipped in a key's name ("chosen" -> "c osen") raised KeyError."""
    store, trace = decode
    folder = fresh_copy(store, tmp_path)
    manifest = manifest_of(folder)
    del manifest["traces"][0]["passes"][-1][key]
    set_manifest(folder, manifest)
    lazy = load_session(folder, first_screen=True).traces[0]
    assert not lazy.later_passes and lazy.ids == trace.ids
