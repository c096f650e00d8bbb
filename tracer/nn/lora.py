"""LoRA: train a low-rank correction beside a frozen projection (Hu et al., 2021).

    y = W·x + b  +  (α / r) · B·(A·x)        A: (r, d_in), B: (d_out, r), W and b frozen

A starts random (as nn.Linear initialises its weight, the choice PEFT makes) and B at zero, so
at the first step the adapter adds nothing and A's gradient is exactly zero: dL/dA = Bᵀ·(…) = 0.
Only B moves at step 1; from step 2 on both do. Every value passes through a tap of the
wrapper, so a trace shows the frozen path and the low-rank path side by side.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tracer.errors import BadInput
from tracer.nn.hooks import HookPoint

DEFAULT_TARGETS = ("W_Q", "W_V")   # the attention query and value projections, as in the paper


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a scaled low-rank path; the taps are named beside the projection
    (`blocks.0.attn.W_Q.hook_lora_a`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        for param in base.parameters():
            param.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        weight = base.weight
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():  # drawn on the CPU, so a seed gives the same adapter on any device
            a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.weight.copy_(a)
            nn.init.zeros_(self.lora_B.weight)
        self.hook_base_out = HookPoint()     # [pos, d_out]  W·x + b, the frozen projection
        self.hook_lora_a = HookPoint()       # [pos, rank]   A·x
        self.hook_lora_b = HookPoint()       # [pos, d_out]  B·A·x
        self.hook_lora_out = HookPoint()     # [pos, d_out]  (α/r)·B·A·x
        self.hook_adapted_out = HookPoint()  # [pos, d_out]  the sum, what flows on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.hook_base_out(self.base(x))                                    # (B, T, d_out)
        down = self.hook_lora_a(self.lora_A(x))                                    # (B, T, r)
        up = self.hook_lora_b(self.lora_B(down))                                   # (B, T, d_out)
        return self.hook_adapted_out(base + self.hook_lora_out(up * self.scale))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain nn.Linear this computes: W + (α/r)·B·A, the same bias."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        linear.weight.copy_(self.base.weight + self.scale * (self.lora_B.weight @ self.lora_A.weight))
        if self.base.bias is not None:
            linear.bias.copy_(self.base.bias)
        return linear


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS,
             seed: int = 0) -> list[str]:
    """Freeze every weight of `model` and wrap each nn.Linear named in `targets` (W_Q, W_V, …)
    in a LoRALinear; returns the wrapped modules' names. alpha defaults to the rank (scale 1)."""
    if rank < 1:
        raise BadInput(f"--lora must be a rank of at least 1, not {rank}")
    alpha = float(rank if alpha is None else alpha)
    targets = tuple(targets)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets]
    missing = [t for t in targets if not any(name.rsplit(".", 1)[-1] == t for name, _ in found)]
    if missing:
        known = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise BadInput(f"--lora-targets: the model has no projection {', '.join(missing)} (it has {', '.join(known)})")
    for name, module in found:
        if min(module.in_features, module.out_features) < rank:
            raise BadInput(f"--lora {rank} is larger than {name}'s {module.in_features}×{module.out_features} weight")
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for name, module in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(module, rank, alpha, generator))
    return [name for name, _ in found]


def merge_lora(model: nn.Module) -> None:
    """Replace every LoRALinear by its merged nn.Linear, so the model saves as a plain model folder."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.merged())
