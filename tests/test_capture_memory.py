"""What a traced decode holds besides its tensors: the steps of a pass share their labels, dtype names and
shapes rather than a copy each (a 128 + 40 GPT-2-small decode has 9,360 steps), and a pass converted to
another dtype hands the heap's freed pages back while it is copied, not only at its end."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

import tracer.capture.recorder as recorder
from tracer.capture.run import generate
from tracer.nn.loading import load_model


def test_the_steps_of_a_pass_share_their_labels_dtype_names_and_shapes():
    trace = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=4, traced=True).trace
    by_pass = defaultdict(list)
    for step in trace:
        by_pass[step.decode_step].append(step)
    assert len(by_pass) == 4
    for steps in by_pass.values():
        for attribute in ("labels", "dtype", "shape"):
            alike = defaultdict(set)  # equal values -> the distinct objects holding them
            for step in steps:
                value = getattr(step, attribute)
                alike[repr(value)].add(id(value))
            assert all(len(objects) == 1 for objects in alike.values()), attribute
        assert any(step.labels for step in steps) and len({repr(step.labels) for step in steps}) > 1


def test_the_cached_steps_of_a_trace_share_one_assembly_function():
    """Not one closure per KV-cached step (9,000 of them in a 128 + 40 decode: 1.6 MB)."""
    trace = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=4, traced=True).trace
    cached = [step for step in trace if step.cached]
    assert len(cached) > 100 and len({id(step._assemble) for step in cached}) == 1
    step = trace.step("blocks.0.attn.hook_pattern@4")
    assert step.data.shape == step.shape and step.peek().shape == step.shape


def test_the_steps_labels_are_still_the_tokens_of_their_axes():
    result = generate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=3, traced=True)
    step = result.trace.step("blocks.0.attn.hook_pattern@3")
    tokens = step.labels["key"]
    assert len(tokens) == step.shape[step.axes.index("key")] == len(step.labels["query"])
    assert result.trace.step("blocks.0.hook_resid_pre@3").labels == {"pos": tokens}


def test_a_pass_converted_to_float16_gives_freed_pages_back_as_it_copies(monkeypatch):
    """Each large value is let go once copied; the heap is trimmed after every RELEASE_EVERY_BYTES of
    them (here: after each), so a converted pass never holds its values and their copy whole at once."""
    calls = []
    monkeypatch.setattr(recorder, "RELEASE_EVERY_BYTES", 1)
    monkeypatch.setattr(recorder, "release_freed_memory", lambda: calls.append(1))
    values = [(f"hook_{i}", torch.randn(1, 64, 1024)) for i in range(5)]  # 256 KB each: over KEEP_AS_IS_BYTES
    expected = [value[0].numpy().astype(np.float16) for _, value in values]
    out = recorder.values_to_host([(name, value[0]) for name, value in values], torch.float16)
    assert all(np.array_equal(array, want) for (_, array), want in zip(out, expected))
    assert len(calls) == 5
