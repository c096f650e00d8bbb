"""Verify a trace from its own recorded tensors: every relation the model promises must hold.

Each check recomputes a step from the steps it was computed from (in float64) and compares;
which steps those are is the anatomy's dataflow (tracer/trace/anatomy.py).

A KV-cached decoding step is checked on the rows its pass computed (`Step.rows`), from its
sources' same rows and, where a relation reads along the keys (Q·Kᵀ's keys, pattern·V's values),
every position's keys or values. The full t × t attention matrices are never assembled, so a long
decode checks in time and memory linear in its trace; the earlier rows were checked at their own
steps. Tensors are read for a moment and not kept (`Step.peek`): memory stays near one step.

A trace exported with `--precision p` holds values rounded to p significant digits: each is off
by at most ε = 0.5·10^(1−p) of its size. Each relation then tolerates exactly what that rounding
can do to it, carried through its arithmetic (`ROUNDING`), on top of float arithmetic's own
tolerance: a tensor altered by more than its rounding still fails.

A trace stored as float16 (`tracer run --store-dtype float16`, the header's `capture.store_dtype`)
is rounded the same way: each float was computed in the model's dtype, then rounded to float16's
11 significant bits, off by at most u = 2⁻¹¹ ≈ 4.9e-4 of its size (float16's unit roundoff; below
6.1e-5, in float16's subnormals, by at most 2⁻²⁵ absolutely, which the arithmetic tolerance's
absolute floor covers). So the same bounds apply, with ε = u; the arithmetic tolerance stays the
model's, not half precision's (float16 here is storage, not computation).

A model run in bfloat16 or float16 (`tracer run --dtype`, the header's `model.dtype`) computed
every step in that dtype: each recorded value is its op's result rounded to 8 (bfloat16) or 11
(float16) significant bits, and the ops inside a step (a norm's, a GELU's) round as they go. The
arithmetic tolerance is then two of that dtype's unit roundoffs (2⁻⁷, 2⁻¹⁰) instead of float32's
1e-3, and the top-k probabilities, which decoding takes from a float32 softmax of the logits, may
differ from the recorded (rounded) probabilities by one roundoff of their size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

import numpy as np

from tracer.trace import anatomy
from tracer.trace.check_training import check_training
from tracer.trace.step import Step, kv_columns, parse_name, row_axis, split_id
from tracer.trace.trace import Trace


@dataclass(frozen=True)
class Failure:
    step_id: str
    message: str


@dataclass
class CheckReport:
    checked: int
    failures: list[Failure]
    skipped: list[str] = field(default_factory=list)  # ids of steps of kinds tracer does not know
    precision: int | None = None  # significant digits the trace's floats were rounded to (None: full)
    notes: list[str] = field(default_factory=list)  # relations not checked, and why (a --heads trace's concat)
    store_dtype: str | None = None  # the capture's --store-dtype (float16: rounded to 11 bits)
    compute_dtype: str | None = None  # the model's dtype when it computed in half precision (bfloat16, float16)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def skipped_kinds(self) -> list[str]:
        """The kind of each skipped step."""
        return [parse_name(split_id(step_id)[0])["kind"] for step_id in self.skipped]

    @property
    def tolerance_note(self) -> str | None:
        """One line saying what rounding the check allowed for (None at full precision)."""
        computed = (f"computed in {self.compute_dtype}: arithmetic tolerance ±{arithmetic_tolerance(self.compute_dtype):.2g}"
                    " × each step's scale") if self.compute_dtype else None
        if self.precision is None and self.store_dtype != "float16":
            return computed
        if self.precision is None:
            what = "stored as float16"
        else:
            digits = "digit" if self.precision == 1 else "digits"
            what = f"rounded to {self.precision} {digits}" + (" (stored as float16)" if self.store_dtype == "float16" else "")
        rounded = (f"{what}: tolerance ±{rounding_epsilon(self.precision, self.store_dtype):.2g} × each "
                   "value's size, carried through each relation (beside float arithmetic's own)")
        return f"{rounded}; {computed}" if computed else rounded


FLOAT16_ROUNDOFF = 2.0 ** -11  # float16 keeps 11 significant bits: rounding is off by at most this, relatively
# unit roundoff of the half-precision dtypes a model may compute in (`tracer run --dtype`)
COMPUTE_ROUNDOFF = {"bfloat16": 2.0 ** -8, "float16": FLOAT16_ROUNDOFF}


def arithmetic_tolerance(compute_dtype: str | None) -> float:
    """The relative tolerance of the arithmetic of a model computing in `compute_dtype`: float32's
    1e-3, or two unit roundoffs of a half-precision dtype (an op's rounding and those inside it)."""
    return max(_tolerance(), 2 * COMPUTE_ROUNDOFF.get(compute_dtype, 0.0))


def rounding_epsilon(precision: int | None, store_dtype: str | None = None) -> float:
    """The largest relative error of a value rounded to `precision` significant digits (0: not rounded),
    of a trace stored as `store_dtype`.

    x rounded to p digits is off by at most half a unit in its p-th digit: 0.5·10^(e+1−p) with
    10^e ≤ |x|, so at most 0.5·10^(1−p)·|x|. The reader stores the rounded value as float32,
    which adds up to half a float32 ulp. A float16-stored value was rounded to float16 first
    (FLOAT16_ROUNDOFF); exported with --precision, it is rounded to p digits and read back
    as float16 again: the errors compound, (1 + ε_p)(1 + u)² − 1."""
    digits = 0.0 if precision is None else 0.5 * 10.0 ** (1 - precision)
    if store_dtype == "float16":
        return (1 + digits) * (1 + FLOAT16_ROUNDOFF) ** (1 if precision is None else 2) - 1
    if precision is None:
        return 0.0
    return digits + float(np.finfo(np.float32).eps) / 2


def _tolerance(*arrays: np.ndarray) -> float:
    """Relative tolerance: float32 arithmetic agrees to ~1e-6; half precision to ~1e-3."""
    return 2e-2 if any(a.dtype == np.float16 for a in arrays) else 1e-3


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float, rounding=0.0) -> tuple[bool, str]:
    if actual.shape != expected.shape:
        return False, f"shape {list(actual.shape)}, expected {list(expected.shape)}"
    actual = actual.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _compare(actual, expected, rtol, rounding)


def _compare(actual: np.ndarray, expected: np.ndarray, rtol: float, rounding=0.0) -> tuple[bool, str]:
    """`rounding`: how far (per value, or one number for all) rounded inputs and output may move
    the two apart, on top of the arithmetic's `rtol`."""
    both_finite = np.isfinite(actual) & np.isfinite(expected)
    same_special = ~both_finite & (
        (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    )
    scale = max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)))
    diff = np.where(both_finite, np.abs(actual - expected), 0.0)
    allowed = rtol * scale + rtol * np.abs(expected) + np.nan_to_num(rounding, nan=0.0, posinf=0.0)
    bad = (both_finite & (diff > allowed)) | (~both_finite & ~same_special)
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


def _shared_heads(kv: np.ndarray, n_heads: int, config: dict, query: Step | None = None,
                  keys: Step | None = None) -> np.ndarray:
    """K or V with one head per query head. Under grouped-query attention (the config's n_kv_heads)
    key/value head j serves the g query heads j·g … j·g + g − 1, g = n_heads / n_kv_heads; any
    other head count is a damaged trace. A `--heads` trace's steps hold some heads (`Step.heads`):
    `query`, the step whose head axis is the queries', and `keys`, the K or V step, map them."""
    if query is not None and keys is not None and ("heads" in query.extra or "heads" in keys.extra):
        columns = kv_columns(query, keys)
        if columns is None:
            raise ValueError(f"{keys.heads} of {keys.heads_of} key/value heads do not serve query heads {query.heads}")
        return kv[:, columns]
    if kv.shape[1] == n_heads:
        return kv
    if kv.shape[1] != config.get("n_kv_heads") or n_heads % kv.shape[1]:
        raise ValueError(f"{kv.shape[1]} key/value heads where the queries have {n_heads}")
    return np.repeat(kv, n_heads // kv.shape[1], axis=1)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _activation(x: np.ndarray, name: str) -> np.ndarray | None:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return None


def relative_buckets(relative: np.ndarray, bidirectional: bool, n_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bucket of each relative position (key − query), as tracer.nn.model.relative_position_bucket,
    in numpy: half of a direction's buckets exact distances, the rest log-spaced up to max_distance."""
    buckets = np.zeros_like(relative)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (relative > 0) * n_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    max_exact = n_buckets // 2
    with np.errstate(divide="ignore"):
        scaled = np.log(distance.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + np.nan_to_num(scaled * (n_buckets - max_exact), neginf=0.0).astype(np.int64)
    large = np.minimum(large, n_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class _Checker:
    """Walks the trace's steps; each known kind's relation is recomputed from the steps the
    anatomy says it is computed from. Which step feeds which is the anatomy's; what the
    numbers must satisfy is written here."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.failures: list[Failure] = []
        self.skipped: list[str] = []
        self.checked = 0
        self._broken: set[tuple[str, int | None]] = set()
        self.notes: set[str] = set()
        self.store_dtype = (trace.capture or {}).get("store_dtype")
        self.eps = rounding_epsilon(trace.precision, self.store_dtype)
        # a value recorded as r was r/(1 ± ε) before rounding: |error| ≤ ε/(1 − ε)·|r|
        self.rel = self.eps / (1 - self.eps)
        dtype = (trace.model or {}).get("dtype")
        self.compute_dtype = dtype if dtype in COMPUTE_ROUNDOFF else None
        self.compute_u = COMPUTE_ROUNDOFF.get(dtype, 0.0)

    def get(self, name: str, t: int | None) -> np.ndarray | None:
        step_id = anatomy.with_step(name, t)
        return self.trace.step(step_id).peek() if step_id in self.trace else None

    def row_wise(self, step: Step) -> bool:
        """Whether `step` is checked on its new rows only (a KV-cached step, of a kind whose relation
        holds row by row)."""
        return bool(step.cached) and step.kind not in WHOLE

    def value(self, step: Step) -> np.ndarray:
        """What is checked of `step`: its new rows (row_wise), else the whole tensor; not kept."""
        return step.peek_rows() if self.row_wise(step) else step.peek()

    def rows_like(self, source: Step, step: Step) -> np.ndarray:
        """`source`'s rows that line up with the rows `step` computed (row_wise)."""
        if source.cached == step.cached:
            return source.peek_rows()
        axis = row_axis(source.axes)
        data = source.peek()
        if axis is None:
            return data
        return np.take(data, np.arange(step.cached, data.shape[axis]), axis=axis)

    def inputs(self, step: Step, ids: list[str]) -> list[np.ndarray]:
        """The sources' values, as the relation of `step` reads them."""
        if not self.row_wise(step):
            return [self.trace.step(step_id).peek() for step_id in ids]
        along_keys = KEY_SIDE.get(step.kind, ())
        return [self.trace.step(step_id).peek() if n in along_keys else self.rows_like(self.trace.step(step_id), step)
                for n, step_id in enumerate(ids)]

    def expect(self, step: Step, expected: np.ndarray, what: str, *inputs: np.ndarray, rounding=0.0) -> None:
        self.checked += 1
        actual = self.value(step)
        if self.eps and np.issubdtype(actual.dtype, np.floating):
            rounding = rounding + self.rel * np.abs(actual.astype(np.float64))  # the step's own rounding
        ok, detail = _close(actual, expected, self.tolerance(actual, *inputs), rounding)
        if not ok:
            self.fail(step.id, f"{what}: {detail}")

    def tolerance(self, *arrays: np.ndarray) -> float:
        """The arithmetic's relative tolerance. In a float16-stored trace float16 is the storage's
        rounding (carried by eps), not the arithmetic's: that was the model's own."""
        if self.compute_dtype:
            return arithmetic_tolerance(self.compute_dtype)
        return _tolerance() if self.store_dtype == "float16" else _tolerance(*arrays)

    def fail(self, step_id: str, message: str) -> None:
        self.failures.append(Failure(step_id, message))

    def step(self, step: Step) -> None:
        """Check one step: its relation to its sources, and what its own values must satisfy."""
        if not anatomy.is_known(step.kind):
            self.skipped.append(step.id)
            return
        relation = RELATIONS.get(step.kind)
        prop = PROPERTIES.get(step.kind)
        if relation is None and prop is None:
            return
        try:
            if relation is not None:
                what, recompute = relation
                ids = anatomy.sources(step.id, self.trace)
                if ids and all(ids):
                    inputs = self.inputs(step, ids)
                    expected = recompute(self, step, *inputs)
                    if expected is not None:  # None: a step it also needs is not recorded
                        bound = ROUNDING.get(step.kind) if self.eps else None
                        rounding = bound(self, step, expected, *inputs) if bound else 0.0
                        self.expect(step, expected, what, *inputs, rounding=rounding)
            if prop is not None:
                prop(self, step)
        except (ValueError, IndexError, TypeError) as exc:
            # Steps that cannot even be combined (mismatched shapes in a damaged file) fail the
            # check, named once by the module they sit in (`encoder.0.attn`).
            module = step.name.rpartition(".hook_")[0] or step.name
            if (module, step.decode_step) not in self._broken:
                self._broken.add((module, step.decode_step))
                self.fail(anatomy.with_step(module, step.decode_step),
                          f"cannot be recomputed from its inputs ({str(exc).splitlines()[0][:120]})")

    def sibling(self, step: Step, ref: str) -> np.ndarray | None:
        """A step beside this one that is not among its sources (e.g. its attention's queries); its rows
        that line up with this step's when this one is checked row by row."""
        step_id = anatomy.resolve(ref, anatomy.Place.of(step.id, self.trace), self.trace)
        if not step_id:
            return None
        other = self.trace.step(step_id)
        return self.rows_like(other, step) if self.row_wise(step) else other.peek()

    # -- the relations: a step recomputed from its sources ----------------------------
    def total(self, step: Step, *parts: np.ndarray) -> np.ndarray:
        return sum((part.astype(np.float64) for part in parts[1:]), parts[0].astype(np.float64))

    def source_step(self, step: Step, position: int) -> Step:
        return self.trace.step(anatomy.sources(step.id, self.trace)[position])

    def scores_raw(self, step: Step, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        k = _shared_heads(k, q.shape[1], self.trace.model.get("config") or {}, step, self.source_step(step, 1))
        return np.einsum("qhd,khd->hqk", q.astype(np.float64), k.astype(np.float64))

    def scores_scaled(self, step: Step, raw: np.ndarray) -> np.ndarray | None:
        if not (self.trace.model.get("config") or {}).get("attn_scale", True):
            return raw.astype(np.float64)  # not recorded by tracer's own models (T5 has no 1/√d_k)
        q = self.sibling(step, "{attn}.hook_q")  # d_head is the length of a query
        if q is None:
            return None
        return raw.astype(np.float64) / np.sqrt(q.shape[-1])

    def scores_masked(self, step: Step, scaled: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        """scaled (T5: raw + position bias) where the mask allows, else −∞."""
        *bias, mask = rest
        total = scaled.astype(np.float64) + (bias[0].astype(np.float64) if bias else 0.0)
        return np.where(mask[None], total, -np.inf)

    def softmax(self, step: Step, scores: np.ndarray) -> np.ndarray:
        return _softmax(scores)

    def weighted_values(self, step: Step, pattern: np.ndarray, v: np.ndarray) -> np.ndarray:
        v = _shared_heads(v, pattern.shape[0], self.trace.model.get("config") or {}, step, self.source_step(step, 1))
        return np.einsum("hqk,khd->qhd", pattern.astype(np.float64), v.astype(np.float64))

    def heads_side_by_side(self, step: Step, z: np.ndarray) -> np.ndarray | None:
        kept = self.source_step(step, 0)
        if len(kept.heads) != kept.heads_of:  # a --heads trace: the concatenation needs every head
            self.notes.add(f"{step.kind}: not checked where --heads kept only some heads (the concatenation needs all)")
            return None
        return z.reshape(z.shape[0], -1).astype(np.float64)

    # -- what rounded inputs can do to each relation (exports with --precision) --------
    # Each input value r stands for one within ε'·|r| of it (ε' = self.rel); these carry that
    # through the relation's arithmetic, as a bound per output value.
    def rounding_of_sum(self, step: Step, expected, *parts: np.ndarray):
        return self.rel * sum(np.abs(part.astype(np.float64)) for part in parts)

    def rounding_of_scores_raw(self, step: Step, expected, q: np.ndarray, k: np.ndarray):
        # q̃k̃ − qk = qk(a + b + ab) for |a|, |b| ≤ ε': summed over d_head
        both = 2 * self.rel + self.rel ** 2
        return both * np.einsum("qhd,khd->hqk", np.abs(q.astype(np.float64)), np.abs(k.astype(np.float64)))

    def rounding_of_scaled(self, step: Step, expected, raw: np.ndarray):
        return self.rel * np.abs(expected)

    def rounding_of_masked(self, step: Step, expected, scaled: np.ndarray, *rest: np.ndarray):
        return self.rel * np.abs(np.where(np.isfinite(expected), expected, 0.0))

    def rounding_of_softmax(self, step: Step, expected, scores: np.ndarray):
        # Each score s moves by at most Δ = ε'|s|; p_i ∝ exp(s_i) then moves by a factor within
        # exp(±(Δ_i + max_j Δ_j)): |Δp_i| ≤ p_i·(exp(Δ_i + max Δ) − 1).
        s = scores.astype(np.float64)
        delta = np.where(np.isfinite(s), self.rel * np.abs(s), 0.0)
        widest = delta.max(axis=-1, keepdims=True)
        return expected * np.expm1(delta + widest)

    def rounding_of_weighted_values(self, step: Step, expected, pattern: np.ndarray, v: np.ndarray):
        both = 2 * self.rel + self.rel ** 2
        return both * np.einsum("hqk,khd->qhd", np.abs(pattern.astype(np.float64)), np.abs(v.astype(np.float64)))

    def rounding_of_concat(self, step: Step, expected, z: np.ndarray):
        return self.rel * np.abs(expected)

    def normalised(self, step: Step, *parts: np.ndarray) -> np.ndarray:
        """A norm's output is its input normalised at each position, times one learned weight per
        feature (plus one shift, for a layer norm). The weights are not recorded, so they are
        fitted over the positions; what the fit cannot explain must not be there.

        RMSNorm (Llama): x / √(mean(x²) + ε), no mean taken off, no shift.
        Layer norm: (x − mean) / √(var + ε)."""
        fit = self._norm_fit(step, *parts)
        return fit["weight"] * fit["xhat"] + fit["shift"]

    def _norm_fit(self, step: Step, *parts: np.ndarray) -> dict:
        """The normalised input x̂, the weight (and shift) fitted per feature, and what the fit needs
        again to bound the effect of rounded inputs (rounding_of_normalised)."""
        config = self.trace.model.get("config") or {}
        x = self.total(step, *parts)                       # ln_embed: the embeddings' sum
        eps = float(config.get("layer_norm_eps", 1e-5))
        out = self.value(step).astype(np.float64)
        if anatomy.is_rms_norm(config, step.component):
            scale = np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
            xhat = x / scale
            energy = (xhat ** 2).sum(0)
            weight = np.divide((out * xhat).sum(0), energy, out=np.zeros_like(energy), where=energy > 0)
            return dict(x=x, xhat=xhat, scale=scale, spread_of=xhat, spread=energy, weight=weight, shift=0.0, rms=True)
        centred = x - x.mean(-1, keepdims=True)
        scale = np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps)
        xhat = centred / scale
        dx, dout = xhat - xhat.mean(0), out - out.mean(0)
        spread = (dx ** 2).sum(0)
        weight = np.divide((dx * dout).sum(0), spread, out=np.zeros_like(spread), where=spread > 1e-12)
        return dict(x=x, xhat=xhat, scale=scale, spread_of=dx, spread=spread, weight=weight,
                    shift=out.mean(0) - weight * xhat.mean(0), rms=False)

    def rounding_of_normalised(self, step: Step, expected, *parts: np.ndarray):
        """First order: each input x moves by δx = ε'|x| (a sum of parts: ε'·Σ|parts|), each recorded
        output by δy = ε'|y|. Then x̂ moves by at most δx̂ (through the centring and the division by
        the norm), and the fitted weight w by |Σ d·(δy + |w|δx̂)| / Σ d² over the positions (d: x̂
        about its mean for a layer norm, x̂ for RMSNorm); the shift takes the mean of the rest."""
        fit = self._norm_fit(step, *parts)
        xhat, scale, weight = fit["xhat"], fit["scale"], np.abs(fit["weight"])
        dx = self.rel * (sum(np.abs(p.astype(np.float64)) for p in parts) if len(parts) > 1
                         else np.abs(fit["x"]))
        if fit["rms"]:
            dxhat = dx / scale + np.abs(xhat) * (np.abs(xhat) * dx).mean(-1, keepdims=True) / scale
        else:
            dcentred = dx + dx.mean(-1, keepdims=True)
            dscale = (np.abs(xhat) * dcentred).mean(-1, keepdims=True)
            dxhat = dcentred / scale + np.abs(xhat) * dscale / scale
        dout = self.rel * np.abs(self.value(step).astype(np.float64))
        moved = dout + weight * dxhat
        spread = fit["spread"]
        dweight = np.divide((np.abs(fit["spread_of"]) * moved).sum(0), spread, out=np.zeros_like(spread), where=spread > 1e-12)
        bound = weight * dxhat + dweight * np.abs(xhat)
        if not fit["rms"]:
            bound = bound + moved.mean(0) + dweight * np.abs(xhat.mean(0))
        return bound

    def mean_over_tokens(self, step: Step, hidden: np.ndarray) -> np.ndarray:
        return hidden.astype(np.float64).mean(0)

    def unit_length(self, step: Step, mean: np.ndarray) -> np.ndarray:
        mean = mean.astype(np.float64)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def activated(self, step: Step, pre: np.ndarray) -> np.ndarray | None:
        return _activation(pre.astype(np.float64), (self.trace.model.get("config") or {}).get("activation", ""))

    # -- the properties: what a step's own values must satisfy ------------------------
    def weights(self, step: Step) -> None:
        """Attention weights: each row sums to 1, and a masked position has no weight."""
        self.checked += 1
        pattern = self.value(step)
        sums = pattern.astype(np.float64).sum(-1)
        # rounded weights: their sum is off by at most ε' of itself
        if not np.allclose(sums, 1.0, atol=self.tolerance(pattern) + self.rel * float(np.abs(sums).max(initial=0.0))):
            self.fail(step.id, f"rows sum to {sums.min():.6g}…{sums.max():.6g}, not 1")
        mask = self.sibling(step, "{attn}.hook_mask")
        if mask is not None and np.any(pattern[:, ~mask] != 0):
            self.fail(step.id, "masked positions have non-zero weight")

    def relative_bias(self, step: Step) -> None:
        """T5's position bias depends on nothing but the bucket of key − query: within a head, every cell
        of one bucket holds the same number (the encoder's buckets bidirectional, the decoder's
        one-directional: a key after the query shares bucket 0 with the query itself)."""
        config = self.trace.model.get("config") or {}
        data = self.value(step)
        bias = data.astype(np.float64)
        if bias.ndim != 3:
            raise ValueError(f"a position bias is [head, query, key], not rank {bias.ndim}")
        self.checked += 1
        n_queries, n_keys = bias.shape[1:]
        relative = np.arange(n_keys)[None, :] - np.arange(n_keys - n_queries, n_keys)[:, None]
        buckets = relative_buckets(relative, not anatomy.Place.of(step.id, self.trace).causal,
                                   int(config.get("relative_buckets", 32)), int(config.get("relative_max_distance", 128)))
        for bucket in np.unique(buckets):
            cells = bias[:, buckets == bucket]                                   # (head, cells)
            if np.any(np.abs(cells - cells[:, :1]) > self.tolerance(data)):
                distances = sorted(set(relative[buckets == bucket].tolist()))
                self.fail(step.id, f"bucket {int(bucket)} (key − query in {distances[0]}…{distances[-1]}) holds "
                                   "different values; the bias must depend only on the distance's bucket")
                return

    def tanh_range(self, step: Step) -> None:
        """A tanh's output lies in [−1, 1] (BERT's pooler; its weights are not recorded)."""
        self.checked += 1
        if np.any(np.abs(self.value(step).astype(np.float64)) > 1.0):
            self.fail(step.id, "values outside [−1, 1], which a tanh cannot give")

    def same_row_everywhere(self, step: Step) -> None:
        """Every token is type 0, so every position gets the same row of the token-type table."""
        self.checked += 1
        data = self.value(step)
        if len(data) and not np.array_equal(data, np.broadcast_to(data[:1], data.shape)):
            self.fail(step.id, "positions differ, but every token is type 0")

    def causal_mask(self, step: Step) -> None:
        """A decoder's self-attention sees keys j ≤ i; under a sliding window w (the config's `sliding_window`,
        in its `sliding_layers`, or every layer) only j > i − w too, the last w keys."""
        place = anatomy.Place.of(step.id, self.trace)
        if step.component != "attn" or not place.causal:
            return
        self.checked += 1
        mask = self.value(step)  # a KV-cached step's rows: the last rows of the (windowed) causal mask
        if mask.ndim != 2:
            self.fail(step.id, "a decoder's self-attention mask must be causal")
            return
        ones = np.ones_like(mask, dtype=bool)
        offset = mask.shape[1] - mask.shape[0]  # the row's query position minus its index here
        config = self.trace.model.get("config") or {}
        window, layers = config.get("sliding_window"), config.get("sliding_layers")
        if isinstance(window, int) and (layers is None or (isinstance(layers, list) and place.layer in layers)):
            expected = np.tril(ones, offset) & ~np.tril(ones, offset - window)
            if not np.array_equal(mask, expected):
                self.fail(step.id, f"this layer's self-attention mask must be causal within a sliding window of {window} keys")
        elif not np.array_equal(mask, np.tril(ones, offset)):
            self.fail(step.id, "a decoder's self-attention mask must be causal")

    def predictions(self, step: Step) -> None:
        """Greedy decoding: the chosen token is the argmax (of the tokens the trace header's
        `tokenization.suppressed` lets it choose), and the top-k are the probabilities."""
        probs = self.value(step)
        tokenization = self.trace.model.get("tokenization")
        listed = tokenization.get("suppressed") if isinstance(tokenization, dict) else None  # free-form header field
        suppressed = [i for i in listed if isinstance(i, int) and 0 <= i < probs.shape[-1]] if isinstance(listed, list) else []
        rows = []
        if "chosen" in step.extra:
            rows.append((probs, step.extra["chosen"], step.extra.get("top_k", [])))
        for item in step.extra.get("predictions", []):
            pos = item.get("pos")
            if isinstance(pos, int) and 0 <= pos < len(probs):
                rows.append((probs[pos], item.get("chosen"), item.get("top_k", [])))
        for row, chosen, top_k in rows:
            self.checked += 1
            allowed = np.where(np.isin(np.arange(len(row)), suppressed), -np.inf, row)  # what greedy may choose
            best = int(np.argmax(allowed))
            chosen_id = chosen.get("id") if isinstance(chosen, dict) else None
            if (self.eps or self.compute_u) and isinstance(chosen_id, int) and 0 <= chosen_id < len(row) and allowed[chosen_id] == allowed[best]:
                best = chosen_id  # rounding keeps the order but may make the winner tie with another
            if not isinstance(chosen, dict) or chosen.get("id") != best:
                self.fail(step.id, f"chosen token {chosen!r} is not the argmax (id {best}) under greedy decoding")
            for entry in top_k:
                token_id = entry.get("id") if isinstance(entry, dict) else None
                if not isinstance(token_id, int) or not 0 <= token_id < len(row) or abs(float(row[token_id]) - float(entry.get("prob", -1))) > 1e-5 + (self.rel + self.compute_u) * abs(float(row[token_id])):
                    self.fail(step.id, f"top-k entry {entry!r} does not match the probabilities")
                    break

    def tokens(self) -> None:
        """Input ids are what was traced; each decoding step feeds back the token chosen before it."""
        stacks = anatomy.STACKS.get(self.trace.arch, (None,))
        first, last = anatomy.step_name(stacks[0], None, "hook_tokens"), anatomy.step_name(stacks[-1], None, "hook_tokens")
        probs_name = anatomy.step_name(stacks[-1], None, "hook_probs")
        input_ids = self.trace.input.get("ids")
        recorded = self.get(first, None)
        if recorded is not None and isinstance(input_ids, list) and self.trace.arch != "decoder":
            self.checked += 1
            if recorded.tolist() != input_ids:
                self.fail(first, f"token ids {recorded.tolist()} differ from the input's {input_ids}")
        steps = self.trace.decode_steps
        for before, t in zip(steps, steps[1:]):
            previous, current = self.get(last, before), self.get(last, t)
            probs_id = anatomy.with_step(probs_name, before)
            probs = self.trace.step(probs_id) if probs_id in self.trace else None
            if previous is None or current is None or probs is None or "chosen" not in probs.extra:
                continue
            self.checked += 1
            if current.tolist() != previous.tolist() + [probs.extra["chosen"].get("id")]:
                self.fail(anatomy.with_step(last, t), "the decoder's input is not the previous input plus the token chosen")


# kind -> (what the relation is, how to recompute it from the kind's sources in the anatomy)
RELATIONS = {
    "resid_pre": ("previous layer's output", _Checker.total),
    "resid_mid": ("residual add", _Checker.total),
    "resid_mid_cross": ("residual add", _Checker.total),
    "resid_post": ("residual add", _Checker.total),
    "attn_raw": ("Q·Kᵀ", _Checker.scores_raw),
    "attn_scaled": ("Q·Kᵀ/√d_head", _Checker.scores_scaled),
    "attn_scores": ("masked scores", _Checker.scores_masked),
    "pattern": ("softmax of the scores", _Checker.softmax),
    "z": ("pattern·V", _Checker.weighted_values),
    "concat": ("heads side by side", _Checker.heads_side_by_side),
    "normalized": ("normalised input × one weight per feature", _Checker.normalised),
    "mlm_act": ("activation of the MLM dense layer", _Checker.activated),
    "probs": ("softmax of the logits", _Checker.softmax),
    "mean_pooled": ("mean over the tokens", _Checker.mean_over_tokens),
    "sentence_embedding": ("divided by its length", _Checker.unit_length),
    "class_probs": ("softmax of the class scores", _Checker.softmax),
}
# kinds whose relation needs every position even at a KV-cached step: a norm's weights are fitted
# over the positions (checked on the full tensor, O(positions) per step), a mean is over all tokens
WHOLE = frozenset({"normalized", "mean_pooled"})
# kind -> the inputs (by position) that a row of it reads along the keys: every position's, not the new rows
KEY_SIDE = {"attn_raw": (1,), "z": (1,)}
# kind -> what rounding its inputs (a --precision export) can do to the recomputed values
ROUNDING = {
    "resid_pre": _Checker.rounding_of_sum, "resid_mid": _Checker.rounding_of_sum,
    "resid_mid_cross": _Checker.rounding_of_sum, "resid_post": _Checker.rounding_of_sum,
    "attn_raw": _Checker.rounding_of_scores_raw, "attn_scaled": _Checker.rounding_of_scaled,
    "attn_scores": _Checker.rounding_of_masked, "pattern": _Checker.rounding_of_softmax,
    "z": _Checker.rounding_of_weighted_values, "concat": _Checker.rounding_of_concat,
    "probs": _Checker.rounding_of_softmax, "normalized": _Checker.rounding_of_normalised,
    "class_probs": _Checker.rounding_of_softmax,
}
# kind -> a check of the step's own values
PROPERTIES = {"pattern": _Checker.weights, "attn_bias": _Checker.relative_bias, "mask": _Checker.causal_mask, "probs": _Checker.predictions,
              "pooler_out": _Checker.tanh_range, "token_type_embed": _Checker.same_row_everywhere}


def check_trace(trace: Trace) -> CheckReport:
    """Recompute every relation the trace's steps must satisfy; list each failing step by id.

    Steps of a kind the anatomy does not know (a newer tracer's, an imported model's extra
    tap) are not checked; `skipped` lists them."""
    checker = _Checker(trace)
    checker.tokens()
    for step in trace.steps:
        checker.step(step)
    # a training trace's loss, gradients, LoRA paths and AdamW updates (tracer/trace/check_training.py)
    checked, failures = check_training(trace)
    checker.checked += checked
    checker.failures += [Failure(step_id, message) for step_id, message in failures]
    return CheckReport(checker.checked, checker.failures, checker.skipped, trace.precision, sorted(checker.notes),
                       checker.store_dtype, checker.compute_dtype)
