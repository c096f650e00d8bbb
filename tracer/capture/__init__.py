"""Run a model on a text and record every tap into a Trace."""

from tracer.capture.run import GenerationResult, generate, trace_text

__all__ = ["GenerationResult", "generate", "trace_text"]
