"""The instrumented transformer: plain model code with a named identity tap on every value.

The names below load on first use, so `import tracer.nn.config` (ModelConfig) needs no torch:
the CLI lists models and recipes without it."""

from __future__ import annotations

import importlib

_WHERE = {
    "ModelConfig": "tracer.nn.config",
    "HookPoint": "tracer.nn.hooks",
    "EncoderDecoder": "tracer.nn.model",
    "Stack": "tracer.nn.model",
    "build_model": "tracer.nn.model",
}

__all__ = ["ModelConfig", "HookPoint", "EncoderDecoder", "Stack", "build_model"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
