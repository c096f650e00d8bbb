"""Collect tap values during a forward pass and bring them to the host in one batch."""

from __future__ import annotations

import numpy as np
import torch

from tracer.nn.hooks import hooks_attached


class Recorder:
    """Attach to every HookPoint; `pass_values()` returns (name, numpy array) per tap, batch axis dropped.

    On CUDA a value is cloned on the device as it passes (no host sync per tap); the copies go to
    pinned host memory with non-blocking copies and one synchronisation per forward pass.
    On the CPU the model never writes into a tensor after a tap sees it, so a reference is enough.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.values: list[tuple[str, torch.Tensor]] = []

    def record(self, name: str, value: torch.Tensor) -> None:
        value = value.detach()[0]
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()  # numpy has no bf16; store float32 for every half type
        elif value.is_cuda:
            value = value.clone()
        self.values.append((name, value))

    def attached(self):
        return hooks_attached(self.model, self.record)

    def pass_values(self) -> list[tuple[str, np.ndarray]]:
        """The values recorded since the last call, on the host."""
        values, self.values = self.values, []
        if not values or not values[0][1].is_cuda:
            return [(name, value.numpy()) for name, value in values]
        host = [torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for _, v in values]
        for buffer, (_, value) in zip(host, values):
            buffer.copy_(value, non_blocking=True)
        torch.cuda.current_stream(values[0][1].device).synchronize()
        return [(name, buffer.numpy()) for buffer, (name, _) in zip(host, values)]
