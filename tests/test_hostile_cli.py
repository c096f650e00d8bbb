"""Strings from outside never reach the terminal raw; text and names; Ctrl-C at start-up (issue 19, classes 4, 8)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracer.cli import cli
from tracer.trace.session import SessionStore

from session_helpers import synthetic_trace

HOSTILE = "x\x1b]0;pwned\x07\x1b[31mred\x9b2J"   # OSC title, BEL, SGR, a C1 CSI


def run(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), result.output
    return result


def assert_inert(output: str) -> None:
    assert not any(ch in output for ch in "\x1b\x07\x9b\x00"), repr(output)


# -- class 4 --------------------------------------------------------------------------------------
def test_error_lines_that_echo_a_model_value_are_escaped(tmp_path):
    result = run("run", "ich bin", "--model", tmp_path / HOSTILE, "--no-tui")
    assert result.exit_code == 2 and "\\x1b]0;pwned\\x07" in result.output
    assert_inert(result.output)


def test_error_lines_that_echo_a_path_are_escaped(tmp_path):
    path = tmp_path / f"{HOSTILE}.json"
    path.write_text("{")
    result = run("replay", path, "--no-tui")
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert_inert(result.output)


def test_sessions_shows_folder_names_and_manifest_fields_escaped(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "s"))
    folder = SessionStore().save("good", [synthetic_trace(text=f"ich {HOSTILE}")])
    manifest = json.loads((folder / "session.json").read_text())
    manifest["traces"][0]["model"] = HOSTILE
    (folder / "session.json").write_text(json.dumps(manifest))
    damaged = tmp_path / "s" / f"bad{HOSTILE}"
    shutil.copytree(folder, damaged)
    (damaged / "trace-0.meta.json").write_text("{")
    (damaged / "session.json").write_text(json.dumps(dict(manifest, format=HOSTILE)))
    result = run("sessions")
    assert result.exit_code == 0 and "damaged" in result.output and "pwned" in result.output
    assert_inert(result.output)


def test_models_shows_folder_names_and_config_values_escaped(seq2seq_model, tmp_path):
    shutil.copytree(seq2seq_model, tmp_path / f"m{HOSTILE}")
    bad = tmp_path / "bad-config"
    shutil.copytree(seq2seq_model, bad)
    (bad / "config.json").write_text(json.dumps({"arch": HOSTILE}))
    result = run("models", env={"TRACER_MODELS_DIR": str(tmp_path)})
    assert result.exit_code == 0 and "pwned" in result.output and "unusable" in result.output
    assert_inert(result.output)


def test_check_shows_step_ids_from_the_file_escaped(tmp_path):
    from tracer.trace import Step, Trace
    from tracer.trace.export import write_json
    import numpy as np

    trace = synthetic_trace()
    steps = trace.steps + [Step.from_array(f"hook_{HOSTILE}", np.zeros(2, dtype=np.float32), ("dim0",))]
    write_json(Trace(steps, model=trace.model, device="cpu", input=trace.input, output=trace.output), tmp_path / "t.json")
    result = run("check", tmp_path / "t.json")
    assert "skipped" in result.output
    assert_inert(result.output)


# -- class 8 --------------------------------------------------------------------------------------
def test_text_that_is_not_utf8_is_one_line(seq2seq_model):
    latin1 = b"gr\xfc\xdf dich".decode("utf-8", "surrogateescape")   # what Python makes of a Latin-1 terminal's bytes
    result = run("run", latin1, "--model", seq2seq_model, "--no-tui")
    assert result.exit_code == 2 and "TEXT is not valid UTF-8 (byte 0xfc at position 2)" in result.output


def test_text_that_is_not_utf8_in_a_real_process(seq2seq_model):
    done = subprocess.run([sys.executable, "-m", "tracer", "run", b"gr\xfc\xdf", "--model", str(seq2seq_model), "--no-tui"],
                          capture_output=True, timeout=120)
    assert done.returncode == 2 and b"not valid UTF-8" in done.stderr and b"Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["nl\n", "tab\tname", "esc\x1bname", "bell\x07", "\x00", "cr\r"])
def test_names_with_control_characters_are_refused(seq2seq_model, name):
    result = run("run", "ich bin", "--model", seq2seq_model, "--no-tui", "--save", name, "--max-new-tokens", 1)
    assert result.exit_code == 2 and "invalid session name" in result.output
    assert_inert(result.output)
    assert not (Path(os.environ["TRACER_SESSIONS_DIR"]) / name).exists()


def test_ctrl_c_in_the_first_milliseconds_is_exit_130_without_a_traceback(seq2seq_model):
    """SIGINT while click, tracer and torch are still loading: 130 and one line (or, in the few
    milliseconds before Python installs its own handler, death by the signal, silently). A signal
    that lands while Python itself still imports `site` is Python's to report, not tracer's."""
    outcomes = []
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
        process = subprocess.Popen([sys.executable, "-m", "tracer", "run", "ich bin", "--model", str(seq2seq_model),
                                    "--no-tui"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        if b"init_import_site" in err:  # still inside Python's own start-up, before any of tracer's code
            continue
        assert b"Traceback" not in err, (delay, err.decode(errors="replace"))
        assert process.returncode in (130, -signal.SIGINT), (delay, process.returncode, err)
        outcomes.append(process.returncode)
    assert outcomes.count(130) >= 3, outcomes
