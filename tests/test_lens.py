"""The logit lens recorded at capture time (tracer.capture.lens): one step per layer and
decoding step, whose last layer is the model's own distribution."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tracer.trace import anatomy


def lens_of(trace, t):
    return trace.find(kind="lens_probs", decode_step=t)


def test_post_norm_de_en_tiny_last_layer_is_the_models_distribution():
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    loaded = load_model("de-en-tiny")
    trace = trace_text(loaded, "die katze trank die milch", max_new_tokens=4, lens=True)
    assert trace.model["config"]["norm"] == "post"
    layers = loaded.cfg.n_decoder_layers
    for t in trace.decode_steps:
        lens = lens_of(trace, t)
        assert [s.id for s in lens] == [f"decoder.{layer}.hook_lens_probs@{t}" for layer in range(layers)]
        probs = trace[f"decoder.hook_probs@{t}"]
        np.testing.assert_allclose(lens[-1].data, probs, rtol=1e-5, atol=1e-7)
        assert lens[-1].extra["top_k"][0]["id"] == trace.step(f"decoder.hook_probs@{t}").extra["chosen"]["id"]
        for step in lens:
            assert step.shape == (loaded.cfg.vocab_size,) and step.axes == ("vocab",)
            assert abs(float(step.data.sum()) - 1.0) < 1e-4
        # placed right after the pass's probs, in layer order
        probs_index = trace.step(f"decoder.hook_probs@{t}").index
        assert [s.index for s in lens] == list(range(probs_index + 1, probs_index + 1 + layers))
    # described like every recorded kind: its group in the outline, its own words, its source
    from tracer.tui.view.explain import explain
    from tracer.tui.view.outline import group_path

    step = lens_of(trace, 2)[0]
    assert group_path(step, trace)[-2:] == [("t2.decoder.0", "Decoder layer 0"), ("t2.decoder.0.lens", "Logit lens")]
    assert explain(step, trace).title == "Logit lens, layer 0"
    assert explain(step, trace).inputs == ["decoder.0.ln3.hook_normalized@2"] == anatomy.sources(step.id, trace)  # post-norm: the last norm
    # an earlier layer's lens is its own output unembedded, not a copy of the last one's
    assert not np.allclose(lens_of(trace, 1)[0].data, trace["decoder.hook_probs@1"])


def test_pre_norm_lens_goes_through_the_final_norm(gpt_model):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    trace = trace_text(load_model(gpt_model), "der hund", max_new_tokens=2, lens=True)
    assert trace.model["config"]["norm"] == "pre"
    for t in trace.decode_steps:
        lens = lens_of(trace, t)
        assert [s.layer for s in lens] == [0, 1]
        np.testing.assert_allclose(lens[-1].data, trace.find(kind="probs", decode_step=t)[0].data, rtol=1e-5, atol=1e-7)
    # computed from the layer's output, as the anatomy says
    assert anatomy.sources("blocks.0.hook_lens_probs@1", trace) == ["blocks.0.hook_resid_post@1"]


def test_encoder_only_lens_at_each_masked_position(bert_model):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    loaded = load_model(bert_model)
    mask = loaded.tokenizer.token(loaded.tokenizer.mask_id)
    trace = trace_text(loaded, f"der {mask} hund", lens=True)
    probs = trace.find(kind="probs")[0]
    positions = [item["pos"] for item in probs.extra["predictions"]]
    lens = trace.find(kind="lens_probs")
    assert [s.layer for s in lens] == [0, 1]
    for step in lens:
        assert step.shape == (len(positions), loaded.cfg.vocab_size)
        assert [p["pos"] for p in step.extra["predictions"]] == positions
    np.testing.assert_allclose(lens[-1].data, probs.data[positions], rtol=1e-5, atol=1e-7)
    # the lens table: one per masked position, a row per layer and the model's own
    from tracer.tui.view import Viewer

    viewer = Viewer([trace])
    for index, pos in enumerate(positions):
        table, why = viewer.lens_table(index)
        assert why is None and table.title == f"logit lens at position {pos}"
        assert [row.label for row in table.rows] == ["layer 0", "layer 1", "output"]
        assert table.rows[1].top[0]["id"] == table.chosen["id"] == probs.extra["predictions"][index]["chosen"]["id"]
    assert viewer.lens_table(len(positions)) == (None, "no other masked position")


def test_lens_can_be_turned_off(seq2seq_model, tmp_path):
    from tracer.capture import trace_text
    from tracer.cli import cli
    from tracer.nn.loading import load_model
    from tracer.trace.load import read_json

    # from Python the lens is asked for; `tracer run` records it unless told not to
    assert trace_text(load_model(seq2seq_model), "ich bin", max_new_tokens=2).find(kind="lens_probs") == []
    for flag, expected in (([], 2 * 2), (["--no-lens"], 0)):
        out = tmp_path / f"trace{len(flag)}.json"
        result = CliRunner().invoke(cli, ["run", "ich bin", "--model", str(seq2seq_model), "--max-new-tokens", "2",
                                          "--no-tui", "--export", str(out), *flag])
        assert result.exit_code == 0, result.output
        assert len(read_json(out).find(kind="lens_probs")) == expected


@pytest.mark.parametrize("t", [1, 5, 10])
def test_lens_steps_survive_the_json_export(t):
    from tracer.trace.load import read_json
    from tui_helpers import FIXTURE

    trace = read_json(FIXTURE.parent / "de-en-tiny-katze.json")
    lens = lens_of(trace, t)
    chosen = trace.step(f"decoder.hook_probs@{t}").extra["chosen"]
    assert lens[-1].extra["top_k"][0]["id"] == chosen["id"]


def test_a_trace_with_the_lens_passes_check(seq2seq_model):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model
    from tracer.trace.check import check_trace

    report = check_trace(trace_text(load_model(seq2seq_model), "ich bin", max_new_tokens=2, lens=True))
    assert report.ok and report.skipped == []  # a known kind: not skipped as one from a newer tracer


@pytest.mark.parametrize("options", [
    dict(arch="decoder", norm="pre", norm_type="rmsnorm", positional="rotary", activation="swiglu",
         qkv_bias=False, attn_out_bias=False, mlp_bias=False, logits_bias=True),          # Llama-style, with a logits bias
    dict(arch="encoder", norm="post", positional="learned", activation="gelu",
         token_types=1, embed_norm=True, mlm_head=True, logits_bias=True),                # BERT's MLM head
])
def test_last_layer_lens_is_the_models_distribution_through_any_head(tmp_path, options):
    """The lens goes through the model's own final norm and head: an RMSNorm (no bias), BERT's MLM
    transform, a logits bias. (It once applied a layer norm by hand: an RMSNorm model crashed.)"""
    import torch

    from tracer.capture import trace_text
    from tracer.nn.config import ModelConfig
    from tracer.nn.loading import load_model
    from tracer.nn.random_model import make_random_model

    cfg = ModelConfig(name="lens-head", vocab_size=60, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_positions=32, **options)
    folder = make_random_model(tmp_path / "model", cfg)
    loaded = load_model(folder)
    with torch.no_grad():  # the logits bias is zero at init: make it count
        head = loaded.model
        head.b_U.copy_(torch.linspace(-3, 3, head.b_U.numel()))
    text = "the cat drank the [MASK]" if cfg.arch == "encoder" else "the cat drank"
    trace = trace_text(loaded, text, max_new_tokens=3, lens=True)
    probs_steps = trace.find(kind="probs")
    assert probs_steps
    for probs in probs_steps:
        lens = [s for s in trace.find(kind="lens_probs", decode_step=probs.decode_step)]
        assert len(lens) == cfg.n_layers
        np.testing.assert_allclose(lens[-1].data, probs.data[..., :] if cfg.arch != "encoder"
                                   else probs.data[[p["pos"] for p in probs.extra["predictions"]]], rtol=1e-5, atol=1e-7)
