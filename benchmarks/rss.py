"""This process's resident memory, for the benchmarks that measure it (Linux: /proc, getrusage)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss() -> int:
    """The peak resident memory so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def rss_now() -> int:
    """Resident memory now (/proc/self/statm), in bytes."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def rss_file() -> int:
    """The resident pages that are files' (shared libraries' code, mostly), in bytes: how many of a
    library's pages a process maps depends on what the page cache holds (the kernel maps cached pages
    around each one faulted in), so this part of the peak moves between machines and sessions."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return 0
