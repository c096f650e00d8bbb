"""Shared fixtures: tiny random model folders (built once per test session) and clean data dirs."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_sessions(tmp_path, monkeypatch):
    """Every test saves sessions into its own folder, never the user's."""
    folder = tmp_path / "sessions"
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def isolated_hub_cache(tmp_path, monkeypatch):
    """No test reads the user's Hugging Face cache or reaches the hub: an empty cache, offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def make_model(tmp_path_factory):
    """make_model(arch=..., positional=..., ...) -> folder of a small random model (cached)."""
    from tracer.nn import ModelConfig
    from tracer.nn.random_model import make_random_model

    cache = {}

    def build(**overrides):
        settings = dict(vocab_size=120, d_model=32, n_heads=4, d_ff=64, n_layers=2, n_decoder_layers=2, max_positions=40)
        settings.update(overrides)
        key = tuple(sorted(settings.items()))
        if key not in cache:
            name = "-".join(str(v) for v in overrides.values()) or "default"
            folder = tmp_path_factory.mktemp(f"model-{name}")
            cache[key] = make_random_model(folder, ModelConfig(name=f"tiny-{name}", **settings))
        return cache[key]

    return build


@pytest.fixture(scope="session")
def seq2seq_model(make_model):
    """An encoder-decoder like the paper's: sinusoidal positions, post-norm, ReLU."""
    return make_model(arch="encoder-decoder")


@pytest.fixture(scope="session")
def gpt_model(make_model):
    return make_model(arch="decoder", positional="learned", norm="pre", activation="gelu", scale_embeddings=False)


@pytest.fixture(scope="session")
def bert_model(make_model):
    return make_model(arch="encoder", positional="learned", norm="post", activation="gelu", scale_embeddings=False)


@pytest.fixture(scope="session")
def seq2seq_trace(seq2seq_model):
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    return trace_text(load_model(seq2seq_model), "ich bin piyush", max_new_tokens=3)
