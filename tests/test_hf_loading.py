"""load_model's dispatch (tracer folders as before; Hugging Face folders through tracer.nn.convert),
dtype, and provenance in the trace header; end to end on folders saved by transformers."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from hf_files import gpt2_tokenizer, llama_tokenizer, save_tokenizer, write_hf_folder, write_json
from safetensors.torch import load_file, save_file
from session_helpers import run_without_torch

from tracer.capture.run import trace_text
from tracer.cli import cli
from tracer.errors import TracerError
from tracer.nn.config import ModelConfig
from tracer.nn.loading import load_model


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def sha256(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- dtype --------------------------------------------------------------------------------------


def test_a_bf16_checkpoint_loads_in_float32_by_default(tmp_path, gpt_model):
    folder = tmp_path / "bf16"
    shutil.copytree(gpt_model, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(folder / "model.safetensors"))
    loaded = load_model(folder)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert loaded.source["weights_dtype"] == "bfloat16"
    assert {p.dtype for p in load_model(folder, dtype="bfloat16").model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("option, recorded", [(None, "float32"), ("float32", "float32"), ("bfloat16", "bfloat16"),
                                              ("float16", "float16")])
def test_dtype_option_chooses_and_the_trace_records_it(tmp_path, gpt_model, option, recorded):
    out = tmp_path / "out.json"
    extra = ["--dtype", option] if option else []
    result = run("run", "the cat", "--model", gpt_model, "--no-tui", "--max-new-tokens", "1", "--export", out, *extra)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["model"]["dtype"] == recorded


def test_an_unknown_dtype_is_a_usage_error(gpt_model):
    result = run("run", "the cat", "--model", gpt_model, "--no-tui", "--dtype", "int8")
    assert result.exit_code == 2 and "int8" in result.output


# -- provenance ---------------------------------------------------------------------------------


def test_provenance_of_a_bundled_model_and_a_folder(gpt_model):
    bundled = load_model("en-gpt-tiny").source
    assert bundled["source"] == "bundled" and bundled["model_type"] == "tracer"
    assert bundled["digest"] == sha256(load_model("en-gpt-tiny").path / "model.safetensors")
    folder = load_model(str(gpt_model)).source
    assert (folder["source"], folder["path"]) == ("folder", str(gpt_model))
    assert folder["digest"] == sha256(gpt_model / "model.safetensors")


def test_provenance_and_tokenization_reach_the_export_and_survive_a_session(tmp_path, gpt_model, isolated_sessions):
    out = tmp_path / "out.json"
    result = run("run", "the cat", "--model", gpt_model, "--no-tui", "--max-new-tokens", "1", "--export", out,
                 "--save", "prov")
    assert result.exit_code == 0, result.output
    model = json.loads(out.read_text())["model"]
    assert model["source"]["source"] == "folder" and model["source"]["digest"] == sha256(gpt_model / "model.safetensors")
    assert model["tokenization"] == {"specials": "tracer", "bos": "<s>"}  # tracer's decoders prepend BOS themselves
    import tracer

    assert tracer.load(str(isolated_sessions / "prov")).model["source"] == model["source"]
    assert tracer.load(str(out)).model["tokenization"] == model["tokenization"]


# -- the Hugging Face path, up to and around the converter ----------------------------------------


def identity_converter(calls: list):
    """Stands in for tracer.nn.convert (built elsewhere) where these tests need a converter: the folder's
    config.json carries a tracer config under "tracer" and its weights are already tracer's."""
    module = ModuleType("tracer.nn.convert")
    module.SUPPORTED = {"tracer-test": "gpt2"}

    def convert(hf_config, weights, extras=None):
        calls.append((hf_config, weights, extras))
        return SimpleNamespace(cfg=ModelConfig.from_dict(dict(hf_config["tracer"])), state_dict=dict(weights),
                               notes={"model_type": hf_config["model_type"], "head": "lm"})

    module.convert = convert
    return module


@pytest.fixture
def hf_wrapped(tmp_path, make_model):
    """A Hugging Face-layout folder around tracer's own random decoder (vocabulary wide enough for a GPT-2 tokenizer)."""
    pytest.importorskip("transformers", reason="its tokenizer files are written by transformers (a test oracle)")
    source = make_model(arch="decoder", positional="learned", norm="pre", vocab_size=400, scale_embeddings=False)
    cfg = json.loads((source / "config.json").read_text())
    cfg.pop("name")  # a converter leaves the name unset: the folder names the model
    folder = write_hf_folder(tmp_path / "wrapped", {"model_type": "tracer-test", "tracer": cfg})
    shutil.copyfile(source / "model.safetensors", folder / "model.safetensors")
    save_tokenizer(gpt2_tokenizer(), folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    write_json(folder / "generation_config.json", {"eos_token_id": 0})
    return folder


def test_an_hf_folder_goes_through_the_converter(hf_wrapped, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "tracer.nn.convert", identity_converter(calls))
    loaded = load_model(hf_wrapped)
    (hf_config, weights, extras), = calls
    assert hf_config["model_type"] == "tracer-test"
    assert sorted(weights) == sorted(load_file(str(hf_wrapped / "model.safetensors")))
    assert extras["generation_config.json"] == {"eos_token_id": 0}
    trace = trace_text(loaded, "The capital of France is", max_new_tokens=2)
    source = trace.model["source"]
    assert (source["source"], source["model_type"], source["notes"]["head"]) == ("folder", "tracer-test", "lm")
    assert source["digest"] == sha256(hf_wrapped / "model.safetensors")
    assert trace.model["tokenization"]["specials"] == "post-processor" and trace.model["tokenization"]["prefix"] == []
    assert trace.input["ids"] == gpt2_tokenizer().encode("The capital of France is").ids  # no BOS of tracer's own
    assert trace.model["name"] == "wrapped"  # the folder's name, where the converter gives none


def test_chat_runs_the_folders_template_through_the_cli(hf_wrapped, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tracer.nn.convert", identity_converter([]))
    (hf_wrapped / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    out = tmp_path / "chat.json"
    result = run("run", "Hello", "--model", hf_wrapped, "--chat", "--no-tui", "--max-new-tokens", "1", "--export", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["input"]["text"] == "Hello" and doc["input"]["prompt"] == "<|user|>Hello\n<|assistant|>"
    assert doc["input"]["ids"] == gpt2_tokenizer().encode("<|user|>Hello\n<|assistant|>").ids
    assert doc["model"]["tokenization"]["specials"] == "chat-template"


def test_a_converted_state_dict_that_does_not_fit_is_one_line(hf_wrapped, monkeypatch):
    converter = identity_converter([])
    convert = converter.convert

    def convert_with_a_key_too_many(*args):
        converted = convert(*args)
        converted.state_dict["extra.w"] = torch.zeros(1)
        return converted

    converter.convert = convert_with_a_key_too_many
    monkeypatch.setitem(sys.modules, "tracer.nn.convert", converter)
    result = run("run", "the cat", "--model", hf_wrapped, "--no-tui")
    assert result.exit_code == 2 and "extra.w" in one_line(result)


def test_without_the_converters_an_hf_folder_is_one_line(hf_wrapped, monkeypatch):
    monkeypatch.setitem(sys.modules, "tracer.nn.convert", None)  # as if the package were absent
    with pytest.raises(TracerError, match="is a Hugging Face model \\(tracer-test\\), but this tracer has no converters"):
        load_model(hf_wrapped)


# -- end to end on folders transformers saved (need the converters) -------------------------------


def tiny_llama(folder, dtype=torch.float32):
    transformers = pytest.importorskip("transformers")
    tokenizer = llama_tokenizer()
    config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).to(dtype).save_pretrained(str(folder))
    save_tokenizer(tokenizer, folder, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return folder


def tiny_bert(folder, masked_lm=True):
    transformers = pytest.importorskip("transformers")
    from hf_files import bert_tokenizer

    tokenizer = bert_tokenizer()
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config) if masked_lm else transformers.BertModel(config, add_pooling_layer=False)
    model.save_pretrained(str(folder))
    save_tokenizer(tokenizer, folder, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                   mask_token="[MASK]")
    return folder


def saves_replays_without_torch_and_exports(tmp_path, sessions, name):
    out = tmp_path / f"{name}.json"
    args = [["replay", name, "--no-tui"], ["export", name, "-o", str(out)]]
    run_without_torch(args, sessions)
    return json.loads(out.read_text())


def test_a_tiny_llama_runs_end_to_end(tmp_path, isolated_sessions):
    folder = tiny_llama(tmp_path / "llama")
    result = run("run", "The capital of France is", "--model", folder, "--no-tui", "--max-new-tokens", "3", "--save", "llama")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "llama")
    import transformers

    expected = transformers.AutoTokenizer.from_pretrained(str(folder))("The capital of France is")["input_ids"]
    assert doc["input"]["ids"] == expected and doc["input"]["tokens"][0] == "<s>"
    assert doc["model"]["source"]["model_type"] == "llama" and doc["model"]["source"]["digest"] == sha256(folder / "model.safetensors")


def test_a_bf16_llama_loads_in_float32_unless_asked(tmp_path):
    folder = tiny_llama(tmp_path / "llama-bf16", torch.bfloat16)
    loaded = load_model(folder)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert loaded.source["weights_dtype"] == "bfloat16"
    assert {p.dtype for p in load_model(folder, dtype="bfloat16").model.parameters()} == {torch.bfloat16}


def test_a_tiny_bert_fills_the_mask_end_to_end(tmp_path, isolated_sessions):
    folder = tiny_bert(tmp_path / "bert")
    result = run("run", "the cat drank the [MASK]", "--model", folder, "--no-tui", "--save", "bert")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "bert")
    tokens = doc["input"]["tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[MASK]" in tokens


def test_a_sentence_transformers_folder_runs_end_to_end(tmp_path, isolated_sessions):
    folder = tiny_bert(tmp_path / "st", masked_lm=False)
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    (folder / "2_Normalize").mkdir()
    result = run("run", "the cat drank the milk", "--model", folder, "--no-tui", "--save", "st")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "st")
    assert doc["model"]["source"]["notes"].get("head") == "sentence"


def test_finetune_classifies_with_an_imported_bert_end_to_end(tmp_path, isolated_sessions):
    """Issue 17 on an imported checkpoint: a classification step on a tiny BertForMaskedLM folder
    (a new head on [CLS]); the loss goes down, the trace checks, saves, replays without torch, exports."""
    folder = tiny_bert(tmp_path / "bert")
    result = run("finetune", "the cat drank the milk", "--model", folder, "--label", "positive",
                 "--labels", "negative,positive", "--steps", "3", "--lr", "0.01", "--no-tui", "--save", "bert-ft")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "bert-ft")
    training = doc["output"]["training"]
    assert training["loss_after"] < training["losses"][0], training
    assert doc["input"]["tokens"][0] == "[CLS]" and doc["model"]["source"]["model_type"] == "bert"
    checked = run("check", "bert-ft")
    assert checked.exit_code == 0, checked.output
