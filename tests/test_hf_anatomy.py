"""The model features added for Hugging Face checkpoints (GQA, RMSNorm, head_dim, llama3 RoPE, BERT's
token types, embedding norm, MLM head, pooled and sentence outputs) are described by the anatomy,
explained in words, and verified by `tracer check`, which catches a tampered step of each.

Tracer's own random models with these options are enough (no transformers needed); the parity
of converted checkpoints with transformers is in tests/test_hf_{gpt2,llama,bert}.py."""

from __future__ import annotations

import numpy as np
import pytest

from tracer.capture import trace_text
from tracer.nn.config import ModelConfig
from tracer.nn.loading import load_model
from tracer.nn.random_model import make_random_model
from tracer.trace import anatomy
from tracer.trace.check import check_trace
from tracer.tui.view.explain import WORDS, explain

SMALL = dict(vocab_size=120, d_model=32, n_heads=4, d_ff=48, n_layers=2, max_positions=40)
LLAMA = dict(arch="decoder", positional="rotary", norm="pre", norm_type="rmsnorm", activation="swiglu",
             n_kv_heads=2, head_dim=6, qkv_bias=False, attn_out_bias=False, mlp_bias=False, softmax_fp32=True,
             scale_embeddings=False, tie_embeddings=False, layer_norm_eps=1e-6, rotary_base=1e5,
             rotary_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_positions": 8})
BERT = dict(arch="encoder", positional="learned", norm="post", activation="gelu", scale_embeddings=False,
            token_types=2, embed_norm=True, layer_norm_eps=1e-12)
MODELS = {
    "llama": LLAMA,
    "qwen2": dict(LLAMA, qkv_bias=True, n_kv_heads=1, head_dim=None, rotary_scaling=None),
    "gpt2": dict(arch="decoder", positional="learned", norm="pre", activation="gelu_tanh", scale_embeddings=False),
    "bert-mlm": dict(BERT, mlm_head=True, logits_bias=True),
    "bert-pooled": dict(BERT, output="pooled"),
    "sentence": dict(BERT, output="sentence"),
    # T5 (v1.1) and Marian: encoder-decoders; small bucket settings so a short trace spans exact and log buckets
    "t5": dict(positional="relative", norm="pre", norm_type="rmsnorm_t5", activation="gated_gelu_tanh", head_dim=6,
               qkv_bias=False, attn_out_bias=False, mlp_bias=False, attn_scale=False, scale_embeddings=False,
               tie_embeddings=False, layer_norm_eps=1e-6, relative_buckets=8, relative_max_distance=16),
    "marian": dict(positional="sinusoidal", sinusoid_layout="halves", activation="silu", logits_bias=True),
}
TEXT = "die katze trank die milch"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """One trace of each model (built lazily, once)."""
    cache = {}

    def get(name):  # "t5:no-kv": without the KV cache
        if name not in cache:
            model, _, mode = name.partition(":")
            folder = tmp_path_factory.mktemp(model)
            make_random_model(folder, ModelConfig(name=model, **SMALL, **MODELS[model]), seed=3)
            cache[name] = trace_text(load_model(folder), TEXT, max_new_tokens=3, kv_cache=mode != "no-kv")
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_every_new_kind_is_described_explained_and_checked(traces, name):
    trace = traces(name)
    config = trace.model["config"]
    kv_heads = config["n_kv_heads"] or config["n_heads"]
    d_head = config["head_dim"] or config["d_model"] // config["n_heads"]
    for step in trace.steps:
        assert anatomy.is_known(step.kind), step.id
        kind = anatomy.KINDS[step.kind]
        assert step.axes in kind.axes, (step.id, step.axes)
        heads = kv_heads if step.kind in ("k", "v", "rot_k") else config["n_heads"]
        # the heads side by side are n_heads·d_head wide, d_model only where d_head = d_model / n_heads
        sizes = {"d_model": config["d_model"], "d_concat": config["n_heads"] * d_head, "head": heads, "d_head": d_head,
                 "d_ff": config["d_ff"]}
        for axis, size in zip(step.axes, step.shape):
            assert sizes.get(axis, size) == size, (step.id, axis)
        assert kind.explanation in WORDS and explain(step, trace).words != "A recorded intermediate value.", step.id
        found = anatomy.sources(step.id, trace)
        assert None not in found and (found or step.kind == "tokens"), (step.id, found)
    report = check_trace(trace)
    assert report.failures == [] and report.skipped == []


def test_each_bert_head_records_its_own_steps(traces):
    kinds = {name: {step.kind for step in traces(name).steps} for name in ("bert-mlm", "bert-pooled", "sentence")}
    shared = {"token_type_embed", "normalized"}
    assert shared | {"mlm_dense", "mlm_act", "logits", "probs"} <= kinds["bert-mlm"]
    assert shared | {"pooler_out"} <= kinds["bert-pooled"] and "logits" not in kinds["bert-pooled"]
    assert shared | {"mean_pooled", "sentence_embedding"} <= kinds["sentence"] and "logits" not in kinds["sentence"]
    assert traces("sentence")["hook_sentence_embedding"].shape == (32,)
    assert abs(np.linalg.norm(traces("sentence")["hook_sentence_embedding"]) - 1) < 1e-5


def failures_after(trace, step_id, change) -> dict[str, str]:
    """check_trace's failures (by step id) with one step's values changed, then restored."""
    step = trace.step(step_id)
    original = step.data
    step._array = change(original.astype(np.float64)).astype(original.dtype)
    try:
        return {f.step_id: f.message for f in check_trace(trace).failures}
    finally:
        step._array = original


def as_layer_norm(x):
    """What a layer norm (mean taken off) would have given instead of RMSNorm, same scale per feature."""
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-6)


TAMPER = [
    # GQA: a key/value head's keys changed: the raw scores of both query heads it serves no longer follow
    ("llama", "blocks.0.attn.hook_rot_k@2", lambda a: a + np.eye(a.shape[0], 1)[:, :, None], "blocks.0.attn.hook_attn_raw@2"),
    ("qwen2", "blocks.1.attn.hook_v@1", lambda a: a * 1.5, "blocks.1.attn.hook_z@1"),
    # RMSNorm: one position scaled differently, or a layer norm in its place
    ("llama", "blocks.1.ln2.hook_normalized@3", lambda a: a * np.linspace(1, 1.3, len(a))[:, None], "blocks.1.ln2.hook_normalized@3"),
    ("llama", "ln_final.hook_normalized@1", as_layer_norm, "ln_final.hook_normalized@1"),
    # BERT
    ("bert-mlm", "ln_embed.hook_normalized", lambda a: a + np.arange(a.shape[-1]) * 0.01 * np.arange(len(a))[:, None], "ln_embed.hook_normalized"),
    ("bert-mlm", "hook_mlm_act", lambda a: np.maximum(a, 0.0), "hook_mlm_act"),
    ("bert-mlm", "hook_token_type_embed", lambda a: a + np.eye(len(a), a.shape[1]), "hook_token_type_embed"),
    ("bert-pooled", "pooler.hook_pooler_out", lambda a: a * 3, "pooler.hook_pooler_out"),
    ("sentence", "hook_mean_pooled", lambda a: a + 0.1, "hook_mean_pooled"),
    ("sentence", "hook_sentence_embedding", lambda a: a * 1.1, "hook_sentence_embedding"),
    # T5: a bias that is not a function of the distance's bucket; masked scores that are not raw + bias
    ("t5", "encoder.1.attn.hook_attn_bias", lambda a: a + np.pad([[[0.5]]], [(0, 0), (0, a.shape[1] - 1), (0, a.shape[2] - 1)]),
     "encoder.1.attn.hook_attn_bias"),
    # (keys after the query: only a full re-run stores them; check reads what a KV-cached step stored, its new row)
    ("t5:no-kv", "decoder.0.attn.hook_attn_bias@3", lambda a: a + np.triu(np.ones(a.shape[1:]), 1)[None], "decoder.0.attn.hook_attn_bias@3"),
    ("t5", "encoder.0.attn.hook_attn_raw", lambda a: a + 0.25, "encoder.0.attn.hook_attn_scores"),
]


@pytest.mark.parametrize("name, altered, change, named", TAMPER, ids=[t[1] for t in TAMPER])
def test_check_catches_a_tampered_step(traces, name, altered, change, named):
    failures = failures_after(traces(name), altered, change)
    assert named in failures, failures
    assert "cannot be recomputed" not in failures[named]


def test_key_value_heads_that_fit_no_grouping_are_damage(traces):
    """Grouped-query sharing is what the config says, not whatever head count a file holds."""
    trace = traces("llama")
    failures = failures_after(trace, "blocks.0.attn.hook_rot_k@1", lambda a: np.concatenate([a, a[:, :1]], axis=1))
    assert "cannot be recomputed" in failures["blocks.0.attn@1"]


def test_t5_steps_are_explained_as_t5_computes_them(traces):
    """No ÷ √d_k; the position bias's words give its bucket picture; a score cell adds the bias."""
    from tracer.trace.state import UIState
    from tracer.tui.view import Viewer
    from tracer.tui.view.explain import describe_cell

    trace = traces("t5")
    kinds = {step.kind for step in trace.steps}
    assert "attn_bias" in kinds and "attn_scaled" not in kinds and "pos_embed" not in kinds
    words = explain(trace.step("decoder.0.attn.hook_attn_bias@3"), trace).words
    assert "one-directional" in words and "no positional encoding" in words and "9→" in words
    assert "bidirectional" in explain(trace.step("encoder.0.attn.hook_attn_bias"), trace).words
    viewer = Viewer([trace], UIState(step="encoder.1.attn.hook_attn_scores", head=1))
    text = describe_cell(trace, viewer.picture(), 2, 1)
    bias = float(trace["encoder.1.attn.hook_attn_bias"][1, 2, 1])
    assert "÷ √" not in text and "+ position bias" in text
    assert abs(float(text.rsplit("position bias ", 1)[1]) - bias) <= 1e-3 + 1e-3 * abs(bias), text
    marian = traces("marian")
    assert "first half" in explain(marian.step("encoder.hook_pos_embed"), marian).words


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_a_score_cell_is_explained_with_the_key_value_head_its_query_head_reads(traces, name):
    """Under GQA the dot product behind a score uses the shared key/value head, not the query head's index."""
    from tracer.trace.state import UIState
    from tracer.tui.view import Viewer
    from tracer.tui.view.explain import describe_cell

    trace = traces(name)
    H, Hkv = trace.model["config"]["n_heads"], trace.model["config"]["n_kv_heads"]
    for head in range(H):
        viewer = Viewer([trace], UIState(step="blocks.1.attn.hook_attn_raw@2", head=head))
        text = describe_cell(trace, viewer.picture(), 3, 1)
        kv_head = head // (H // Hkv)
        assert f"(key/value head {kv_head + 1}/{Hkv})" in text
        recorded = float(trace["blocks.1.attn.hook_attn_raw@2"][head, 3, 1])
        shown = float(text.rsplit("q₃·k₁ = ", 1)[1])        # the dot product, as the panel rounds it
        assert abs(shown - recorded) <= 1e-3 + 1e-3 * abs(recorded), text
    words = explain(trace.step("blocks.0.attn.hook_k@1"), trace).words
    assert ("query heads 1–2 share key/value head 1" if name == "llama" else "query heads 1–4 share key/value head 1") in words


@pytest.mark.parametrize("name, norm", [("llama", "RMSNorm"), ("t5", "RMSNorm"), ("gpt2", "layer norm"),
                                        ("bert-mlm", "layer norm")])
def test_the_outline_names_each_norm_by_what_it_computes(traces, name, norm):
    """Llama's and T5's norms are RMSNorms in the outline too, not "layer norm" (the explain panel said so
    already); BERT's embedding and MLM-head norms stay layer norms."""
    from tracer.tui.view.outline import leaf_label

    trace = traces(name)
    for step in trace.find(kind="normalized"):
        label = leaf_label(step, trace)
        expected = f"final {norm}" if step.component == "ln_final" else norm
        assert label == expected, (step.id, label)
        assert norm.lower() in explain(step, trace).title.lower() or step.component in ("ln_embed", "ln_mlm")
