"""The instrumented transformer: plain model code with a named identity tap on every value."""

from tracer.nn.config import ModelConfig
from tracer.nn.hooks import HookPoint
from tracer.nn.model import EncoderDecoder, Stack, build_model

__all__ = ["ModelConfig", "HookPoint", "EncoderDecoder", "Stack", "build_model"]
