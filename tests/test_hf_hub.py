"""`--model ORG/NAME` through a fake Hugging Face hub cache; offline refusals; what a download asks for;
`tracer models` listing cached checkpoints. Nothing here touches the network."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from hf_files import fake_hub_cache, gpt2_tokenizer, write_hf_folder, write_json

from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn import hub
from tracer.nn.loading import load_model, locate_model

MAIN = "a" * 40
V1 = "b" * 40
LLAMA_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 300}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache, pointed at by HF_HUB_CACHE, with the hub switched off."""
    folder = tmp_path / "hub-cache"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the hub fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)


def hf_folder(tmp_path, name="src", config=LLAMA_CONFIG):
    return write_hf_folder(tmp_path / name, config, gpt2_tokenizer(), {"w": torch.arange(3.0)})


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_a_hub_name_resolves_to_the_snapshot_refs_main_names(tmp_path, cache, no_network):
    snapshot = fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    source = locate_model("org/tiny-llama")
    assert (source.kind, source.path, source.hub, source.revision, source.commit, source.model_type) == (
        "hub", snapshot, "org/tiny-llama", "main", MAIN, "llama")


def test_a_named_revision_and_a_commit_pick_their_own_snapshot(tmp_path, cache, no_network):
    fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    older = fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path, "old"), V1, refs=("v1",))
    by_tag = locate_model("org/tiny-llama@v1")
    assert (by_tag.path, by_tag.revision, by_tag.commit) == (older, "v1", V1)
    by_commit = locate_model(f"org/tiny-llama@{V1}")
    assert by_commit.path == older and by_commit.commit == V1


def test_a_revision_not_in_the_cache_is_one_line(tmp_path, cache, no_network):
    fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    with pytest.raises(BadInput, match=r"org/tiny-llama at revision 'v2' is not in the Hugging Face cache"):
        locate_model("org/tiny-llama@v2")


def test_offline_and_not_cached_is_one_line_exit_2(cache, no_network):
    result = run("run", "hello", "--model", "org/not-here", "--no-tui")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "org/not-here is not in the Hugging Face cache" in lines[0] and str(cache) in lines[0]
    assert "HF_HUB_OFFLINE is set" in lines[0]


def test_the_cache_is_found_where_huggingface_hub_looks(tmp_path, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    snapshot = fake_hub_cache(tmp_path / "hf-home" / "hub", "org/tiny-llama", hf_folder(tmp_path), MAIN)
    assert locate_model("org/tiny-llama").path == snapshot
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"


def test_a_local_folder_wins_over_a_hub_name(tmp_path, cache, monkeypatch, no_network):
    fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    local = hf_folder(tmp_path / "here", "tiny-llama")
    monkeypatch.chdir(tmp_path / "here" / "..")
    assert locate_model("here/tiny-llama").kind == "folder"
    assert locate_model("org/tiny-llama").kind == "hub" and local.exists()


def test_a_cached_org_less_name_resolves_and_an_unknown_one_keeps_its_message(tmp_path, cache, no_network):
    fake_hub_cache(cache, "gpt2", hf_folder(tmp_path), MAIN)
    assert locate_model("gpt2").kind == "hub"
    with pytest.raises(BadInput, match="unknown model 'gpt-17' \\(known: "):
        locate_model("gpt-17")


def test_a_hub_snapshot_records_its_provenance(tmp_path, cache, no_network, gpt_model):
    """A snapshot holding one of tracer's own folders loads without a converter: the hub fields reach the trace."""
    from tracer.capture.run import trace_text

    fake_hub_cache(cache, "org/tracer-gpt", gpt_model, MAIN)
    loaded = load_model("org/tracer-gpt")
    trace = trace_text(loaded, "the cat", max_new_tokens=1)
    source = trace.model["source"]
    assert (source["source"], source["hub"], source["revision"], source["commit"]) == ("hub", "org/tracer-gpt", "main", MAIN)
    assert source["digest"].startswith("sha256:") and len(source["digest"]) == 7 + 64


def fake_online(monkeypatch, repo_files: dict[str, bytes], commit=MAIN):
    """The hub as huggingface_hub would answer for a repo holding `repo_files`; records what is asked for."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    asked = {}

    def model_info(self, repo_id, revision=None, **kwargs):
        return SimpleNamespace(sha=commit, siblings=[SimpleNamespace(rfilename=name) for name in repo_files])

    def snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, **kwargs):
        import fnmatch

        asked["patterns"] = allow_patterns
        source = Path(cache_dir) / "_remote"
        for name, data in repo_files.items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                (source / name).write_bytes(data)
        snapshot = fake_hub_cache(Path(cache_dir), repo_id, source, commit)
        shutil.rmtree(source)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return asked


def test_online_a_missing_model_is_downloaded_without_pickle(tmp_path, cache, monkeypatch):
    folder = hf_folder(tmp_path)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files |= {"pytorch_model.bin": b"pickle", "generation_config.json": b"{}", "chat_template.jinja": b"{{ x }}"}
    asked = fake_online(monkeypatch, files)
    source = locate_model("org/fresh")
    assert source.kind == "hub" and (source.path / "model.safetensors").is_file()
    assert not (source.path / "pytorch_model.bin").exists()
    assert sorted(asked["patterns"]) == ["chat_template.jinja", "config.json", "generation_config.json",
                                         "model.safetensors", "tokenizer.json"]


def test_online_a_pickle_only_repo_is_refused_before_any_download(cache, monkeypatch):
    asked = fake_online(monkeypatch, {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    with pytest.raises(BadInput, match=r"org/old on the hub has only pickle weights \(pytorch_model.bin\)"):
        locate_model("org/old")
    assert asked == {}


def test_a_cached_snapshot_is_used_without_asking_the_hub_even_online(tmp_path, cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    assert locate_model("org/tiny-llama").path == snapshot


def test_models_lists_the_cached_checkpoints_it_can_load(tmp_path, cache, no_network):
    fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    pickled = hf_folder(tmp_path, "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    fake_hub_cache(cache, "org/pickled-llama", pickled, MAIN)
    fake_hub_cache(cache, "org/speech", hf_folder(tmp_path, "speech", {"model_type": "whisper"}), MAIN)
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "en-gpt-tiny" in result.output  # the bundled ones are still there
    assert f"Hugging Face cache ({cache})" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("org/tiny-llama"))
    assert "org/pickled-llama" not in result.output  # a pickle-only checkpoint is never offered
    try:
        from tracer.nn.convert import SUPPORTED  # noqa: F401
    except ImportError:  # without the converters nothing can tell which model types load: each says so
        assert "llama, needs tracer.nn.convert" in line
        assert "1 other cached model(s) not listed" in result.output
    else:
        assert "llama" in line and "needs tracer.nn.convert" not in line
        assert "org/speech" not in result.output and "2 other cached model(s) not listed" in result.output


def test_a_damaged_cache_entry_does_not_break_the_listing(tmp_path, cache, no_network):
    (cache / "models--org--broken" / "snapshots").mkdir(parents=True)
    snapshot = fake_hub_cache(cache, "org/tiny-llama", hf_folder(tmp_path), MAIN)
    write_json(cache / "models--org--odd" / "snapshots" / V1 / "config.json", {"no": "model_type"})
    names = [model.name for model in hub.cached_models(cache)]
    assert names == ["org/odd", "org/tiny-llama"]
    assert hub.cached_models(cache)[1].path == snapshot


def test_offline_an_incomplete_snapshot_names_what_it_lacks(tmp_path, cache, no_network):
    folder = hf_folder(tmp_path)
    (folder / "model.safetensors").unlink()  # as an interrupted download leaves it
    fake_hub_cache(cache, "org/half", folder, MAIN)
    result = run("run", "hello", "--model", "org/half", "--no-tui")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"snapshots/{MAIN} lacks model.safetensors" in lines[0]
