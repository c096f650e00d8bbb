"""Opening files from outside safely: a regular file of a bounded size, checked on the opened
descriptor, or a DamagedFile naming it.

Every reader of a manifest, step metadata, JSON export or tensor file opens through here, so a
FIFO (which would block forever), a device like /dev/zero (which never ends) or a folder is
refused in one line. The check is `fstat` on the descriptor that is then read, not a stat of the
path before opening (which a swap between the two would defeat). FIFOs are opened non-blocking
so that the open itself cannot hang; the flag is cleared once the file is known to be regular.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from tracer.errors import DamagedFile
from tracer.text import human_size, visible

_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike, limit: int, *, follow_links: bool = True, what: str = "this file",
                 advice: str = "") -> tuple[int, int]:
    """Open `path` for reading; (descriptor, size) of a regular file of at most `limit` bytes.

    The caller owns the descriptor. `follow_links=False` refuses a symbolic link (O_NOFOLLOW: a
    session holds plain files only). `what` and `advice` word the message for a file too large.
    """
    path = Path(path)
    shown = visible(path)
    flags = _FLAGS if follow_links else _FLAGS | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DamagedFile(f"{visible(path.parent)}: missing file {visible(path.name)}") from None
    except OSError as exc:
        if not follow_links and path.is_symlink():
            raise DamagedFile(f"{shown}: is a symbolic link; a session holds plain files only") from None
        raise DamagedFile(f"{shown}: cannot read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            raise DamagedFile(f"{shown}: is {kind}, not a regular file")
        if info.st_size > limit:
            raise DamagedFile(f"{shown}: {human_size(info.st_size)} is too large to read as {what} "
                              f"(limit {human_size(limit)}){advice}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def special_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when it is neither a regular file nor a folder ("a FIFO", "a socket", ...), else
    None (also when it does not exist). Links are followed: a hub snapshot links to its blobs."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_regular(path: str | os.PathLike, limit: int, *, follow_links: bool = True, what: str = "this file",
                 advice: str = "") -> bytes:
    """The whole content of a regular file of at most `limit` bytes (see `open_regular`).

    Reads at most `limit` bytes even if the file grows while it is read."""
    fd, _ = open_regular(path, limit, follow_links=follow_links, what=what, advice=advice)
    try:
        with os.fdopen(fd, "rb", closefd=True) as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise DamagedFile(f"{visible(path)}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise DamagedFile(f"{visible(path)}: grew past {human_size(limit)} while it was read")
    return raw
