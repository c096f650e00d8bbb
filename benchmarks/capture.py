"""Capture overhead and JSON export time for a GPT-2-small-shaped decoder at 128 tokens.

Traced vs untraced forward of the same model, interleaved in the same run (medians), and the
time to export the trace (~100 MB of float32) to JSON. Targets: ratio <= 1.10x, export <= 3 s.
Minor page faults per pass are printed too: most of what a traced pass costs beyond its hooks
is the kernel handing out fresh pages for the intermediates the trace keeps.
`--keep-freed-memory` measures the steady state when glibc keeps freed pages for reuse.

    python benchmarks/capture.py [--device cpu] [--repeats 7] [--keep-freed-memory]
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_small import gpt2_small, text_of_tokens  # noqa: E402

from tracer.capture import generate  # noqa: E402
from tracer.trace.export import write_json  # noqa: E402


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory (no trim, no per-allocation mmap), as jemalloc or tcmalloc
    would: a trace's tensors then reuse the pages the previous trace freed."""
    libc = ctypes.CDLL("libc.so.6")
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(device: str = "cpu", repeats: int = 7, n_tokens: int = 128) -> dict:
    loaded = gpt2_small(device)
    text = text_of_tokens(loaded, n_tokens)
    run = lambda traced: generate(loaded, text, max_new_tokens=1, traced=traced)  # noqa: E731
    run(False), run(True)  # warm-up: allocator, kernels, thread pools
    plain, traced, faults = [], [], {False: [], True: []}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        for kind, times in ((False, plain), (True, traced)):
            before = minor_faults()
            times.append(timed(lambda: run(kind), loaded.device))
            faults[kind].append(minor_faults() - before)
    trace = run(True).trace
    size = sum(step.data.nbytes for step in trace.steps)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_json(trace, Path(tmp) / "trace.json")
        export_s = time.perf_counter() - start
        json_mb = (Path(tmp) / "trace.json").stat().st_size / 1e6
    return {
        "device": str(loaded.device), "tokens": n_tokens, "steps": len(trace),
        "untraced_s": statistics.median(plain), "traced_s": statistics.median(traced),
        "ratio": statistics.median(traced) / statistics.median(plain),
        # each traced run over the untraced run just before it: robust to slow drifts in load
        "pair_ratio": statistics.median(t / p for t, p in zip(traced, plain)),
        "trace_mb": size / 1e6, "export_s": export_s, "json_mb": json_mb,
        # page faults per pass: a trace keeps every intermediate, so it needs fresh pages
        "untraced_faults": statistics.median(faults[False]), "traced_faults": statistics.median(faults[True]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="mallopt: glibc keeps freed pages (steady state of repeated tracing)")
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    r = measure(args.device, args.repeats)
    print(f"GPT-2-small-shaped decoder, {r['tokens']} tokens, {args.device}, {r['steps']} steps, "
          f"{r['trace_mb']:.0f} MB of tensors (torch threads: {torch.get_num_threads()})")
    print(f"  untraced forward  {r['untraced_s'] * 1000:8.1f} ms (median of {args.repeats})")
    print(f"  traced forward    {r['traced_s'] * 1000:8.1f} ms")
    print(f"  ratio             {r['ratio']:8.3f}x   (target <= 1.10x; median of per-pair ratios {r['pair_ratio']:.3f}x)")
    print(f"  minor page faults {r['untraced_faults']:8.0f} untraced, {r['traced_faults']:.0f} traced (per pass, median)")
    print(f"  JSON export       {r['export_s']:8.2f} s    ({r['json_mb']:.0f} MB written; target <= 3 s)")


if __name__ == "__main__":
    main()
