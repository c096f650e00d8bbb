"""Streamed saves (`tracer run --save`): each pass's tensors go into the session as they are recorded,
the session on disk is the one a regular save writes, the run holds no tensor of an earlier pass, and a
writer killed (SIGKILL) or interrupted (Ctrl-C) at any point leaves the previous session byte-identical
and nothing half-written listed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from tracer.capture.run import trace_text
from tracer.capture.select import TapFilter
from tracer.cli import cli
from tracer.errors import TracerError
from tracer.nn.loading import load_model
from tracer.trace import tensor_file
from tracer.trace.check import check_trace
from tracer.trace.load import read_json
from tracer.trace.session import SessionStore
from tracer.trace.session_writer import SessionWriter

from session_helpers import assert_same_steps, model_folder

FILTER = TapFilter.parse(("*.attn.hook_pattern", "*.hook_resid_post", "*hook_z"), "1", "1,3-4")


def streamed(store, name, loaded, text, force=False, **options):
    """`text` traced with every pass written into session `name` as it is recorded; the trace, and
    after each pass was written, how many of the steps recorded so far still held an array."""
    recorded, held = [], []
    with SessionWriter(store, name, force) as writer:
        def sink(steps):
            writer.add(steps)
            recorded.extend(steps)
            held.append(sum(1 for step in recorded if step._array is not None or step._rows is not None))
        trace = trace_text(loaded, text, sink=sink, **options)
        writer.commit(trace)
    return trace, held


def without_dates(document: dict) -> dict:
    """A session file's JSON without what says when it was written (a second run's clock moved on)."""
    document = json.loads(json.dumps(document))
    for key in ("created", "updated"):
        document.pop(key, None)
    for entry in document.get("traces", []):
        entry.pop("created", None)
    document.get("trace", {}).pop("created", None)
    return document


def read(path: Path) -> dict:
    return orjson.loads(path.read_bytes())


@pytest.mark.parametrize("name,text", [("de-en-tiny", "ich bin piyush"), ("en-gpt-tiny", "the cat drank the"),
                                       ("en-bert-tiny", "the cat drank the [MASK]")])
@pytest.mark.parametrize("kv_cache", [True, False], ids=["kv", "no-kv"])
@pytest.mark.parametrize("select", [None, FILTER], ids=["all", "filtered"])
def test_a_streamed_session_is_the_one_a_regular_save_writes(tmp_path, name, text, kv_cache, select):
    loaded = load_model(name)
    options = dict(max_new_tokens=5, lens=True, kv_cache=kv_cache, select=select)
    store = SessionStore(tmp_path)
    store.save("regular", [trace_text(loaded, text, **options)])
    trace, held = streamed(store, "streamed", loaded, text, **options)

    regular, stream = tmp_path / "regular", tmp_path / "streamed"
    assert sorted(p.name for p in stream.iterdir()) == sorted(p.name for p in regular.iterdir())
    # the tensors byte for byte (header and data), the metadata but for the dates
    assert (stream / "trace-0.safetensors").read_bytes() == (regular / "trace-0.safetensors").read_bytes()
    assert without_dates(read(stream / "trace-0.meta.json")) == without_dates(read(regular / "trace-0.meta.json"))
    manifest = without_dates(read(stream / "session.json"))
    assert manifest.pop("name") == "streamed"
    assert without_dates(read(regular / "session.json")) | {"name": None} == manifest | {"name": None}
    saved = store.load("regular").traces[0]
    assert_same_steps(saved, store.load("streamed").traces[0])

    # the run held no recorded tensor once its pass was written, and the trace it returns reads its
    # tensors back from the session: the same as the saved ones, and still lazy once read
    assert held and set(held) == {0}
    assert all(step._array is None and step._rows is None for step in trace)
    assert_same_steps(saved, trace)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left


def numpy_bytes_alive() -> int:
    """The bytes of every numpy array alive now (tracemalloc's numpy domain: each recorded tensor
    is a numpy array; the step metadata and torch's own memory are not counted)."""
    domain = tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)
    return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces([domain]).statistics("filename"))


def test_the_memory_of_a_streamed_run_stays_near_one_pass(tmp_path):
    """Every tensor of a 12-token decode (no KV cache: each pass bigger than the one before) stays in
    memory without a sink; streamed, what is alive after each pass is written is less than one pass.
    (No lens: its arrays are torch's memory, which tracemalloc does not see; the test above shows
    that lens steps too hold no array once written.)"""
    loaded = load_model(str(model_folder("decoder")))
    options = dict(max_new_tokens=12, lens=False, kv_cache=False)
    text = "ich bin piyush"
    tracemalloc.start()
    try:
        kept = trace_text(loaded, text, **options)
        kept_alive = numpy_bytes_alive()
        trace_bytes = sum(step.rows.nbytes for step in kept)
        del kept
        alive = []
        with SessionWriter(SessionStore(tmp_path), "s") as writer:
            def sink(steps):
                size = sum(step.rows.nbytes for step in steps)
                writer.add(steps)
                alive.append((numpy_bytes_alive(), size))
            trace = trace_text(loaded, text, sink=sink, **options)
            writer.commit(trace)
        after = numpy_bytes_alive()
    finally:
        tracemalloc.stop()
    assert kept_alive >= trace_bytes  # without a sink the run holds its whole trace
    assert len(alive) == 12
    largest = max(size for _, size in alive)
    assert largest < trace_bytes / 6
    assert all(held < size for held, size in alive), alive  # less than the pass just written
    assert after < largest


# -- before the run, and failures during it ------------------------------------------------------
def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_an_existing_session_is_refused_before_the_model_is_loaded(isolated_sessions, monkeypatch):
    folder = model_folder("encoder-decoder")
    assert invoke("run", "ich bin piyush", "--model", folder, "--max-new-tokens", "2", "--save", "taken",
                  "--no-tui").exit_code == 0
    before = snapshot(isolated_sessions / "taken")

    def no_run(*args, **kwargs):
        raise AssertionError("the model was loaded for a run whose session would be refused")
    monkeypatch.setattr("tracer.nn.loading.load_model", no_run)
    refused = invoke("run", "ich bin piyush", "--model", folder, "--save", "taken", "--no-tui")
    assert refused.exit_code == 1
    assert refused.output.strip() == f"Error: session 'taken' already exists in {isolated_sessions}; use --force to replace it"
    assert invoke("run", "ich bin piyush", "--model", folder, "--save", "bad/name", "--no-tui").exit_code == 2
    assert snapshot(isolated_sessions / "taken") == before
    assert sorted(p.name for p in isolated_sessions.iterdir()) == ["taken"]


def test_a_run_that_fails_or_only_estimates_leaves_no_work_folder(isolated_sessions):
    folder = model_folder("encoder-decoder")
    failed = invoke("run", "ich bin piyush", "--model", folder, "--max-new-tokens", "0", "--save", "s", "--no-tui")
    assert failed.exit_code == 2 and "--max-new-tokens must be at least 1" in failed.output
    assert invoke("run", "ich bin piyush", "--model", folder, "--estimate", "--save", "s").exit_code == 0
    assert not isolated_sessions.exists() or list(isolated_sessions.iterdir()) == []


def test_a_full_disk_mid_run_leaves_the_previous_session(tmp_path, monkeypatch):
    store = SessionStore(tmp_path)
    loaded = load_model(str(model_folder("encoder-decoder")))
    store.save("victim", [trace_text(loaded, "ich bin piyush", max_new_tokens=2)])
    before = snapshot(tmp_path / "victim")
    writes = []
    real_write = tensor_file._write_all

    def fills_up(out, data):
        writes.append(1)
        if len(writes) > 60:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(out, data)
    monkeypatch.setattr(tensor_file, "_write_all", fills_up)
    with pytest.raises(TracerError, match="^cannot save session 'victim': No space left on device$"):
        streamed(store, "victim", loaded, "ich bin piyush", force=True, max_new_tokens=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]
    assert snapshot(tmp_path / "victim") == before


def test_export_and_save_of_one_streamed_run_agree(isolated_sessions, tmp_path):
    out = tmp_path / "run.json"
    ran = invoke("run", "ich bin piyush", "--model", model_folder("encoder-decoder"), "--max-new-tokens", "3",
                 "--save", "both", "--export", out, "--no-tui")
    assert ran.exit_code == 0, ran.output
    saved = SessionStore().load("both").traces[0]
    assert_same_steps(read_json(out), saved)
    assert invoke("check", "both").exit_code == 0


def test_the_ui_opened_after_a_streamed_run_reads_the_saved_tensors(isolated_sessions, monkeypatch):
    opened = {}
    monkeypatch.setattr("tracer.tui.open_traces", lambda traces, **kw: opened.update(traces=traces, **kw))
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    ran = invoke("run", "the cat drank the", "--model", "en-gpt-tiny", "--max-new-tokens", "4", "--save", "cat")
    assert ran.exit_code == 0, ran.output
    trace = opened["traces"][0]
    assert opened["session_name"] == "cat"
    assert all(step._array is None and step._rows is None for step in trace)  # nothing of the run left in memory
    assert_same_steps(SessionStore().load("cat").traces[0], trace)
    assert check_trace(trace).ok


# -- killed and interrupted writers ---------------------------------------------------------------
WRITER = r"""
import sys, time
from tracer.trace import session as S, session_writer as W, tensor_file as F

mode, at = sys.argv[1], int(sys.argv[2])

def stop_here():
    print("MIDWAY", flush=True)
    time.sleep(120)

if mode == "pass":          # the first `at` passes written, the run going on
    real_add, passes = W.SessionWriter.add, []
    def add(self, steps):
        real_add(self, steps)
        passes.append(steps)
        if len(passes) == at:
            stop_here()
    W.SessionWriter.add = add
elif mode == "tensors":     # the run over, the session's tensor file half written
    real_write = F._write_all
    def write_all(out, data):
        if out.name.endswith(".safetensors"):
            real_write(out, bytes(data)[: len(data) // 2])
            stop_here()
        real_write(out, data)
    F._write_all = write_all
elif mode == "commit":      # every file written and fsynced, not yet renamed into place
    S.SessionStore._commit = lambda self, *a, **k: stop_here()
from tracer.cli import main
sys.argv = ["tracer", "run", "ich bin piyush", "--model", "de-en-tiny", "--max-new-tokens", "6", "--save", "victim",
            "--force", "--no-tui"]
main()
"""


def stop_writer(root: Path, mode: str, at: int, sig: int) -> subprocess.CompletedProcess:
    """Run `tracer run … --save victim --force` until the point `mode`/`at`, then send it `sig`."""
    env = dict(os.environ, TRACER_SESSIONS_DIR=str(root))
    child = subprocess.Popen([sys.executable, "-c", WRITER, mode, str(at)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = child.stdout.readline()
        assert line.strip() == "MIDWAY", f"writer ended early: {line!r} {child.stderr.read()[-2000:]}"
        os.kill(child.pid, sig)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a session folder by name, hashed."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def listed(root: Path) -> list[dict]:
    result = invoke("sessions", "--json", "--sessions-dir", root)
    assert result.exit_code == 0, result.output
    return [{"name": row["name"], "error": row["error"], "input": row["input"]} for row in json.loads(result.output)]


@pytest.fixture
def previous(tmp_path):
    """A sessions folder holding session `victim` (another input than the killed run's) and its files' hashes."""
    root = tmp_path / "sessions"
    ran = invoke("run", "du bist", "--model", "de-en-tiny", "--max-new-tokens", "2", "--save", "victim", "--no-tui",
                 "--sessions-dir", root)
    assert ran.exit_code == 0, ran.output
    return root, snapshot(root / "victim")


@pytest.mark.parametrize("mode,at", [("pass", 1), ("pass", 4), ("tensors", 0), ("commit", 0)],
                         ids=["after-the-encoder-pass", "mid-decode", "tensor-file", "before-the-rename"])
def test_sigkill_during_a_streamed_save_leaves_the_previous_session(previous, mode, at):
    root, before = previous
    done = stop_writer(root, mode, at, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    names = sorted(p.name for p in root.iterdir())
    assert [n for n in names if not n.startswith(".")] == ["victim"]
    assert any(n.startswith(".victim.tmp-") for n in names)  # the dead writer's work folder, hidden
    assert snapshot(root / "victim") == before

    assert listed(root) == [{"name": "victim", "error": None, "input": "du bist"}]
    assert sorted(p.name for p in root.iterdir()) == ["victim"]  # that use of the store tidied up
    assert snapshot(root / "victim") == before
    assert invoke("check", root / "victim").exit_code == 0


def test_sigkill_during_a_first_streamed_save_lists_nothing(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir()
    assert stop_writer(root, "pass", 3, signal.SIGKILL).returncode == -signal.SIGKILL
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    assert listed(root) == []
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("mode,at", [("pass", 4), ("commit", 0)], ids=["mid-decode", "before-the-rename"])
def test_ctrl_c_during_a_streamed_save(previous, mode, at):
    root, before = previous
    done = stop_writer(root, mode, at, signal.SIGINT)
    assert done.returncode == 130
    assert done.stderr.strip().splitlines()[-1] == "Interrupted."
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["victim"]  # its work folder deleted at once
    assert snapshot(root / "victim") == before


def test_a_streamed_run_that_ends_normally_replaces_the_session(previous):
    root, _ = previous
    created = read(root / "victim" / "session.json")["created"]
    ran = invoke("run", "ich bin piyush", "--model", "de-en-tiny", "--max-new-tokens", "3", "--save", "victim",
                 "--force", "--no-tui", "--sessions-dir", root)
    assert ran.exit_code == 0, ran.output
    assert sorted(p.name for p in root.iterdir()) == ["victim"]
    assert listed(root) == [{"name": "victim", "error": None, "input": "ich bin piyush"}]
    assert read(root / "victim" / "session.json")["created"] == created  # as a regular save: the session's first date
