"""Review of replay's first-screen reader (tracer.trace.session `first_screen=True`): what a session
that a full read refuses, or reads differently, does to a Trace read one pass at a time.

Each test is a hostile or damaged session whose first passes are sound and whose flaw is only seen
when the rest is read (`Trace.complete`): the lazy reader must refuse it as the full read does (a
DamagedFile with the full read's message, nothing half-read), never show what the full read would
not, and the UI must end with the CLI's one-line error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from textual import events

from tracer.errors import DamagedFile
from tracer.trace import Step, Trace
from tracer.trace.session import SessionStore, load_session
from tracer.tui.app import TracerApp


def three_passes(extra_steps=()) -> Trace:
    """A decode of three passes (t = 1, 2, 3), each a residual and `extra_steps` (name, array, axes)."""
    steps = []
    for t in (1, 2, 3):
        residual = np.full((1, 4), t, np.float32)
        steps.append(Step.from_array(f"blocks.0.hook_resid_post@{t}", residual, ("pos", "d_model")))
        for name, array, axes in extra_steps:
            steps.append(Step.from_array(f"{name}@{t}", array, axes))
    return Trace(steps, model={"name": "m", "arch": "decoder", "config": {}}, device="cpu",
                 input={"text": "x", "tokens": ["x"], "ids": [1]}, output={"text": "", "tokens": [], "ids": []})


def saved(tmp_path: Path, trace: Trace) -> Path:
    SessionStore(tmp_path).save("s", [trace])
    folder = tmp_path / "s"
    assert len(orjson.loads((folder / "session.json").read_bytes())["traces"][0]["passes"]) == 3
    return folder


def replace_once(path: Path, old: bytes, new: bytes, last: bool = False) -> None:
    raw = path.read_bytes()
    at = raw.rindex(old) if last else raw.index(old)
    path.write_bytes(raw[:at] + new + raw[at + len(old):])


def refused_alike(folder: Path) -> None:
    """The full read refuses the session; the first screen reads its first pass, then refuses the
    rest with the same message, and stays as it was (asking again says the same)."""
    with pytest.raises(DamagedFile) as full:
        load_session(folder)
    lazy = load_session(folder, first_screen=True).traces[0]
    loaded, pending = len(lazy.loaded_steps), lazy.later_passes
    assert pending
    for _ in range(2):
        with pytest.raises(DamagedFile) as later:
            lazy.complete()
        assert str(later.value) == str(full.value)
        assert lazy.later_passes == pending and len(lazy.loaded_steps) == loaded


def test_an_id_given_twice_in_a_later_pass_is_refused_as_a_full_read_refuses_it(tmp_path):
    """Two empty tensors of the last pass given one id (in the metadata and the header alike): the
    header's check lets empty spans touch, so only the Trace's own check of unique ids sees it.
    The first screen raised a bare ValueError from `complete` (a traceback in the UI) and had
    already dropped `later_passes` and added the steps: a trace half read."""
    folder = saved(tmp_path, three_passes([("decoder.hook_e0", np.zeros((0, 4), np.float32), ("pos", "d_model")),
                                           ("decoder.hook_e1", np.zeros((0, 4), np.float32), ("pos", "d_model"))]))
    for name in ("trace-0.meta.json", "trace-0.safetensors"):
        replace_once(folder / name, b'"decoder.hook_e1@3"', b'"decoder.hook_e0@3"')
    refused_alike(folder)


def test_cached_rows_without_a_position_axis_in_a_later_pass_are_refused_as_a_full_read_refuses_them(tmp_path):
    """A later step that says it has cached rows but has no axis to put them on: the full read's
    Trace refuses it; the first screen's `complete` raised a bare ValueError, half read."""
    folder = saved(tmp_path, three_passes([("decoder.hook_x", np.zeros(4, np.float32), ("d_model",))]))
    replace_once(folder / "trace-0.meta.json", b'"id":"decoder.hook_x@3",', b'"id":"decoder.hook_x@3","cached":1,')
    refused_alike(folder)


def test_a_later_pass_that_breaks_the_trace_s_consistency_is_refused_the_same_way_twice(tmp_path):
    """The last pass's residual has its axes swapped (d_model 1, not 4): refused by the consistency
    check that runs after the whole header is checked. The header's bytes were let go by then, so
    asking again said 'the safetensors header is not valid JSON'."""
    folder = saved(tmp_path, three_passes())
    replace_once(folder / "trace-0.meta.json", b'["pos","d_model"]', b'["d_model","pos"]', last=True)
    refused_alike(folder)


def test_the_first_screen_never_keeps_stats_the_full_read_does_not_read(tmp_path):
    """The steps given twice (a second `steps` key after the first list): the full read takes the
    second list, whose first step carries saved stats; the first screen cut the first list and
    kept its own (none, worked out from the tensor) even once complete. A first pass that reads
    differently on its own is refused, as for its other metadata."""
    folder = saved(tmp_path, three_passes())
    meta = folder / "trace-0.meta.json"
    raw = meta.read_bytes()
    steps = orjson.loads(raw)["trace"]["steps"]
    steps[0]["stats"] = {"min": -99.0, "max": 99.0, "mean": 42.0, "std": 7.0, "nonfinite": 0}
    meta.write_bytes(raw[:-len(b"]}}")] + b'],"steps":' + orjson.dumps(steps) + b"}}")
    full = load_session(folder).traces[0]
    assert full.steps[0].stats["mean"] == 42.0  # the full read shows the second list's stats
    lazy = load_session(folder, first_screen=True).traces[0]
    assert lazy.later_passes
    with pytest.raises(DamagedFile, match="read differently on their own"):
        lazy.complete()


@pytest.fixture(scope="module")
def damaged_decode(tmp_path_factory):
    """A KV-cached decode whose last step's metadata no longer matches its tensor: its first passes
    are sound, the full read refuses it."""
    from tracer.capture.run import generate
    from tracer.nn.loading import load_model

    trace = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=4, traced=True).trace
    root = tmp_path_factory.mktemp("sessions")
    SessionStore(root).save("long", [trace])
    folder = root / "long"
    meta = folder / "trace-0.meta.json"
    document = orjson.loads(meta.read_bytes())
    last = document["trace"]["steps"][-1]
    last["shape"] = last["shape"] + [1]
    meta.write_bytes(orjson.dumps(document))
    with pytest.raises(DamagedFile) as full:
        load_session(folder)
    return folder, str(full.value)


@pytest.mark.parametrize("key", ["t", "n"])
async def test_a_key_pressed_as_the_later_passes_are_read_ends_the_ui_with_their_error(damaged_decode, key):
    """A key typed while the UI starts (queued before, or while, `on_ready` reads the later passes)
    that needs a later step: the UI closes with the load error (the CLI's `Error:` line, exit 1).
    It ran the key's action on the trace anyway, which raised the DamagedFile out of the action:
    an unhandled exception, Textual's traceback on the terminal."""
    folder, message = damaged_decode
    session = load_session(folder, first_screen=True)

    class TypedAhead(TracerApp):
        CSS_PATH = str(Path(__file__).parents[1] / "tracer" / "tui" / "app.tcss")

        def on_mount(self) -> None:
            if key == "n":  # at the first pass's last step: `n` needs the next pass
                self.viewer.step_id = self.viewer.traces[0].loaded_steps[-1].id
            self.post_message(events.Key(key, key))

    app = TypedAhead(session.traces, state=session.state)
    async with app.run_test(size=(100, 30)) as pilot:  # re-raises what the app did not handle
        await pilot.pause()
    assert app.return_code == 1 and str(app.load_error) == message


def test_an_outline_built_before_the_later_passes_are_read_keeps_them(tmp_path):
    """build_outline on a trace with later passes, its root first opened once they are read: the
    root's steps are the first passes' (taken when it was built), and the folded later passes were
    looked up when it opened, by then none: the outline lost every later pass. (The UI opens the
    root as it builds it, so only a caller of tracer.tui.view.outline meets this.)"""
    from tracer.tui.view.outline import build_outline

    folder = saved(tmp_path, three_passes())
    full = build_outline(load_session(folder).traces[0])
    trace = load_session(folder, first_screen=True).traces[0]
    outline = build_outline(trace)
    trace.complete()
    assert [node.label for node in outline.children] == [node.label for node in full.children] == \
        ["Step 1", "Step 2", "Step 3"]
    assert [leaf.step_id for node in outline.children for leaf in node.walk() if leaf.step_id] == trace.ids


@pytest.mark.parametrize("damaged", [True, False], ids=["damaged", "sound"])
async def test_a_click_before_the_later_passes_are_read_waits_for_them(damaged_decode, tmp_path, damaged):
    """Input that comes before on_ready (a click as the first frame appears, here a mouse press
    queued at mount) has the later passes read first: a damaged one closes the UI with its error
    (exit 1), not a traceback from the handler that met it; a sound one is read, and the UI goes on."""
    folder, message = damaged_decode
    if not damaged:
        from tracer.capture.run import generate
        from tracer.nn.loading import load_model

        SessionStore(tmp_path).save("long", [generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=4,
                                                      traced=True).trace])
        folder = tmp_path / "long"
    session = load_session(folder, first_screen=True)
    seen = {}

    class ClickedAhead(TracerApp):
        CSS_PATH = str(Path(__file__).parents[1] / "tracer" / "tui" / "app.tcss")

        def on_mount(self) -> None:
            self.post_message(events.MouseDown(None, 5, 20, 0, 0, 1, False, False, False, screen_x=5, screen_y=20))

        def on_ready(self) -> None:
            seen["pending at ready"] = [len(t.later_passes) for t in self.viewer.traces]

    app = ClickedAhead(session.traces, state=session.state)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
    if damaged:
        assert app.return_code == 1 and str(app.load_error) == message
    else:
        assert app.load_error is None and not session.traces[0].later_passes
        assert seen.get("pending at ready", [0]) == [0]  # read by the click, before on_ready
