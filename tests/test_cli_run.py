"""`tracer run --no-tui`, `--export`, `models`, `--version`, and bad input on the run path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tracer.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_run_no_tui_prints_tokens_output_and_each_steps_top_k(seq2seq_model):
    result = run("run", "ich bin piyush", "--model", str(seq2seq_model), "--no-tui", "--max-new-tokens", "3", "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "ich | bin | piyush" in result.output
    assert "decoding steps" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines] == ["1", "2", "3"]


def test_export_is_plain_json_in_design_layout(seq2seq_model, tmp_path):
    out = tmp_path / "out.json"
    result = run("run", "ich bin piyush", "--model", str(seq2seq_model), "--no-tui", "--max-new-tokens", "2", "--export", str(out),
                 "--no-kv-cache")  # every decoding step whole (a KV-cached step's layout: tests/test_kv_cache.py)
    assert result.exit_code == 0, result.output
    with open(out) as handle:
        doc = json.load(handle)
    assert [k for k in doc] == ["format", "version", "tracer_version", "created", "model", "device", "input", "output",
                                "capture", "steps"]
    assert doc["format"] == "tracer-trace" and doc["version"] == 2 and doc["device"] == "cpu"
    assert doc["capture"] == {"kv_cache": False}
    assert doc["model"]["arch"] == "encoder-decoder" and doc["model"]["config"]["d_model"] == 32
    assert doc["input"] == {"text": "ich bin piyush", "tokens": ["ich", "bin", "piyush"], "ids": doc["steps"][0]["data"]}
    first = doc["steps"][0]
    assert list(first) == ["index", "id", "name", "kind", "stack", "layer", "decode_step", "shape", "dtype", "axes", "labels", "stats", "data"]
    assert first["id"] == "encoder.hook_tokens" and first["kind"] == "tokens" and first["labels"] == {"pos": ["ich", "bin", "piyush"]}
    assert [s["index"] for s in doc["steps"]] == list(range(len(doc["steps"])))
    scores = next(s for s in doc["steps"] if s["id"] == "decoder.0.attn.hook_attn_scores@2")
    assert scores["decode_step"] == 2 and scores["layer"] == 0 and scores["stack"] == "decoder"
    # masked (−∞) scores are null and counted; the query at position 0 sees only key 0
    assert scores["stats"]["nonfinite"] == 4 and scores["null_as"] == "-inf"
    assert all(row[0][1] is None for row in scores["data"])
    probs = next(s for s in doc["steps"] if s["id"] == "decoder.hook_probs@1")
    assert probs["chosen"]["id"] == probs["top_k"][0]["id"] and abs(sum(probs["data"]) - 1) < 1e-4


def test_version_and_models(seq2seq_model, monkeypatch):
    assert run("--version").output.strip() == "tracer, version 0.1.0"
    monkeypatch.setenv("TRACER_MODELS_DIR", str(seq2seq_model.parent))
    result = run("models")
    assert result.exit_code == 0 and seq2seq_model.name in result.output and "encoder-decoder" in result.output


def test_no_model_installed_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr("tracer.nn.catalog.models_dirs", lambda: [tmp_path])
    result = run("run", "ich bin piyush", "--no-tui")
    assert result.exit_code == 2
    assert "no model installed" in result.output


@pytest.mark.parametrize("args,message", [
    (["", "--no-tui"], "the text is empty"),
    (["   \t\n", "--no-tui"], "the text is empty"),
    (["wort " * 60, "--no-tui"], "positions"),
    (["ich bin piyush", "--no-tui", "--top-k", "0"], "--top-k must be at least 1"),
    (["ich bin piyush", "--no-tui", "--top-k", "-3"], "--top-k must be at least 1"),
    (["ich bin piyush", "--no-tui", "--top-k", "100000"], "vocabulary"),
    (["ich bin piyush", "--no-tui", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["ich bin piyush", "--no-tui", "--max-new-tokens", "100000"], "positions left"),
    (["ich bin piyush", "--no-tui", "--device", "tpu"], "choose auto, cpu"),
])
def test_bad_run_input_is_one_line_exit_2(seq2seq_model, args, message):
    result = run("run", args[0], "--model", str(seq2seq_model), *args[1:])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_model_folders(tmp_path, seq2seq_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((seq2seq_model / "config.json").read_text())
    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file", "is a file"),
        (tmp_path / "empty", "lacks config.json, model.safetensors, tokenizer.json"),
        (partial, "lacks model.safetensors, tokenizer.json"),
    ]
    for folder, message in cases:
        result = run("run", "ich bin piyush", "--model", str(folder), "--no-tui")
        assert result.exit_code == 2, (folder, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_unknown_model_name_lists_known_ones(seq2seq_model, monkeypatch):
    monkeypatch.setenv("TRACER_MODELS_DIR", str(seq2seq_model.parent))
    result = run("run", "ich bin piyush", "--model", "no-such-model", "--no-tui")
    assert result.exit_code == 2
    assert "unknown model 'no-such-model'" in result.output and seq2seq_model.name in result.output


def test_weights_that_do_not_fit_the_config(tmp_path, seq2seq_model):
    import shutil

    folder = tmp_path / "wrong"
    shutil.copytree(seq2seq_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["d_model"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    result = run("run", "ich bin piyush", "--model", str(folder), "--no-tui")
    assert result.exit_code == 2 and "do not fit its config.json" in result.output
    (folder / "config.json").write_text("{not json")
    result = run("run", "ich bin piyush", "--model", str(folder), "--no-tui")
    assert result.exit_code == 2 and "not valid JSON" in result.output


@pytest.mark.parametrize("text", ["ich bin 😀🚀", "我是 piyush", "ich\x00bin\x07 piyush", "مرحبا بالعالم", "[bold]ich[/bold] \x1b[31mbin"])
def test_any_unicode_is_tokenized_and_traced(seq2seq_model, tmp_path, text):
    out = tmp_path / "t.json"
    result = run("run", text, "--model", str(seq2seq_model), "--no-tui", "--max-new-tokens", "2", "--export", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["input"]["text"] == text
    assert len(doc["input"]["tokens"]) == len(doc["steps"][0]["data"]) > 0
    if "😀" in text:
        assert "<unk>" in doc["input"]["tokens"]          # unknown pieces are shown as such
    if "[bold]" in text:
        assert "[bold]ich[/bold]" in result.output       # shown literally, not as markup


def test_python_m_tracer_runs(seq2seq_model):
    result = subprocess.run([sys.executable, "-m", "tracer", "run", "ich bin piyush", "--model", str(seq2seq_model),
                             "--no-tui", "--max-new-tokens", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ich | bin | piyush" in result.stdout


def without_a_terminal(*args, timeout=60):
    """`python -m tracer ARGS < /dev/null > pipe`, as `tracer run TEXT < /dev/null > out.txt` is."""
    return subprocess.run([sys.executable, "-m", "tracer", *map(str, args)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_run_without_a_terminal_prints_the_summary_instead_of_starting_the_ui(seq2seq_model):
    """It started the UI anyway: escape codes into the file, and no keys to ever quit it."""
    done = without_a_terminal("run", "ich bin piyush", "--model", seq2seq_model, "--max-new-tokens", "2")
    assert done.returncode == 0, done.stderr
    assert "ich | bin | piyush" in done.stdout and "decoding steps" in done.stdout
    assert "\x1b[?1049h" not in done.stdout  # no alternate screen: the UI never started
    assert done.stderr.strip().splitlines() == [
        "stdin and stdout are not a terminal: printing the summary (as --no-tui) instead of opening the UI"
    ]


def test_replay_without_a_terminal_prints_the_summary_too(seq2seq_trace, tmp_path):
    from tracer.trace.session import SessionStore

    SessionStore(tmp_path / "s").save("piyush", [seq2seq_trace])
    done = without_a_terminal("replay", "piyush", "--play", "--sessions-dir", tmp_path / "s")
    assert done.returncode == 0, done.stderr
    assert "ich | bin | piyush" in done.stdout and "\x1b[?1049h" not in done.stdout
    assert "not a terminal: printing the summary" in done.stderr
