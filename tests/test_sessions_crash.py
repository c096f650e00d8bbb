"""Crash safety: a save killed (SIGKILL), interrupted (Ctrl-C) or out of disk at any point never
leaves a half-written session listed and never damages the session that was there."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.errors import TracerError
from tracer.trace import session as session_mod
from tracer.trace.session import SessionStore

from session_helpers import assert_same_steps, big_trace, synthetic_trace

TESTS = Path(__file__).resolve().parent
BIG_MB = 48

WRITER = r"""
import os, sys, time
sys.path.insert(0, TESTS)
from tracer.trace import session as S
from session_helpers import big_trace

mode, root = sys.argv[1], sys.argv[2]
trace = big_trace(BIG_MB)

def stop_here():
    print("MIDWAY", flush=True)
    time.sleep(120)

if mode == "tensors":       # midway through writing the tensor file
    step = trace.steps[BIG_MB // 2]
    array, step._array = step._array, None
    step._loader = lambda: (stop_here(), array)[1]
elif mode == "commit":      # everything written and fsynced, not yet renamed into place
    S.SessionStore._commit = lambda self, *a, **k: stop_here()
elif mode == "aside":       # no atomic exchange: the old session renamed aside, the new not yet in
    S._exchange = lambda a, b: False
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if ".old-" in str(dst):
            stop_here()
    os.rename = rename
elif mode == "swapped":     # after the swap, before the old session is deleted
    real_exchange = S._exchange
    def exchange(a, b):
        done = real_exchange(a, b)
        stop_here()
        return done
    S._exchange = exchange
S.SessionStore(root).save("victim", [trace], force=True)
print("DONE", flush=True)
"""


def kill_midway(root: Path, mode: str) -> None:
    code = WRITER.replace("TESTS", repr(str(TESTS))).replace("BIG_MB", str(BIG_MB))
    child = subprocess.Popen([sys.executable, "-c", code, mode, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "MIDWAY", f"writer ended early: {line!r}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("mode", ["tensors", "commit", "aside", "swapped"])
def test_killed_writer_leaves_the_previous_session_intact(tmp_path, mode):
    root = tmp_path / "sessions"
    store = SessionStore(root)
    old = synthetic_trace(0, "the previous session")
    store.save("victim", [old])

    kill_midway(root, mode)
    # straight after the kill, nothing half-written is visible: at most the intact old session
    assert visible(root) in (["victim"], [])
    assert any(p.name.startswith(".victim.") for p in root.iterdir())  # the dead writer's leftovers

    # any use of the store tidies up: the session is listed once, and opens intact
    assert [row.name for row in store.list()] == ["victim"]
    assert [row.error for row in store.list()] == [None]
    assert sorted(p.name for p in root.iterdir()) == ["victim"]
    trace = store.load("victim").traces[0]
    if mode == "swapped" and trace.input["text"] == "big":
        assert_same_steps(big_trace(BIG_MB), trace)  # the swap had completed: the new one, whole
    else:
        assert trace.input["text"] == "the previous session"
        assert_same_steps(old, trace)


def test_killed_first_save_lists_nothing(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir()
    kill_midway(root, "tensors")
    assert visible(root) == []
    assert SessionStore(root).list() == []
    assert list(root.iterdir()) == []


def test_ctrl_c_during_save(tmp_path):
    store = SessionStore(tmp_path / "sessions")
    old = synthetic_trace(0, "old")
    store.save("victim", [old])
    new = synthetic_trace(1, "new")
    step = new.steps[5]
    step._array = None
    step._loader = lambda: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        store.save("victim", [new], force=True)
    assert sorted(p.name for p in store.root.iterdir()) == ["victim"]
    assert_same_steps(old, store.load("victim").traces[0])


def test_disk_full_during_save(tmp_path, monkeypatch):
    store = SessionStore(tmp_path / "sessions")
    old = synthetic_trace(0, "old")
    store.save("victim", [old])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(session_mod, "_write_json", full)
    with pytest.raises(TracerError, match="cannot save session 'victim': No space left on device"):
        store.save("victim", [synthetic_trace(1, "new")], force=True)
    assert sorted(p.name for p in store.root.iterdir()) == ["victim"]
    assert_same_steps(old, store.load("victim").traces[0])


def test_leftovers_of_a_live_writer_are_not_touched(tmp_path):
    """Another process still writing (its pid alive) keeps its temp folder."""
    store = SessionStore(tmp_path / "sessions")
    store.save("victim", [synthetic_trace()])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = store.root / f".victim.tmp-{sleeper.pid}-abc123"
        busy.mkdir()
        dead = store.root / ".victim.tmp-999999999-abc123"
        dead.mkdir()
        assert [row.name for row in store.list()] == ["victim"]
        assert busy.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    store.list()
    assert not busy.exists()
