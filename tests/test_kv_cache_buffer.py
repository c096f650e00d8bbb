"""The KV cache's buffers: a decode that knows its length writes each pass's keys and values into one
buffer per attention, in place, instead of allocating the whole cache anew every step (torch.cat),
and its traces are bit for bit those of the torch.cat cache on every architecture that decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tracer.capture.run as run
from tracer.capture.run import generate
from tracer.nn.config import ModelConfig
from tracer.nn.loading import load_model
from tracer.nn.model import KVCache
from tracer.nn.random_model import make_random_model

SMALL = dict(vocab_size=120, d_model=32, n_heads=4, d_ff=48, n_layers=2, max_positions=40)
LLAMA = dict(arch="decoder", positional="rotary", norm="pre", norm_type="rmsnorm", activation="swiglu",
             n_kv_heads=2, head_dim=6, qkv_bias=False, attn_out_bias=False, mlp_bias=False, softmax_fp32=True,
             scale_embeddings=False, tie_embeddings=False, layer_norm_eps=1e-6)
# the families Hugging Face import builds, as tracer's own random models (tests/test_hf_anatomy.py)
RANDOM = {
    "llama-gqa": LLAMA,
    "qwen2-sliding-window": dict(LLAMA, qkv_bias=True, n_kv_heads=1, sliding_window=4, sliding_layers=[1]),
    "mistral-sliding-window": dict(LLAMA, sliding_window=3),
    "t5": dict(positional="relative", norm="pre", norm_type="rmsnorm_t5", activation="gated_gelu_tanh", head_dim=6,
               qkv_bias=False, attn_out_bias=False, mlp_bias=False, attn_scale=False, scale_embeddings=False,
               tie_embeddings=False, layer_norm_eps=1e-6, relative_buckets=8, relative_max_distance=16),
    "marian": dict(positional="sinusoidal", sinusoid_layout="halves", activation="silu", logits_bias=True),
}
NEW = 12


class ConcatCache(KVCache):
    """The cache as it was before its buffers: every extension a torch.cat of the cached keys and values
    with the new ones (`capacity` ignored)."""

    def extend(self, attention, k, v, grows=True):
        if attention in self.kv:
            old_k, old_v = self.kv[attention]
            k, v = torch.cat([old_k, k], dim=1), torch.cat([old_v, v], dim=1)
        self.kv[attention] = (k, v)
        return k, v


class StorageSpy(KVCache):
    """The cache, noting for each attention the storage its cached keys and values are in after each pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.storages: dict[torch.nn.Module, list[tuple[int, int, int]]] = {}

    def extend(self, attention, k, v, grows=True):
        k, v = super().extend(attention, k, v, grows)
        self.storages.setdefault(attention, []).append(
            (k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr(), k.untyped_storage().nbytes() - k.nbytes))
        return k, v


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    def get(name):
        if name in RANDOM:
            folder = tmp_path_factory.mktemp(name)
            make_random_model(folder, ModelConfig(name=name, **SMALL, **RANDOM[name]), seed=3)
            name = str(folder)
        loaded = load_model(name)
        loaded.tokenizer.stop_ids = set()  # random weights: decode every step asked for
        return loaded

    return get


TEXTS = {"de-en-tiny": "ich bin piyush", "en-gpt-tiny": "the cat drank the"}


@pytest.mark.parametrize("name", [*TEXTS, *RANDOM])
def test_the_buffered_cache_traces_bit_for_bit_as_the_concatenated_one(models, monkeypatch, name):
    loaded = models(name)
    text = TEXTS.get(name, "die katze trank die milch")
    buffered = generate(loaded, text, max_new_tokens=NEW, traced=True)
    monkeypatch.setattr(run, "KVCache", ConcatCache)
    concatenated = generate(loaded, text, max_new_tokens=NEW, traced=True)
    assert buffered.output_ids == concatenated.output_ids and len(buffered.output_ids) == NEW
    assert buffered.trace.ids == concatenated.trace.ids
    assert any(step.cached for step in buffered.trace)
    for a, b in zip(buffered.trace, concatenated.trace):
        assert a.rows.dtype == b.rows.dtype and np.array_equal(a.rows, b.rows), a.id


@pytest.mark.parametrize("name", ["en-gpt-tiny", "de-en-tiny", "llama-gqa"])
def test_a_decode_writes_its_cache_in_place(models, monkeypatch, name):
    """Each attention's keys and values stay in one storage from the first pass to the last, and at the
    last pass it is full: room for exactly the positions the decode ran."""
    loaded = models(name)
    spies = []
    monkeypatch.setattr(run, "KVCache", lambda **kwargs: spies.append(StorageSpy(**kwargs)) or spies[-1])
    generate(loaded, TEXTS.get(name, "die katze trank die milch"), max_new_tokens=NEW, traced=True)
    (spy,) = spies
    cfg = loaded.cfg  # an encoder-decoder's decoder layers have a self- and a cross-attention each
    assert len(spy.storages) == (2 * cfg.n_decoder_layers if cfg.arch == "encoder-decoder" else cfg.n_layers)
    for attention, seen in spy.storages.items():
        assert len(seen) == NEW
        assert len({(k, v) for k, v, _ in seen}) == 1, attention  # never reallocated
        assert seen[-1][2] == 0, attention                              # no room left over


def test_past_its_capacity_the_cache_grows_and_agrees(models):
    """A cache given too little room (or none) reallocates as it must; the logits are the same bit for bit."""
    loaded = models("en-gpt-tiny")
    ids = loaded.tokenizer.encode("the cat drank the")[0]

    def decode(cache):
        out = [loaded.model(torch.tensor([ids]), cache=cache)]
        for token in range(5, 5 + NEW):
            out.append(loaded.model(torch.tensor([[token]]), cache=cache))
        return torch.stack(out)

    attention = loaded.model.layers[0].attn
    with torch.no_grad():
        expected = decode(ConcatCache())
        for room, lasting in ((None, False), (len(ids) + 2, False), (len(ids) + NEW, True)):
            cache = KVCache(capacity=room)
            assert torch.equal(decode(cache), expected), room
            keys = cache.kv[attention][0]
            assert keys.shape[1] == len(ids) + NEW
            # only a buffer that was never outgrown may be shared with a trace: one reallocated each
            # pass past the capacity would be kept alive, one copy per step, by the trace's views
            assert cache.holds(keys) == lasting and bool(cache.lasting) == lasting, room


@pytest.mark.parametrize("name,taps", [("en-gpt-tiny", ("hook_k", "hook_v")), ("llama-gqa", ("hook_rot_k", "hook_v"))])
def test_the_trace_keeps_the_cached_keys_and_values_without_a_copy(models, monkeypatch, name, taps):
    """The rows a KV-cached trace records at the taps of what the cache keeps (the keys after RoPE, the
    values) are the cache's own memory, at every decoding step; the other taps' are not."""
    loaded = models(name)
    spies = []
    monkeypatch.setattr(run, "KVCache", lambda **kwargs: spies.append(StorageSpy(**kwargs)) or spies[-1])
    trace = generate(loaded, TEXTS.get(name, "die katze trank die milch"), max_new_tokens=NEW, traced=True).trace
    (spy,) = spies
    buffers = [buffer for pair in spy.buffers.values() for buffer in pair]
    assert buffers

    def in_cache(array):
        start = array.ctypes.data
        return any(b.data_ptr() <= start and start + array.nbytes <= b.data_ptr() + b.untyped_storage().nbytes()
                   for b in buffers)

    for step in trace:
        if step.kind in ("k", "v", "rot_k", "q"):
            assert in_cache(step.rows) == (step.name.rsplit(".", 1)[-1] in taps), step.id
