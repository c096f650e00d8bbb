"""CPU <-> CUDA parity and the no-sync-per-tap rule. Skipped, with the reason, where CUDA is absent."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tracer.capture import trace_text
from tracer.capture.recorder import Recorder
from tracer.nn.loading import load_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA is not available on this machine: CPU/CUDA parity and sync checks need a GPU",
)

TOLERANCE = 1e-4  # max abs difference for float32, per step


def assert_same_trace(cpu, gpu, tolerance=TOLERANCE):
    """Every step: same id, shape and dtype; equal ints/bools; floats within `tolerance`; same -inf/nan places."""
    assert [s.id for s in cpu.steps] == [s.id for s in gpu.steps]
    worst = 0.0
    for a, b in zip(cpu.steps, gpu.steps):
        assert a.shape == b.shape and a.dtype == b.dtype, a.id
        x, y = a.data, b.data
        if np.issubdtype(x.dtype, np.floating):
            finite = np.isfinite(x)
            assert np.array_equal(finite, np.isfinite(y)), f"{a.id}: non-finite values differ"
            assert np.array_equal(x[~finite], y[~finite], equal_nan=True), f"{a.id}: non-finite values differ"
            diff = float(np.abs(x[finite].astype(np.float64) - y[finite]).max()) if finite.any() else 0.0
            assert diff <= tolerance, f"{a.id}: max abs diff {diff:.3g} > {tolerance}"
            worst = max(worst, diff)
        else:
            assert np.array_equal(x, y), a.id
    assert cpu.output["ids"] == gpu.output["ids"]
    return worst


@pytest.mark.parametrize("fixture", ["seq2seq_model", "gpt_model", "bert_model"])
def test_cpu_and_cuda_traces_match(request, fixture):
    folder = request.getfixturevalue(fixture)
    cpu = trace_text(load_model(folder, "cpu"), "ich bin piyush", max_new_tokens=4)
    gpu = trace_text(load_model(folder, "cuda"), "ich bin piyush", max_new_tokens=4)
    worst = assert_same_trace(cpu, gpu)
    print(f"{fixture}: {len(gpu)} steps, max abs diff {worst:.3g}")
    assert gpu.device.startswith("cuda:") and torch.cuda.get_device_name() in gpu.device
    assert cpu.device == "cpu"


def test_rotary_swiglu_parity(make_model):
    folder = make_model(arch="decoder", positional="rotary", norm="pre", activation="swiglu", scale_embeddings=False)
    cpu = trace_text(load_model(folder, "cpu"), "ich bin piyush", max_new_tokens=3)
    gpu = trace_text(load_model(folder, "cuda:0"), "ich bin piyush", max_new_tokens=3)
    assert_same_trace(cpu, gpu)


def sync_warnings(fn):
    """Run fn under torch's sync debug mode 'warn'; return (result, number of synchronising calls)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return result, len(syncs)


@pytest.mark.parametrize("fixture", ["seq2seq_model", "gpt_model"])
def test_capture_does_not_synchronise_per_tap(request, fixture):
    loaded = load_model(request.getfixturevalue(fixture), "cuda")
    model = loaded.model
    ids = torch.tensor([[5, 6, 7, 8]], device="cuda")  # made before the checked region: a host->device copy syncs
    recorder = Recorder(model)
    with torch.no_grad(), recorder.attached():
        if loaded.cfg.arch == "encoder-decoder":
            memory = model.encode(ids)
            torch.cuda.synchronize()
            fn = lambda: model.decode(ids, memory)  # noqa: E731
            recorder.values.clear()
        else:
            fn = lambda: model(ids)  # noqa: E731
        # The forward pass with every tap recording: no synchronisation at all ("error" raises on one).
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        n_taps = len(recorder.values)
        assert n_taps > 20
        # Bringing the pass to the host: exactly one synchronisation, however many taps.
        values, syncs = sync_warnings(recorder.pass_values)
    assert len(values) == n_taps
    assert syncs == 1, f"{syncs} synchronising calls to bring {n_taps} taps to the host"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_models_on_cuda_are_stored_as_float32(gpt_model, dtype):
    full = trace_text(load_model(gpt_model, "cuda"), "ich bin piyush", max_new_tokens=2)
    half = trace_text(load_model(gpt_model, "cuda", dtype=dtype), "ich bin piyush", max_new_tokens=2)
    assert half.model["dtype"] == dtype and full.model["dtype"] == "float32"
    assert [s.id for s in half.steps] == [s.id for s in full.steps]
    for a, b in zip(full.steps, half.steps):
        assert a.dtype == b.dtype and a.shape == b.shape, a.id
    probs = [s for s in half.steps if s.kind == "probs"][0]
    assert probs.dtype == "float32" and abs(float(probs.data.sum()) - 1) < 1e-2


def test_cuda_index_out_of_range_is_bad_input():
    from tracer.capture.device import resolve_device
    from tracer.errors import BadInput

    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(BadInput, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_run_command_on_cuda(gpt_model):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tracer", "run", "ich bin piyush", "--device", "cuda", "--no-tui",
         "--model", str(gpt_model), "--max-new-tokens", "2"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert torch.cuda.get_device_name() in " ".join(result.stdout.split())  # the summary's header names the GPU
    assert "Traceback" not in result.stderr
