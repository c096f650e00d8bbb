"""T5 (T5ForConditionalGeneration, v1.0 and v1.1/flan): tracer's converted model computes what transformers
computes, relative position buckets included.

transformers computes T5's norm variance in float32 even in a float64 model; tracer's `rmsnorm_t5` does the
same, so the float64 comparison is exact up to matmul rounding: bound 1e-10. Weights widened (the relative
bias tables too, std 0.3), eager attention, inputs of 24 tokens, greedy decodes of 24 steps (decoder
distances up to 24: the one-directional buckets differ from bidirectional ones from distance 9 on).
"""

from __future__ import annotations

import pytest
import torch

from hf_helpers import (
    as_text, assert_within, input_ids, load_folder, make_hf, max_diff, save_and_read, tracer_generate,
    tracer_model, transformers,
)
from test_hf_marian import stack_parity, tracer_taps
from tracer.errors import BadInput
from tracer.nn import model as tracer_nn_model
from tracer.nn.convert import convert

VOCAB = 61
N_NEW = 24
COMMON = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=2, num_heads=3,
              eos_token_id=None, pad_token_id=0, decoder_start_token_id=0)  # 3 heads × d_kv 8 ≠ d_model 32


SOURCE_SEED = {"v10": 2, "v11": 3}  # with these model seeds, greedy decoding varies for all 24 steps (many
                                    # widened random models repeat one token from the first step on)


def build(tmp_path_factory, name, seed, **options):
    hf = make_hf(transformers.T5ForConditionalGeneration, transformers.T5Config(**{**COMMON, **options}), seed=seed)
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def v10(tmp_path_factory):
    """t5-small style: ReLU, head tied to the embeddings, decoder output × d_model^-0.5."""
    return build(tmp_path_factory, "t5v10", 3, feed_forward_proj="relu")


@pytest.fixture(scope="module")
def v11(tmp_path_factory):
    """t5-v1_1 / flan style: gated GELU (tanh), untied head, no rescale."""
    return build(tmp_path_factory, "t5v11", 0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def parity(hf, model, src, tgt):
    logits, taps = tracer_taps(model, src, tgt)
    with torch.no_grad():
        out = hf(input_ids=src, decoder_input_ids=tgt, output_hidden_states=True, output_attentions=True)
    diffs = stack_parity(out, taps, 2, {"encoder": "encoder.ln_final.hook_normalized",
                                        "decoder": "decoder.ln_final.hook_normalized"})
    diffs["logits"] = max_diff(out.logits, logits)
    return diffs


@torch.no_grad()
def hf_greedy_seq2seq(model, ids: torch.Tensor, n_new: int) -> list[int]:
    """generate(do_sample=False, num_beams=1), never stopping early; the tokens after the decoder start."""
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                         do_sample=False, num_beams=1)
    assert out[0, 0] == model.config.decoder_start_token_id
    return out[0, 1:].tolist()


@pytest.mark.parametrize("version", ["v10", "v11"])
def test_greedy_decode_and_every_step_match_transformers(version, request):
    """tracer's generate() on the folder equals generate(do_sample=False, num_beams=1) for 24 tokens; then
    every encoder and decoder hidden state, every self- and cross-attention pattern and the logits of the
    whole decode (decoder row t is decoding step t's: its attention is causal) match within 1e-10."""
    hf, hf_config, weights, folder = request.getfixturevalue(version)
    src = input_ids(VOCAB, seed=SOURCE_SEED[version])
    ours = tracer_generate(folder, src, N_NEW)
    assert ours == hf_greedy_seq2seq(hf, src, N_NEW)
    assert len(ours) == N_NEW and len(set(ours)) > 5 and len(set(ours[12:])) > 1
    tgt = torch.tensor([[0] + ours])
    diffs = parity(hf, tracer_model(convert(hf_config, weights)), src, tgt)
    assert len(diffs) == 2 * 3 + 2 * 2 + 2 + 1
    assert_within(diffs)


def test_the_bidirectional_decoder_buckets_transformerlens_uses_would_fail(v11):
    """TransformerLens's T5 decoder computes its buckets bidirectionally. The bucket tables agree up to
    distance 8 and differ from 9 on, so a 24-step decode shows the mistake."""
    hf, hf_config, weights, _ = v11
    distance = -torch.arange(0, 130)
    one_way = tracer_nn_model.relative_position_bucket(distance, False, 32, 128)
    two_way = tracer_nn_model.relative_position_bucket(distance, True, 32, 128)
    assert torch.equal(one_way[:9], two_way[:9]) and not torch.equal(one_way[9:12], two_way[9:12])
    model = tracer_model(convert(hf_config, weights))
    model.decoder.rel_pos.bidirectional = True
    src = input_ids(VOCAB, seed=SOURCE_SEED["v11"])
    expected = hf_greedy_seq2seq(hf, src, N_NEW)
    assert max(parity(hf, model, src, torch.tensor([[0] + expected])).values()) > 1e-3
    assert greedy(model, src, N_NEW) != expected          # and the decoded tokens change
    model.decoder.rel_pos.bidirectional = False
    assert greedy(model, src, N_NEW) == expected


@torch.no_grad()
def greedy(model, src, n_new):
    memory, seq = model.encode(src), [0]
    for _ in range(n_new):
        seq.append(int(model.decode(torch.tensor([seq]), memory).argmax(-1)))
    return seq[1:]


def test_float32_variance_is_what_makes_the_bound(v11):
    hf, hf_config, weights, _ = v11
    converted = convert(hf_config, weights)
    converted.cfg.norm_type = "rmsnorm"  # the whole norm in float32, as Llama's: no longer transformers' T5
    src, tgt = input_ids(VOCAB, seed=2), input_ids(VOCAB, seed=3)
    assert max(parity(hf, tracer_model(converted), src, tgt).values()) > 1e-10


def test_numpy_buckets_of_tracer_check_equal_the_models(v10):
    from tracer.trace.check import relative_buckets

    relative = torch.arange(-300, 300)
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (16, 20)):
            ours = relative_buckets(relative.numpy(), bidirectional, buckets, distance)
            assert ours.tolist() == tracer_nn_model.relative_position_bucket(relative, bidirectional, buckets, distance).tolist()


def test_both_config_generations_give_the_same_model(v10, v11):
    """v5 files: tie_word_embeddings always true, scale_decoder_outputs says the rescale, no lm_head.weight for
    v1.1. v4 hub files: tie_word_embeddings false for v1.1 with an lm_head.weight, no scale_decoder_outputs."""
    _, config11, weights11, _ = v11
    assert config11["tie_word_embeddings"] is True and config11["scale_decoder_outputs"] is False
    assert "lm_head.weight" not in weights11
    v5 = convert(config11, weights11)
    v4_config = {k: v for k, v in config11.items() if k != "scale_decoder_outputs"} | {"tie_word_embeddings": False}
    v4 = convert(v4_config, dict(weights11, **{"lm_head.weight": weights11["shared.weight"].clone()}))
    assert v5.cfg.head_scale == v4.cfg.head_scale == 1.0 and v5.cfg.tie_embeddings and not v4.cfg.tie_embeddings
    src, tgt = input_ids(VOCAB, seed=2), input_ids(VOCAB, seed=3)
    a, _ = tracer_taps(tracer_model(v5), src, tgt)
    b, _ = tracer_taps(tracer_model(v4), src, tgt)
    assert torch.equal(a, b)
    _, config10, weights10, _ = v10
    assert convert(config10, weights10).cfg.head_scale == 32 ** -0.5
    v4_10 = {k: v for k, v in config10.items() if k != "scale_decoder_outputs"}
    assert convert(v4_10, weights10).cfg.head_scale == 32 ** -0.5


def test_traced_as_tracer_run_traces_it_and_check_verifies_the_position_bias(v11):
    from tracer.capture.run import trace_text
    from tracer.trace.check import check_trace

    hf, _, _, folder = v11
    src = input_ids(VOCAB, seed=SOURCE_SEED["v11"])
    trace = trace_text(load_folder(folder), as_text(src), max_new_tokens=12)
    report = check_trace(trace)
    assert report.ok and not report.skipped, (report.failures[:3], report.skipped[:3])
    t = trace.decode_steps[-1]
    bias_id = f"decoder.0.attn.hook_attn_bias@{t}"
    assert trace.step(bias_id).axes == ("head", "query", "key")
    assert "encoder.0.attn.hook_attn_scaled" not in trace  # no 1/√d_k in T5
    assert not any(".cross_attn.hook_attn_bias" in step.id for step in trace.steps)
    tgt = torch.tensor([trace[f"decoder.hook_tokens@{t}"].tolist()])
    with torch.no_grad():
        out = hf(input_ids=src, decoder_input_ids=tgt, output_attentions=True)
    assert max_diff(torch.as_tensor(trace[f"decoder.1.attn.hook_pattern@{t}"]), out.decoder_attentions[1][0]) < 1e-5
    # the sum: masked scores = raw + bias (check reads a KV-cached step's new row: alter that)
    scores = trace.step(f"decoder.0.attn.hook_attn_scores@{t}")
    scores.rows[..., 0, 0] += 0.5
    assert any(f.step_id == scores.id for f in check_trace(trace).failures)
    # the bidirectional buckets' bias (TransformerLens's decoder) is caught by check: keys after the query
    # fall in their own buckets instead of sharing bucket 0. Only a full re-run stores a row's later keys
    # (a KV-cached row sees the keys up to its own), so this one is without the cache.
    trace = trace_text(load_folder(folder), as_text(src), max_new_tokens=12, kv_cache=False)
    assert check_trace(trace).ok
    wrong = trace.step(bias_id).data.copy()
    wrong[:, 0, 1:] += 1.0
    trace.step(bias_id).data[...] = wrong
    assert any(f.step_id == bias_id for f in check_trace(trace).failures)


def test_key_accounting_and_refusals(v11):
    _, hf_config, weights, _ = v11
    with pytest.raises(BadInput, match="feed_forward_proj 'gated-silu'"):
        convert(dict(hf_config, feed_forward_proj="gated-silu"), weights)
    with pytest.raises(BadInput, match=r"missing key 'decoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias"):
        convert(hf_config, {k: v for k, v in weights.items() if "decoder.block.0.layer.0.SelfAttention.relative" not in k})


TEXTS = ["the cat sat on the mat", "translate English to German: the house is big", "hello world",
         "summarize: the cat and the house", "zebra", "Ünïcödé text", "  spaces   between  ", "the mat, the cat.",
         "1 2 3 4", "a</s>b", "translate English to German: hello", "cat" * 5, "the", "house big world",
         "ThE CaT", "mat-sat", "question: where is the cat? context: on the mat", "tab\there", "new\nline",
         "emoji 🙂", "<extra_id_0> the cat <extra_id_1>"]


def test_t5_tokenizer_ids_equal_transformers(v11, tmp_path):
    """T5's tokenizer.json (a SentencePiece unigram built offline) through tracer's HFTokenizer: ids, with the
    appended </s>, equal transformers' T5Tokenizer's on 21 texts, unknown characters and sentinels included."""
    import shutil

    sentencepiece = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:3] * 20), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=30,
                                             model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = transformers.T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + vocab[3:], extra_ids=4)
    _, _, _, folder = v11
    model_folder = tmp_path / "t5"
    shutil.copytree(folder, model_folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_folder / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(str(model_folder))
    ours = load_folder(model_folder).tokenizer
    unknown = 0
    for text in TEXTS:
        expected = tokenizer(text)["input_ids"]
        ids, tokens = ours.encode(text)
        assert ids == expected, text
        assert ids[-1] == 1 and tokens[-1] == "</s>"
        unknown += ids.count(2)
    assert unknown > 0
    assert ours.decoder_start_id == 0 and ours.suppressed_ids == frozenset()


def test_tracer_run_on_a_t5_folder_saves_replays_without_torch_and_exports(v10, tmp_path, isolated_sessions):
    from test_hf_loading import run, saves_replays_without_torch_and_exports

    _, _, _, folder = v10
    src = input_ids(VOCAB, seed=SOURCE_SEED["v10"])
    result = run("run", as_text(src), "--model", folder, "--no-tui", "--max-new-tokens", "3", "--save", "t5")
    assert result.exit_code == 0, result.output
    doc = saves_replays_without_torch_and_exports(tmp_path, isolated_sessions, "t5")
    assert doc["input"]["ids"] == src[0].tolist() and doc["model"]["source"]["model_type"] == "t5"
    assert doc["model"]["tokenization"]["decoder_start_id"] == 0
    assert doc["model"]["config"]["positional"] == "relative"


async def test_the_ui_shows_the_position_bias_step_with_its_buckets(v11):
    from tracer.capture.run import trace_text
    from tracer.trace.state import UIState
    from tracer.tui.app import TracerApp
    from tui_helpers import screen_text

    _, _, _, folder = v11
    trace = trace_text(load_folder(folder), as_text(input_ids(VOCAB, seed=SOURCE_SEED["v11"])), max_new_tokens=2)
    app = TracerApp([trace], state=UIState(step="decoder.0.attn.hook_attn_bias@2"))
    async with app.run_test(size=(160, 60)):
        assert app.trace_screen.step_id == "decoder.0.attn.hook_attn_bias@2"
        text = screen_text(app)
        assert "Relative position bias" in text and "+ position bias" in text
