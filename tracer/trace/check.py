"""Verify a trace from its own recorded tensors: every relation the model promises must hold.

Each check recomputes a step from the steps it was computed from (in float64) and compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracer.trace.trace import Trace


@dataclass(frozen=True)
class Failure:
    step_id: str
    message: str


@dataclass
class CheckReport:
    checked: int
    failures: list[Failure]

    @property
    def ok(self) -> bool:
        return not self.failures


def _tolerance(*arrays: np.ndarray) -> float:
    """Relative tolerance: float32 arithmetic agrees to ~1e-6; half precision to ~1e-3."""
    return 2e-2 if any(a.dtype == np.float16 for a in arrays) else 1e-3


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> tuple[bool, str]:
    if actual.shape != expected.shape:
        return False, f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    actual = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _compare(actual, expected, rtol)


def _compare(actual: np.ndarray, expected: np.ndarray, rtol: float) -> tuple[bool, str]:
    both_finite = np.isfinite(actual) & np.isfinite(expected)
    same_special = ~both_finite & (
        (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    )
    scale = max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)))
    diff = np.where(both_finite, np.abs(actual - expected), 0.0)
    bad = (both_finite & (diff > rtol * scale + rtol * np.abs(expected))) | (~both_finite & ~same_special)
    if not bad.any():
        return True, ""
    where = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return False, (
        f"{int(bad.sum())} value(s) differ; at {list(map(int, where))}: "
        f"recorded {actual[where]:.6g}, recomputed {expected[where]:.6g}"
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(x - top)
    return e / e.sum(axis=-1, keepdims=True)


class _Checker:
    def __init__(self, trace: Trace):
        self.trace = trace
        self.failures: list[Failure] = []
        self.checked = 0

    def get(self, name: str, t: int | None) -> np.ndarray | None:
        step_id = name if t is None else f"{name}@{t}"
        return self.trace[step_id] if step_id in self.trace else None

    def expect(self, name: str, t, expected: np.ndarray, what: str, *inputs: np.ndarray) -> None:
        actual = self.get(name, t)
        if actual is None:
            return
        self.checked += 1
        ok, detail = _close(actual, expected, _tolerance(actual, *inputs))
        if not ok:
            self.fail(name, t, f"{what}: {detail}")

    def fail(self, name: str, t, message: str) -> None:
        self.failures.append(Failure(name if t is None else f"{name}@{t}", message))

    # -- the relations -------------------------------------------------------------
    def attention(self, prefix: str, t) -> None:
        g = lambda kind: self.get(f"{prefix}.hook_{kind}", t)  # noqa: E731
        q, k, v = g("rot_q") if g("rot_q") is not None else g("q"), g("rot_k") if g("rot_k") is not None else g("k"), g("v")
        raw, scaled, mask, scores, pattern, z = (g(kind) for kind in ("attn_raw", "attn_scaled", "mask", "attn_scores", "pattern", "z"))
        name = lambda kind: f"{prefix}.hook_{kind}"  # noqa: E731
        if q is not None and k is not None:
            self.expect(name("attn_raw"), t, np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64)), "Q·Kᵀ", q, k)
        if raw is not None and q is not None:
            self.expect(name("attn_scaled"), t, raw.astype(np.float64) / np.sqrt(q.shape[-1]), "Q·Kᵀ/√d_head", raw)
        if scaled is not None and mask is not None:
            self.expect(name("attn_scores"), t, np.where(mask[None], scaled.astype(np.float64), -np.inf), "masked scores", scaled)
        if pattern is not None:
            self.checked += 1
            sums = pattern.astype(np.float64).sum(-1)
            if not np.allclose(sums, 1.0, atol=_tolerance(pattern)):
                self.fail(name("pattern"), t, f"rows sum to {sums.min():.6g}…{sums.max():.6g}, not 1")
            if mask is not None and np.any(pattern[:, ~mask] != 0):
                self.fail(name("pattern"), t, "masked positions have non-zero weight")
            if scores is not None:
                self.expect(name("pattern"), t, _softmax(scores), "softmax of the scores", scores)
            if v is not None:
                self.expect(name("z"), t, np.einsum("hqk,khd->qhd", pattern.astype(np.float64), v.astype(np.float64)), "pattern·V", pattern, v)
        if z is not None:
            self.expect(name("concat"), t, z.reshape(z.shape[0], -1).astype(np.float64), "heads side by side", z)

    def block(self, prefix: str, t, pre_norm: bool, previous_out: np.ndarray | None) -> np.ndarray | None:
        """Residual adds of one block; returns the block's output (the next block's input)."""
        g = lambda n: self.get(f"{prefix}.{n}", t)  # noqa: E731
        resid_pre = g("hook_resid_pre")
        if resid_pre is None:
            return None
        if previous_out is not None:
            self.expect(f"{prefix}.hook_resid_pre", t, previous_out.astype(np.float64), "previous layer's output", previous_out)
        cross = g("hook_cross_attn_out") is not None
        x = resid_pre
        sublayers = [("hook_attn_out", "hook_resid_mid", "ln1")]
        if cross:
            sublayers.append(("hook_cross_attn_out", "hook_resid_mid_cross", "ln2"))
        sublayers.append(("hook_mlp_out", "hook_resid_post", "ln3" if cross else "ln2"))
        for out_name, sum_name, norm in sublayers:
            out, total = g(out_name), g(sum_name)
            if out is None or total is None:
                return None
            self.expect(f"{prefix}.{sum_name}", t, x.astype(np.float64) + out, "residual add", x, out)
            x = total if pre_norm else g(f"{norm}.hook_normalized")
            if x is None:
                return None
        return x

    def stack(self, prefix: str, t, pre_norm: bool) -> None:
        dot = f"{prefix}." if prefix else ""
        embed, pos = self.get(f"{dot}hook_embed", t), self.get(f"{dot}hook_pos_embed", t)
        previous = None
        if embed is not None:
            previous = embed.astype(np.float64) + (pos if pos is not None else 0.0)
        layer = 0
        block_prefix = f"{dot}" if prefix else "blocks."
        while self.get(f"{block_prefix}{layer}.hook_resid_pre", t) is not None:
            for attn in ("attn", "cross_attn"):
                self.guarded(f"{block_prefix}{layer}.{attn}", t, self.attention)
            mask = self.get(f"{block_prefix}{layer}.attn.hook_mask", t)
            if mask is not None and self.causal(prefix):
                self.checked += 1
                if not np.array_equal(mask, np.tril(np.ones_like(mask, dtype=bool))):
                    self.fail(f"{block_prefix}{layer}.attn.hook_mask", t, "a decoder's self-attention mask must be causal")
            previous = self.guarded(f"{block_prefix}{layer}", t, self.block, pre_norm, previous)
            layer += 1
        logits, probs = self.get(f"{dot}hook_logits", t), self.get(f"{dot}hook_probs", t)
        if logits is not None and probs is not None:
            self.expect(f"{dot}hook_probs", t, _softmax(logits), "softmax of the logits", logits)
            self.predictions(f"{dot}hook_probs", t, probs)

    def guarded(self, prefix: str, t, relation, *args):
        """Steps that cannot even be combined (mismatched shapes in a damaged file) fail the check."""
        try:
            return relation(prefix, t, *args)
        except (ValueError, IndexError, TypeError) as exc:
            self.fail(prefix, t, f"cannot be recomputed from its inputs ({str(exc).splitlines()[0][:120]})")
            return None

    def causal(self, prefix: str) -> bool:
        return prefix == "decoder" or (prefix == "" and self.trace.arch == "decoder")

    def predictions(self, name: str, t, probs: np.ndarray) -> None:
        step = self.trace.step(name if t is None else f"{name}@{t}")
        rows = []
        if "chosen" in step.extra:
            rows.append((probs, step.extra["chosen"], step.extra.get("top_k", [])))
        for item in step.extra.get("predictions", []):
            pos = item.get("pos")
            if isinstance(pos, int) and 0 <= pos < len(probs):
                rows.append((probs[pos], item.get("chosen"), item.get("top_k", [])))
        for row, chosen, top_k in rows:
            self.checked += 1
            best = int(np.argmax(row))
            if not isinstance(chosen, dict) or chosen.get("id") != best:
                self.fail(name, t, f"chosen token {chosen!r} is not the argmax (id {best}) under greedy decoding")
            for entry in top_k:
                token_id = entry.get("id") if isinstance(entry, dict) else None
                if not isinstance(token_id, int) or not 0 <= token_id < len(row) or abs(float(row[token_id]) - float(entry.get("prob", -1))) > 1e-5:
                    self.fail(name, t, f"top-k entry {entry!r} does not match the probabilities")
                    break


    def tokens(self) -> None:
        """Input ids are what was traced; each decoding step feeds back the token chosen before it."""
        input_ids = self.trace.input.get("ids")
        first = "encoder.hook_tokens" if self.trace.arch == "encoder-decoder" else "hook_tokens"
        tokens_name = "decoder.hook_tokens" if self.trace.arch == "encoder-decoder" else "hook_tokens"
        recorded = self.get(first, None if self.trace.arch != "decoder" else 1)
        if recorded is not None and isinstance(input_ids, list) and self.trace.arch != "decoder":
            self.checked += 1
            if recorded.tolist() != input_ids:
                self.fail(first, None, f"token ids {recorded.tolist()} differ from the input's {input_ids}")
        steps = self.trace.decode_steps
        for before, t in zip(steps, steps[1:]):
            previous, current = self.get(tokens_name, before), self.get(tokens_name, t)
            probs = self.trace.step(f"{tokens_name.replace('tokens', 'probs')}@{before}") if f"{tokens_name.replace('tokens', 'probs')}@{before}" in self.trace else None
            if previous is None or current is None or probs is None or "chosen" not in probs.extra:
                continue
            self.checked += 1
            if current.tolist() != previous.tolist() + [probs.extra["chosen"].get("id")]:
                self.fail(tokens_name, t, "the decoder's input is not the previous input plus the token chosen")


def check_trace(trace: Trace) -> CheckReport:
    """Recompute every relation the trace's steps must satisfy; list each failing step by id."""
    checker = _Checker(trace)
    checker.tokens()
    pre_norm = (trace.model.get("config") or {}).get("norm") == "pre"
    passes = [None] + trace.decode_steps
    for t in passes:
        if trace.arch == "encoder-decoder":
            for prefix in ("encoder", "decoder"):
                checker.stack(prefix, t, pre_norm)
        else:
            checker.stack("", t, pre_norm)
    return CheckReport(checker.checked, checker.failures)
