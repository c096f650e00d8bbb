"""Tokenization as the folder's tokenizer does it: the same ids as transformers' AutoTokenizer (BERT's
[CLS]/[SEP], GPT-2's nothing, Llama's BOS), the named special tokens, decoding's stop ids, and --chat
rendering the chat template as apply_chat_template does."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hf_files import bert_tokenizer, gpt2_tokenizer, llama_tokenizer, save_tokenizer, write_hf_folder, write_json

from tracer.capture.run import generate
from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.hf_folder import read_hf_folder
from tracer.nn.loading import LoadedModel, load_model
from tracer.nn.tokenizer import HFTokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["The capital of France is Paris.", "the cat drank the [MASK]", "Hello, how are you today?",
         "  ünïcödé 😀 and   spaces ", "ich bin piyush"]
SPECIALS = {
    "bert": dict(unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]"),
    "gpt2": dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
    "llama": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
}
BUILDERS = {"bert": bert_tokenizer, "gpt2": gpt2_tokenizer, "llama": llama_tokenizer}
MODEL_TYPES = {"bert": "bert", "gpt2": "gpt2", "llama": "llama"}


def folder_for(tmp_path, kind: str, **extra_specials):
    """A folder whose tokenizer files transformers itself wrote (save_pretrained)."""
    folder = write_hf_folder(tmp_path / kind, {"model_type": MODEL_TYPES[kind]})
    save_tokenizer(BUILDERS[kind](), folder, **(SPECIALS[kind] | extra_specials))
    return folder


def ours(folder) -> HFTokenizer:
    return HFTokenizer.from_folder(read_hf_folder(folder), vocab_size=10_000)


def theirs(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_ids_are_the_ones_autotokenizer_gives(tmp_path, kind):
    folder = folder_for(tmp_path, kind)
    mine, reference = ours(folder), theirs(folder)
    for text in TEXTS:
        assert mine.encode(text)[0] == reference(text)["input_ids"], text


@pytest.mark.parametrize("kind, prefix, suffix, bos", [
    ("bert", ["[CLS]"], ["[SEP]"], None),
    ("gpt2", [], [], None),               # GPT-2 and SmolLM-style tokenizers add no BOS
    ("llama", ["<s>"], [], "<s>"),
])
def test_the_post_processor_decides_and_the_policy_says_so(tmp_path, kind, prefix, suffix, bos):
    tokenizer = ours(folder_for(tmp_path, kind))
    policy = tokenizer.policy("decoder")
    assert (policy["specials"], policy["prefix"], policy["suffix"], policy["bos"]) == ("post-processor", prefix, suffix, bos)
    ids, tokens = tokenizer.encode("the cat")
    assert tokens[:len(prefix)] == prefix and tokens[len(tokens) - len(suffix):] == suffix


def test_tokenizers_saved_by_transformers_own_classes_match_too(tmp_path):
    """Real checkpoints name a class (BertTokenizer, GPT2Tokenizer) that transformers rebuilds from the
    vocabulary; reading their tokenizer.json gives the same ids."""
    bert = bert_tokenizer()
    transformers.BertTokenizer(vocab=bert.get_vocab()).save_pretrained(str(tmp_path / "bert"))
    gpt2 = json.loads(gpt2_tokenizer().to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in gpt2["merges"]]
    transformers.GPT2Tokenizer(vocab=gpt2["vocab"], merges=merges).save_pretrained(str(tmp_path / "gpt2"))
    for name in ("bert", "gpt2"):
        folder = tmp_path / name
        write_hf_folder(folder, {"model_type": name})
        assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] != "TokenizersBackend"
        mine, reference = ours(folder), theirs(folder)
        for text in TEXTS:
            assert mine.encode(text)[0] == reference(text)["input_ids"], (name, text)


def test_named_special_tokens_match_transformers(tmp_path):
    for kind in ("bert", "gpt2", "llama"):
        folder = folder_for(tmp_path, kind)
        mine, reference = ours(folder), theirs(folder)
        for name in ("pad", "bos", "eos", "unk", "mask"):
            assert getattr(mine, f"{name}_id") == getattr(reference, f"{name}_token_id"), (kind, name)


def test_special_tokens_map_overrides_an_older_tokenizer_config(tmp_path):
    """Without added_tokens_decoder (the older layout) transformers lets special_tokens_map.json win."""
    folder = folder_for(tmp_path, "llama")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)
    write_json(folder / "tokenizer_config.json", config | {"eos_token": "<s>"})
    write_json(folder / "special_tokens_map.json", {"eos_token": {"content": "</s>", "lstrip": False}})
    assert ours(folder).eos_id == theirs(folder).eos_token_id == ours(folder).tokenizer.token_to_id("</s>")


def test_config_ids_fill_a_special_token_the_tokenizer_files_do_not_name(tmp_path):
    folder = folder_for(tmp_path, "gpt2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    write_json(folder / "tokenizer_config.json", {k: v for k, v in config.items() if k != "pad_token"})
    write_json(folder / "config.json", {"model_type": "gpt2", "pad_token_id": 5})
    assert ours(folder).pad_id == 5


def test_decoding_stops_at_generation_configs_eos(tmp_path):
    folder = folder_for(tmp_path, "llama")
    write_json(folder / "config.json", {"model_type": "llama", "eos_token_id": 2})
    assert ours(folder).stop_ids == {2}
    write_json(folder / "generation_config.json", {"eos_token_id": [2, 7]})
    assert ours(folder).stop_ids == {2, 7}


def decoder_with(make_model, tokenizer) -> LoadedModel:
    """tracer's own random decoder, wide enough for the tokenizer, behind a Hugging Face tokenizer."""
    loaded = load_model(make_model(arch="decoder", positional="learned", norm="pre", vocab_size=400))
    return LoadedModel(loaded.cfg, loaded.model, tokenizer, loaded.path, loaded.device, loaded.source)


def test_the_decoder_path_adds_no_bos_of_its_own(tmp_path, make_model):
    for kind, starts_with_bos in (("llama", True), ("gpt2", False)):
        tokenizer = ours(folder_for(tmp_path, kind))
        result = generate(decoder_with(make_model, tokenizer), "the cat drank", max_new_tokens=2, traced=True)
        first_pass = result.trace["hook_tokens@1"]
        expected = theirs(tmp_path / kind)("the cat drank")["input_ids"]
        assert list(first_pass) == expected == result.input_ids
        assert (list(first_pass).count(tokenizer.bos_id) == 1) == starts_with_bos
        assert result.trace.model["tokenization"]["specials"] == "post-processor"


def test_decoding_stops_at_a_stop_id(tmp_path, make_model):
    folder = folder_for(tmp_path, "gpt2")
    free = generate(decoder_with(make_model, ours(folder)), "the cat", max_new_tokens=4)
    first = free.predictions[0]["chosen"]["id"]
    write_json(folder / "generation_config.json", {"eos_token_id": first})
    stopped = generate(decoder_with(make_model, ours(folder)), "the cat", max_new_tokens=4)
    assert len(stopped.predictions) == 1 and stopped.output_ids == []


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.mark.parametrize("where", ["chat_template.jinja", "tokenizer_config.json"])
def test_chat_renders_and_encodes_as_apply_chat_template(tmp_path, where):
    folder = folder_for(tmp_path, "llama")
    if where == "chat_template.jinja":
        (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    else:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        write_json(folder / "tokenizer_config.json", config | {"chat_template": CHAT_TEMPLATE})
    mine, reference = ours(folder), theirs(folder)
    messages = [{"role": "user", "content": "  What is the capital of France? "}]
    rendered = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert mine.render_chat(messages[0]["content"]) == rendered
    ids = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert mine.encode(messages[0]["content"], chat=True)[0] == list(ids)
    assert list(ids).count(mine.bos_id) == 1  # the template's BOS, not a second one from the post-processor
    assert mine.policy("decoder", chat=True)["template"] == where


def test_a_failing_template_is_one_line(tmp_path):
    folder = folder_for(tmp_path, "llama")
    (folder / "chat_template.jinja").write_text("{{ raise_exception('this model only answers in German') }}")
    with pytest.raises(BadInput, match="--chat: the chat template failed \\(this model only answers in German\\)"):
        ours(folder).encode("hello", chat=True)


def test_chat_without_a_template_is_one_line(tmp_path, gpt_model):
    with pytest.raises(BadInput, match="--chat: this model's folder has no chat template"):
        ours(folder_for(tmp_path, "llama")).encode("hello", chat=True)
    result = CliRunner().invoke(cli, ["run", "the cat", "--model", str(gpt_model), "--chat", "--no-tui"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--chat: this model has no chat template" in lines[0]


def test_a_tokenizer_json_that_pads_or_truncates_does_not_here(tmp_path):
    """transformers encodes without padding or truncation unless asked, whatever tokenizer.json enables."""
    tokenizer = gpt2_tokenizer()
    tokenizer.enable_padding(length=40, pad_id=0, pad_token="<|endoftext|>")
    tokenizer.enable_truncation(max_length=3)
    folder = write_hf_folder(tmp_path / "padded", {"model_type": "gpt2"}, tokenizer)
    ids, _ = ours(folder).encode("The capital of France is Paris.")
    assert ids == gpt2_tokenizer().encode("The capital of France is Paris.").ids and len(ids) > 3
