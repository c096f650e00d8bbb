"""The exceptions a user can cause; the CLI turns each into one line and an exit code."""


class TracerError(Exception):
    """A runtime failure: the CLI prints `Error: <message>` and exits 1."""

    exit_code = 1


class BadInput(TracerError):
    """Bad usage or bad input (text, option, model folder): exit 2."""

    exit_code = 2


class DamagedFile(TracerError):
    """A trace, export or session that cannot be read safely: exit 1."""
