"""BERT checkpoints (BertForMaskedLM, BertModel, a sentence-transformers folder): tracer's converted
model computes what transformers (and sentence-transformers' pooling) computes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from hf_helpers import (
    assert_within, input_ids, make_hf, max_diff, parity, run_traced, save_and_read, trace_parity, traced_and_checked,
    tracer_model, transformers,
)
from tracer.errors import BadInput
from tracer.nn.convert import convert

N_LAYERS, VOCAB = 2, 61
LAST = f"blocks.{N_LAYERS - 1}.ln2.hook_normalized"   # post-norm: the last layer's output
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
POOLING = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
           "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
           "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
ST_EXTRAS = {"modules.json": MODULES, "1_Pooling/config.json": POOLING}


def bert_config():
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=N_LAYERS,
                                   num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2)


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    hf = make_hf(transformers.BertForMaskedLM, bert_config())
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp("bert-mlm")))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    hf = make_hf(transformers.BertModel, bert_config())
    return (hf, *save_and_read(hf, tmp_path_factory.mktemp("bert")))


def run_both(hf, converted):
    ids = input_ids(VOCAB)
    result, taps = run_traced(tracer_model(converted), ids)
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True, output_attentions=True)
    return result, taps, out


def test_masked_lm_matches_transformers_at_every_step(mlm):
    hf, hf_config, weights, folder = mlm
    converted = convert(hf_config, weights)
    assert converted.notes["head"] == "mlm"
    logits, taps, out = run_both(hf, converted)
    diffs = parity(out, taps, last=LAST)
    diffs["logits"] = max_diff(out.logits, logits)            # every position: each could be a [MASK]
    assert_within(diffs)
    assert taps["hook_token_type_embed"].shape == taps["hook_embed"].shape


def test_traced_as_tracer_run_traces_it_the_trace_matches_and_checks(mlm, encoder, tmp_path):
    """Through tracer's loader, tokenizer and capture, for each of BERT's three heads."""
    ids = input_ids(VOCAB, seed=3)
    hf, _, _, folder = mlm
    trace = traced_and_checked(folder, ids)
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    assert_within(trace_parity(trace, out, logits=out.logits[0]))
    hf, _, _, folder = encoder
    trace = traced_and_checked(folder, ids)
    with torch.no_grad():
        out = hf(ids, output_attentions=True)
    assert_within({**trace_parity(trace, out), "pooled": max_diff(torch.as_tensor(trace["pooler.hook_pooler_out"]), out.pooler_output[0])})
    sentence = shutil.copytree(folder, tmp_path / "sentence")
    (sentence / "modules.json").write_text(json.dumps(MODULES))
    (sentence / "1_Pooling").mkdir()
    (sentence / "1_Pooling" / "config.json").write_text(json.dumps(POOLING))
    trace = traced_and_checked(sentence, ids)
    mean = out.last_hidden_state[0].mean(0)
    assert trace.model["source"]["notes"]["head"] == "sentence"
    assert_within({"sentence": max_diff(torch.as_tensor(trace["hook_sentence_embedding"]), F.normalize(mean, dim=0))})


def test_the_tanh_gelu_would_be_caught(mlm):
    hf, hf_config, weights, folder = mlm
    converted = convert(hf_config, weights)
    converted.cfg.activation = "gelu_tanh"
    logits, _, out = run_both(hf, converted)
    assert max_diff(out.logits, logits) > 1e-4


def test_bert_model_pooled_output_matches(encoder):
    hf, hf_config, weights, folder = encoder
    converted = convert(hf_config, weights)
    assert converted.notes["head"] == "pooled"
    pooled, taps, out = run_both(hf, converted)
    diffs = parity(out, taps, last=LAST)
    diffs["pooled"] = max_diff(out.pooler_output, pooled)
    assert_within(diffs)


def test_sentence_transformers_folder_gives_the_normalised_mean(encoder):
    """sentence-transformers' output: mean of the last hidden states over the attention mask, then
    L2-normalised (its Pooling and Normalize modules, written out here as they compute it)."""
    hf, hf_config, weights, folder = encoder
    converted = convert(hf_config, weights, ST_EXTRAS)
    assert converted.notes["head"] == "sentence"
    assert converted.notes["ignored"] == ["pooler.dense.bias", "pooler.dense.weight"]
    embedding, taps, out = run_both(hf, converted)
    mask = torch.ones(out.last_hidden_state.shape[:2], dtype=torch.float64)[..., None]
    mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    assert_within({"mean": max_diff(mean, taps["hook_mean_pooled"]),
                   "sentence": max_diff(F.normalize(mean, p=2, dim=1), embedding)})
    assert abs(float(embedding.norm()) - 1) < 1e-12


def old_layout(weights: dict) -> dict:
    """An old hub file: the position_ids buffer, layer norms named gamma/beta."""
    old = {}
    for key, value in weights.items():
        if "LayerNorm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        old[key] = value
    old["bert.embeddings.position_ids"] = torch.arange(64)[None]
    return old


def test_old_layouts_convert_to_the_same_weights(mlm):
    _, hf_config, weights, _ = mlm
    new, old = convert(hf_config, weights), convert(hf_config, old_layout(weights))
    assert all(torch.equal(new.state_dict[k], old.state_dict[k]) for k in new.state_dict)
    assert old.notes["ignored"] == ["bert.embeddings.position_ids"]


def test_a_pretraining_checkpoint_loads_as_masked_lm(mlm, encoder):
    """bert-base-style files also hold the pooler, the next-sentence head and copies of the tied decoder."""
    _, hf_config, weights, _ = mlm
    full = dict(weights)
    full["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"].clone()
    full["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"].clone()
    full["cls.seq_relationship.weight"], full["cls.seq_relationship.bias"] = torch.zeros(2, 32), torch.zeros(2)
    full["bert.pooler.dense.weight"], full["bert.pooler.dense.bias"] = torch.zeros(32, 32), torch.zeros(32)
    converted = convert(hf_config, full)
    assert converted.notes["ignored"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                          "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    full["cls.predictions.decoder.bias"] = full["cls.predictions.decoder.bias"] + 1
    with pytest.raises(BadInput, match=r"cls\.predictions\.decoder\.bias differs from cls\.predictions\.bias"):
        convert(hf_config, full)


@pytest.mark.parametrize("extras, message", [
    ({"modules.json": MODULES[:2] + [{"type": "sentence_transformers.models.Dense", "path": "2_Dense"}]},
     "module 'sentence_transformers.models.Dense' is not supported"),
    ({"modules.json": MODULES, "1_Pooling/config.json": dict(POOLING, pooling_mode_cls_token=True)},
     "pooling_mode_cls_token is not supported"),
    ({"modules.json": MODULES[:2], "1_Pooling/config.json": POOLING}, "only Transformer, then mean Pooling, then Normalize"),
    ({"modules.json": MODULES}, r"1_Pooling/config\.json is missing"),
])
def test_unsupported_sentence_transformers_folders_are_refused(encoder, extras, message):
    _, hf_config, weights, _ = encoder
    with pytest.raises(BadInput, match=message):
        convert(hf_config, weights, extras)


def test_unsupported_options_and_bad_keys_are_refused(mlm, encoder):
    _, hf_config, weights, _ = mlm
    with pytest.raises(BadInput, match="position_embedding_type = 'relative_key' is not supported"):
        convert(dict(hf_config, position_embedding_type="relative_key"), weights)
    with pytest.raises(BadInput, match="is_decoder"):
        convert(dict(hf_config, is_decoder=True), weights)
    with pytest.raises(BadInput, match=r"missing key 'cls\.predictions\.transform\.LayerNorm\.weight'"):
        convert(hf_config, {k: v for k, v in weights.items() if k != "cls.predictions.transform.LayerNorm.weight"})
    with pytest.raises(BadInput, match=r"unexpected key 'bert\.encoder\.layer\.2\.output\.dense\.weight'"):
        convert(hf_config, dict(weights, **{"bert.encoder.layer.2.output.dense.weight": torch.zeros(1)}))
    with pytest.raises(BadInput, match=r"token_type_embeddings\.weight has shape \[2, 32\], the model needs \[3, 32\]"):
        convert(dict(hf_config, type_vocab_size=3), weights)
    _, hf_config, weights, _ = encoder
    headless = {k: v for k, v in weights.items() if not k.startswith("pooler.")}
    with pytest.raises(BadInput, match="neither an MLM head"):
        convert(hf_config, headless)
