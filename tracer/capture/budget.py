"""A trace's size before it is recorded, and the budget a run may not pass (`tracer run --estimate`,
`--max-trace-size`).

One probe pass on two tokens tells each tap's shape; every axis that runs over tokens (`pos`,
`query`, `key`, as the anatomy names them) is then scaled to each real pass of the decode: the
prompt pass, then, under a KV cache, one new row over all keys so far (cross-attention's keys once),
or, without it, the whole prefix again. The result counts the tensor bytes a session stores, at the
dtype the recorder stores each value in (`--store-dtype float16`: two bytes a float).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from tracer.capture.recorder import stored_dtype
from tracer.capture.run import store_dtype_of, validate_request
from tracer.capture.select import TapFilter, slicing_heads
from tracer.errors import BadInput
from tracer.nn.hooks import hooks_attached
from tracer.nn.loading import LoadedModel
from tracer.text import human_size
from tracer.trace import anatomy
from tracer.trace.step import parse_name

TOKEN_AXES = ("pos", "query", "key")


class Budget(NamedTuple):
    """The most a run's trace may take (`bytes`), and what that is (`of`, for the refusal)."""

    bytes: int
    of: str
    pass_bytes: int | None = None  # a streamed save: the most one pass may take (it is in memory)


def memory_budget() -> int:
    """Half the machine's memory: a trace is held in memory while it is recorded."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def default_budget(saved_into: Path | None = None) -> Budget:
    """Half the memory, for a trace held in memory; for one saved as it is recorded (`--save`,
    into `saved_into`), half the free disk space there (its commit briefly needs its size twice),
    each pass still within half the memory (a pass is held until it is written)."""
    if saved_into is None:
        return Budget(memory_budget(), "half the memory")
    folder = Path(saved_into).absolute()
    while not folder.exists() and folder != folder.parent:  # the sessions folder may not exist yet
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return Budget(memory_budget(), "half the memory")
    return Budget(free // 2, f"half the free disk space in {folder}", pass_bytes=memory_budget())


def given_budget(text: str) -> Budget:
    return Budget(parse_size(text), "--max-trace-size")


def parse_size(text: str) -> int:
    """'4GB', '500 MB', '1.5G', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise BadInput(f"--max-trace-size {text!r}: expected a size such as 4GB or 500MB")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index(match.group(2).lower() or "b"))


@torch.no_grad()
def probe_taps(loaded: LoadedModel, select: TapFilter | None = None,
               store_dtype: str | None = None) -> list[tuple[str, tuple[str, ...], int, int]]:
    """(name, axes, bytes per token-axis element, itemsize) of every tap a run would record, from a
    pass on two tokens; each value counts at the dtype the recorder stores it as (recorder.stored_dtype)."""
    seen: list[tuple[str, torch.Tensor]] = []
    model, arch = loaded.model, loaded.cfg.arch
    ids = torch.zeros(1, 2, dtype=torch.long, device=loaded.device)
    taps = select.taps if select is not None and not select.empty else None
    record = lambda name, value: seen.append((name, value))  # noqa: E731
    if select is not None and select.heads is not None:  # only the kept heads count
        select.check_heads(loaded.cfg.n_heads)
        record = slicing_heads(record, select, loaded.cfg.n_heads, loaded.cfg.kv_heads, {})
    with hooks_attached(model, record, taps):
        if arch == "encoder-decoder":
            model.decode(ids, model.encode(ids))
        else:
            model(ids)
    out = []
    for name, value in seen:
        shape = tuple(value.shape[1:])
        axes = anatomy.axes_for(parse_name(name)["kind"], len(shape))
        itemsize = stored_dtype(value.dtype, store_dtype_of(store_dtype)).itemsize
        per = itemsize
        for axis, n in zip(axes, shape):
            if axis not in TOKEN_AXES:
                per *= n
        out.append((name, axes, per, itemsize))
    return out


def _tap_bytes(name: str, axes, per: int, rows: int, keys: int, source: int, cross_kv_rows: int) -> int:
    """One tap's bytes in a pass that computes `rows` positions over `keys` keys (source: the encoder's length)."""
    parts = parse_name(name)
    kind = anatomy.kind_of(parts["kind"])
    cross = parts["component"] == "cross_attn"
    if parts["stack"] == "encoder":
        rows = keys = source
    size = per
    for axis in axes:
        if axis not in TOKEN_AXES:
            continue
        if cross and axis in kind.source_axes:
            size *= cross_kv_rows if axis == "pos" else source
        else:
            size *= keys if axis == "key" else rows
    return size


def _lens_layers(loaded: LoadedModel, taps) -> int:
    """How many layers get a logit-lens step per predicting pass: those whose output was recorded."""
    cfg = loaded.cfg
    ends = ("hook_resid_post",) if cfg.norm == "pre" else ("ln3.hook_normalized",) if cfg.arch == "encoder-decoder" \
        else ("ln2.hook_normalized",)
    return sum(1 for name, *_ in taps if parse_name(name)["stack"] != "encoder" and name.endswith(ends))


def estimate(loaded: LoadedModel, text: str, *, max_new_tokens=None, kv_cache: bool = True,
             select: TapFilter | None = None, chat: bool = False, lens: bool = False, taps=None,
             store_dtype: str | None = None) -> dict:
    """{"bytes", "largest_pass", "passes", "new_tokens", "prompt"}: the trace's tensor bytes if
    decoding runs all `max_new_tokens` steps (a decode that stops early is smaller), and its
    largest pass's; with `lens`, the logit lens's steps too (one vocabulary per recorded layer and
    predicting pass, float32 or `store_dtype`)."""
    ids, _, max_new_tokens, _ = validate_request(loaded, text, max_new_tokens, None, chat)
    taps = probe_taps(loaded, select, store_dtype) if taps is None else taps
    arch, tok = loaded.cfg.arch, loaded.tokenizer
    keep = (lambda t: True) if select is None else select.keeps_step
    standalone = select is not None and select.steps is not None  # kept steps recorded whole (see generate)
    S = len(ids)
    has_head = any(name.endswith("hook_probs") for name, *_ in taps)
    lens_pass = (2 if store_dtype == "float16" else 4) * loaded.cfg.vocab_size * _lens_layers(loaded, taps) if lens and has_head else 0
    decoder_taps = [tap for tap in taps if parse_name(tap[0])["stack"] != "encoder"]
    total = encoder = largest = 0
    if arch == "encoder":
        masked = sum(1 for i in ids if i == tok.mask_id) or S  # the lens predicts the masked positions
        total = sum(_tap_bytes(n, a, p, S, S, S, S) for n, a, p, _ in taps) + lens_pass * masked
        return {"bytes": total, "largest_pass": total, "passes": 1, "new_tokens": 0, "prompt": S}
    if arch == "encoder-decoder":
        encoder = sum(_tap_bytes(n, a, p, S, S, S, S) for n, a, p, _ in taps if parse_name(n)["stack"] == "encoder")
        prefix = 1
    else:
        prefix = S + (1 if tok.decoder_bos_id is not None else 0)
    total = largest = encoder  # the encoder's steps are written with the first decoding step's
    passes = 0
    for t in range(1, max_new_tokens + 1):
        if not keep(t):
            continue
        passes += 1
        keys = prefix + t - 1
        whole = not kv_cache or t == 1 or standalone
        rows = keys if whole else 1
        cross_kv_rows = S if whole else 0
        size = sum(_tap_bytes(n, a, p, rows, keys, S, cross_kv_rows) for n, a, p, _ in decoder_taps) + lens_pass
        total += size
        largest = max(largest, size + (encoder if passes == 1 else 0))
    return {"bytes": total, "largest_pass": largest, "passes": passes, "new_tokens": max_new_tokens, "prompt": prefix}


def refuse_over_budget(loaded: LoadedModel, text: str, budget: Budget, *, max_new_tokens=None, kv_cache=True,
                       select: TapFilter | None = None, chat: bool = False, lens: bool = False,
                       store_dtype: str | None = None) -> dict:
    """The estimate; BadInput (one line) when it passes `budget`, naming options that bring it under."""
    found = estimate(loaded, text, max_new_tokens=max_new_tokens, kv_cache=kv_cache, select=select, chat=chat, lens=lens,
                     store_dtype=store_dtype)
    if budget.pass_bytes is not None and found["largest_pass"] > budget.pass_bytes:
        raise BadInput(f"one pass of the trace would be about {human_size(found['largest_pass'])}, over "
                       f"{human_size(budget.pass_bytes)} (half the memory), though it is saved as it is recorded; "
                       "try --only, --layers or --store-dtype float16")
    if found["bytes"] <= budget.bytes:
        return found
    base = select or TapFilter()
    hints = []

    def fits(**changes) -> int | None:
        trial = TapFilter(changes.get("only", base.only), changes.get("layers", base.layers), base.steps, base.heads)
        size = estimate(loaded, text, max_new_tokens=changes.get("new", max_new_tokens), select=trial,
                        kv_cache=changes.get("kv", kv_cache), chat=chat, lens=changes.get("lens", lens),
                        store_dtype=changes.get("store", store_dtype))["bytes"]
        return size if size <= budget.bytes else None

    if not kv_cache and (size := fits(kv=True)) is not None:
        hints.append(f"without --no-kv-cache (about {human_size(size)})")
    if lens and (size := fits(lens=False)) is not None:
        hints.append(f"--no-lens (about {human_size(size)})")
    if store_dtype != "float16" and (size := fits(store="float16")) is not None:
        hints.append(f"--store-dtype float16 (about {human_size(size)})")
    pattern = "*attn.hook_pattern"
    if (size := fits(only=(pattern,))) is not None:
        hints.append(f"--only '{pattern}' (about {human_size(size)})")
    cfg = loaded.cfg
    n_layers = max(cfg.n_layers, cfg.n_decoder_layers) if cfg.arch == "encoder-decoder" else cfg.n_layers
    for count in range(n_layers - 1, 0, -1):
        if (size := fits(layers=frozenset(range(n_layers - count, n_layers)))) is not None:
            span = f"{n_layers - count}-{n_layers - 1}" if count > 1 else f"{n_layers - 1}"
            hints.append(f"--layers {span} (about {human_size(size)})")
            break
    for new in (found["new_tokens"] // 2, found["new_tokens"] // 4, 10, 1):
        if 1 <= new < found["new_tokens"] and loaded.cfg.arch != "encoder" and (size := fits(new=new)) is not None:
            hints.append(f"--max-new-tokens {new} (about {human_size(size)})")
            break
    advice = "; try " + ", ".join(hints) if hints else ""
    over = f"--max-trace-size {human_size(budget.bytes)}" if budget.of == "--max-trace-size" else \
        f"{human_size(budget.bytes)} ({budget.of})"
    raise BadInput(f"the trace would be about {human_size(found['bytes'])}, over {over}{advice} (or a larger --max-trace-size)")
