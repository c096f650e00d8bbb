"""Reading a Hugging Face folder: safetensors (one file or sharded), no pickle, the digest, the extras."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from hf_files import gpt2_tokenizer, write_hf_folder, write_json
from safetensors.torch import save_file

from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.hf_folder import read_hf_folder
from tracer.nn.loading import locate_model

LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300}


def run(*args):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def sharded_folder(tmp_path, weight_map_text: str | None = None):
    """Two shards and an index, the way save_pretrained(max_shard_size=...) writes them."""
    folder = write_hf_folder(tmp_path / "sharded", LLAMA_CONFIG, gpt2_tokenizer())
    (folder / "model.safetensors").unlink()
    first = {"model.embed_tokens.weight": torch.arange(6.0).reshape(3, 2), "model.norm.weight": torch.ones(2)}
    second = {"lm_head.weight": torch.full((3, 2), 2.0)}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"))
    save_file(second, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {key: "model-00001-of-00002.safetensors" for key in first}
    weight_map |= {key: "model-00002-of-00002.safetensors" for key in second}
    text = weight_map_text or json.dumps({"metadata": {"total_size": 64}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(text)
    return folder, first | second


def test_a_sharded_folder_loads_every_weight_from_its_shard(tmp_path):
    folder, expected = sharded_folder(tmp_path)
    weights = read_hf_folder(folder).load_weights()
    assert sorted(weights) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value)


def test_a_missing_shard_is_one_line(tmp_path):
    folder, _ = sharded_folder(tmp_path)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BadInput, match="shard model-00002-of-00002.safetensors is missing"):
        read_hf_folder(folder)


def test_a_key_listed_twice_in_the_index_is_refused(tmp_path):
    # JSON itself allows a repeated key (the last one wins silently); the index must not
    text = ('{"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors", '
            '"model.norm.weight": "model-00001-of-00002.safetensors", '
            '"lm_head.weight": "model-00002-of-00002.safetensors", '
            '"lm_head.weight": "model-00001-of-00002.safetensors"}}')
    folder, _ = sharded_folder(tmp_path, text)
    with pytest.raises(BadInput, match="'lm_head.weight' is listed twice"):
        read_hf_folder(folder)


def test_a_shard_holding_a_key_the_index_puts_elsewhere_is_refused(tmp_path):
    folder, _ = sharded_folder(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BadInput, match="'model.norm.weight', which model.safetensors.index.json puts in model-00002"):
        read_hf_folder(folder).load_weights()


def test_an_index_key_absent_from_its_shard_is_refused(tmp_path):
    folder, _ = sharded_folder(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(BadInput, match="'model.layers.0.mlp.up_proj.weight' is not in model-00002"):
        read_hf_folder(folder).load_weights()


def test_a_shard_name_outside_the_folder_is_refused(tmp_path):
    folder, _ = sharded_folder(tmp_path)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(BadInput, match="not a safetensors file name in this folder"):
        read_hf_folder(folder)


def test_the_digest_is_the_files_sha256(tmp_path):
    folder = write_hf_folder(tmp_path / "one", LLAMA_CONFIG, gpt2_tokenizer(), {"w": torch.arange(4.0)})
    digest = read_hf_folder(folder).weights_digest()
    assert digest == "sha256:" + hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    save_file({"w": torch.arange(4.0) + 1}, str(folder / "model.safetensors"))
    assert read_hf_folder(folder).weights_digest() != digest  # one changed weight, another digest


def test_a_sharded_digest_covers_every_shard(tmp_path):
    folder, _ = sharded_folder(tmp_path)
    listing = "".join(f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
                      for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"))
    assert read_hf_folder(folder).weights_digest() == "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def test_extras_are_the_small_json_files_a_converter_needs(tmp_path):
    folder = write_hf_folder(tmp_path / "st", {"model_type": "bert"}, gpt2_tokenizer())
    write_json(folder / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    write_json(folder / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
    write_json(folder / "generation_config.json", {"eos_token_id": 2})
    read = read_hf_folder(folder)
    assert read.extras["1_Pooling/config.json"] == {"pooling_mode_mean_tokens": True}
    assert read.extras["modules.json"][0]["type"] == "sentence_transformers.models.Transformer"
    assert read.generation_config == {"eos_token_id": 2} and "generation_config.json" in read.extras
    assert "tokenizer.json" not in read.extras and "config.json" not in read.extras


def test_a_folder_without_tokenizer_json_is_one_line(tmp_path):
    folder = write_hf_folder(tmp_path / "notok", LLAMA_CONFIG)
    result = run("run", "hello", "--model", str(folder), "--no-tui")
    assert result.exit_code == 2 and "lacks tokenizer.json" in one_line_error(result)


def test_a_folder_without_weights_is_one_line(tmp_path):
    folder = write_hf_folder(tmp_path / "noweights", LLAMA_CONFIG, gpt2_tokenizer())
    (folder / "model.safetensors").unlink()
    result = run("run", "hello", "--model", str(folder), "--no-tui")
    assert result.exit_code == 2 and "lacks model.safetensors (or a sharded model.safetensors.index.json)" in one_line_error(result)


def test_pickle_only_folders_are_refused_without_opening_the_file(tmp_path):
    """pytorch_model.bin is a FIFO: opening it would block this command for ever. It answers at once."""
    folder = write_hf_folder(tmp_path / "bin", LLAMA_CONFIG, gpt2_tokenizer())
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "pytorch_model.bin")
    tracer_folder = tmp_path / "tracer-bin"  # not a Hugging Face config: still refused by name
    tracer_folder.mkdir()
    os.mkfifo(tracer_folder / "pytorch_model.bin")
    for target in (folder, tracer_folder):
        result = subprocess.run([sys.executable, "-m", "tracer.cli", "run", "hello", "--model", str(target), "--no-tui"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert "only pickle weights (pytorch_model.bin)" in lines[0] and "convert them to safetensors" in lines[0]


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors",
                                  "1_Pooling/config.json"])
def test_a_fifo_among_a_model_folders_files_is_refused_at_once(tmp_path, name):
    """The tokenizer and safetensors libraries would block on a FIFO for ever; it is refused by name first."""
    folder = write_hf_folder(tmp_path / "fifo", LLAMA_CONFIG, gpt2_tokenizer())
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    result = subprocess.run([sys.executable, "-m", "tracer.cli", "run", "hello", "--model", str(folder), "--no-tui"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"{folder / name}: is a FIFO, not a regular file" in lines[0]


def test_other_weight_formats_are_named(tmp_path):
    folder = write_hf_folder(tmp_path / "tf", LLAMA_CONFIG, gpt2_tokenizer())
    (folder / "model.safetensors").unlink()
    (folder / "tf_model.h5").write_bytes(b"")
    with pytest.raises(BadInput, match=r"no safetensors weights \(only tf_model.h5\)"):
        read_hf_folder(folder)


def test_tracer_folders_keep_their_own_checks(tmp_path, gpt_model):
    assert locate_model(gpt_model).model_type is None  # tracer's config.json has no model_type
    hf = write_hf_folder(tmp_path / "hf", LLAMA_CONFIG, gpt2_tokenizer())
    assert locate_model(hf).model_type == "llama" and locate_model(hf).kind == "folder"
