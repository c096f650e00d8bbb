"""Traced decoding at scale: tracer's KV-cached and full re-run traces against transformers' generate.

    python benchmarks/generate.py                      # GPT-2-small shape, CPU, prompt 128, 10/20/40/80 new tokens
    python benchmarks/generate.py --prompt 32 --new 10,20   # a quick run
    python benchmarks/generate.py --max-trace 2GB      # skip (and say so) a run whose estimated trace passes 2 GB
    python benchmarks/generate.py --repeats 3 --pairs 5     # medians of 3 fresh processes a row; 5 timing pairs
    python benchmarks/generate.py --new 40 --save      # also: saved as a session, regular and streamed (`tracer run --save`)

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own:
tracer's `generate(traced=True)` with and without the KV cache (and, at the headline length, with
`store_dtype="float16"`), and transformers' `GPT2LMHeadModel.generate` with its KV cache and
output_attentions / output_hidden_states / return_dict_in_generate on the same shape (random
weights; eager attention, which output_attentions needs). No logit lens (generate has none).
"trace" is the bytes tracer stores (every step's recorded rows). "above baseline" is the peak
less the resident memory measured in the same process before the model is built (Python, torch
and the benchmark's imports: ~220-300 MB). "files' pages" is how much of the resident memory at
the end is files' pages, the shared libraries' code (libtorch_cpu.so most): 100-180 MB, more the
more of those files the page cache holds (the kernel maps cached pages around each one a process
touches; a freshly installed torch counts ~70 MB more), and the peak moves with it. `--repeats`
runs each row's process that many times, interleaved, and reports medians; `--pairs` then times
the headline, tracer's KV-cached trace and transformers' generate, alternately in one process
(both models built once), and reports the median of the per-pair ratios, the figure a busy
machine disturbs least. With --save, the same
runs also saved as a session: the whole trace in memory then `SessionStore.save` (as before
streaming), and streamed (each pass written as it is recorded, `tracer run --save`); the time
after "+" is the save (for the streamed one: the commit, the tensors' header and data into
place). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from rss import peak_rss, rss_file, rss_now  # noqa: E402


def run_tracer(prompt: int, new: int, kv_cache: bool, store_dtype: str | None = None, save: str | None = None) -> dict:
    """One traced decode; `save`: then saved as a session ("regular") or streamed into one ("stream")."""
    import numpy as np
    import torch

    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.run import generate
    from tracer.trace.session import SessionStore
    from tracer.trace.session_writer import SessionWriter

    torch.set_grad_enabled(False)
    baseline = rss_now()  # Python, torch and tracer imported; no model yet
    loaded = gpt2_small()
    loaded.tokenizer.stop_ids = set()  # random weights: decode every step asked for
    text = text_of_tokens(loaded, prompt)
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    before = peak_rss()
    options = dict(max_new_tokens=new, traced=True, kv_cache=kv_cache, store_dtype=store_dtype)
    folder = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
    try:
        start = time.perf_counter()
        if save == "stream":
            with SessionWriter(SessionStore(folder), "bench") as writer:
                result = generate(loaded, text, sink=writer.add, **options)
                seconds = time.perf_counter() - start
                writer.commit(result.trace)
        else:
            result = generate(loaded, text, **options)
            seconds = time.perf_counter() - start
            if save == "regular":
                SessionStore(folder).save("bench", [result.trace])
        saving = time.perf_counter() - start - seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # from the metadata: a streamed trace's tensors are on disk, and reading them would load them
    trace_bytes = sum(math.prod(step.rows_shape) * np.dtype(step.dtype).itemsize for step in result.trace)
    return {"seconds": seconds, "save_seconds": saving if save else None, "peak": peak_rss(), "before": before,
            "baseline": baseline, "file": rss_file(), "model": model_bytes, "trace": trace_bytes,
            "steps": len(result.trace),
            "tokens": len(result.output_ids)}


def transformers_gpt2(prompt: int):
    """transformers' GPT2LMHeadModel of the GPT-2-small shape (random weights, eager attention) and
    `prompt` random token ids."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2_small import GPT2_SMALL

    config = GPT2Config(vocab_size=GPT2_SMALL["vocab_size"], n_positions=GPT2_SMALL["max_positions"],
                        n_embd=GPT2_SMALL["d_model"], n_layer=GPT2_SMALL["n_layers"], n_head=GPT2_SMALL["n_heads"],
                        attn_implementation="eager")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    return model, torch.randint(0, config.vocab_size, (1, prompt))


def run_transformers(prompt: int, new: int) -> dict:
    import torch
    # loaded before the baseline is measured, so that it counts the import (transformers' own is lazy)
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401

    torch.set_grad_enabled(False)
    baseline = rss_now()
    model, ids = transformers_gpt2(prompt)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = peak_rss()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, use_cache=True, output_attentions=True, output_hidden_states=True,
                         return_dict_in_generate=True, pad_token_id=0)
    seconds = time.perf_counter() - start
    kept = sum(t.numel() * t.element_size() for step in out.attentions for t in step) + \
        sum(t.numel() * t.element_size() for step in out.hidden_states for t in step)
    return {"seconds": seconds, "peak": peak_rss(), "before": before, "baseline": baseline, "file": rss_file(),
            "model": model_bytes,
            "trace": kept, "tokens": out.sequences.shape[1] - prompt}


def estimated(prompt: int, new: int, kv_cache: bool, store_dtype: str | None = None) -> int:
    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.budget import estimate

    loaded = gpt2_small()
    return estimate(loaded, text_of_tokens(loaded, prompt), max_new_tokens=new, kv_cache=kv_cache,
                    store_dtype=store_dtype)["bytes"]


def child_output(kind: str, prompt: int, new: int, *extra: int) -> str:
    """The last line a fresh interpreter (this script with --child) prints."""
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(prompt), str(new), *map(str, extra)],
                          capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {prompt}+{new} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def child(kind: str, prompt: int, new: int) -> dict:
    """One measurement in a fresh interpreter."""
    return json.loads(child_output(kind, prompt, new))


def median_row(kind: str, prompt: int, new: int, repeats: int) -> dict:
    """The median time and peak of `repeats` fresh processes (one row's figures)."""
    runs = [child(kind, prompt, new) for _ in range(repeats)]
    out = dict(runs[0])
    for key in ("seconds", "peak", "baseline", "file"):
        out[key] = statistics.median(run[key] for run in runs)
    out["runs"] = [(run["seconds"], run["peak"]) for run in runs]
    return out


def measure(kind: str, prompt: int, new: int) -> dict:
    if kind == "hf":
        return run_transformers(prompt, new)
    base, _, save = kind.partition("+")  # "kv+stream": KV cache, streamed into a session
    return run_tracer(prompt, new, kv_cache=base != "full", store_dtype="float16" if base == "kv16" else None,
                      save=save or None)


def seconds(row: dict) -> str:
    """The run's time, and the save's after a "+" where there was one."""
    save = row.get("save_seconds")
    return f"{row['seconds']:.2f} s" + (f" + {save:.2f} s" if save is not None else "")


def timing_pairs(prompt: int, new: int, pairs: int) -> dict:
    """tracer's KV-cached trace and transformers' generate, alternately in one process (order
    swapped every pair), after one warm-up each: their times and the per-pair ratios."""
    import torch

    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.run import generate

    torch.set_grad_enabled(False)
    loaded = gpt2_small()
    loaded.tokenizer.stop_ids = set()
    text = text_of_tokens(loaded, prompt)
    model, ids = transformers_gpt2(prompt)

    def ours() -> float:
        start = time.perf_counter()
        generate(loaded, text, max_new_tokens=new, traced=True)
        return time.perf_counter() - start

    def theirs() -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, use_cache=True, output_attentions=True, output_hidden_states=True,
                       return_dict_in_generate=True, pad_token_id=0)
        return time.perf_counter() - start

    ours(), theirs()
    rows = []
    for i in range(pairs):
        if i % 2:
            b = theirs()
            a = ours()
        else:
            a = ours()
            b = theirs()
        rows.append((a, b))
    return {"tracer": [a for a, _ in rows], "transformers": [b for _, b in rows], "ratios": [a / b for a, b in rows]}


def mb(n: int) -> str:
    return f"{n / 1024**2:,.0f} MB" if n < 10 * 1024**3 else f"{n / 1024**3:.1f} GB"


def main() -> None:
    from tracer.capture.budget import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", default="10,20,40,80", help="new-token counts for the curve")
    parser.add_argument("--headline", type=int, default=40, help="new tokens of the tracer-vs-transformers row")
    parser.add_argument("--max-trace", default="3GB", help="skip runs whose estimated trace passes this")
    parser.add_argument("--save", action="store_true", help="also each run saved as a session: regular and streamed")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per row (medians reported)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved timing pairs at the headline (0: none)")
    args = parser.parse_args()
    limit = parse_size(args.max_trace)
    rows = []
    print(f"GPT-2-small shape, CPU, prompt {args.prompt}", file=sys.stderr)
    for new in [int(n) for n in args.new.split(",")]:
        kinds = ("kv", "kv+regular", "kv+stream", "full", "full+regular", "full+stream") if args.save else ("kv", "full")
        kinds += ("kv16", "hf") if new == args.headline else ()
        for kind in kinds:
            base = kind.partition("+")[0]
            guess = None if kind == "hf" else estimated(args.prompt, new, base != "full", "float16" if base == "kv16" else None)
            if guess is not None and guess > limit:
                rows.append({"kind": kind, "new": new, "estimate": guess, "skipped": True})
                print(f"  {kind} +{new}: skipped, estimate {mb(guess)} > {mb(limit)}", file=sys.stderr)
                continue
            found = median_row(kind, args.prompt, new, args.repeats) | {"kind": kind, "new": new}
            if guess is not None:
                found["estimate"] = guess
            rows.append(found)
            print(f"  {kind} +{new}: {seconds(found)}, peak {mb(found['peak'])}, trace {mb(found['trace'])}"
                  f" (runs: {', '.join(f'{s:.1f} s {mb(p)}' for s, p in found['runs'])})", file=sys.stderr)
    print("| run | new tokens | time | peak RSS | model + trace | peak / (model + trace) | above baseline / (model + trace) "
          "| of the peak: files' pages | trace (estimate) |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {"kv": "tracer, KV cache", "kv16": "tracer, KV cache, --store-dtype float16", "full": "tracer, --no-kv-cache",
             "hf": "transformers generate"}
    for row in rows:
        base, _, save = row["kind"].partition("+")
        name = names[base] + {"": "", "regular": ", then saved", "stream": ", streamed --save"}[save]
        if row.get("skipped"):
            print(f"| {name} | {row['new']} | skipped | | | | | | ({mb(row['estimate'])}) |")
            continue
        own = row["model"] + row["trace"]
        estimate_text = f" ({mb(row['estimate'])})" if "estimate" in row else " (attentions + hidden states kept)"
        print(f"| {name} | {row['new']} | {seconds(row)} | {mb(row['peak'])} | {mb(own)} | "
              f"{row['peak'] / own:.2f}× | {(row['peak'] - row['baseline']) / own:.2f}× | {mb(row['file'])} | "
              f"{mb(row['trace'])}{estimate_text} |")
    if args.pairs:
        found = json.loads(child_output("pairs", args.prompt, args.headline, args.pairs))
        rows.append({"kind": "pairs", "new": args.headline} | found)
        print(f"\ntime at +{args.headline}, {args.pairs} interleaved pairs in one process: tracer "
              f"{statistics.median(found['tracer']):.2f} s, transformers {statistics.median(found['transformers']):.2f} s "
              f"(medians); per-pair ratio median {statistics.median(found['ratios']):.2f}× "
              f"(pairs: {', '.join(f'{r:.2f}' for r in found['ratios'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if sys.argv[1:3] == ["--child", "pairs"]:
        print(json.dumps(timing_pairs(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
    elif sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
