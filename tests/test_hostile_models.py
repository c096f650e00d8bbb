"""Model folders that would build absurd models (issue 19, class 3): one line, exit 2, nothing allocated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.config import RANGES, ModelConfig
from tracer.trace.session import SessionStore


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None))), result.output
    return result


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def folder_with(tmp_path: Path, model: Path, **changes) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes,words", [
    ({"d_model": 10**6}, "would need about"),
    ({"max_positions": 10**9}, "would need about"),
    ({"n_layers": 200000}, "n_layers must be in [1, 1,024]"),  # 9 GB at this width: under the memory limit, over the range
    ({"vocab_size": 2**40}, "would need about"),
    ({"layer_norm_eps": "abc"}, "layer_norm_eps must be a number"),
    ({"dropout": 5}, "dropout must be in [0.0, 1.0)"),
    ({"rotary_base": "x"}, "rotary_base must be a number"),
    ({"n_heads": True}, "n_heads must be an integer"),
    ({"d_ff": 2.0}, "d_ff must be an integer"),
    ({"scale_embeddings": "yes"}, "scale_embeddings must be true or false"),
    ({"pad_token": ["<pad>"]}, "pad_token must be a string"),
    ({"layer_norm_eps": 0}, "layer_norm_eps must be in (0.0"),
    ({"n_decoder_layers": -1}, "n_decoder_layers must be in"),
])
def test_absurd_or_mistyped_config_fields_are_one_line(seq2seq_model, tmp_path, changes, words):
    folder = folder_with(tmp_path, seq2seq_model, **changes)
    started = time.perf_counter()
    result = run("run", "ich bin", "--model", folder, "--no-tui")
    assert result.exit_code == 2 and words in error_line(result), result.output
    assert time.perf_counter() - started < 1.0  # refused from the config alone, before any tensor


def test_every_ranged_field_is_refused_past_either_end():
    for name, (low, high) in RANGES.items():
        if not hasattr(ModelConfig, name):
            continue
        for value in (low - 1, high * 4 + 1):
            with pytest.raises(BadInput, match=f"{name}|would need about"):
                ModelConfig.from_dict({name: value, **({"arch": "decoder"} if name == "n_decoder_layers" else {})})


def test_a_wide_model_is_refused_in_a_fresh_process_allocating_nothing(seq2seq_model, tmp_path):
    """d_model 10^6: the estimate is refused before torch allocates; the process stays under 500 MB."""
    folder = folder_with(tmp_path, seq2seq_model, d_model=10**6)
    # The child reports its own peak: VmHWM, the high-water mark of its own address space since
    # exec. (RUSAGE_CHILDREN is the largest of every child this test process waited for, and a
    # child's ru_maxrss also keeps the forked copy of this big pytest process from before exec.)
    code = ("import atexit, sys\n"
            "def peak():\n"
            "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
            "    sys.stderr.write(f'\\nPEAK_KB {hwm.split()[1]}\\n')\n"
            "atexit.register(peak)\n"
            f"sys.argv = ['tracer', 'run', 'ich bin', '--model', {str(folder)!r}, '--no-tui']\n"
            "from tracer.entry import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "would need about" in done.stderr and "GB" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    peak_mb = int(done.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024
    assert peak_mb < 500, peak_mb  # torch itself is ~260 MB; a 10^6-wide model would be hundreds of GB


def test_the_memory_limit_can_be_set(seq2seq_model, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_MAX_MODEL_BYTES", "1000")
    result = run("run", "ich bin", "--model", seq2seq_model, "--no-tui")
    assert result.exit_code == 2 and "TRACER_MAX_MODEL_BYTES" in error_line(result)


@pytest.mark.parametrize("content,words", [
    ("[" * 100000 + "]" * 100000, "config.json"),
    ('{"d_model": ' + "7" * 5001 + "}", "config.json"),
], ids=["nested 100000 deep", "a 5001-digit integer"])
def test_config_json_nested_too_deep_or_with_a_huge_integer(seq2seq_model, tmp_path, content, words):
    folder = folder_with(tmp_path, seq2seq_model)
    (folder / "config.json").write_text(content)
    result = run("run", "ich bin", "--model", folder, "--no-tui")
    assert result.exit_code == 2 and words in error_line(result)
    models = CliRunner().invoke(cli, ["models"], env={"TRACER_MODELS_DIR": str(tmp_path)})
    assert models.exit_code == 0 and "Traceback" not in models.output and "edited" in models.output


def tokenizer_with(folder: Path, edit) -> None:
    data = json.loads((folder / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))


def test_a_tokenizer_id_beyond_the_vocabulary_is_refused_at_load(seq2seq_model, tmp_path):
    folder = folder_with(tmp_path, seq2seq_model)
    tokenizer_with(folder, lambda d: d["model"]["vocab"].update({"ich": 5000}))
    result = run("run", "ich bin", "--model", folder, "--no-tui")
    assert result.exit_code == 2 and "outside the model's vocabulary" in error_line(result)


def test_a_pad_token_beyond_the_vocabulary_is_refused_at_load(seq2seq_model, tmp_path):
    folder = folder_with(tmp_path, seq2seq_model)
    def move_pad(data):
        data["model"]["vocab"]["<pad>"] = 5000
        next(t for t in data["added_tokens"] if t["content"] == "<pad>")["id"] = 5000
    tokenizer_with(folder, move_pad)
    result = run("run", "ich bin", "--model", folder, "--no-tui")
    assert result.exit_code == 2 and "outside the model's vocabulary" in error_line(result)


def test_a_tokenizer_that_fails_on_the_text_is_one_line(seq2seq_model, tmp_path, monkeypatch):
    from tracer.nn import tokenizer as tokenizer_module

    class Panicking:
        def encode(self, *args, **kwargs):
            raise type("PanicException", (BaseException,), {})("regex engine panicked")

    folder = folder_with(tmp_path, seq2seq_model)
    monkeypatch.setattr(tokenizer_module.TextTokenizer, "__init__", _wrap_init(tokenizer_module.TextTokenizer.__init__, Panicking))
    result = run("run", "ich bin", "--model", folder, "--no-tui")
    assert result.exit_code == 2 and "the tokenizer failed on this text (regex engine panicked)" in error_line(result)


def _wrap_init(init, replacement):
    def patched(self, tokenizer, cfg):
        init(self, tokenizer, cfg)
        self.tokenizer = replacement()
    return patched


def test_a_model_producing_nan_saves_a_session_its_reader_accepts(seq2seq_model, tmp_path):
    folder = folder_with(tmp_path, seq2seq_model)
    weights = load_file(str(folder / "model.safetensors"))
    for name, tensor in weights.items():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))
    save_file(weights, str(folder / "model.safetensors"))
    result = run("run", "ich bin", "--model", folder, "--no-tui", "--max-new-tokens", 2, "--save", "nan",
                 "--export", tmp_path / "nan.json")
    assert result.exit_code == 0, result.output
    session = SessionStore().load("nan")
    assert session.trace.predictions()
    for args in (["replay", "nan", "--no-tui"], ["check", "nan"], ["replay", tmp_path / "nan.json", "--no-tui"],
                 ["sessions"]):
        outcome = run(*args)
        assert outcome.exit_code in (0, 1) and "Error:" not in outcome.output, (args, outcome.output)
