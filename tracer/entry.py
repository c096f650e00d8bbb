"""The `tracer` program's entry point (and `python -m tracer`'s).

Ctrl-C at any moment, even in the first milliseconds while click and tracer's modules are still
loading, ends with one line and exit status 130, never a traceback; once a command runs,
tracer.cli's TracerGroup does the same. Kept tiny so that it is loaded before anything slow.
"""

import sys


def main() -> None:
    try:
        from tracer.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
