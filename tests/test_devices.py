"""Devices and dtypes, on any machine: --device cuda without CUDA, half-precision models, tap references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tracer.capture import trace_text
from tracer.capture import run as capture_run
from tracer.capture.device import resolve_device
from tracer.capture.recorder import Recorder
from tracer.errors import BadInput
from tracer.nn.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the test is for one without")


@no_cuda
def test_run_on_cuda_without_cuda_exits_2_without_traceback(seq2seq_model):
    result = subprocess.run(
        [sys.executable, "-m", "tracer", "run", "ich bin piyush", "--device", "cuda", "--no-tui",
         "--model", str(seq2seq_model)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "CUDA is not available" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("Error: ")


@no_cuda
@pytest.mark.parametrize("choice", ["cuda", "cuda:0", "cuda:3", "CUDA"])
def test_cuda_choices_without_cuda_are_bad_input(choice):
    with pytest.raises(BadInput, match="CUDA is not available"):
        resolve_device(choice)


def test_auto_and_cpu_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None).type == resolve_device("auto").type
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(BadInput, match="choose auto, cpu, cuda"):
        resolve_device("tpu")


def test_cpu_trace_names_its_device(seq2seq_trace):
    assert seq2seq_trace.device == "cpu"
    assert seq2seq_trace.model["dtype"] == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_models_are_stored_as_float32(gpt_model, dtype):
    full = trace_text(load_model(gpt_model, "cpu"), "ich bin piyush", max_new_tokens=2)
    half = trace_text(load_model(gpt_model, "cpu", dtype=dtype), "ich bin piyush", max_new_tokens=2)
    assert half.model["dtype"] == dtype
    assert [s.id for s in half.steps] == [s.id for s in full.steps]
    for a, b in zip(full.steps, half.steps):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), a.id
        assert b.dtype in ("float32", "int64", "bool"), b.id
    # the half model computes the same function, to half precision
    scale = float(np.abs(full["blocks.0.hook_resid_post@1"]).max())
    diff = float(np.abs(full["blocks.0.hook_resid_post@1"] - half["blocks.0.hook_resid_post@1"]).max())
    assert diff <= 0.05 * scale


def test_unknown_dtype_is_bad_input(gpt_model):
    with pytest.raises(BadInput, match="dtype"):
        load_model(gpt_model, "cpu", dtype="int3")


class CloningRecorder(Recorder):
    """Copies every value as it passes: what the Recorder would need if the model wrote in place."""

    def record(self, name, value):
        self.values.append((name, value.detach().clone()))


@pytest.mark.parametrize("fixture", ["seq2seq_model", "gpt_model", "bert_model"])
def test_taps_can_keep_references(request, monkeypatch, fixture):
    """The Recorder keeps references, not copies: no value changes after its tap saw it."""
    loaded = load_model(request.getfixturevalue(fixture), "cpu")
    by_reference = trace_text(loaded, "ich bin piyush", max_new_tokens=3)
    monkeypatch.setattr(capture_run, "Recorder", CloningRecorder)
    copied = trace_text(loaded, "ich bin piyush", max_new_tokens=3)
    assert len(by_reference) == len(copied)
    for a, b in zip(by_reference.steps, copied.steps):
        assert np.array_equal(a.data, b.data, equal_nan=True), a.id


def test_traced_and_untraced_runs_agree(gpt_model):
    from tracer.capture import generate

    loaded = load_model(gpt_model, "cpu")
    plain = generate(loaded, "ich bin piyush", max_new_tokens=3)
    traced = generate(loaded, "ich bin piyush", max_new_tokens=3, traced=True)
    assert plain.trace is None and traced.trace is not None
    assert plain.output_ids == traced.output_ids
    assert plain.predictions == traced.predictions


def test_batched_copy_packs_and_unpacks_every_dtype_and_layout():
    """The CUDA path's packing (one buffer per dtype, split back by shape), run on CPU tensors."""
    from tracer.capture.recorder import batched_to_host, host_array

    torch.manual_seed(0)
    base = torch.randn(2, 5, 3, 4)
    values = [
        ("ids", torch.tensor([4, 9, 57])),
        ("q", base[0]),
        ("z", base[1].transpose(0, 1)),                               # not contiguous
        ("mask", torch.ones(5, 5, dtype=torch.bool).tril()[None].expand(3, 5, 5)[0]),  # stride 0 origin
        ("pos", torch.randn(1, 6)[0].expand(4, 6)),                   # expanded
        ("bf", torch.randn(3, 2).to(torch.bfloat16)),
        ("half", torch.randn(7).to(torch.float16)),
        ("probs", torch.randn(3).softmax(-1)[0]),                     # 0-d
        ("empty", torch.zeros(0, 4)),
        ("scores", torch.full((2, 2), float("-inf"))),
    ]
    packed = batched_to_host(values, pin=False)
    assert [name for name, _ in packed] == [name for name, _ in values]
    for (name, array), (_, value) in zip(packed, values):
        expected = host_array(value)
        assert array.shape == tuple(value.shape) and array.dtype == expected.dtype, name
        assert np.array_equal(array, expected), name
    assert packed[5][1].dtype == np.float32 and packed[6][1].dtype == np.float32


class BatchedRecorder(Recorder):
    """Sends every pass through the CUDA path's packing, with ordinary (unpinned) memory."""

    def pass_values(self):
        from tracer.capture.recorder import batched_to_host

        values, self.values = self.values, []
        return batched_to_host([(name, value[0]) for name, value in values], pin=False) if values else []


@pytest.mark.parametrize("fixture", ["seq2seq_model", "gpt_model", "bert_model"])
def test_whole_traces_through_the_batched_copy_are_identical(request, monkeypatch, fixture):
    loaded = load_model(request.getfixturevalue(fixture), "cpu")
    direct = trace_text(loaded, "ich bin piyush", max_new_tokens=3)
    monkeypatch.setattr(capture_run, "Recorder", BatchedRecorder)
    batched = trace_text(loaded, "ich bin piyush", max_new_tokens=3)
    assert [s.id for s in direct.steps] == [s.id for s in batched.steps]
    for a, b in zip(direct.steps, batched.steps):
        assert (a.shape, a.dtype) == (b.shape, b.dtype), a.id
        assert np.array_equal(a.data, b.data, equal_nan=True), a.id
