"""bfloat16: `tracer run --dtype bfloat16` computes what transformers computes in bfloat16, bit for bit.

In bfloat16 every op rounds to 8 significant bits, so the same formula written as different ops gives
different numbers: ~0.1 apart in a hidden state, enough to change a greedy decode. tracer's model
therefore uses transformers' ops where they differ in rounding (GPT-2's `gelu_new` written out op by
op, not torch's fused tanh-GELU; BERT's decoder bias added inside its linear layer; the scores times
dh^-0.5, not ÷ √dh) and upcasts where transformers does (RMSNorm, RoPE angles, Llama's softmax, T5's
norm variance).

The reference is a checkpoint loaded as users load one, `from_pretrained(..., dtype=torch.bfloat16)`,
which keeps RoPE's `inv_freq` in float32. (`model.to(torch.bfloat16)` instead rounds that buffer to
bfloat16, so transformers then disagrees with itself: its hidden states move by ~0.3.)
"""

from __future__ import annotations

import pytest
import torch

from hf_helpers import (
    N_NEW, as_text, hf_greedy, hidden_state_taps, input_ids, make_hf, max_diff, run_traced, save_and_read,
    transformers,
)
from tracer.nn.loading import load_model

VOCAB = 61
BF16 = torch.bfloat16
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=0)
LLAMA3 = {"rope_type": "llama3", "rope_theta": 100000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
FAMILIES = {
    "gpt2": lambda: (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)),
    "llama": lambda: (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        **DECODER, head_dim=12, rope_parameters=LLAMA3)),
    "qwen2": lambda: (transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**DECODER, tie_word_embeddings=True)),
    "bert": lambda: (transformers.BertForMaskedLM, transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, type_vocab_size=2)),
}
LAST = {"bert": "blocks.1.ln2.hook_normalized"}   # post-norm: the last layer's output


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    """(family, transformers' model in bfloat16, tracer's LoadedModel in bfloat16) from one float32 checkpoint."""
    family = request.param
    model_class, config = FAMILIES[family]()
    folder = tmp_path_factory.mktemp(f"{family}-bf16")
    save_and_read(make_hf(model_class, config).to(torch.float32), folder)   # a float32 checkpoint, as on the hub
    hf = model_class.from_pretrained(folder, dtype=BF16, attn_implementation="eager").eval()
    return family, hf, load_model(folder, dtype="bfloat16")


def test_every_hidden_state_pattern_and_logit_is_bit_identical(pair):
    family, hf, loaded = pair
    assert {p.dtype for p in loaded.model.parameters()} == {BF16}
    for seed in (1, 2):
        ids = input_ids(VOCAB, seed=seed)
        logits, taps = run_traced(loaded.model, ids)
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True, output_attentions=True)
        names = hidden_state_taps(len(out.attentions), LAST.get(family, "ln_final.hook_normalized"))
        diffs = {name: max_diff(hidden, taps[name]) for name, hidden in zip(names, out.hidden_states)}
        diffs.update({f"blocks.{layer}.attn.hook_pattern": max_diff(pattern, taps[f"blocks.{layer}.attn.hook_pattern"])
                      for layer, pattern in enumerate(out.attentions)})
        diffs["logits"] = max_diff(out.logits if family == "bert" else out.logits[:, -1], logits)
        assert taps[names[-1]].dtype == BF16 and out.hidden_states[-1].dtype == BF16
        assert max(diffs.values()) == 0.0, {name: diff for name, diff in diffs.items() if diff}


@pytest.mark.parametrize("kv_cache", [True, False])
def test_greedy_decoding_matches_generate_in_bfloat16(pair, kv_cache):
    family, hf, loaded = pair
    if family == "bert":
        pytest.skip("an encoder does not decode")
    from tracer.capture.run import generate

    for seed in (2, 7):   # 7: a prompt whose GPT-2 decode torch's fused tanh-GELU changed at step 8
        ids = input_ids(VOCAB, seed=seed, n=20)
        ours = generate(loaded, as_text(ids), max_new_tokens=N_NEW, kv_cache=kv_cache).output_ids
        assert ours == hf_greedy(hf, ids, N_NEW), f"prompt seed {seed}"
        assert len(set(ours)) > 1


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_t5_runs_in_bfloat16_and_matches_bit_for_bit(tmp_path, feed_forward):
    """T5's norm scales x by a float32 variance (which promotes it) and casts back to the weight's dtype,
    as T5LayerNorm does; without that cast a bfloat16 T5 stopped with a dtype error in the first linear layer.
    Encoder and decoder hidden states, every attention pattern and the logits are equal; so is a greedy decode."""
    from test_hf_marian import stack_parity, tracer_taps
    from test_hf_t5 import COMMON, SOURCE_SEED, hf_greedy_seq2seq

    from tracer.capture.run import generate

    version = "v10" if feed_forward == "relu" else "v11"       # test_hf_t5's models, whose decodes vary
    options = dict(feed_forward_proj=feed_forward, tie_word_embeddings=version == "v10")
    save_and_read(make_hf(transformers.T5ForConditionalGeneration, transformers.T5Config(**{**COMMON, **options}),
                          seed=3 if version == "v10" else 0).to(torch.float32), tmp_path)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=BF16, attn_implementation="eager").eval()
    loaded = load_model(tmp_path, dtype="bfloat16")
    src, tgt = input_ids(VOCAB, seed=SOURCE_SEED[version]), input_ids(VOCAB, seed=5, n=12)
    tgt[0, 0] = 0                                                    # the decoder start (pad)
    logits, taps = tracer_taps(loaded.model, src, tgt)
    with torch.no_grad():
        out = hf(input_ids=src, decoder_input_ids=tgt, output_hidden_states=True, output_attentions=True)
    diffs = stack_parity(out, taps, 2, {"encoder": "encoder.ln_final.hook_normalized",
                                        "decoder": "decoder.ln_final.hook_normalized"})
    diffs["logits"] = max_diff(out.logits, logits)
    assert logits.dtype == BF16 and max(diffs.values()) == 0.0, {name: diff for name, diff in diffs.items() if diff}
    ours = generate(loaded, as_text(src), max_new_tokens=N_NEW).output_ids
    assert ours == hf_greedy_seq2seq(hf, src, N_NEW) and len(set(ours)) > 1
