"""Replay start-up and session save time for a GPT-2-small-shaped session at 128 tokens.

- first paint: wall time from starting `tracer replay NAME` (a new process, in a pseudo-terminal)
  to its first frame reaching the terminal, as a ratio to a trivial Textual app
  started the same way, interleaved in the same run (medians). Target <= 1.5x. Beside it, the
  same trivial app importing numpy first: the floor for any UI that draws numpy arrays.
- save: `SessionStore.save` of the ~130 MB session, fsyncs included (median). Target <= 0.5 s.
  Printed beside it: the same bytes written raw and fsynced, the disk's floor on this machine.
- also: opening the session (metadata and headers checked, no tensor read), reading one
  tensor, and `tracer replay NAME --no-tui` end to end.

    python benchmarks/replay.py [--repeats 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import os
import pty
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def first_paint(args: list[str], columns: int = 120, rows: int = 40) -> tuple[float, float]:
    """Seconds from spawning the process to its first frame reaching the (pseudo-)terminal; and
    the process's CPU seconds (start to exit: less sensitive than wall time to a busy machine)."""
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

    env = dict(os.environ, TERM="xterm-256color")
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    seen.wait(timeout=120)
    if painted:
        os.write(master, QUIT)
    try:
        proc.wait(timeout=30)
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
    args = parser.parse_args()

    from tracer.trace.session import SessionStore, load_session

    trace = build_trace(args.tokens)
    megabytes = sum(step.data.nbytes for step in trace.steps) / 1e6
    print(f"GPT-2-small-shaped decoder, random weights, {args.tokens} tokens, {len(trace)} steps, "
          f"{megabytes:.0f} MB of tensors")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        root = Path(tmp) / "sessions"
        store = SessionStore(root)
        saves, floors = [], []
        for i in range(args.repeats):  # interleaved with the raw writes: the disk's load hits both alike
            start = time.perf_counter()
            store.save(f"bench-{i}", [trace])
            saves.append(time.perf_counter() - start)
            floors.append(raw_write(trace.steps, Path(tmp) / "raw.bin"))
        for i in range(1, args.repeats):
            store.remove(f"bench-{i}")
        name = "bench-0"
        opens, firsts = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            session = load_session(root / name)
            opens.append(time.perf_counter() - start)
            start = time.perf_counter()
            session.trace["blocks.5.attn.hook_pattern@1"]
            firsts.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in (root / name).iterdir()) / 1e6
        print(f"  save              {statistics.median(saves):8.3f} s    (median of {args.repeats}: "
              f"{', '.join(f'{s:.2f}' for s in saves)}; target <= 0.5 s; {size:.0f} MB on disk)")
        print(f"  raw write+fsync   {statistics.median(floors):8.3f} s    (same bytes, one file: the disk's floor here)")
        print(f"  open session      {statistics.median(opens) * 1000:8.1f} ms   (metadata + headers checked, no tensor read)")
        print(f"  read one tensor   {statistics.median(firsts) * 1000:8.1f} ms   (12 x 128 x 128 attention pattern)")

        cli = [sys.executable, "-m", "tracer", "replay", name, "--no-tui", "--sessions-dir", str(root)]
        no_tui = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(cli, check=True, capture_output=True)
            no_tui.append(time.perf_counter() - start)
        print(f"  replay --no-tui   {statistics.median(no_tui):8.3f} s    (whole process, median)")

        replays, trivials, floors = [], [], []
        # tracer's bytecode compiled, as textual's is by pip: with PYTHONDONTWRITEBYTECODE set (as on
        # some machines) an editable install would otherwise be compiled from source at every start.
        import tracer

        compileall.compile_dir(Path(tracer.__file__).parent, quiet=1)
        try:
            first_paint(["trivial"]), first_paint(["tracer", name, str(root)])  # warm-up: file cache, .pyc
            for _ in range(args.repeats):  # interleaved: drift in the machine's load hits both alike
                trivials.append(first_paint(["trivial"]))
                floors.append(first_paint(["trivial+numpy"]))
                replays.append(first_paint(["tracer", name, str(root)]))
        except RuntimeError as exc:
            print(f"  first paint       not measurable yet: {exc}")
            return
        wall = [statistics.median(r[0] for r in runs) for runs in (trivials, replays)]
        cpu = [statistics.median(r[1] for r in runs) for runs in (trivials, replays)]
        pairs = statistics.median(r[0] / t[0] for r, t in zip(replays, trivials))
        print(f"  trivial app       {wall[0]:8.3f} s    (start to first frame, median; {cpu[0]:.2f} CPU-s to exit)")
        print(f"  tracer replay     {wall[1]:8.3f} s    (start to first frame, median; {cpu[1]:.2f} CPU-s to exit)")
        print(f"  ratio             {wall[1] / wall[0]:8.2f}x   (target <= 1.5x; median of per-pair ratios {pairs:.2f}x; "
              f"CPU-time ratio {cpu[1] / cpu[0]:.2f}x)")
        floor = statistics.median(f[0] for f in floors)
        print(f"  trivial + numpy   {floor:8.3f} s    (the same trivial app importing numpy first: "
              f"{floor / wall[0]:.2f}x the trivial app; tracer replay is {wall[1] / floor:.2f}x this)")


if __name__ == "__main__":
    main()
