"""Shared builders for the session tests: traces are built once per test run and reused."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tracer.trace import Step, Trace

TOKENS = ["ich", "bin", "piyush"]
OUT = ["<s>", "i", "am"]


def nan_with_payload() -> np.float32:
    """A NaN whose payload bits survive only a bit-exact round trip."""
    return np.array([0x7FC0_1234], dtype=np.uint32).view(np.float32)[0]


def synthetic_trace(seed: int = 0, text: str = "ich bin piyush") -> Trace:
    """A small trace with every dtype, a strided view, -inf/NaN, an empty tensor and decoder ids (no torch)."""
    rng = np.random.default_rng(seed)
    pos = {"pos": TOKENS}
    scores = rng.standard_normal((2, 3, 3)).astype(np.float32)
    scores[:, 0, 2] = -np.inf
    scores[1, 1, 1] = nan_with_payload()
    q = rng.standard_normal((2, 3, 4)).astype(np.float32).transpose(1, 0, 2)  # [pos, head, d_head], not contiguous
    assert not q.flags.c_contiguous
    probs = rng.random(10).astype(np.float32)
    probs /= probs.sum()
    steps = [
        Step.from_array("encoder.hook_tokens", np.array([4, 9, 57], dtype=np.int64), ("pos",), pos),
        Step.from_array("encoder.hook_embed", rng.standard_normal((3, 8)).astype(np.float32), ("pos", "d_model"), pos),
        Step.from_array("encoder.0.attn.hook_q", q, ("pos", "head", "d_head"), pos),
        Step.from_array("encoder.0.attn.hook_mask", np.tril(np.ones((3, 3), dtype=bool)), ("query", "key"),
                        {"query": TOKENS, "key": TOKENS}),
        Step.from_array("encoder.0.attn.hook_attn_scores", scores, ("head", "query", "key"), {"query": TOKENS, "key": TOKENS}),
        Step.from_array("encoder.0.attn.hook_pattern", rng.random((2, 3, 3)).astype(np.float32), ("head", "query", "key"),
                        {"query": TOKENS, "key": TOKENS}),
        Step.from_array("encoder.0.hook_half", rng.standard_normal((3, 8)).astype(np.float16), ("pos", "d_model"), pos),
        Step.from_array("encoder.0.hook_double", rng.standard_normal((3, 8)), ("pos", "d_model"), pos),
        Step.from_array("encoder.0.hook_ints", np.arange(6, dtype=np.int32).reshape(3, 2)[:, ::-1], ("pos", "d_model"), pos),
        Step.from_array("encoder.0.hook_empty", np.zeros((0, 8), dtype=np.float32), ("pos", "d_model"), {"pos": []}),
    ]
    for t in (1, 2):
        own = OUT[:t]
        steps.append(Step.from_array(f"decoder.0.cross_attn.hook_pattern@{t}", rng.random((2, t, 3)).astype(np.float32),
                                     ("head", "query", "key"), {"query": own, "key": TOKENS}))
        steps.append(Step.from_array(
            f"decoder.hook_probs@{t}", probs, ("vocab",),
            extra={"top_k": [{"token": "i", "id": int(np.argmax(probs)), "prob": float(probs.max())}],
                   "chosen": {"token": "i", "id": int(np.argmax(probs))}},
        ))
    steps[1]._stats = {"min": -1.0, "max": 1.0, "mean": 0.0, "std": 0.5, "nonfinite": 0}  # as if the UI had shown it
    return Trace(
        steps,
        model={"name": "synthetic", "arch": "encoder-decoder", "config": {"d_model": 8}},
        device="cpu",
        input={"text": text, "tokens": TOKENS, "ids": [4, 9, 57]},
        output={"text": "i am", "tokens": ["i", "am"], "ids": [7, 12]},
    )


def big_trace(megabytes: int, seed: int = 1) -> Trace:
    """A trace of about `megabytes` MB of float32, in 1 MB tensors."""
    rng = np.random.default_rng(seed)
    block = rng.standard_normal(256 * 1024).astype(np.float32).reshape(256, 1024)
    steps = [Step.from_array(f"blocks.{i}.hook_resid_post", block + i, ("pos", "d_model")) for i in range(megabytes)]
    return Trace(steps, model={"name": "big", "arch": "decoder", "config": {}}, device="cpu",
                 input={"text": "big", "tokens": ["big"], "ids": [1]}, output={"text": "", "tokens": [], "ids": []})


@functools.lru_cache(maxsize=None)
def _scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tracer-session-tests-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.lru_cache(maxsize=None)
def model_folder(arch: str = "encoder-decoder") -> Path:
    """A tiny random-weight model folder (built once per test run)."""
    from tracer.nn.config import ModelConfig
    from tracer.nn.random_model import make_random_model

    cfg = ModelConfig(name=f"tiny-{arch}", arch=arch, vocab_size=200, d_model=16, n_heads=2, d_ff=32,
                      n_layers=2, n_decoder_layers=2, max_positions=32)
    return make_random_model(_scratch() / arch, cfg)


@functools.lru_cache(maxsize=None)
def model_trace(arch: str = "encoder-decoder", text: str = "ich bin piyush", lens: bool = False) -> Trace:
    """A real captured trace (3 decoding steps) from a tiny random model (`lens`: with the logit
    lens, as `tracer run` records it)."""
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model

    return trace_text(load_model(str(model_folder(arch))), text, max_new_tokens=3, lens=lens)


def assert_bit_identical(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    assert a.shape == b.shape, what
    assert a.dtype == b.dtype, what
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


def assert_same_steps(expected: Trace, actual: Trace) -> None:
    """Same ids, metadata and bit-identical tensors."""
    assert actual.ids == expected.ids
    for want, got in zip(expected.steps, actual.steps):
        assert got.shape == want.shape and got.dtype == want.dtype and got.axes == want.axes, want.id
        assert got.labels == want.labels, want.id
        assert got.extra == want.extra, want.id
        assert_bit_identical(want.data, got.data, want.id)


NO_TORCH = r"""
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
BEFORE
from tracer.cli import cli
for args, expected in COMMANDS:
    try:
        cli.main(args, prog_name="tracer", standalone_mode=False)
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    assert status == expected, (args, status)
    print("<ran command>", flush=True)
AFTER
assert "torch" not in sys.modules, "torch was imported"
print("torch absent")
"""


def run_without_torch(commands, sessions_dir, before: str = "", after: str = "", timeout: int = 180):
    """Run tracer commands in a fresh Python that cannot import torch, with `sessions_dir` as the
    sessions folder. Each command is its argument list (it must exit 0) or (arguments, exit code);
    `before`/`after`: more code run before the commands and after them. Fails unless every command
    ran, ended as expected and torch was never imported; returns the finished process."""
    import os
    import subprocess
    import sys

    commands = [c if isinstance(c, tuple) else (c, 0) for c in commands]
    code = NO_TORCH.replace("COMMANDS", repr(commands)).replace("BEFORE", before).replace("AFTER", after)
    env = dict(os.environ, TRACER_SESSIONS_DIR=str(sessions_dir))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("<ran command>") == len(commands) and "torch absent" in proc.stdout, proc.stdout[-2000:]
    return proc


def copy_trace(trace: Trace, change: dict | None = None, drop=(), extra: dict | None = None) -> Trace:
    """A copy of `trace`: some steps' data changed (id -> function of the array; labels follow a
    shrunk axis), some left out, some steps' extra replaced (id -> dict)."""
    steps = []
    for step in trace.steps:
        if step.id in drop:
            continue
        data = step.data.copy()
        if change and step.id in change:
            data = change[step.id](data)
        labels = {axis: names[: data.shape[step.axes.index(axis)]] for axis, names in step.labels.items()}
        steps.append(Step.from_array(step.id, data, step.axes, labels, (extra or {}).get(step.id, step.extra)))
    return Trace(steps, model=trace.model, device=trace.device, input=trace.input, output=trace.output)


def bumped(where, by):
    """A change for copy_trace: add `by` at index `where`."""
    def change(array):
        array = array.copy()
        array[where] += by
        return array
    return change
