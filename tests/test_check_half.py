"""`tracer check` on a model run in bfloat16 or float16 (`tracer run --dtype`): every relation holds
within that dtype's rounding, and an alteration beyond it still fails.

Before, check held a bf16 run to float32's tolerance and failed every bundled model (norms, Q·Kᵀ,
residuals, the top-k against the recorded probabilities)."""

from __future__ import annotations

import numpy as np
import pytest
from session_helpers import copy_trace

from tracer.capture import trace_text
from tracer.nn.loading import load_model
from tracer.trace.check import COMPUTE_ROUNDOFF, arithmetic_tolerance, check_trace

TEXTS = {"de-en-tiny": "die katze trank die milch weil sie hungrig war",
         "en-gpt-tiny": "the cat drank the milk because it was hungry",
         "en-bert-tiny": "the cat drank the [MASK] because it was hungry"}


@pytest.fixture(scope="module")
def traces():
    cache = {}

    def get(model, dtype, kv_cache=True):
        key = (model, dtype, kv_cache)
        if key not in cache:
            cache[key] = trace_text(load_model(model, dtype=dtype), TEXTS[model], max_new_tokens=8, kv_cache=kv_cache)
        return cache[key]

    return get


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model", list(TEXTS))
def test_a_half_precision_run_passes_check_and_says_what_it_allowed(traces, model, dtype):
    trace = traces(model, dtype)
    assert trace.model["dtype"] == dtype
    report = check_trace(trace)
    assert report.ok, report.failures[:3]
    assert report.checked > 20
    assert report.compute_dtype == dtype and f"computed in {dtype}" in report.tolerance_note


def test_float32_keeps_its_own_tolerance(traces):
    report = check_trace(traces("en-gpt-tiny", None))
    assert report.ok and report.compute_dtype is None and report.tolerance_note is None
    assert arithmetic_tolerance(None) == 1e-3
    assert arithmetic_tolerance("bfloat16") == 2 * COMPUTE_ROUNDOFF["bfloat16"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("model, step_id", [("en-gpt-tiny", "blocks.1.hook_resid_post@1"),
                                            ("en-gpt-tiny", "blocks.0.attn.hook_attn_scaled@1"),
                                            ("de-en-tiny", "decoder.0.cross_attn.hook_z@2"),
                                            ("en-bert-tiny", "blocks.0.ln2.hook_normalized")])
def test_an_alteration_beyond_the_dtypes_rounding_still_fails(traces, model, dtype, step_id):
    trace = traces(model, dtype, kv_cache=False)

    def nudge(array):  # 5 % of the step's scale at its largest value: well past two roundoffs
        at = np.unravel_index(int(np.argmax(np.abs(array))), array.shape)
        array[at] += 0.05 * max(1.0, float(np.abs(array).max()))
        return array

    report = check_trace(copy_trace(trace, {step_id: nudge}))
    assert [f.step_id for f in report.failures] and step_id in {f.step_id for f in report.failures}, report.failures
