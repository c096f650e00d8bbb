"""Atomic and durable file-system operations: a crash, Ctrl-C or full disk never leaves a
half-written file, and a folder is swapped into place in one step where the OS allows.

Files: `atomic_write` (temp file, fsync, rename over), `write_json` (fsynced). Folders:
`make_hidden_folder` and `hidden_name` (work names beside a target), `exchange` (swap two paths
atomically), `fsync_dir`, `rmtree`. And `pid_alive`, to tell a dead writer's leftovers from a
live one's. The session store (tracer.trace.session) builds its crash-safe saves from these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

import orjson


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write to a temp file beside `path`, fsync, then rename over it; on any error, remove the temp.

    The temp is `.NAME.PID-xxxx.tmp`: a writer killed before the rename leaves it behind, and
    `remove_dead_temps` tells it from a live writer's by the pid."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would have
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")


def remove_dead_temps(folder: str | os.PathLike) -> None:
    """Delete the temp files that writers killed mid-`atomic_write` left in `folder` (their pid is gone)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMP.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not pid_alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(handle) -> None:
    """Flush a file open for writing all the way to the disk."""
    handle.flush()
    os.fsync(handle.fileno())


def write_json(path: Path, document: dict, indent: bool = False) -> None:
    """Write `document` as JSON (numpy values allowed) and fsync it before returning."""
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    with open(path, "wb") as out:
        out.write(orjson.dumps(document, option=option))
        if indent:
            out.write(b"\n")
        fsync_file(out)


# -- folders ---------------------------------------------------------------------------------
def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOENT, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def make_hidden_folder(parent: Path, prefix: str) -> Path:
    """A new empty folder in `parent` whose name starts with `prefix` (a unique tail added); once
    renamed into place it has the permissions `mkdir` would give it (mkdtemp makes it private)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    with contextlib.suppress(OSError):
        os.chmod(path, 0o777 & ~current_umask())
    return path


def hidden_name(parent: Path, prefix: str) -> Path:
    """A fresh name in `parent` starting with `prefix`, to rename something to (nothing is created)."""
    return parent / f"{prefix}{os.urandom(6).hex()}"


def rmtree(path: Path) -> None:
    """Delete a folder and everything in it, as far as possible (what is left is tidied later)."""
    shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (a process we cannot signal counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
