"""Files that are not regular files, and a session replaced while it is read (issue 19, classes 2, 5, 6).

Every reader opens through tracer.reading: a FIFO would block forever and /dev/zero never
ends, so each case runs under a deadline and must end in one `Error:` line, exit 1.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tracer
from tracer.cli import cli
from tracer.errors import DamagedFile
from tracer.trace.export import write_json
from tracer.reading import read_regular
from tracer.trace.session import SessionStore

from session_helpers import synthetic_trace

STEP = "encoder.0.attn.hook_pattern"


def within(seconds: float, *args) -> object:
    """Run the CLI in a thread; a reader that blocks fails the test instead of hanging it."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=CliRunner().invoke(cli, [str(a) for a in args])), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"tracer {' '.join(map(str, args))} still running after {seconds} s"
    result = box["result"]
    assert "Traceback" not in result.output, result.output
    return result


def refused(result, *words) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def session(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "sessions"))
    return SessionStore().save("victim", [synthetic_trace()])


def fifo_instead_of(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("file", ["session.json", "trace-0.meta.json", "trace-0.safetensors"])
@pytest.mark.parametrize("command", ["replay", "export"])
def test_a_fifo_in_a_session_is_refused_not_waited_on(session, tmp_path, file, command):
    fifo_instead_of(session / file)
    extra = ["--no-tui"] if command == "replay" else ["-o", tmp_path / "out.json"]
    refused(within(10, command, session, *extra), file, "is a FIFO, not a regular file")


def test_sessions_lists_a_session_whose_manifest_is_a_fifo_as_damaged(session):
    fifo_instead_of(session / "session.json")
    result = within(10, "sessions")
    assert result.exit_code == 0 and "damaged" in result.output and "FIFO" in result.output, result.output


def test_a_fifo_as_json_export_is_refused(tmp_path):
    os.mkfifo(tmp_path / "trace.json")
    refused(within(10, "replay", tmp_path / "trace.json", "--no-tui"), "trace.json", "FIFO")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_export_is_refused_without_reading_it(tmp_path):
    refused(within(10, "replay", "/dev/zero", "--no-tui"), "/dev/zero", "character device")
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # a JSON export may be a link; where it leads is checked
    refused(within(10, "replay", tmp_path / "zero.json", "--no-tui"), "character device")


def test_a_folder_as_export_or_session_file(session, tmp_path):
    (session / "trace-0.meta.json").unlink()
    (session / "trace-0.meta.json").mkdir()
    refused(within(10, "replay", session, "--no-tui"), "trace-0.meta.json", "is a folder")


def test_the_reader_stops_at_its_limit_even_if_the_file_grows(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(b"x" * 100)
    assert read_regular(path, 100) == b"x" * 100
    with pytest.raises(DamagedFile, match="too large"):
        read_regular(path, 99)


# -- class 5: a session replaced under a lazy reader ---------------------------------------------
def test_a_loaded_session_keeps_reading_its_own_tensors_after_a_forced_replace(session):
    trace = tracer.load("victim")
    first = trace.step(STEP)
    SessionStore().save("victim", [synthetic_trace(seed=7)], force=True)
    replaced = tracer.load("victim")[STEP]
    expected = synthetic_trace()[STEP]
    assert not np.array_equal(replaced, expected)  # the new session really holds other numbers
    assert np.array_equal(first.data, expected)     # the old reader still reads the old file


def test_a_loaded_session_keeps_reading_after_the_session_is_removed(session):
    trace = tracer.load("victim")
    SessionStore().remove("victim")
    assert np.array_equal(trace[STEP], synthetic_trace()[STEP])


def test_a_tensor_file_cut_short_after_opening_is_one_line(session):
    trace = tracer.load("victim")
    os.truncate(session / "trace-0.safetensors", 200)
    last = trace.steps[-1]
    with pytest.raises(DamagedFile, match="cut short"):
        last.data


# -- class 6: an export never overwrites a session ------------------------------------------------
@pytest.mark.parametrize("target", ["trace-0.safetensors", "session.json", "new.json"])
def test_export_into_a_session_folder_is_refused(session, target):
    before = {p.name: p.read_bytes() for p in session.iterdir()}
    result = within(30, "export", "victim", "-o", session / target)
    assert result.exit_code == 2 and "inside session" in result.output, result.output
    assert {p.name: p.read_bytes() for p in session.iterdir()} == before
    assert tracer.load("victim")[STEP].shape == (2, 3, 3)


def test_export_through_a_link_into_a_session_folder_is_refused(session, tmp_path):
    (tmp_path / "link").symlink_to(session)
    result = within(30, "export", "victim", "-o", tmp_path / "link" / "trace-0.safetensors")
    assert result.exit_code == 2 and "inside session" in result.output, result.output
    assert tracer.load("victim")[STEP].shape == (2, 3, 3)


def test_run_export_into_a_session_folder_is_refused(session, seq2seq_model):
    result = within(60, "run", "ich bin", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1,
                    "--export", session / "trace-0.meta.json")
    assert result.exit_code == 2 and "inside session" in result.output, result.output


def test_export_next_to_sessions_still_works(session, tmp_path):
    result = within(30, "export", "victim", "-o", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    write_json(tracer.load(tmp_path / "out.json"), tmp_path / "again.json")
