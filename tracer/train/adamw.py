"""AdamW written out, so that every quantity of an update is a tensor a trace can record.

The arithmetic is `torch.optim.AdamW(foreach=False)`'s, operation for operation (its
`_single_tensor_adam` with decoupled weight decay), so the new weights are the same bits;
tests/test_finetune_adamw.py proves it over several steps. For step t of a parameter p with
gradient g (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2):

    p      ← p · (1 − lr·λ)                         decoupled weight decay
    m      ← β₁·m + (1 − β₁)·g                      first moment  (torch: m.lerp_(g, 1 − β₁))
    v      ← β₂·v + (1 − β₂)·g²                     second moment
    m̂      = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)      bias corrections (moments start at 0)
    step   = −lr · m̂ / (√v̂ + ε)
    p      ← p + step

At t = 1, m̂ = g and v̂ = g², so step = −lr · g/|g|: every weight with a gradient moves by
about lr, whatever the gradient's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AdamWUpdate:
    """One parameter's update at one step; every tensor is a detached copy with the parameter's shape."""

    name: str
    t: int                       # this parameter's step count (1 at its first update)
    value: torch.Tensor          # p before the update
    grad: torch.Tensor           # g
    m: torch.Tensor              # first moment after this step
    v: torch.Tensor              # second moment after this step
    m_hat: torch.Tensor          # m / (1 − β₁ᵗ)
    v_hat: torch.Tensor          # v / (1 − β₂ᵗ)
    step: torch.Tensor           # −lr · m̂ / (√v̂ + ε), the Adam part of the change
    new: torch.Tensor            # p after the update
    bias_correction1: float      # 1 − β₁ᵗ
    bias_correction2: float      # 1 − β₂ᵗ


class AdamW:
    """AdamW over named parameters; `step()` updates them in place and returns what it did.

    Parameters whose `.grad` is None are skipped, as torch does (no decay, no step count).
    """

    def __init__(self, named_parameters, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        self.params: list[tuple[str, torch.nn.Parameter]] = list(named_parameters)
        self.lr, self.eps, self.weight_decay = float(lr), float(eps), float(weight_decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.state: dict[str, dict] = {}

    def zero_grad(self) -> None:
        for _, param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> list[AdamWUpdate]:
        lr, beta1, beta2, eps = self.lr, self.beta1, self.beta2, self.eps
        updates = []
        for name, param in self.params:
            grad = param.grad
            if grad is None:
                continue
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = {
                    "t": 0, "m": torch.zeros_like(param, memory_format=torch.preserve_format),
                    "v": torch.zeros_like(param, memory_format=torch.preserve_format),
                }
            state["t"] += 1
            t, m, v = state["t"], state["m"], state["v"]
            value = param.detach().clone()
            if self.weight_decay != 0:
                param.mul_(1 - lr * self.weight_decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** float(t)   # torch keeps the step count as a float
            bias_correction2 = 1 - beta2 ** float(t)
            step_size = lr / bias_correction1
            denom = (v.sqrt() / bias_correction2 ** 0.5).add_(eps)
            # what is recorded beside the update: the corrected moments and the Adam step
            m_hat, v_hat = m / bias_correction1, v / bias_correction2
            step = (m / denom) * -step_size
            param.addcdiv_(m, denom, value=-step_size)
            updates.append(AdamWUpdate(
                name=name, t=t, value=value, grad=grad.detach().clone(), m=m.clone(), v=v.clone(),
                m_hat=m_hat, v_hat=v_hat, step=step, new=param.detach().clone(),
                bias_correction1=bias_correction1, bias_correction2=bias_correction2,
            ))
        return updates
