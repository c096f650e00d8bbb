"""Replay start-up and session save time for a GPT-2-small-shaped session at 128 tokens.

- first paint: wall time from starting `tracer replay NAME` (a new process, in a pseudo-terminal)
  to its first frame reaching the terminal, as a ratio to a trivial Textual app
  started the same way, interleaved in the same run (medians). Target <= 1.5x. Beside it, the
  same trivial app importing numpy first: the floor for any UI that draws numpy arrays.
  Two sessions: one pass of 128 tokens (234 steps), and a decode of the 128-token prompt and
  --new-tokens (default 40) more with the KV cache (9,360 steps), each built and saved once.
- --compare-with DIR: another checkout of tracer (with its own .venv) timed in the same
  interleaved run, its sessions built by its own code: "before and after, same machine, same
  run". A checkout without a KV cache records the decode as a full re-run of an 8-token prompt:
  the same steps, smaller tensors (a 128-token prompt re-run 40 times is ~6 GB).
- --instructions: each start once more under callgrind (valgrind), to exit, in instructions:
  deterministic where wall time on a shared machine is not.
- save: `SessionStore.save` of the ~130 MB session, fsyncs included (median). Target <= 0.5 s.
  Printed beside it: the same bytes written raw and fsynced, the disk's floor on this machine.
- also: opening the session (metadata and headers checked, no tensor read), reading one
  tensor, and `tracer replay NAME --no-tui` end to end.

    python benchmarks/replay.py [--repeats 5] [--tokens 128] [--new-tokens 40]
    python benchmarks/replay.py --start-only --repeats 11 --compare-with ../base [--instructions]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Runs in the child: just the app, exactly as a user starts it (nothing patched, nothing imported
# ahead of it). The parent watches the terminal for the first frame.
DRIVER = r"""
import os, sys
if sys.argv[1].startswith("trivial"):
    if sys.argv[1] == "trivial+numpy":  # the floor for any UI that draws numpy arrays
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as tracer replay loads it
        import numpy
    from textual.app import App
    from textual.widgets import Static

    class Trivial(App):
        def compose(self):
            yield Static("hello")

    Trivial().run()
else:
    from tracer.cli import main
    sys.argv = ["tracer", "replay", sys.argv[2], "--sessions-dir", sys.argv[3]]
    main()
"""

# Text that only the first full frame carries: Textual writes a frame in one piece, so when this
# reaches the terminal the whole first screen has. (tracer's is the end of its key bar.)
FIRST_FRAME = {"trivial": b"hello", "trivial+numpy": b"hello", "tracer": b"quit"}
QUIT = b"\x11"  # ctrl+q: both apps quit on it


def first_paint(args: list[str], python: str = sys.executable, cwd: str | None = None, wrap: list[str] = (),
                columns: int = 120, rows: int = 40, env: dict | None = None) -> tuple[float, float]:
    """Seconds from spawning the process to its first frame reaching the (pseudo-)terminal; and
    the process's CPU seconds (start to exit: less sensitive than wall time to a busy machine).
    `python`, `cwd`: the interpreter and checkout it runs in; `wrap`: a command it runs under."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    marker = FIRST_FRAME[args[0]]
    out = bytearray()
    painted: list[float] = []
    seen = threading.Event()

    def drain():  # read the terminal as it fills (the app never blocks writing) and stamp the frame
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            out.extend(data)
            if not painted and marker in out:
                painted.append(time.time())
                seen.set()

    env = dict(os.environ, TERM="xterm-256color", **(env or {}))
    env.pop("VIRTUAL_ENV", None)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen([*wrap, python, "-c", DRIVER, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd, close_fds=True, start_new_session=True)
    os.close(slave)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen.wait(timeout=600 if wrap else 120)
    if painted:
        os.write(master, QUIT)
    try:
        proc.wait(timeout=300 if wrap else 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(timeout=5)
    os.close(master)
    if not painted:
        tail = bytes(out[-1500:]).decode("utf-8", "replace")
        raise RuntimeError(f"{args[0]} never painted a frame (exit {proc.returncode}); output tail:\n{tail}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return painted[0] - start, cpu_s


# Runs in a checkout (this one or --compare-with's), with its own interpreter and code: builds the
# two sessions its replay is timed on. A checkout whose generate has no KV cache records the decode
# as a full re-run of a short prompt (the same number of steps).
BUILD = r"""
import inspect, json, sys
sys.path.insert(0, "benchmarks")
from gpt2_small import gpt2_small, text_of_tokens
from tracer.capture.run import generate
from tracer.trace.session import SessionStore
root, tokens, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loaded = gpt2_small("cpu")
loaded.tokenizer.stop_ids = set()  # random weights: decode every step asked for
kv = "kv_cache" in inspect.signature(generate).parameters
store, built = SessionStore(root), {}
for name, prompt, n in (("pass", tokens, 1), ("decode", tokens if kv else 8, new)):
    if n == 0:
        continue
    trace = generate(loaded, text_of_tokens(loaded, prompt), max_new_tokens=n, traced=True).trace
    store.save(name, [trace], force=True)
    built[name] = {"steps": len(trace), "prompt": prompt, "new": n, "kv_cache": kv and name == "decode"}
print(json.dumps(built))
"""


class Tree:
    """A checkout whose replay is timed: its interpreter, its folder and the sessions it built."""

    def __init__(self, folder: Path, label: str):
        self.folder = folder
        self.label = label
        venv = folder / ".venv" / "bin" / "python"
        self.python = str(venv) if venv.exists() and folder != HERE.parent else sys.executable
        self.commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip() or "?"
        self.sessions: Path | None = None
        self.built: dict = {}

    def build(self, root: Path, tokens: int, new: int) -> None:
        self.sessions = root
        done = subprocess.run([self.python, "-c", BUILD, str(root), str(tokens), str(new)], cwd=self.folder,
                              capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
        if done.returncode != 0:
            raise SystemExit(f"{self.label}: building its sessions failed:\n{done.stderr[-2000:]}")
        self.built = json.loads(done.stdout.strip().splitlines()[-1])
        # its bytecode compiled, as textual's is by pip: with PYTHONDONTWRITEBYTECODE set (as on
        # some machines) an editable install would otherwise be compiled from source at every start
        subprocess.run([self.python, "-m", "compileall", "-q", str(self.folder / "tracer")], check=True)

    def start(self, what: str, wrap: list[str] = (), env: dict | None = None) -> tuple[float, float]:
        """One start of `what` (trivial, trivial+numpy, or a session's name) in this checkout."""
        args = [what] if what.startswith("trivial") else ["tracer", what, str(self.sessions)]
        return first_paint(args, self.python, str(self.folder), wrap, env=env)

    def instructions(self, what: str, folder: Path) -> int:
        """Instructions (callgrind's Ir) of one start of `what`, from start to exit."""
        out = folder / f"callgrind.{self.label}.{what}"
        # -q: valgrind's banner quotes the driver (and so the first frame's marker); a fixed hash
        # seed: the same dict layouts every run, so the counts repeat to ~0.1 %
        self.start(what, ["valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out}"], env={"PYTHONHASHSEED": "0"})
        totals = re.search(rb"^(?:summary|totals): (\d+)", out.read_bytes(), re.M)
        out.unlink()
        return int(totals[1])


def raw_write(steps, path: Path) -> float:
    """The same bytes written straight to one file and fsynced: the disk's floor."""
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as out:
        for step in steps:
            array = np.ascontiguousarray(step.data)
            if array.size:
                out.write(memoryview(array).cast("B"))
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def build_trace(n_tokens: int):
    from gpt2_small import gpt2_small, text_of_tokens

    from tracer.capture import generate

    loaded = gpt2_small("cpu")
    return generate(loaded, text_of_tokens(loaded, n_tokens), max_new_tokens=1, traced=True).trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=40, help="the decode session's new tokens (0: no decode session)")
    parser.add_argument("--compare-with", type=Path, action="append", default=[], metavar="DIR",
                        help="another checkout (with its .venv) to time in the same interleaved run")
    parser.add_argument("--start-only", action="store_true", help="only the first-paint figures (no save, open, --no-tui)")
    parser.add_argument("--instructions", action="store_true", help="also each start once under callgrind, in instructions")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        if not args.start_only:
            save_and_open(args.tokens, args.repeats, Path(tmp))
        start_up(args, Path(tmp))


def save_and_open(tokens: int, repeats: int, tmp: Path) -> None:
    """Save, open, one tensor read and `replay --no-tui`, on the single-pass session."""
    from tracer.trace.session import SessionStore, load_session

    trace = build_trace(tokens)
    megabytes = sum(step.data.nbytes for step in trace.steps) / 1e6
    print(f"GPT-2-small-shaped decoder, random weights, {tokens} tokens, {len(trace)} steps, "
          f"{megabytes:.0f} MB of tensors")
    root = tmp / "sessions"
    store = SessionStore(root)
    saves, floors = [], []
    for i in range(repeats):  # interleaved with the raw writes: the disk's load hits both alike
        start = time.perf_counter()
        store.save(f"bench-{i}", [trace])
        saves.append(time.perf_counter() - start)
        floors.append(raw_write(trace.steps, tmp / "raw.bin"))
    for i in range(1, repeats):
        store.remove(f"bench-{i}")
    name = "bench-0"
    opens, firsts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        session = load_session(root / name)
        opens.append(time.perf_counter() - start)
        start = time.perf_counter()
        session.trace["blocks.5.attn.hook_pattern@1"]
        firsts.append(time.perf_counter() - start)
    size = sum(p.stat().st_size for p in (root / name).iterdir()) / 1e6
    print(f"  save              {statistics.median(saves):8.3f} s    (median of {repeats}: "
          f"{', '.join(f'{s:.2f}' for s in saves)}; target <= 0.5 s; {size:.0f} MB on disk)")
    print(f"  raw write+fsync   {statistics.median(floors):8.3f} s    (same bytes, one file: the disk's floor here)")
    print(f"  open session      {statistics.median(opens) * 1000:8.1f} ms   (metadata + headers checked, no tensor read)")
    print(f"  read one tensor   {statistics.median(firsts) * 1000:8.1f} ms   (12 x 128 x 128 attention pattern)")

    cli = [sys.executable, "-m", "tracer", "replay", name, "--no-tui", "--sessions-dir", str(root)]
    no_tui = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cli, check=True, capture_output=True)
        no_tui.append(time.perf_counter() - start)
    print(f"  replay --no-tui   {statistics.median(no_tui):8.3f} s    (whole process, median)")


def start_up(args, tmp: Path) -> None:
    """First paint of each checkout's replay on each session, against the trivial app, interleaved."""
    trees = [Tree(HERE.parent, "this")] + [Tree(folder.resolve(), folder.resolve().name) for folder in args.compare_with]
    for number, tree in enumerate(trees):
        tree.build(tmp / f"start-{number}", args.tokens, args.new_tokens)
        about = ", ".join(f"{name} {b['prompt']}+{b['new']} ({b['steps']:,} steps{', KV cache' if b['kv_cache'] else ''})"
                          for name, b in tree.built.items())
        print(f"first paint, {tree.label} ({tree.commit}, {tree.folder}): sessions {about}")
    names = list(trees[0].built)
    runs: dict[tuple[str, str], list] = {(tree.label, what): [] for tree in trees for what in ["trivial", *names]}
    floors = []
    try:
        for tree in trees:  # warm-up: file cache, .pyc
            for what in ["trivial", *names]:
                tree.start(what)
        for repeat in range(args.repeats):  # interleaved: drift in the machine's load hits every start alike
            for tree in trees[repeat % len(trees):] + trees[:repeat % len(trees)]:
                runs[tree.label, "trivial"].append(tree.start("trivial"))
                if tree is trees[0]:
                    floors.append(tree.start("trivial+numpy"))
                for name in names:
                    runs[tree.label, name].append(tree.start(name))
    except RuntimeError as exc:
        print(f"  first paint       not measurable yet: {exc}")
        return
    median = lambda values: statistics.median(values)  # noqa: E731
    for tree in trees:
        trivial = runs[tree.label, "trivial"]
        wall0, cpu0 = median(r[0] for r in trivial), median(r[1] for r in trivial)
        tag = "" if tree is trees[0] else f" [{tree.label}]"
        print(f"  trivial app{tag}       {wall0:8.3f} s    (start to first frame, median of {args.repeats}; {cpu0:.2f} CPU-s to exit)")
        for name in names:
            replays = runs[tree.label, name]
            wall, cpu = median(r[0] for r in replays), median(r[1] for r in replays)
            pairs = median(r[0] / t[0] for r, t in zip(replays, trivial))
            b = tree.built[name]
            print(f"  tracer replay {name}{tag} {wall:8.3f} s    (start to first frame, median; {b['steps']:,} steps; "
                  f"{cpu:.2f} CPU-s to exit)")
            print(f"  ratio {name}{tag}         {wall / wall0:8.2f}x   (target <= 1.5x; median of per-pair ratios {pairs:.2f}x; "
                  f"CPU-time ratio {cpu / cpu0:.2f}x)")
    floor = median(f[0] for f in floors)
    wall0 = median(r[0] for r in runs[trees[0].label, "trivial"])
    print(f"  trivial + numpy   {floor:8.3f} s    (the same trivial app importing numpy first: "
          f"{floor / wall0:.2f}x the trivial app)")
    if args.instructions:
        for tree in trees:
            counts = {what: tree.instructions(what, tmp) for what in ["trivial", *names]}
            tag = "" if tree is trees[0] else f" [{tree.label}]"
            print(f"  instructions{tag}     trivial {counts['trivial'] / 1e9:.3f} G; " + "; ".join(
                f"{name} {counts[name] / 1e9:.3f} G = {counts[name] / counts['trivial']:.3f}x" for name in names)
                + "   (callgrind, start to exit)")


if __name__ == "__main__":
    main()
