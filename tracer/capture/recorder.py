"""Collect tap values during a forward pass and bring them to the host in one batch."""

from __future__ import annotations

import numpy as np
import torch

from tracer.nn.hooks import hooks_attached

HALF_TYPES = (torch.bfloat16, torch.float16)


class Recorder:
    """Attach to every HookPoint; `pass_values()` returns (name, numpy array) per tap, batch axis dropped.

    During the forward pass a tap only keeps a reference to the value it sees: no copy, no
    kernel, no host synchronisation. On the CPU the pass's values are then packed into one
    buffer per dtype (one copy), which keeps a long decode's heap from fragmenting. That is safe because the model never writes into a tensor
    after a tap has seen it (no in-place ops; tests/test_devices.py compares every trace
    with one from a recorder that clones), and a tensor we still reference is never handed out again by the
    allocator. At the end of the pass, on CUDA, the values are packed per dtype into one device
    buffer each (one `cat` kernel), copied into pinned host memory with non-blocking copies,
    and the stream is synchronised once; each dtype's values are then copied out of the pinned
    buffer into ordinary memory in one memcpy, so pinned memory never outlives the pass.

    bf16/fp16 values are stored as float32 (numpy has no bfloat16).
    """

    def __init__(self, model: torch.nn.Module, select=None):
        self.model = model
        self.select = select  # name -> bool: the taps to hook (None: every one)
        self.values: list[tuple[str, torch.Tensor]] = []

    def record(self, name: str, value: torch.Tensor) -> None:
        self.values.append((name, value))  # batch axis and autograd are dealt with after the pass

    def attached(self):
        return hooks_attached(self.model, self.record, self.select)

    def discard(self) -> None:
        """Forget the pass just run (a decoding step a filter leaves out): nothing reaches the host."""
        self.values = []

    def pass_values(self) -> list[tuple[str, np.ndarray]]:
        """The values recorded since the last call, on the host, in recording order."""
        values, self.values = self.values, []
        if not values:
            return []
        device = values[0][1].device.type
        if device == "cpu":
            return packed_on_cpu(values)
        values = [(name, value.detach()[0]) for name, value in values]
        return batched_to_host(values, pin=device == "cuda")  # mps & co: the same packing, blocking copies


def packed_on_cpu(values: list[tuple[str, torch.Tensor]]) -> list[tuple[str, np.ndarray]]:
    """CPU values -> numpy views of one packed buffer per dtype (batch axis dropped).

    One copy of the pass's values, and its hundreds of small tensors freed: kept one by one, a
    long KV-cached decode's many small arrays fragment the C heap (a GPT-2-small 128 + 80 decode
    peaked 1.5x higher; BENCHMARKS.md)."""
    groups: dict[torch.dtype, list[int]] = {}
    for index, (_, value) in enumerate(values):
        groups.setdefault(value.dtype, []).append(index)
    out: list[np.ndarray | None] = [None] * len(values)
    for dtype, indices in groups.items():
        parts = [values[i][1].detach()[0] for i in indices]
        packed = torch.cat([part.reshape(-1) for part in parts])
        flat = host_array(packed).copy()  # its own block: the cat result goes with the pass's tensors
        offset = 0
        for i, part in zip(indices, parts):
            out[i] = flat[offset:offset + part.numel()].reshape(tuple(part.shape))
            offset += part.numel()
    return [(name, array) for (name, _), array in zip(values, out)]


def host_array(value: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, half types upcast to float32 (shares memory where it can)."""
    if value.requires_grad:
        value = value.detach()
    if value.dtype in HALF_TYPES:
        value = value.float()
    return value.numpy()


def batched_to_host(values: list[tuple[str, torch.Tensor]], pin: bool = True) -> list[tuple[str, np.ndarray]]:
    """Device tensors -> numpy with one packed copy per dtype and a single synchronisation.

    `pin=False` stages in ordinary memory: only for exercising the packing on a machine without CUDA."""
    device = values[0][1].device
    groups: dict[torch.dtype, list[int]] = {}
    for index, (_, value) in enumerate(values):
        groups.setdefault(value.dtype, []).append(index)
    staged = []  # (indices, pinned host buffer)
    for dtype, indices in groups.items():
        packed = torch.cat([values[i][1].reshape(-1) for i in indices]) if len(indices) > 1 \
            else values[indices[0]][1].reshape(-1)
        if dtype in HALF_TYPES:
            packed = packed.float()
        pinned = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=pin)
        pinned.copy_(packed, non_blocking=pin)
        staged.append((indices, pinned))
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # the one synchronisation of this pass
    out: list[np.ndarray | None] = [None] * len(values)
    for indices, pinned in staged:
        flat = pinned.numpy().copy()  # out of pinned memory in one memcpy
        offset = 0
        for i in indices:
            shape = tuple(values[i][1].shape)
            size = values[i][1].numel()
            out[i] = flat[offset:offset + size].reshape(shape)
            offset += size
    return [(name, array) for (name, _), array in zip(values, out)]
