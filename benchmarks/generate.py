"""Traced decoding at scale: tracer's KV-cached and full re-run traces against transformers' generate.

    python benchmarks/generate.py                      # GPT-2-small shape, CPU, prompt 128, 10/20/40/80 new tokens
    python benchmarks/generate.py --prompt 32 --new 10,20   # a quick run
    python benchmarks/generate.py --max-trace 2GB      # skip (and say so) a run whose estimated trace passes 2 GB
    python benchmarks/generate.py --new 40 --save      # also: saved as a session, regular and streamed (`tracer run --save`)

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own:
tracer's `generate(traced=True)` with and without the KV cache, and transformers'
`GPT2LMHeadModel.generate` with its KV cache and output_attentions / output_hidden_states /
return_dict_in_generate on the same shape (random weights; eager attention, which output_attentions
needs). "trace" is the bytes tracer stores (every step's recorded rows). With --save, the same
runs also saved as a session: the whole trace in memory then `SessionStore.save` (as before
streaming), and streamed (each pass written as it is recorded, `tracer run --save`); the time
after "+" is the save (for the streamed one: the commit, the tensors' header and data into
place). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def run_tracer(prompt: int, new: int, kv_cache: bool, save: str | None = None) -> dict:
    """One traced decode; `save`: then saved as a session ("regular") or streamed into one ("stream")."""
    import numpy as np
    import torch

    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.run import generate
    from tracer.trace.session import SessionStore
    from tracer.trace.session_writer import SessionWriter

    torch.set_grad_enabled(False)
    loaded = gpt2_small()
    loaded.tokenizer.stop_ids = set()  # random weights: decode every step asked for
    text = text_of_tokens(loaded, prompt)
    model_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    before = peak_rss()
    folder = Path(tempfile.mkdtemp(prefix="tracer-bench-"))
    try:
        start = time.perf_counter()
        if save == "stream":
            with SessionWriter(SessionStore(folder), "bench") as writer:
                result = generate(loaded, text, max_new_tokens=new, traced=True, kv_cache=kv_cache, sink=writer.add)
                seconds = time.perf_counter() - start
                writer.commit(result.trace)
        else:
            result = generate(loaded, text, max_new_tokens=new, traced=True, kv_cache=kv_cache)
            seconds = time.perf_counter() - start
            if save == "regular":
                SessionStore(folder).save("bench", [result.trace])
        saving = time.perf_counter() - start - seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # from the metadata: a streamed trace's tensors are on disk, and reading them would load them
    trace_bytes = sum(math.prod(step.rows_shape) * np.dtype(step.dtype).itemsize for step in result.trace)
    return {"seconds": seconds, "save_seconds": saving if save else None, "peak": peak_rss(), "before": before,
            "model": model_bytes, "trace": trace_bytes, "steps": len(result.trace), "tokens": len(result.output_ids)}


def run_transformers(prompt: int, new: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2_small import GPT2_SMALL

    torch.set_grad_enabled(False)
    config = GPT2Config(vocab_size=GPT2_SMALL["vocab_size"], n_positions=GPT2_SMALL["max_positions"],
                        n_embd=GPT2_SMALL["d_model"], n_layer=GPT2_SMALL["n_layers"], n_head=GPT2_SMALL["n_heads"],
                        attn_implementation="eager")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, prompt))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    before = peak_rss()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, use_cache=True, output_attentions=True, output_hidden_states=True,
                         return_dict_in_generate=True, pad_token_id=0)
    seconds = time.perf_counter() - start
    kept = sum(t.numel() * t.element_size() for step in out.attentions for t in step) + \
        sum(t.numel() * t.element_size() for step in out.hidden_states for t in step)
    return {"seconds": seconds, "peak": peak_rss(), "before": before, "model": model_bytes, "trace": kept,
            "tokens": out.sequences.shape[1] - prompt}


def estimated(prompt: int, new: int, kv_cache: bool) -> int:
    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.budget import estimate

    loaded = gpt2_small()
    return estimate(loaded, text_of_tokens(loaded, prompt), max_new_tokens=new, kv_cache=kv_cache)["bytes"]


def child(kind: str, prompt: int, new: int) -> dict:
    """One measurement in a fresh interpreter (this script with --child)."""
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(prompt), str(new)],
                          capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {prompt}+{new} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(kind: str, prompt: int, new: int) -> dict:
    if kind == "hf":
        return run_transformers(prompt, new)
    base, _, save = kind.partition("+")  # "kv+stream": KV cache, streamed into a session
    return run_tracer(prompt, new, kv_cache=base == "kv", save=save or None)


def seconds(row: dict) -> str:
    """The run's time, and the save's after a "+" where there was one."""
    save = row.get("save_seconds")
    return f"{row['seconds']:.2f} s" + (f" + {save:.2f} s" if save is not None else "")


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
    args = parser.parse_args()
    limit = parse_size(args.max_trace)
    rows = []
    print(f"GPT-2-small shape, CPU, prompt {args.prompt}", file=sys.stderr)
    kinds = ("kv", "kv+regular", "kv+stream", "full", "full+regular", "full+stream") if args.save else ("kv", "full")
    for new in [int(n) for n in args.new.split(",")]:
        for kind in kinds:
            guess = estimated(args.prompt, new, kind.startswith("kv"))
            if guess > limit:
                rows.append({"kind": kind, "new": new, "estimate": guess, "skipped": True})
                print(f"  {kind} +{new}: skipped, estimate {mb(guess)} > {mb(limit)}", file=sys.stderr)
                continue
            found = child(kind, args.prompt, new) | {"kind": kind, "new": new, "estimate": guess}
            rows.append(found)
            print(f"  {kind} +{new}: {seconds(found)}, peak {mb(found['peak'])}, trace {mb(found['trace'])} "
                  f"(estimate {mb(guess)})", file=sys.stderr)
        if new == args.headline:
            found = child("hf", args.prompt, new) | {"kind": "transformers", "new": new}
            rows.append(found)
            print(f"  transformers +{new}: {found['seconds']:.2f} s, peak {mb(found['peak'])}", file=sys.stderr)
    print("| run | new tokens | time | peak RSS | model + trace | peak / (model + trace) | trace (estimate) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base, _, save = row["kind"].partition("+")
        name = {"kv": "tracer, KV cache", "full": "tracer, --no-kv-cache", "transformers": "transformers generate"}[base]
        name += {"": "", "regular": ", then saved", "stream": ", streamed --save"}[save]
        if row.get("skipped"):
            print(f"| {name} | {row['new']} | skipped | | | | ({mb(row['estimate'])}) |")
            continue
        own = row["model"] + row["trace"]
        estimate_text = f" ({mb(row['estimate'])})" if "estimate" in row else " (attentions + hidden states kept)"
        print(f"| {name} | {row['new']} | {seconds(row)} | {mb(row['peak'])} | {mb(own)} | "
              f"{row['peak'] / own:.2f}× | {mb(row['trace'])}{estimate_text} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
