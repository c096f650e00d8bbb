"""tracer's traced forward vs TransformerLens's `run_with_cache`, same GPT-2-small shape, same run.

Both models have random weights, 12 layers, d_model 768, 12 heads, d_mlp 3072, vocab 50257,
learned positions, pre-norm, GELU, and see the same number of tokens (128). The runs are
interleaved (the order rotates every repeat) and compared by medians, so a noisy machine hits
both alike. Everything runs under `torch.no_grad()` on both sides.

- ours: `generate(..., max_new_tokens=1, traced=True)`, one traced forward pass as `tracer run`
  does it: every tap to host numpy (raw and scaled scores, mask, masked scores, concat, …),
  last-position logits and probabilities, top-k.
- TL default: `model.run_with_cache(tokens)`, what its users call: logits at every position,
  the cache left on the model's device.
- TL same work: `run_with_cache(tokens, return_type=None)` plus the unembedding and softmax
  of the last position only, i.e. the same arithmetic as ours.
- TL forward: `model(tokens)`, no cache: with ours untraced, how fast the two models are alone.
- TL to host (CUDA only): the default call, then every cached tensor `.cpu().numpy()`: the same
  deliverable as ours (host arrays).

    python benchmarks/versus_tl.py [--device cpu|cuda] [--repeats 5]
    python benchmarks/versus_tl.py --peak ours|ours-untraced|tl --device cpu   (one run, peak memory as JSON)

Needs the `bench` extra: pip install -e '.[bench]' (transformer-lens 3.x, whose HookedTransformer
TransformerLens 4 removed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpt2_small import GPT2_SMALL, gpt2_small, text_of_tokens  # noqa: E402

from tracer.capture import generate  # noqa: E402

N_TOKENS = 128


def transformer_lens_available() -> str | None:
    """None if TransformerLens's HookedTransformer can be imported, else why not."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError as exc:
        return f"TransformerLens not importable ({str(exc).splitlines()[0][:80]}); pip install -e '.[bench]'"
    return None


def hooked_transformer(device: str, seed: int = 0):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=GPT2_SMALL["n_layers"], d_model=GPT2_SMALL["d_model"], n_heads=GPT2_SMALL["n_heads"],
            d_head=GPT2_SMALL["d_model"] // GPT2_SMALL["n_heads"], d_mlp=GPT2_SMALL["d_ff"],
            d_vocab=GPT2_SMALL["vocab_size"], n_ctx=GPT2_SMALL["max_positions"], act_fn="gelu",
            normalization_type="LN", positional_embedding_type="standard", device=device, seed=seed,
        )
        model = HookedTransformer(cfg)
    return model.eval()


def runners(device: str):
    """name -> zero-argument callable doing one run; plus the models, for sizes."""
    ours = gpt2_small(device)
    text = text_of_tokens(ours, N_TOKENS)
    tl = hooked_transformer(device)
    tokens = torch.randint(0, GPT2_SMALL["vocab_size"], (1, N_TOKENS), device=device)

    def ours_traced():
        return generate(ours, text, max_new_tokens=1, traced=True).trace

    def ours_untraced():
        return generate(ours, text, max_new_tokens=1)

    @torch.no_grad()
    def tl_default():
        return tl.run_with_cache(tokens)

    @torch.no_grad()
    def tl_plain():
        return tl(tokens)

    @torch.no_grad()
    def tl_same_work():
        _, cache = tl.run_with_cache(tokens, return_type=None)
        logits = tl.unembed(cache["ln_final.hook_normalized"][:, -1:])
        return logits.softmax(-1).cpu(), cache

    @torch.no_grad()
    def tl_to_host():
        logits, cache = tl.run_with_cache(tokens)
        return logits, {name: value.cpu().numpy() for name, value in cache.items()}

    runs = {"ours_traced": ours_traced, "ours_untraced": ours_untraced,
            "tl_default": tl_default, "tl_same_work": tl_same_work, "tl_plain": tl_plain}
    if torch.device(device).type == "cuda":
        runs["tl_to_host"] = tl_to_host
    return runs


def timed(fn, device: str) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for one call."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def compare(device: str = "cpu", repeats: int = 5) -> dict:
    """Interleaved medians of every runner, ratios against TL, and what each records."""
    runs = runners(device)
    names = list(runs)
    for name in names:  # warm-up: allocators, kernels, thread pools
        runs[name]()
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate, so no one always goes first
        for name in order:
            wall, cpu = timed(runs[name], device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    med = {name: statistics.median(values) for name, values in times.items()}
    cpu_med = {name: statistics.median(values) for name, values in cpu_times.items()}
    trace = runs["ours_traced"]()
    _, cache = runs["tl_default"]()
    out = {
        "device": device, "tokens": N_TOKENS, "repeats": repeats, "torch_threads": torch.get_num_threads(),
        "median_s": med, "all_s": times, "cpu_median_s": cpu_med, "all_cpu_s": cpu_times,
        # CPU seconds of this process: less sensitive than wall time to other processes on the machine
        "cpu_ratio_vs_tl_default": cpu_med["ours_traced"] / cpu_med["tl_default"],
        "cpu_ratio_vs_tl_same_work": cpu_med["ours_traced"] / cpu_med["tl_same_work"],
        "ratio_vs_tl_default": med["ours_traced"] / med["tl_default"],
        "ratio_vs_tl_same_work": med["ours_traced"] / med["tl_same_work"],
        # best of N: the uncontended cost, robust to a machine that is sometimes 3x slower for everyone
        "min_s": {name: min(values) for name, values in times.items()},
        "min_ratio_vs_tl_default": min(times["ours_traced"]) / min(times["tl_default"]),
        "min_ratio_vs_tl_same_work": min(times["ours_traced"]) / min(times["tl_same_work"]),
        # each repeat's ours over its TL run: robust to slow drifts in load
        "pair_ratio_vs_tl_default": statistics.median(
            a / b for a, b in zip(times["ours_traced"], times["tl_default"])),
        "ours_tensors": len(trace), "ours_mb": sum(s.data.nbytes for s in trace.steps) / 1e6,
        "ours_kinds": len({s.kind for s in trace.steps}),
        "tl_tensors": len(cache), "tl_mb": sum(v.numel() * v.element_size() for v in cache.values()) / 1e6,
        "tl_kinds": len({name.rsplit(".", 1)[-1] for name in cache.keys()}),
    }
    if "tl_to_host" in med:
        out["ratio_vs_tl_to_host"] = med["ours_traced"] / med["tl_to_host"]
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def peak(mode: str, device: str = "cpu") -> dict:
    """Peak memory one run adds over the loaded model, in a fresh process (call it in a subprocess).

    CPU: peak resident set size (ru_maxrss) minus the resident size before the run; CUDA: peak
    allocated device memory minus allocated before (plus the host arrays, for ours)."""
    cuda = torch.device(device).type == "cuda"
    if mode.startswith("ours"):
        loaded = gpt2_small(device)
        text = text_of_tokens(loaded, N_TOKENS)
        fn = lambda: generate(loaded, text, max_new_tokens=1, traced=mode == "ours")  # noqa: E731
    else:
        model = hooked_transformer(device)
        tokens = torch.randint(0, GPT2_SMALL["vocab_size"], (1, N_TOKENS), device=device)
        fn = lambda: torch.no_grad()(model.run_with_cache)(tokens)  # noqa: E731
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    reset_peak_rss()
    rss_before = rss_mb()
    result = fn()
    out = {"mode": mode, "device": device, "host_peak_mb": peak_rss_mb() - rss_before}
    if cuda:
        torch.cuda.synchronize()
        out["device_peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 1e6
    del result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak", choices=["ours", "ours-untraced", "tl"])
    args = parser.parse_args()
    if args.peak:
        print(json.dumps(peak(args.peak, args.device)))
        return
    missing = transformer_lens_available()
    if missing:
        sys.exit(missing)
    r = compare(args.device, args.repeats)
    print(json.dumps({k: v for k, v in r.items() if not k.startswith("all_")}, indent=1))


if __name__ == "__main__":
    main()
