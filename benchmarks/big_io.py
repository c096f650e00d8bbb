"""Reading and exporting a large session: peak resident memory against the session's size.

    python benchmarks/big_io.py read      # a >= 1 GB session (GPT-2-small shape, no KV cache, 128 + 8)
                                          # and a 128 + 40 KV-cached one: read every tensor, fresh process
    python benchmarks/big_io.py export    # the 128 + 40 KV-cached decode: `tracer export` of its session
                                          # and of the trace in memory (`tracer run --export`)
    python benchmarks/big_io.py check     # `tracer check` of the 128 + 40 KV-cached session
    python benchmarks/big_io.py read --prompt 32 --new 4     # a quick run

`read` opens each session in a fresh process and reads every tensor as `tracer check` and
`tracer export` do (each step's `.data`, the full view, and `.rows`, what is stored; then
`release`). The target: the peak beyond the opened session is about one tensor (its largest full
view), not the session's size. `export` times the JSON export and compares its size with
`tracer.trace.export.estimated_size`. `check` times `check_trace` on the KV-cached session, which
checks each step's new rows (no t × t view is assembled). Random weights (benchmarks/gpt2_small.py); a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from rss import peak_rss, rss_now  # noqa: E402


def build(folder: str, prompt: int, new: int, kv_cache: bool) -> dict:
    """Trace the GPT-2-small-shaped decode and save it as session `big` in `folder`."""
    import torch

    from gpt2_small import gpt2_small, text_of_tokens
    from tracer.capture.run import generate
    from tracer.trace.session import SessionStore

    torch.set_grad_enabled(False)
    loaded = gpt2_small()
    loaded.tokenizer.stop_ids = set()  # random weights: decode every step asked for
    trace = generate(loaded, text_of_tokens(loaded, prompt), max_new_tokens=new, traced=True, kv_cache=kv_cache).trace
    path = SessionStore(folder).save("big", [trace])
    size = sum(p.stat().st_size for p in path.iterdir())
    return {"steps": len(trace), "session": size}


def read_all(folder: str) -> dict:
    """Open session `big` and read every tensor once, as check and export do."""
    from tracer.trace.session import SessionStore

    start = time.perf_counter()
    trace = SessionStore(folder).load("big").trace
    baseline = rss_now()
    largest = 0
    for step in trace.steps:
        largest = max(largest, step.data.nbytes)
        step.rows  # noqa: B018 - what is stored (a KV-cached step's new rows)
        step.release()
    return {"seconds": time.perf_counter() - start, "baseline": baseline, "peak": peak_rss(), "largest": largest}


def check(folder: str) -> dict:
    """`tracer check big`: time and peak."""
    from tracer.trace.check import check_trace
    from tracer.trace.session import SessionStore

    trace = SessionStore(folder).load("big").trace
    baseline = rss_now()
    start = time.perf_counter()
    report = check_trace(trace)
    return {"seconds": time.perf_counter() - start, "ok": report.ok, "checked": report.checked,
            "baseline": baseline, "peak": peak_rss()}


def export(folder: str, out: str, in_memory: bool, prompt: int, new: int) -> dict:
    """`tracer export big` (or, `in_memory`, a fresh trace's `tracer run --export`): time, size, peak."""
    from tracer.trace.export import estimated_size, write_json

    if in_memory:
        import torch

        from gpt2_small import gpt2_small, text_of_tokens
        from tracer.capture.run import generate

        torch.set_grad_enabled(False)
        loaded = gpt2_small()
        loaded.tokenizer.stop_ids = set()
        trace = generate(loaded, text_of_tokens(loaded, prompt), max_new_tokens=new, traced=True).trace
    else:
        from tracer.trace.session import SessionStore

        trace = SessionStore(folder).load("big").trace
    baseline = rss_now()
    start = time.perf_counter()
    guess = estimated_size(trace)
    estimate_seconds = time.perf_counter() - start
    write_json(trace, out)
    seconds = time.perf_counter() - start
    size = os.path.getsize(out)
    os.unlink(out)
    return {"seconds": seconds, "estimate_seconds": estimate_seconds, "bytes": size, "estimate": guess,
            "baseline": baseline, "peak": peak_rss()}


def in_fresh_process(*args) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["read", "export", "check"])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=None, help="new tokens (read: 8 without the KV cache; 40 with it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        if args.mode == "read":
            for kv_cache, new in ((False, args.new or 8), (True, args.new or 40)):
                folder = f"{scratch}/{'kv' if kv_cache else 'full'}"
                made = in_fresh_process("build", folder, args.prompt, new, int(kv_cache))
                got = in_fresh_process("read", folder)
                beyond = got["peak"] - got["baseline"]
                print(f"{'KV cache' if kv_cache else 'no KV cache'}, {args.prompt} + {new}: session {mb(made['session'])} "
                      f"({made['steps']} steps), read in {got['seconds']:.1f} s; peak RSS {mb(got['peak'])}, "
                      f"{mb(beyond)} beyond the opened session ({mb(got['baseline'])}) = "
                      f"{beyond / made['session']:.2f}x the session; largest full tensor {mb(got['largest'])}")
        elif args.mode == "check":
            new = args.new or 40
            folder = f"{scratch}/kv"
            made = in_fresh_process("build", folder, args.prompt, new, 1)
            got = in_fresh_process("check", folder)
            print(f"check, KV cache, {args.prompt} + {new} ({mb(made['session'])}, {made['steps']} steps): "
                  f"{'ok' if got['ok'] else 'FAILED'}, {got['checked']} checks in {got['seconds']:.1f} s; "
                  f"peak RSS {mb(got['peak'])}, {mb(got['peak'] - got['baseline'])} beyond the loaded trace")
        else:
            new = args.new or 40
            folder = f"{scratch}/kv"
            made = in_fresh_process("build", folder, args.prompt, new, 1)
            for in_memory in (False, True):
                got = in_fresh_process("export", folder, f"{scratch}/out.json", int(in_memory), args.prompt, new)
                error = got["estimate"] / got["bytes"] - 1
                print(f"{'in-memory trace' if in_memory else 'session'} ({mb(made['session'])}), {args.prompt} + {new}, "
                      f"KV cache: {mb(got['bytes'])} of JSON in {got['seconds']:.1f} s "
                      f"(estimate {mb(got['estimate'])}, {error:+.1%}, in {got['estimate_seconds'] * 1000:.0f} ms); "
                      f"peak RSS {mb(got['peak'])}, {mb(got['peak'] - got['baseline'])} beyond the loaded trace")


def child(argv: list[str]) -> None:
    what, rest = argv[0], argv[1:]
    if what == "build":
        result = build(rest[0], int(rest[1]), int(rest[2]), bool(int(rest[3])))
    elif what == "read":
        result = read_all(rest[0])
    elif what == "check":
        result = check(rest[0])
    else:
        result = export(rest[0], rest[1], bool(int(rest[2])), int(rest[3]), int(rest[4]))
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
