"""The step list of a training trace (tracer finetune): training step, then its forward pass, loss,
backward pass and AdamW update, each step once and in computation order."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def training_trace(tmp_path_factory):
    from tracer.capture.finetune import FinetuneRequest, finetune
    from tracer.nn.loading import load_model

    loaded = load_model("de-en-tiny")
    return finetune(loaded, FinetuneRequest("ich bin piyush", target="i am piyush", steps=2, lora_rank=2)).trace


def test_training_steps_group_by_phase_in_computation_order(training_trace):
    from tracer.trace import anatomy
    from tracer.tui.view.outline import build_outline

    root = build_outline(training_trace)
    assert [node.label for node in root.children] == ["Training step 1", "Training step 2"]
    for number, node in enumerate(root.children, start=1):
        assert [phase.label for phase in node.children] == list(anatomy.PHASES.values())
        for phase, key in zip(node.children, anatomy.PHASES):
            leaves = [n.step_id for n in phase.walk() if n.step_id is not None]
            steps = [training_trace.step(step_id) for step_id in leaves]
            assert steps and all(s.train_step == number and anatomy.phase_of(s.kind) == key for s in steps)
            # no group repeats its phase's name inside it
            assert all(n.label != phase.label for n in phase.walk() if n is not phase)
    leaves = [n.step_id for n in root.walk() if n.step_id is not None]
    assert leaves == [s.id for s in training_trace.steps]  # every step once, in the order it was computed
