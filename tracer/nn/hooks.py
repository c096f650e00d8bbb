"""HookPoint: an identity module whose only job is to give a value a name (as in TransformerLens)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


class HookPoint(nn.Module):
    """Returns its input unchanged; forward hooks attached to it see the value under its module name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """Every tap in the model, by its dotted name (`encoder.0.attn.hook_q`)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, HookPoint)}


@contextlib.contextmanager
def hooks_attached(model: nn.Module, record: Callable[[str, torch.Tensor], None],
                   select: Callable[[str], bool] | None = None) -> Iterator[None]:
    """Call `record(name, value)` for every tap (that `select(name)` accepts) while inside the block;
    hooks always come off. A tap not selected gets no hook at all."""
    handles = []
    try:
        for name, point in hook_points(model).items():
            if select is not None and not select(name):
                continue
            handles.append(point.register_forward_hook(lambda _m, _i, out, name=name: record(name, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
