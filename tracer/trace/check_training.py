"""The relations a `tracer finetune` trace must satisfy, recomputed from its own tensors (numpy only).

For each training step N (ids ending in `@sN`):

- the loss: `hook_token_losses` = −log softmax(logits)[target] per position, `hook_loss` their mean;
- dL/dlogits = (softmax(logits) − one-hot(targets)) / n, n the number of positions in the loss;
- the chain rule at a residual add y = x + f(x): the sum hands its gradient to both inputs unchanged,
  so dL/d(branch output) = dL/dy (`hook_attn_out.grad` = `hook_resid_mid.grad`, and so on);
- LoRA: `hook_lora_a` = x·Aᵀ (x what the projection read, by the anatomy's dataflow), `hook_lora_b` = (A·x)·Bᵀ, `hook_lora_out` = (α/r)·`hook_lora_b`,
  `hook_adapted_out` = `hook_base_out` + `hook_lora_out`;
- AdamW, per parameter, from the recorded gradient and the previous step's moments:
  m = β₁m' + (1−β₁)g, v = β₂v' + (1−β₂)g², m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ),
  step = −lr·m̂/(√v̂ + ε), new = value·(1 − lr·λ) + step, and value = the previous step's new.

Update quantities are small (a step is about lr, v about g²), so each value is compared relative
to itself (with a small floor relative to the tensor's largest), not with the forward checks' floor of 1.
"""

from __future__ import annotations

import numpy as np

from tracer.trace import anatomy
from tracer.trace.step import PARAM_KINDS, parse_name
from tracer.trace.trace import Trace

RTOL = 1e-4          # float32 values recomputed in float64
LOGITS = ("logits", "class_logits")   # what the loss reads: a vocabulary head's, or a classifier's
RESIDUAL_BRANCHES = {"hook_attn_out": "hook_resid_mid", "hook_cross_attn_out": "hook_resid_mid_cross",
                     "hook_mlp_out": "hook_resid_post"}


def is_training(trace: Trace) -> bool:
    return isinstance(trace.output.get("training"), dict)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _differs(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL, floor=0.0) -> str:
    """'' when each value of `actual` is `expected` to rtol of itself plus `floor`, else what differs.

    `floor` (per value) covers terms that cancel: a sum's rounding is relative to its terms,
    not to the sum. A floor of rtol/100 of the tensor's largest value is always allowed."""
    if actual.shape != expected.shape:
        return f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    actual = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = float(np.abs(expected).max(initial=0.0))
        bad = ~(np.abs(actual - expected) <= rtol * np.abs(expected) + 0.01 * rtol * scale + floor + 1e-30)
    if not bad.any():
        return ""
    where = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return (f"{int(bad.sum())} value(s) differ; at {list(map(int, where))}: "
            f"recorded {actual[where]:.6g}, recomputed {expected[where]:.6g}")


class TrainingChecker:
    """Collects (step id, message) failures and counts the relations checked."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.training = trace.output["training"]
        self.checked = 0
        self.failures: list[tuple[str, str]] = []

    def get(self, name: str, s: int) -> np.ndarray | None:
        step_id = f"{name}@s{s}"
        return self.trace[step_id] if step_id in self.trace else None

    def expect(self, name: str, s: int, expected: np.ndarray, what: str, rtol: float = RTOL, floor=0.0) -> None:
        actual = self.get(name, s)
        if actual is None:
            return
        self.checked += 1
        detail = _differs(actual, expected, rtol, floor)
        if detail:
            self.failures.append((f"{name}@s{s}", f"{what}: {detail}"))

    def run(self) -> None:
        for s in sorted({step.train_step for step in self.trace.steps if step.train_step is not None}):
            names = [step.name for step in self.trace.steps if step.train_step == s]
            for relation in (self.loss, self.logits_gradient, self.residual_gradients, self.lora, self.adamw):
                try:
                    relation(s, names)
                except (ValueError, IndexError, TypeError, KeyError) as exc:  # a damaged file's shapes
                    self.failures.append((f"@s{s}", f"{relation.__name__} cannot be recomputed ({str(exc)[:120]})"))

    # -- the relations -----------------------------------------------------------------
    def loss(self, s: int, names: list[str]) -> None:
        targets = self.get("hook_targets", s)
        logits_name = next((n for n in names if parse_name(n)["kind"] in LOGITS), None)
        if targets is None or logits_name is None:
            return
        logits = self.get(logits_name, s).astype(np.float64).reshape(len(targets), -1)
        log_probs = np.log(_softmax(logits))
        token_losses = -log_probs[np.arange(len(targets)), targets.astype(np.int64)]
        self.expect("hook_token_losses", s, token_losses, "−log softmax(logits)[target] at each position")
        self.expect("hook_loss", s, np.array([token_losses.mean()]), "the mean of the token losses")

    def logits_gradient(self, s: int, names: list[str]) -> None:
        targets = self.get("hook_targets", s)
        for name in names:
            parts = parse_name(name)
            if parts["of"] not in LOGITS or targets is None:
                continue
            logits = self.get(name.removesuffix(".grad"), s)
            probs = _softmax(logits.astype(np.float64).reshape(len(targets), -1))
            one_hot = np.eye(probs.shape[-1])[targets.astype(np.int64)]
            expected = ((probs - one_hot) / len(targets)).reshape(logits.shape)
            self.expect(name, s, expected, "dL/dlogits = (softmax − one-hot)/n")

    def residual_gradients(self, s: int, names: list[str]) -> None:
        for name in names:
            parts = parse_name(name)
            branch = name.removesuffix(".grad").rpartition(".")[2]
            if parts["of"] is None or branch not in RESIDUAL_BRANCHES:
                continue
            total = self.get(name.removesuffix(branch + ".grad") + RESIDUAL_BRANCHES[branch] + ".grad", s)
            if total is not None:
                self.expect(name, s, total.astype(np.float64), "a residual add passes its gradient to the branch unchanged")

    def lora(self, s: int, names: list[str]) -> None:
        lora = self.training.get("lora")
        if not isinstance(lora, dict):
            return
        scale = float(lora["scale"])
        for name in names:
            if not name.endswith(".hook_adapted_out"):
                continue
            module = name.removesuffix(".hook_adapted_out")
            tap = lambda kind: self.get(f"{module}.hook_{kind}", s)  # noqa: E731
            down, up, scaled, base = tap("lora_a"), tap("lora_b"), tap("lora_out"), tap("base_out")
            B = self.get(f"{module}.lora_B.weight.value", s)
            if base is not None and scaled is not None:
                self.expect(name, s, base.astype(np.float64) + scaled, "frozen base + scaled low-rank path")
            if up is not None:
                self.expect(f"{module}.hook_lora_out", s, scale * up.astype(np.float64), f"(α/r)·B·A·x, α/r = {scale:g}")
            if down is not None and B is not None:
                self.expect(f"{module}.hook_lora_b", s, down.astype(np.float64) @ B.astype(np.float64).T, "B·(A·x)")
            A, x = self.get(f"{module}.lora_A.weight.value", s), self.projection_input(module, s)
            if A is not None and x is not None:
                self.expect(f"{module}.hook_lora_a", s, x.reshape(x.shape[0], -1).astype(np.float64) @ A.astype(np.float64).T,
                            "A·x, x the projection's input")

    def projection_input(self, module: str, s: int) -> np.ndarray | None:
        """What a wrapped projection read: the input of the tap it feeds, by the anatomy's dataflow."""
        prefix, _, projection = module.rpartition(".")
        fed = {"W_Q": "hook_q", "W_K": "hook_k", "W_V": "hook_v", "W_in": "hook_pre", "W_gate": "hook_pre"}
        if projection == "W_O":
            return self.get(f"{prefix}.hook_concat", s)
        if projection == "W_out":
            return self.get(f"{prefix}.hook_post", s)
        if projection not in fed:
            return None
        tap = f"{prefix}.{fed[projection]}@s{s}"
        if projection == "W_in" and self.get(f"{prefix}.hook_pre_linear", s) is not None:
            tap = f"{prefix}.hook_pre_linear@s{s}"  # SwiGLU: W_in makes the ungated branch
        if tap not in self.trace:
            return None
        found = [step_id for step_id in anatomy.sources(tap, self.trace) if step_id]
        return self.trace[found[0]] if found else None

    def adamw(self, s: int, names: list[str]) -> None:
        optimizer = self.training.get("optimizer") or {}
        lr, eps, decay = float(optimizer["lr"]), float(optimizer["eps"]), float(optimizer["weight_decay"])
        beta1, beta2 = (float(b) for b in optimizer["betas"])
        for name in names:
            parts = parse_name(name)
            if not parts["param"] or parts["kind"] != "new":
                continue
            param = name.removesuffix(".new")
            q = {kind: self.get(f"{param}.{kind}", s) for kind in PARAM_KINDS}
            if any(value is None for value in q.values()):
                continue
            t = self.trace.step(f"{param}.adam_m@s{s}").extra.get("adam_t", s)
            g = q["grad"].astype(np.float64)
            previous = (self.get(f"{param}.adam_m", s - 1), self.get(f"{param}.adam_v", s - 1))
            if t > 1 and any(p is None for p in previous):
                continue  # the moments this one grew from are not recorded
            m_prev, v_prev = (np.zeros_like(g) if t == 1 else p.astype(np.float64) for p in previous)
            m = beta1 * m_prev + (1 - beta1) * g
            v = beta2 * v_prev + (1 - beta2) * g * g
            self.expect(f"{param}.adam_m", s, m, "m = β₁m' + (1−β₁)g",
                        floor=RTOL * (beta1 * np.abs(m_prev) + (1 - beta1) * np.abs(g)))
            self.expect(f"{param}.adam_v", s, v, "v = β₂v' + (1−β₂)g²")
            m_hat = q["adam_m"].astype(np.float64) / (1 - beta1 ** t)
            v_hat = q["adam_v"].astype(np.float64) / (1 - beta2 ** t)
            self.expect(f"{param}.adam_m_hat", s, m_hat, f"m̂ = m/(1−β₁ᵗ), t = {t}")
            self.expect(f"{param}.adam_v_hat", s, v_hat, f"v̂ = v/(1−β₂ᵗ), t = {t}")
            step = -lr * q["adam_m_hat"].astype(np.float64) / (np.sqrt(q["adam_v_hat"].astype(np.float64)) + eps)
            self.expect(f"{param}.adam_step", s, step, "step = −lr·m̂/(√v̂ + ε)")
            value, change = q["value"].astype(np.float64), q["adam_step"].astype(np.float64)
            new = value * (1 - lr * decay) + change
            self.expect(f"{param}.new", s, new, "new = value·(1 − lr·λ) + step", rtol=1e-6,
                        floor=1e-6 * (np.abs(value) + np.abs(change)))
            before = self.get(f"{param}.new", s - 1)
            if before is not None:
                self.expect(f"{param}.value", s, before.astype(np.float64), "the previous step's new value", rtol=0.0)


def check_training(trace: Trace) -> tuple[int, list[tuple[str, str]]]:
    """(relations checked, failures as (step id, message)); nothing for a trace that is not a training trace."""
    if not is_training(trace):
        return 0, []
    checker = TrainingChecker(trace)
    checker.run()
    return checker.checked, checker.failures
