"""Marian (MarianMTModel, opus-mt): tracer's converted model and SentencePiece tokenizer compute what
transformers computes.

A tiny folder is built offline as the hub's opus-mt folders are laid out: SentencePiece models trained
here (source.spm, target.spm), vocab.json, the model saved by transformers, and a generation config
that never generates pad (`bad_words_ids: [[pad]]`, as Marian's converter writes it). Weights widened,
float64, eager attention; `final_logits_bias` (a buffer, which `widen` does not touch) set at random.
Bound: 1e-10 (transformers' sinusoid table is float32 numbers, and tracer's is the same float32 table).
"""

from __future__ import annotations

import json

import pytest
import torch

from hf_helpers import load_folder, make_hf, max_diff, transformers
from tracer.errors import BadInput
from tracer.nn.convert import convert
from tracer.nn.hooks import hooks_attached
from tracer.nn.model import sinusoidal_table

sentencepiece = pytest.importorskip("sentencepiece")

CORPUS = [
    "ich bin piyush", "ich bin ein student", "du bist mein freund", "wir sind hier", "das haus ist gross",
    "der hund schläft im garten", "die katze trinkt milch", "ich trinke gerne wasser", "er liest ein buch",
    "sie spielt mit dem ball", "wir gehen nach hause", "das wetter ist heute schön", "ich habe hunger",
    "kannst du mir helfen", "wo ist der bahnhof", "ich lerne deutsch", "morgen fahren wir in die stadt",
    "der lehrer erklärt die aufgabe", "meine schwester wohnt in berlin", "das essen schmeckt gut",
]
SENTENCES = CORPUS + [
    "ich bin piyush und ich wohne in zürich", "Xylophon Quarz jubeln", "ÄÖÜ ß äöü", "1234 5678", "hallo,  welt!",
    "  führende leerzeichen", ">>en<< ich bin piyush", ">>fr<< das haus", "wörter die fehlen: qwertz yxcv",
    "Kleinschreibung und GROSSSCHREIBUNG", "emoji 🙂 und zeichen ∑", "",
]
SOURCE = "ich bin piyush und der hund schläft im garten, die katze trinkt milch und wir gehen nach hause"
N_NEW = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny opus-mt-style folder: (hf model, folder, MarianTokenizer)."""
    return make_folder(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """The same with separate source and target vocabularies (share_encoder_decoder_embeddings false)."""
    return make_folder(tmp_path_factory.mktemp("marian-separate"), separate=True)


def make_folder(root, separate: bool = False):
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 3) + "\n", encoding="utf-8")
    for side in ("source", "target"):
        sentencepiece.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(root / side), vocab_size=60, model_type="unigram",
            character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
        (root / f"{side}.model").rename(root / f"{side}.spm")
    vocab = marian_vocab(root / "source.spm")
    (root / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    extra = {}
    if separate:  # the target vocabulary: the target pieces only, in another order
        target = marian_vocab(root / "target.spm", reverse=True, codes=False)
        (root / "target_vocab.json").write_text(json.dumps(target), encoding="utf-8")
        extra = dict(separate_vocabs=True, target_vocab_file=str(root / "target_vocab.json"))
    tokenizer = transformers.MarianTokenizer(str(root / "source.spm"), str(root / "target.spm"), str(root / "vocab.json"),
                                             **extra)
    out = root / "model"
    tokenizer.save_pretrained(str(out))
    target_size = len(target) if separate else len(vocab)
    pad = target_size - 1
    shared = {} if not separate else dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=target_size)
    config = transformers.MarianConfig(
        vocab_size=len(vocab), **shared, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=96,
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=None,
        activation_function="swish", scale_embedding=True)
    hf = make_hf(transformers.MarianMTModel, config)
    with torch.no_grad():
        for stack in (hf.model.encoder, hf.model.decoder):  # widen() randomised the frozen sinusoid too
            stack.embed_positions.weight.copy_(stack.embed_positions.create_weight())
        # narrower shared embeddings (float32 numbers, as every weight here), and pad favoured by the bias,
        # so that unsuppressed greedy decoding would pick pad
        for embedding in {id(e): e for e in (hf.model.encoder.embed_tokens.weight, hf.model.decoder.embed_tokens.weight)}.values():
            embedding.copy_((0.1 * embedding).float().double())
        generator = torch.Generator().manual_seed(5)
        bias = (0.5 * torch.randn(hf.final_logits_bias.shape, generator=generator)).float()  # float32 numbers
        bias[0, pad] = 2.0
        hf.final_logits_bias.copy_(bias.double())
    hf.generation_config.bad_words_ids = [[pad]]
    hf.generation_config.forced_eos_token_id = None
    hf.save_pretrained(str(out))
    return hf, out, tokenizer


def marian_vocab(spm_file, reverse: bool = False, codes: bool = True) -> dict[str, int]:
    """vocab.json as Marian's converter lays it out: </s> 0, <unk> 1, (language codes,) the pieces, <pad> last."""
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if processor.id_to_piece(i) != "<unk>"]
    vocab = {"</s>": 0, "<unk>": 1, **({">>en<<": 2, ">>fr<<": 3} if codes else {})}
    for piece in reversed(pieces) if reverse else pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def read(folder):
    from safetensors.torch import load_file

    return json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors"))


def test_tokenizer_ids_equal_marian_tokenizers(folder):
    """Every sentence, including pieces vocab.json lacks, unknown characters and language codes."""
    _, path, tokenizer = folder
    ours = load_folder(path).tokenizer
    assert len(SENTENCES) >= 20
    unknown = 0
    for text in SENTENCES:
        expected = tokenizer(text)["input_ids"]
        ids, tokens = ours.encode(text)
        assert ids == expected, text
        assert tokens == tokenizer.convert_ids_to_tokens(expected)
        unknown += ids.count(ours.unk_id)
    assert unknown > 0                                   # the unknown-word path was exercised
    assert ours.encode(">>en<< ich bin")[0][0] == 2      # a multi-target model's target-language token
    assert ours.encode("ich bin piyush")[0][-1] == ours.eos_id == 0


@torch.no_grad()
def tracer_taps(model, src, tgt):
    taps = {}
    with hooks_attached(model, lambda name, value: taps.__setitem__(name, value.detach().clone())):
        logits = model.decode(tgt, model.encode(src), all_positions=True)
    return logits, taps


def stack_parity(out, taps, n_layers: int, last: dict[str, str]) -> dict[str, float]:
    """max |Δ| of every encoder and decoder hidden state (each layer's input, then `last[stack]`: the stack's
    output), every self- and cross-attention pattern, against transformers' outputs."""
    diffs = {}
    for stack, hidden, attentions in (("encoder", out.encoder_hidden_states, out.encoder_attentions),
                                      ("decoder", out.decoder_hidden_states, out.decoder_attentions)):
        names = [f"{stack}.{layer}.hook_resid_pre" for layer in range(n_layers)] + [last[stack]]
        diffs.update({name: max_diff(h, taps[name]) for name, h in zip(names, hidden)})
        diffs.update({f"{stack}.{layer}.attn.hook_pattern": max_diff(p, taps[f"{stack}.{layer}.attn.hook_pattern"])
                      for layer, p in enumerate(attentions)})
    diffs.update({f"decoder.{layer}.cross_attn.hook_pattern": max_diff(p, taps[f"decoder.{layer}.cross_attn.hook_pattern"])
                  for layer, p in enumerate(out.cross_attentions)})
    return diffs


def parity(hf, loaded_model, src, tgt):
    logits, taps = tracer_taps(loaded_model, src, tgt)
    with torch.no_grad():
        out = hf(input_ids=src, decoder_input_ids=tgt, output_hidden_states=True, output_attentions=True)
    diffs = stack_parity(out, taps, 2, {"encoder": "encoder.1.ln2.hook_normalized", "decoder": "decoder.1.ln3.hook_normalized"})
    diffs["logits"] = max_diff(out.logits, logits)
    return diffs


@torch.no_grad()
def test_every_hidden_state_pattern_and_logit_matches_transformers_over_the_greedy_decode(folder):
    """Greedy decoding of 24 tokens equals generate() token for token (pad suppressed, from the folder's
    generation config); then every hidden state and every self- and cross-attention pattern of every
    decoding step (the decoder's rows 0…t are step t's, its attention being causal) match."""
    from tracer.capture.run import generate

    hf, path, tokenizer = folder
    loaded = load_folder(path)
    src = torch.tensor([tokenizer(SOURCE)["input_ids"]])
    assert src.shape[1] >= 20
    result = generate(loaded, SOURCE, max_new_tokens=N_NEW)
    assert result.input_ids == src[0].tolist()
    expected = hf.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=N_NEW, do_sample=False, num_beams=1)
    assert expected[0, 0] == loaded.tokenizer.decoder_start_id == hf.config.pad_token_id
    assert result.output_ids == expected[0, 1:].tolist()
    assert len(result.output_ids) == N_NEW
    assert loaded.tokenizer.pad_id not in result.output_ids
    assert result.output_text == tokenizer.decode(expected[0], skip_special_tokens=True)
    # this random model's greedy decode repeats one token (its tied head favours the token just read), so
    # the decoder is also compared on a varied target of the same length
    varied = torch.cat([expected[:, :1], torch.randint(0, hf.config.vocab_size - 1, (1, N_NEW),
                                                       generator=torch.Generator().manual_seed(7))], dim=1)
    for tgt in (expected, varied):
        diffs = parity(hf, loaded.model, src, tgt)
        worst = max(diffs, key=diffs.get)
        assert diffs[worst] <= 1e-10, (worst, diffs[worst])
        assert len(diffs) == 2 * 3 + 2 * 2 + 2 + 1


def test_pad_is_the_greedy_choice_somewhere_and_is_suppressed(folder):
    """Without the suppression this model would generate pad: the policy is visible, not vacuous."""
    from tracer.capture.run import generate

    _, path, _ = folder
    loaded = load_folder(path)
    assert loaded.tokenizer.suppressed_ids == {loaded.tokenizer.pad_id}
    loaded.tokenizer.suppressed_ids = frozenset()
    unsuppressed = generate(loaded, SOURCE, max_new_tokens=N_NEW).output_ids
    assert loaded.tokenizer.pad_id in unsuppressed


def test_sinusoid_is_marians_layout_and_the_stored_table_is_checked(folder):
    hf, path, _ = folder
    table = sinusoidal_table(96, 32, "halves")
    assert torch.equal(table.double(), hf.model.encoder.embed_positions.weight)
    # the paper's interleaved table is a different one, and would move the output
    assert max_diff(sinusoidal_table(96, 32), table) > 0.5
    hf_config, weights = read(path)
    assert "model.encoder.embed_positions.weight" not in weights  # transformers v5 does not save it
    v4 = dict(weights, **{f"model.{s}.embed_positions.weight": table for s in ("encoder", "decoder")},
              **{"model.encoder.embed_tokens.weight": weights["model.shared.weight"],
                 "model.decoder.embed_tokens.weight": weights["model.shared.weight"],
                 "lm_head.weight": weights["model.shared.weight"]})
    converted = convert(hf_config, v4)
    assert all(torch.equal(converted.state_dict[k], v) for k, v in convert(hf_config, weights).state_dict.items())
    interleaved = dict(v4, **{"model.encoder.embed_positions.weight": sinusoidal_table(96, 32)})
    with pytest.raises(BadInput, match="embed_positions.weight is not Marian's sinusoid"):
        convert(hf_config, interleaved)


def test_final_logits_bias_and_swish_are_both_needed(folder):
    hf, path, tokenizer = folder
    from tracer.nn.model import build_model

    hf_config, weights = read(path)
    src = torch.tensor([tokenizer(SOURCE)["input_ids"]])
    tgt = torch.tensor([[hf.config.pad_token_id] + list(range(3, 25))])
    for change in ({"activation": "gelu"}, {"logits_bias": False}):
        converted = convert(hf_config, weights)
        state = dict(converted.state_dict)
        for key, value in change.items():
            setattr(converted.cfg, key, value)
        if change.get("logits_bias") is False:
            state.pop("decoder.b_U")
        model = build_model(converted.cfg)
        model.load_state_dict(state)
        assert max(parity(hf, model.double().eval(), src, tgt).values()) > 1e-3, change


def test_unsupported_options_are_refused_by_name(folder):
    _, path, _ = folder
    hf_config, weights = read(path)
    # a shared checkpoint whose config says otherwise lacks the stacks' own embeddings
    with pytest.raises(BadInput, match=r"missing key 'model\.encoder\.embed_tokens\.weight'"):
        convert(dict(hf_config, share_encoder_decoder_embeddings=False), weights)
    with pytest.raises(BadInput, match="activation_function 'mish'"):
        convert(dict(hf_config, activation_function="mish"), weights)
    with pytest.raises(BadInput, match="encoder_ffn_dim 48 differs from decoder_ffn_dim 64"):
        convert(dict(hf_config, decoder_ffn_dim=64), weights)
    with pytest.raises(BadInput, match=r"missing key 'final_logits_bias'"):
        convert(hf_config, {k: v for k, v in weights.items() if k != "final_logits_bias"})


def test_traced_as_tracer_run_traces_it_and_tracer_check_passes(folder):
    from tracer.capture.run import trace_text
    from tracer.trace.check import check_trace

    hf, path, tokenizer = folder
    trace = trace_text(load_folder(path), SOURCE, max_new_tokens=6)
    report = check_trace(trace)
    assert report.ok and not report.skipped, (report.failures[:3], report.skipped[:3])
    policy = trace.model["tokenization"]
    assert policy["decoder_start"] == "<pad>" and policy["suppressed"] == [hf.config.pad_token_id]
    assert policy["suffix"] == ["</s>"] and policy["decoding"] == "greedy, num_beams=1"
    t = trace.decode_steps[-1]
    src = torch.tensor([trace.input["ids"]])
    tgt = torch.tensor([trace[f"decoder.hook_tokens@{t}"].tolist()])
    with torch.no_grad():
        out = hf(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    assert max_diff(torch.as_tensor(trace[f"decoder.1.cross_attn.hook_pattern@{t}"]), out.cross_attentions[1][0]) < 1e-5
    assert max_diff(torch.as_tensor(trace[f"decoder.hook_logits@{t}"]), out.logits[0, -1]) < 1e-4


def test_tracer_run_on_the_marian_folder_saves_replays_without_torch_and_exports(folder, tmp_path, isolated_sessions):
    """`tracer run "ich bin piyush" --model DIR`, as the README's example, on the tiny opus-mt-style folder."""
    from test_hf_loading import run, saves_replays_without_torch_and_exports

    _, path, tokenizer = folder
    result = run("run", "ich bin piyush", "--model", path, "--no-tui", "--max-new-tokens", "4", "--save", "marian")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "marian")
    assert doc["input"]["ids"] == tokenizer("ich bin piyush")["input_ids"]
    assert doc["input"]["tokens"][-1] == "</s>" and doc["model"]["source"]["model_type"] == "marian"
    assert doc["model"]["tokenization"]["decoder_start"] == "<pad>"


async def test_the_ui_opens_on_a_marian_trace_and_explains_its_positions(folder):
    from tracer.capture.run import trace_text
    from tracer.tui.app import TracerApp
    from tui_helpers import screen_text

    _, path, _ = folder
    trace = trace_text(load_folder(path), "ich bin piyush", max_new_tokens=3)
    app = TracerApp([trace])
    async with app.run_test(size=(160, 50)) as pilot:
        assert app.trace_screen.step_id == "encoder.hook_tokens"
        assert "ich bin piyush" in screen_text(app)
        await pilot.press("n", "n")
        assert app.trace_screen.step_id == "encoder.hook_pos_embed"
        assert "Marian" in screen_text(app)


def test_a_marian_repo_downloads_its_sentencepiece_files(folder, tmp_path, monkeypatch):
    """From the hub (faked), as `--model Helsinki-NLP/opus-mt-de-en` would fetch it: the .spm files come too."""
    from test_hf_hub import fake_online

    from tracer.nn.loading import locate_model

    _, path, tokenizer = folder
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    files = {p.name: p.read_bytes() for p in path.iterdir()} | {"pytorch_model.bin": b"pickle"}
    asked = fake_online(monkeypatch, files)
    source = locate_model("Helsinki-NLP/opus-mt-tiny")
    assert {"source.spm", "target.spm", "vocab.json"} <= set(asked["patterns"]) and "pytorch_model.bin" not in asked["patterns"]
    assert load_folder(source.path).tokenizer.encode("ich bin piyush")[0] == tokenizer("ich bin piyush")["input_ids"]


def test_separate_vocabularies_match_transformers(separate):
    """share_encoder_decoder_embeddings false: the decoder reads and predicts its own vocabulary
    (target_vocab.json, decoder_vocab_size), with its own embeddings, tied to the output."""
    from tracer.capture.run import generate

    hf, path, tokenizer = separate
    hf_config, weights = read(path)
    assert hf_config["share_encoder_decoder_embeddings"] is False and hf_config["decoder_vocab_size"] != hf_config["vocab_size"]
    loaded = load_folder(path)
    assert loaded.cfg.decoder_vocab_size == hf_config["decoder_vocab_size"]
    for text in SENTENCES:
        assert loaded.tokenizer.encode(text)[0] == tokenizer(text)["input_ids"], text
    src = torch.tensor([tokenizer(SOURCE)["input_ids"]])
    result = generate(loaded, SOURCE, max_new_tokens=N_NEW)
    expected = hf.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=N_NEW, do_sample=False, num_beams=1)
    assert result.output_ids == expected[0, 1:].tolist()
    # (the generated tokens: transformers skips special tokens by their source-vocabulary ids, so it would
    # keep the decoder's start token, which is pad in the target vocabulary)
    assert result.output_text == tokenizer.decode(expected[0, 1:], skip_special_tokens=True)
    assert result.output_tokens == tokenizer.convert_ids_to_tokens(expected[0, 1:].tolist())
    varied = torch.cat([expected[:, :1], torch.randint(0, hf.config.decoder_vocab_size - 1, (1, N_NEW),
                                                       generator=torch.Generator().manual_seed(7))], dim=1)
    for tgt in (expected, varied):
        diffs = parity(hf, loaded.model, src, tgt)
        assert max(diffs.values()) <= 1e-10, max(diffs.items(), key=lambda item: item[1])
