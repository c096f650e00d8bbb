"""Every tracer benchmark, one table: capture overhead, TransformerLens, memory, storage, UI.

    python benchmarks/run.py                  # CPU, and CUDA when this machine has it
    python benchmarks/run.py --device cpu     # one device only
    python benchmarks/run.py --repeats 9 --json results.json

Times are medians of --repeats runs; the runs being compared are interleaved in one process,
so load from other processes hits both sides alike, and the ratios are what to read. The
comparison with TransformerLens needs the `bench` extra (pip install -e '.[bench]'). Rows whose
benchmark or model is not there yet say so instead of a number. Benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

NA = "not available yet"


class Table:
    """Rows of (group, what, device, ours, reference, ratio, note)."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, group, what, device="", ours="", reference="", ratio="", note=""):
        row = dict(group=group, what=what, device=device, ours=ours, reference=reference, ratio=ratio, note=note)
        self.rows.append(row)
        print("  " + " | ".join(str(v) for v in row.values() if v != ""), file=sys.stderr, flush=True)

    def render(self) -> str:
        heads = ["group", "what", "device", "ours", "reference", "ratio", "note"]
        cells = [heads] + [[str(r[h]) for h in heads] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(heads))]
        line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{gpu}, Python {platform.python_version()}, load average {load:.1f} at start")


# -- capture overhead -------------------------------------------------------------------------
def deen_overhead(table: Table, device: str, repeats: int) -> None:
    from tracer.capture import generate
    from tracer.nn.loading import available_models, load_model

    what = 'de-en-tiny, "ich bin piyush", traced / untraced'
    if not any(p.name == "de-en-tiny" for p in available_models()):
        table.add("capture overhead", what, device, NA, note="models/de-en-tiny is not there yet")
        return
    loaded = load_model("de-en-tiny", device)
    run = lambda traced: generate(loaded, "ich bin piyush", traced=traced)  # noqa: E731
    run(False), run(True)
    plain, traced = [], []
    for _ in range(repeats * 3):  # a tiny model: more repeats are cheap
        plain.append(timed(lambda: run(False), device))
        traced.append(timed(lambda: run(True), device))
    result = run(True)
    table.add("capture overhead", what, device, ms(statistics.median(traced)), ms(statistics.median(plain)),
              f"{statistics.median(traced) / statistics.median(plain):.2f}x",
              f"whole translation, {len(result.output_ids)} decoding steps, {len(result.trace)} tensors")


def gpt2_overhead(table: Table, device: str, repeats: int, cache: dict) -> None:
    what = "GPT-2-small shape, 128 tokens, traced / untraced forward"
    if not (HERE / "capture.py").exists():
        table.add("capture overhead", what, device, NA, note="benchmarks/capture.py is not there yet")
        return
    import capture

    r = capture.measure(device, repeats)
    cache[device] = r
    table.add("capture overhead", what, device, ms(r["traced_s"]), ms(r["untraced_s"]), f"{r['ratio']:.2f}x",
              f"target <= 1.10x; per-pair median {r['pair_ratio']:.2f}x; {r['steps']} tensors")


# -- TransformerLens ----------------------------------------------------------------------------
def versus_tl(table: Table, device: str, repeats: int, cache: dict) -> None:
    import versus_tl as vt

    missing = vt.transformer_lens_available()
    if missing:
        table.add("vs TransformerLens", "ours traced / run_with_cache", device, note=missing)
        return
    r = vt.compare(device, repeats)
    cache[device] = r
    m = r["median_s"]
    table.add("vs TransformerLens", "ours traced / TL run_with_cache (default)", device, ms(m["ours_traced"]),
              ms(m["tl_default"]), f"{r['ratio_vs_tl_default']:.2f}x",
              f"target <= 0.90x; best-of-{repeats} ratio {r['min_ratio_vs_tl_default']:.2f}x, per-pair median "
              f"{r['pair_ratio_vs_tl_default']:.2f}x; TL also unembeds all 128 positions")
    table.add("vs TransformerLens", "ours traced / TL run_with_cache (same work)", device, ms(m["ours_traced"]),
              ms(m["tl_same_work"]), f"{r['ratio_vs_tl_same_work']:.2f}x",
              f"best-of-{repeats} ratio {r['min_ratio_vs_tl_same_work']:.2f}x; TL return_type=None, then the last "
              "position's unembed and softmax, as ours")
    table.add("vs TransformerLens", "context: ours untraced / TL forward without cache", device,
              ms(m["ours_untraced"]), ms(m["tl_plain"]), f"{m['ours_untraced'] / m['tl_plain']:.2f}x",
              f"best-of-{repeats} ratio {r['min_s']['ours_untraced'] / r['min_s']['tl_plain']:.2f}x; the models alone, "
              "no recording (TL's plain forward also unembeds all positions)")
    if "tl_to_host" in m:
        table.add("vs TransformerLens", "ours traced / TL run_with_cache + cache to host", device,
                  ms(m["ours_traced"]), ms(m["tl_to_host"]), f"{r['ratio_vs_tl_to_host']:.2f}x",
                  "same deliverable: every tensor as host numpy")


def recorded(table: Table, tl: dict) -> None:
    r = next(iter(tl.values()), None)
    if r is None:
        return
    table.add("recorded", "tensors in one 128-token pass", "", f"{r['ours_tensors']} ({r['ours_kinds']} kinds)",
              f"{r['tl_tensors']} ({r['tl_kinds']} kinds)", "",
              "ours adds raw & scaled scores, mask, concat, logits, probs; TL adds ln hook_scale")
    table.add("recorded", "trace size (tensors, in memory)", "", f"{r['ours_mb']:.0f} MB", f"{r['tl_mb']:.0f} MB",
              f"{r['ours_mb'] / r['tl_mb']:.2f}x", "ours on the host as numpy; TL on the model's device")


def peak_memory(table: Table, device: str) -> None:
    import versus_tl as vt

    results = {}
    modes = ["ours", "ours-untraced"] + (["tl"] if vt.transformer_lens_available() is None else [])
    for mode in modes:
        proc = subprocess.run([sys.executable, str(HERE / "versus_tl.py"), "--peak", mode, "--device", device],
                              capture_output=True, text=True, timeout=600)
        try:
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            results[mode] = None
    key = "device_peak_mb" if torch.device(device).type == "cuda" else "host_peak_mb"
    where = "GPU memory" if key == "device_peak_mb" else "resident memory"

    def show(mode):
        return f"{results[mode][key]:.0f} MB" if results.get(mode) else "failed"

    note = f"{where} one run adds over the loaded model (fresh process each); untraced: {show('ours-untraced')}"
    if key == "device_peak_mb" and results.get("ours"):
        note += f"; ours also holds {results['ours']['host_peak_mb']:.0f} MB on the host"
    ratio = ""
    if results.get("ours") and results.get("tl") and results["tl"][key] > 0:
        ratio = f"{results['ours'][key] / results['tl'][key]:.2f}x"
    table.add("peak memory", "one traced 128-token pass", device, show("ours"),
              show("tl") if "tl" in results else "TL not installed", ratio, note)


# -- storage ----------------------------------------------------------------------------------
def storage(table: Table, repeats: int, capture_cache: dict) -> None:
    from gpt2_small import gpt2_small, text_of_tokens

    from tracer.capture import generate
    from tracer.trace.export import write_json

    loaded = gpt2_small("cpu")
    trace = generate(loaded, text_of_tokens(loaded, 128), max_new_tokens=1, traced=True).trace
    size = sum(s.data.nbytes for s in trace.steps) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from tracer.trace.session import SessionStore
        except ImportError:
            SessionStore = None
        if SessionStore is None:
            table.add("storage", "session save / reopen", "cpu", NA, note="tracer.trace.session is not there yet")
        else:
            store = SessionStore(Path(tmp) / "sessions")
            saves, opens, reads, exports = [], [], [], []
            for i in range(repeats):
                saves.append(timed(lambda: store.save("bench", [trace], force=True), "cpu"))
                start = time.perf_counter()
                session = store.load("bench")
                opens.append(time.perf_counter() - start)
                start = time.perf_counter()
                for step in session.trace.steps:
                    step.data  # noqa: B018 - read every tensor
                reads.append(time.perf_counter() - start)
                exports.append(timed(lambda: write_json(session.trace, Path(tmp) / "s.json"), "cpu"))
            folder = store.path_of("bench")
            disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
            table.add("storage", "session save (GPT-2-small trace)", "cpu", ms(statistics.median(saves)),
                      note=f"{size:.0f} MB of tensors, {disk:.0f} MB on disk, atomic (fsync + rename)")
            table.add("storage", "session reopen (manifest, lazy)", "cpu", ms(statistics.median(opens)))
            table.add("storage", "session reopen + read every tensor", "cpu",
                      ms(statistics.median(opens) + statistics.median(reads)))
            table.add("storage", "export session to JSON", "cpu", ms(statistics.median(exports)),
                      note=f"{(Path(tmp) / 's.json').stat().st_size / 1e6:.0f} MB of JSON")
    r = capture_cache.get("cpu")
    if r:
        table.add("storage", "export in-memory trace to JSON", "cpu", ms(r["export_s"]), note=
                  f"{r['json_mb']:.0f} MB of JSON; target <= 3 s (benchmarks/capture.py, one run)")


# -- UI and replay (their own benchmark files) ------------------------------------------------
def external(table: Table, group: str, filename: str, what: str) -> None:
    """Rows from another issue's benchmark: its rows() if it has one, else its printed report."""
    path = HERE / filename
    if not path.exists():
        table.add(group, what, "cpu", NA, note=f"benchmarks/{filename} is not there yet")
        return
    spec = importlib.util.spec_from_file_location(path.stem + "_bench", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if hasattr(module, "rows"):
            for row in module.rows():
                table.add(group, **{k: v for k, v in row.items() if k != "group"})
            return
    except Exception as exc:  # a benchmark from elsewhere must not sink the table
        table.add(group, what, "cpu", "failed", note=f"{type(exc).__name__}: {str(exc)[:80]}")
        return
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=900)
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        table.add(group, what, "cpu", "failed", note=(proc.stderr.strip().splitlines() or ["no output"])[-1][:100])
        return
    # Their printed report: a heading, then "label   value unit   (note)" lines.
    table.add(group, f"{what} (benchmarks/{filename})", "cpu", note=lines[0])
    for line in lines[1:]:
        match = (re.match(r"^(?P<what>.+?)\s{2,}median\s+(?P<value>[\d.]+ ms) wall\b,?\s*(?P<note>.*)$", line)
                 or re.match(r"^(?P<what>[^:]{3,60}):\s*median (?P<value>[\d.]+ ms),?\s*(?P<note>.*)$", line)
                 or re.match(r"^(?P<what>.+?)\s{2,}(?P<value>-?[\d.]+ ?(?:ms|s|x|MB)?)\s*(?:\((?P<note>.*)\))?$", line))
        if match:
            table.add(group, match["what"], "cpu", match["value"], note=match["note"] or "")
        else:
            table.add(group, line, "cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", dest="json_path", help="also write the rows to this file")
    parser.add_argument("--skip", action="append", default=[],
                        help="skip a group: overhead, tl, memory, storage, ui (repeatable)")
    args = parser.parse_args()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    table = Table()
    about = machine()
    print(f"machine: {about}", file=sys.stderr)
    capture_cache, tl_cache = {}, {}
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            for group, what in (("capture overhead", "traced / untraced"), ("vs TransformerLens", "traced / run_with_cache"),
                                ("peak memory", "one traced 128-token pass")):
                table.add(group, what, "cuda", "no GPU on this machine")
            continue
        if "overhead" not in args.skip:
            deen_overhead(table, device, args.repeats)
            gpt2_overhead(table, device, args.repeats, capture_cache)
        if "tl" not in args.skip:
            versus_tl(table, device, args.repeats, tl_cache)
        if "memory" not in args.skip:
            peak_memory(table, device)
    recorded(table, tl_cache)
    if "storage" not in args.skip:
        storage(table, max(3, args.repeats // 2), capture_cache)
    if "ui" not in args.skip:
        external(table, "UI", "tui.py", "step latency")
        external(table, "replay", "replay.py", "replay start-up")
    print(f"\nmachine: {about}\n")
    print(table.render())
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": about, "rows": table.rows, "tl": tl_cache,
                                                    "capture": capture_cache}, indent=1, default=str))


if __name__ == "__main__":
    main()
