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
        self.values.append((name, value.detach()[0].clone()))


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
