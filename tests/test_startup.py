"""What the UI does to start quickly: the cycle collector paused until the first frame, one
BLAS thread for replay. (How quickly is measured by benchmarks/replay.py, not here.)"""

from __future__ import annotations

import gc
import os

import pytest
from click.testing import CliRunner

from tui_helpers import FIXTURE, make_app

from tracer.cli import cli
from tracer.collector import collector_paused


@pytest.fixture
def collector_on():
    """Each test starts with the collector on and leaves it on, nothing frozen."""
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_collector_paused_pauses_the_collector_and_restores_it(collector_on):
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("start-up failed")
    assert gc.isenabled()  # back on after a failure too


def test_collector_paused_leaves_a_collector_that_was_off_off(collector_on):
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


async def test_the_collector_is_back_on_once_the_first_frame_is_up(collector_on):
    with collector_paused():
        app = make_app()
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert gc.isenabled()  # the app turned it on: not left off for the whole session
            assert gc.get_freeze_count() > 0  # and what start-up built is kept out of collections
            await pilot.press("n")
            assert app.trace_screen.step_id == app.traces[0].steps[1].id


async def test_an_app_started_without_collector_paused_freezes_nothing(collector_on):
    gc.unfreeze()
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("4", "4")])
def test_replay_asks_for_one_blas_thread_unless_told_otherwise(monkeypatch, preset, expected):
    if preset is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", preset)
    result = CliRunner().invoke(cli, ["replay", str(FIXTURE), "--no-tui"])
    assert result.exit_code == 0, result.output
    assert "ich bin piyush" in result.output
    assert os.environ["OPENBLAS_NUM_THREADS"] == expected


# -- big traces open quickly: the outline and the metadata check ------------------------------------
def _eager_outline(trace):
    """The outline as it was built before it became lazy: every step put under the groups of its
    group_path, each group where its first step is (a reference for the lazy one)."""
    from tracer.tui.view.outline import chosen_tokens, group_path, leaf_label

    root: list = []
    groups: dict = {}
    chosen = chosen_tokens(trace)
    for step in trace.steps:
        children = root
        for key, label in group_path(step, trace, chosen):
            if key not in groups:
                groups[key] = (key, label, None, [])
                children.append(groups[key])
            children = groups[key][3]
        children.append((step.id, leaf_label(step, trace), step.id, []))
    return root


def _shape_of(nodes):
    return [(node.key, node.label, node.step_id, _shape_of(node.children)) for node in nodes]


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_the_outline_works_out_a_group_only_when_it_is_opened(arch, monkeypatch):
    from session_helpers import model_trace

    from tracer.tui.view import outline

    trace = model_trace(arch)
    labelled = []
    real = outline.group_path
    monkeypatch.setattr(outline, "group_path", lambda step, *a: labelled.append(step) or real(step, *a))
    root = outline.build_outline(trace)
    later = trace.steps[-1]
    path = root.path_to(later.id)  # what the first screen opens: the path to the step shown
    assert [node.key for node in path] == [key for key, _ in real(later, trace)] + [later.id]
    opened = {s.id for s in trace.steps if s.decode_step == later.decode_step}
    first_of_each = {t: next(s.id for s in trace.steps if s.decode_step == t) for t in trace.decode_steps}
    # labelled: the steps of the decoding step opened, one step of each other, and the encoder's
    assert {s.id for s in labelled} <= opened | set(first_of_each.values()) | {s.id for s in trace.steps if s.decode_step is None}
    assert len([s for s in labelled if s.decode_step not in (None, later.decode_step)]) == len(first_of_each) - 1
    # walked whole, it is the outline built eagerly, line for line
    assert _shape_of(root.children) == _eager_outline(trace)
    assert [n.step_id for n in root.walk() if n.step_id] == trace.ids


def test_a_hand_built_outline_still_finds_its_steps():
    from tracer.tui.view.outline import Node

    leaf = Node("a@1", "leaf", step_id="a@1")
    root = Node("root", "r", children=[Node("g", "group", children=[leaf])])
    assert [n.key for n in root.path_to("a@1")] == ["g", "a@1"]
    assert root.path_to("missing") is None


def _saved_meta(tmp_path, trace):
    import orjson

    from tracer.trace.session import SessionStore

    folder = SessionStore(tmp_path).save("s", [trace])
    return folder, orjson.loads((folder / "trace-0.meta.json").read_bytes())


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_the_one_pass_metadata_check_reads_the_steps_the_step_by_step_check_reads(arch, tmp_path):
    import copy

    from session_helpers import model_trace

    from tracer.trace import session

    def fail(message):
        raise AssertionError(message)

    _, document = _saved_meta(tmp_path, model_trace(arch))
    items, label_sets = document["trace"]["steps"], document["label_sets"]
    checked = session._checked_steps(copy.deepcopy(items), label_sets, fail)
    plain = session._plain_steps(items, label_sets, fail)
    assert plain is not None and len(plain) == len(checked) > 0
    for a, b in zip(checked, plain):
        assert (a.id, a.shape, a.dtype, a.axes, a.labels, a._stats, a.extra, a.cached) == \
               (b.id, b.shape, b.dtype, b.axes, b.labels, b._stats, b.extra, b.cached)
        assert (a.name, a.decode_step, a.train_step, a._parts) == (b.name, b.decode_step, b.train_step, b._parts)


def _damage(folder, document, change):
    import orjson

    change(document["trace"]["steps"])
    (folder / "trace-0.meta.json").write_bytes(orjson.dumps(document))


def _last_with(steps, key):
    return next(step for step in reversed(steps) if step.get(key))


@pytest.mark.parametrize("change, message", [
    # 2.0 == 2 and True == 1: as keys of what was already checked, they must not pass for the good values
    (lambda steps: _last_with(steps, "shape")["shape"].__setitem__(0, float(_last_with(steps, "shape")["shape"][0])),
     "has an invalid shape"),
    (lambda steps: _last_with(steps, "labels")["labels"].update(
        {axis: float(i) for axis, i in _last_with(steps, "labels")["labels"].items()}), "has invalid labels"),
    (lambda steps: _last_with(steps, "cached").update(cached=True), "cached must be a count of rows"),
    (lambda steps: steps[-1].update(index=len(steps)), "is out of order"),
    (lambda steps: steps[-1].update(id=steps[-1]["id"] + "x"), "invalid decoding step"),
])
def test_a_damaged_step_late_in_a_decode_is_refused_as_before(tmp_path, change, message):
    from session_helpers import model_trace

    from tracer.errors import DamagedFile
    from tracer.trace.session import load_session

    trace = model_trace("decoder")
    folder, document = _saved_meta(tmp_path, trace)
    _damage(folder, document, change)
    with pytest.raises(DamagedFile, match=message):
        load_session(folder)


@pytest.mark.parametrize("field, value, message", [
    ("shape", lambda shape: [float(shape[0])] + shape[1:] if shape else [1.0], "invalid shape|has shape"),
    ("data_offsets", lambda offsets: [float(offsets[0]), offsets[1]], "invalid data offsets"),
    ("data_offsets", lambda offsets: [offsets[0], offsets[1] + 4], "claims"),
])
def test_a_damaged_tensor_header_entry_late_in_a_decode_is_refused_as_before(tmp_path, field, value, message):
    import struct

    import orjson
    from session_helpers import model_trace

    from tracer.errors import DamagedFile
    from tracer.trace.session import load_session

    folder, _ = _saved_meta(tmp_path, model_trace("decoder"))
    path = folder / "trace-0.safetensors"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = orjson.loads(raw[8:8 + length])
    last = list(header)[-1]
    header[last][field] = value(header[last][field])
    new = orjson.dumps(header)
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + length:])
    with pytest.raises(DamagedFile, match=message):
        load_session(folder)


def test_the_cli_reads_the_training_recipes_only_for_tracer_train():
    import subprocess
    import sys

    probe = "import sys, tracer.cli; print('tracer.train.recipes' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
    from tracer.train.recipes import RECIPES

    result = CliRunner().invoke(cli, ["train", "no-such-model"])
    assert result.exit_code == 2
    assert all(repr(name) in result.output for name in RECIPES)  # the choices, named as before
