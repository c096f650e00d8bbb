"""Traces: recorded steps of a transformer's computation (numpy only, never torch)."""

from tracer.trace.step import Step, compute_stats
from tracer.trace.trace import Trace

__all__ = ["Step", "Trace", "compute_stats"]
