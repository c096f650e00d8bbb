"""Every bad input gets a clear one-line answer and the right exit code; nothing is lost.

One case per row. Exit codes (DESIGN.md): 0 success, 1 runtime failure, 2 bad usage or input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from tracer.cli import cli


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# -- text -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,code,expected", [
    ("", 2, "the text is empty"),
    (" \t\n  ", 2, "the text is empty"),
    ("ich bin piyush " * 6700, 2, "positions"),                   # 100 500 characters
    ("😀🚀🎉", 0, "<unk>"),                                        # only emoji: unknown tokens, traced
    ("?!.,;:", 0, "output:"),                                      # only punctuation
    ("ich\x00 bin\x07 piyush\x1b", 0, "ich\\x00 bin\\x07 piyush\\x1b"),  # control characters shown escaped
    ("مرحبا بالعالم שלום", 0, "مرحبا بالعالم שלום"),               # right-to-left scripts
    ("[bold red]ich[/bold red] bin", 0, "[bold red]ich[/bold red] bin"),  # Rich markup shown literally
    ("\x1b[31mich\x1b[0m bin", 0, "\\x1b[31mich\\x1b[0m bin"),      # ANSI escapes never reach the terminal
])
def test_text(seq2seq_model, text, code, expected):
    result = invoke("run", text, "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 2)
    assert result.exit_code == code, result.output
    if code:
        assert expected in error_line(result)
    else:
        assert expected in result.output
        assert "\x1b" not in result.output and "\x00" not in result.output


# -- options ----------------------------------------------------------------------------------------
def test_unknown_model_lists_known_ones(seq2seq_model, monkeypatch):
    monkeypatch.setenv("TRACER_MODELS_DIR", str(seq2seq_model.parent))
    result = invoke("run", "ich bin piyush", "--model", "gpt-17", "--no-tui")
    assert result.exit_code == 2 and "unknown model 'gpt-17' (known: " in error_line(result)
    assert seq2seq_model.name in error_line(result)


@pytest.mark.parametrize("make,expected", [
    (lambda tmp, good: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "is a file"),
    (lambda tmp, good: (tmp / "empty").mkdir() or tmp / "empty", "lacks config.json"),
    (lambda tmp, good: copy_with(tmp, good, "config.json", "[1, 2"), "not valid JSON"),
    (lambda tmp, good: copy_with(tmp, good, "config.json", '{"arch": "lstm"}'), "arch must be one of"),
    (lambda tmp, good: copy_with(tmp, good, "config.json", '{"d_model": 30, "n_heads": 4}'), "not divisible"),
    (lambda tmp, good: copy_with(tmp, good, "config.json", '{"colour": "red"}'), "unknown field(s) colour"),
    (lambda tmp, good: copy_config_change(tmp, good, n_layers=3), "do not fit its config.json"),
    (lambda tmp, good: copy_with(tmp, good, "model.safetensors", "garbage"), "cannot read weights"),
    (lambda tmp, good: copy_with(tmp, good, "tokenizer.json", "{}"), "not a valid tokenizer.json"),
])
def test_model_folders(seq2seq_model, tmp_path, make, expected):
    folder = make(tmp_path, seq2seq_model)
    result = invoke("run", "ich bin piyush", "--model", folder, "--no-tui")
    assert result.exit_code == 2, result.output
    assert expected in error_line(result)


def copy_with(tmp, good, name, content):
    folder = tmp / "model"
    shutil.copytree(good, folder)
    (folder / name).write_text(content)
    return folder


def copy_config_change(tmp, good, **changes):
    config = json.loads((good / "config.json").read_text())
    config.update(changes)
    return copy_with(tmp, good, "config.json", json.dumps(config))


@pytest.mark.parametrize("device,expected", [
    ("cuda", "CUDA is not available"),
    ("cuda:0", "CUDA is not available"),
    ("mps", "MPS is not available"),
    ("gpu", "choose auto, cpu, cuda, cuda:N or mps"),
])
def test_devices_that_are_not_here(seq2seq_model, device, expected):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--device", device)
    assert result.exit_code == 2 and expected in error_line(result)


@pytest.mark.parametrize("option,value,expected", [
    ("--top-k", 0, "--top-k must be at least 1"),
    ("--top-k", -5, "--top-k must be at least 1"),
    ("--top-k", 10**12, "is more than the vocabulary"),
    ("--max-new-tokens", 0, "--max-new-tokens must be at least 1"),
    ("--max-new-tokens", -1, "--max-new-tokens must be at least 1"),
    ("--max-new-tokens", 10**12, "positions left"),
    ("--top-k", "many", "is not a valid integer"),
])
def test_numeric_options(seq2seq_model, option, value, expected):
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", option, value)
    assert result.exit_code == 2, result.output
    assert expected in result.output


# -- sessions ---------------------------------------------------------------------------------------
@pytest.fixture
def saved(seq2seq_model):
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 2, "--save", "first")
    assert result.exit_code == 0, result.output
    return "first"


def test_unknown_session_name(saved):
    for command in (["replay", "nope", "--no-tui"], ["export", "nope", "-o", "x.json"], ["check", "nope"]):
        result = invoke(*command)
        assert result.exit_code in (1, 2) and "no session or file named 'nope'" in error_line(result)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "/etc/passwd", "a\\b", ""])
def test_session_names_with_path_parts_are_refused(seq2seq_model, name, isolated_sessions):
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1, "--save", name)
    assert result.exit_code == 2 and "invalid session name" in error_line(result)
    assert not isolated_sessions.exists() or not any(isolated_sessions.iterdir())


def test_sessions_folder_that_cannot_be_written(seq2seq_model, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the sessions folder should be")
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1,
                    "--save", "x", "--sessions-dir", blocker / "sessions")
    assert result.exit_code == 1 and "Error: " in error_line(result)
    assert blocker.read_text().startswith("a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_sessions_folder(seq2seq_model, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1,
                    "--save", "x", "--sessions-dir", folder)
    assert result.exit_code == 1 and "Error: " in error_line(result)


def test_saving_over_an_existing_name_needs_force(seq2seq_model, saved):
    args = ["run", "du bist müde", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1, "--save", saved]
    result = invoke(*args)
    assert result.exit_code in (1, 2) and "already exists" in error_line(result) and "--force" in error_line(result)
    assert "ich bin piyush" in invoke("replay", saved, "--no-tui").output   # the old one is intact
    assert invoke(*args, "--force").exit_code == 0
    assert "du bist müde" in invoke("replay", saved, "--no-tui").output


def test_two_saves_of_the_same_name_racing(seq2seq_trace, isolated_sessions):
    from tracer.errors import TracerError
    from tracer.trace.session import SessionStore

    outcomes = []

    def save():
        try:
            SessionStore(isolated_sessions).save("race", [seq2seq_trace])
            outcomes.append("saved")
        except TracerError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=save) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("saved") == 1, outcomes
    assert all("already exists" in o for o in outcomes if o != "saved")
    assert [s.name for s in SessionStore(isolated_sessions).list()] == ["race"]
    assert SessionStore(isolated_sessions).load("race").traces[0].ids == seq2seq_trace.ids


# -- files ------------------------------------------------------------------------------------------
@pytest.fixture
def export(seq2seq_trace, tmp_path):
    from tracer.trace.export import write_json

    path = tmp_path / "good.json"
    write_json(seq2seq_trace, path)
    return json.loads(path.read_text())


def write_doc(tmp_path, doc) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d.update(format="pytorch"), "not a tracer trace"),
    (lambda d: d.update(version=3), "unsupported trace version 3"),
    (lambda d: d["steps"].insert(0, d["steps"].pop(5)), "out of order"),
    (lambda d: d["steps"][3]["shape"].__setitem__(1, 16), "metadata says"),
    (lambda d: d["steps"][3]["data"][0].__setitem__(0, "1.5"), "not numbers"),
    (lambda d: d["steps"][0].update(data=[1.5, True, None]), "not int64"),
    (lambda d: d["steps"][7].update(shape="big"), "invalid shape"),
    (lambda d: d.update(steps={}), "'steps' is missing or is not a list"),
])
def test_damaged_json_exports(export, tmp_path, mutate, expected):
    mutate(export)
    path = write_doc(tmp_path, export)
    for command in (["replay", path, "--no-tui"], ["check", path]):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert expected in error_line(result)


def test_truncated_and_invalid_json(export, tmp_path):
    raw = json.dumps(export)
    for content in (raw[: len(raw) // 3], "{\"format\": ", "\x00\xff garbage"):
        (tmp_path / "bad.json").write_text(content)
        result = invoke("replay", tmp_path / "bad.json", "--no-tui")
        assert result.exit_code == 1 and "not valid JSON" in error_line(result)


def test_a_one_gigabyte_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:
        handle.truncate(1024**3)   # sparse: no disk used
    result = invoke("replay", path, "--no-tui")
    assert result.exit_code == 1 and "too large to read as JSON" in error_line(result)


# -- Ctrl-C -----------------------------------------------------------------------------------------
def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("phase", ["tracer.capture.trace_text", "tracer.trace.tensor_file.StreamingTensorWriter.add",
                                   "tracer.trace.export.step_json", "tracer.trace.tensor_file.StreamingTensorWriter.finish"])
def test_ctrl_c_exits_130_and_leaves_no_partial_file(seq2seq_model, tmp_path, monkeypatch, isolated_sessions, phase):
    monkeypatch.setattr(phase, interrupt)
    out = tmp_path / "out.json"
    result = invoke("run", "ich bin piyush", "--model", seq2seq_model, "--no-tui", "--max-new-tokens", 1,
                    "--export", out, "--save", "s")
    assert result.exit_code == 130 and "Interrupted" in result.output
    if out.exists():   # interrupted after the export finished: the file is whole
        assert phase.endswith("finish") and json.loads(out.read_text())["format"] == "tracer-trace"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]
    assert not isolated_sessions.exists() or not [p for p in isolated_sessions.iterdir() if not p.name.startswith(".")]


def test_real_sigint_during_a_run(seq2seq_model, tmp_path):
    """A real SIGINT at a real process: status 130, a short message, no traceback, no partial file."""
    code = (
        "import sys, time, tracer.capture.run as r\n"
        "original = r.generate\n"
        "def slow(*a, **k):\n"
        "    print('tracing', flush=True); time.sleep(30)\n"
        "r.generate = slow\n"
        "from tracer.cli import main\n"
        "sys.argv = ['tracer', 'run', 'ich bin piyush', '--model', sys.argv[1], '--no-tui', '--export', sys.argv[2]]\n"
        "main()\n"
    )
    out = tmp_path / "o.json"
    proc = subprocess.Popen([sys.executable, "-c", code, str(seq2seq_model), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "tracing"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists()
