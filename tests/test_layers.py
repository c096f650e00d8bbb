"""Layer rules from DESIGN.md, checked in fresh interpreters via sys.modules."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("module", ["tracer.trace", "tracer.trace.export", "tracer.trace.load", "tracer.trace.check", "tracer.cli", "tracer"])
def test_trace_layer_never_imports_torch(module):
    assert "torch" not in modules_after_import(module)


def test_nn_never_imports_trace_or_ui():
    loaded = modules_after_import("tracer.nn; import tracer.nn.loading; import tracer.nn.random_model")
    assert not {m for m in loaded if m.startswith(("tracer.trace", "tracer.tui", "textual"))}
