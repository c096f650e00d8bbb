"""The recorder's trip to the host: values grouped by (device, dtype), one packed copy per group,
each value back in recording order, floats in the storage dtype and nothing else converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer.capture.recorder import Recorder, batched_to_host, groups, host_array, stored_dtype, values_to_host

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mixed_pass() -> list[tuple[str, torch.Tensor]]:
    """A pass's values of four dtypes, interleaved, in odd layouts."""
    torch.manual_seed(0)
    base = torch.randn(2, 5, 3, 4)
    return [
        ("ids", torch.tensor([4, 9, 57])),
        ("q", base[0]),
        ("mask", torch.ones(5, 5, dtype=torch.bool).tril()),
        ("z", base[1].transpose(0, 1)),                       # not contiguous
        ("bf", torch.randn(3, 2).to(torch.bfloat16)),
        ("pos", torch.randn(1, 6)[0].expand(4, 6)),           # expanded
        ("wide", torch.randn(2, 2, dtype=torch.float64)),
        ("probs", torch.randn(3).softmax(-1)[0]),             # 0-d
        ("empty", torch.zeros(0, 4)),
        ("scores", torch.full((2, 2), float("-inf"))),
        ("ids2", torch.tensor([[1, 2]])),
    ]


def test_groups_are_by_device_and_dtype_in_recording_order():
    """The grouping alone, on tensors of two devices ("meta" has no data, only a device and a dtype)."""
    values = [("a", torch.zeros(2)), ("b", torch.zeros(2, device="meta")), ("c", torch.zeros(2, dtype=torch.long)),
              ("d", torch.zeros(3)), ("e", torch.zeros(1, device="meta")), ("f", torch.zeros(1, device="meta", dtype=torch.float16))]
    found = groups(values)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert list(found) == [(cpu, torch.float32), (meta, torch.float32), (cpu, torch.int64), (meta, torch.float16)]
    assert found[(cpu, torch.float32)] == [0, 3] and found[(meta, torch.float32)] == [1, 4]
    assert found[(cpu, torch.int64)] == [2] and found[(meta, torch.float16)] == [5]


@pytest.mark.parametrize("store", [None, torch.float32, torch.float16])
def test_a_mixed_pass_comes_back_value_by_value_in_order(store):
    values = mixed_pass()
    expected = [(name, host_array(value, store)) for name, value in values]
    back = values_to_host(list(values), store)
    assert [name for name, _ in back] == [name for name, _ in values]
    for (name, array), (_, want), (_, value) in zip(back, expected, values):
        assert array.shape == tuple(value.shape), name
        assert array.dtype == want.dtype, name
        assert np.array_equal(array, want), name
        if not value.dtype.is_floating_point:
            assert array.dtype == torch.empty(0, dtype=value.dtype).numpy().dtype, name  # never converted
    floats = {name: array.dtype for (name, array), (_, value) in zip(back, values) if value.dtype.is_floating_point}
    if store is None:
        assert floats == {"q": np.float32, "z": np.float32, "bf": np.float32, "pos": np.float32, "wide": np.float64,
                          "probs": np.float32, "empty": np.float32, "scores": np.float32}
    else:
        assert set(floats.values()) == {torch.empty(0, dtype=store).numpy().dtype}


def test_the_host_copy_shares_one_buffer_per_dtype_and_lets_the_tensors_go():
    """One packed copy per (device, dtype): a dtype's arrays are views of one buffer. The values'
    list is emptied as they are copied, so no tensor outlives its copy (the pass's peak)."""
    values = mixed_pass()
    back = dict(values_to_host(values))
    assert values == []
    def address(name):
        return back[name].__array_interface__["data"][0]

    # float32 values back to back in recording order (an empty array's address means nothing)
    run = ["q", "z", "pos", "probs", "scores"]
    for before, after in zip(run, run[1:]):
        assert address(after) == address(before) + back[before].nbytes, (before, after)
    assert address("ids2") == address("ids") + back["ids"].nbytes
    assert all(back[name].flags.c_contiguous for name in back)


def test_the_device_path_packs_alike_and_converts_before_the_copy():
    """The device path (cat, convert, one copy per dtype), run on CPU tensors with ordinary memory."""
    values = mixed_pass()
    for store in (None, torch.float16):
        direct = values_to_host(list(values), store)
        staged = batched_to_host(values, pin=False, store_dtype=store)
        for (name, a), (_, b) in zip(direct, staged):
            assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_stored_dtype():
    assert stored_dtype(torch.bfloat16) == torch.float32 and stored_dtype(torch.float64) == torch.float64
    assert stored_dtype(torch.float64, torch.float16) == torch.float16
    assert stored_dtype(torch.int64, torch.float16) == torch.int64 and stored_dtype(torch.bool, torch.float16) == torch.bool


def test_a_recorder_with_a_store_dtype_drops_the_batch_axis_and_converts(gpt_model):
    from tracer.nn.loading import load_model

    loaded = load_model(gpt_model, "cpu")
    recorder = Recorder(loaded.model, store_dtype=torch.float16)
    with torch.no_grad(), recorder.attached():
        loaded.model(torch.tensor([[1, 2, 3]]))
    recorded = dict(recorder.pass_values())
    assert recorded["hook_tokens"].dtype == np.int64 and recorded["hook_tokens"].tolist() == [1, 2, 3]
    assert recorded["blocks.0.attn.hook_pattern"].dtype == np.float16
    assert recorded["blocks.0.attn.hook_mask"].dtype == np.bool_
    assert recorded["blocks.0.attn.hook_q"].shape[0] == 3  # [pos, head, d_head]: no batch axis
    assert recorder.pass_values() == []


@cuda
def test_a_pass_over_the_cpu_and_a_gpu_synchronises_once_and_keeps_the_order():
    """A model spread over devices: CPU values packed on the host, the GPU's in one copy, one synchronisation."""
    values = [(name, value.to("cuda") if i % 2 else value) for i, (name, value) in enumerate(mixed_pass())]
    expected = [host_array(value.cpu(), torch.float16) for _, value in values]
    syncs = []
    real = torch.cuda.Stream.synchronize

    def counted(stream):
        syncs.append(stream.device)
        return real(stream)

    torch.cuda.Stream.synchronize = counted
    try:
        back = values_to_host(list(values), torch.float16)
    finally:
        torch.cuda.Stream.synchronize = real
    assert len(syncs) == 1
    for (name, array), want in zip(back, expected):
        assert array.dtype == want.dtype and np.array_equal(array, want), name


def test_a_large_value_that_owns_its_memory_is_kept_not_copied():
    """A prompt pass's values are kept as they are (no second copy at the peak); a slice of a larger
    tensor, a value that needs converting and a model's weight are copied."""
    from tracer.capture.recorder import KEEP_AS_IS_BYTES

    n = KEEP_AS_IS_BYTES // 4
    own = torch.randn(2, n // 2)
    bigger = torch.randn(4, n)
    weight = torch.randn(n)
    values = [("own", own), ("slice", bigger[1]), ("weight", weight), ("small", torch.randn(3))]
    back = dict(values_to_host(list(values), model_memory=frozenset({weight.untyped_storage().data_ptr()})))
    assert np.shares_memory(back["own"], own.numpy())
    assert not np.shares_memory(back["slice"], bigger.numpy())
    assert not np.shares_memory(back["weight"], weight.numpy())
    half = dict(values_to_host([("own", own)], torch.float16))
    assert half["own"].dtype == np.float16 and not np.shares_memory(half["own"], own.numpy())
    for name, value in values:
        assert np.array_equal(back[name], value.numpy()), name


@pytest.mark.parametrize("k", [1, 3, 5, 9, 12])
def test_top_indices_are_those_of_a_stable_sort(k):
    """The top-k from a partition equals the full stable sort's, ties in index order included."""
    from tracer.capture.run import top_indices

    rng = np.random.default_rng(k)
    for probs in (rng.random(50), np.repeat(rng.random(6), 2)[rng.permutation(12)],  # ties at every rank
                  np.array([0.5, np.nan, 0.2, 0.5]), np.zeros(10, dtype=np.float32)):
        expected = np.argsort(-probs, kind="stable")[:k]
        assert top_indices(probs, k).tolist() == expected.tolist()
