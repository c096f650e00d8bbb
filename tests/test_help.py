"""`tracer --help` and every subcommand's --help describe each option in a line."""

from __future__ import annotations

import click
from click.testing import CliRunner

from tracer.cli import cli


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_has_help_and_every_option_a_description():
    commands = list(all_commands(cli))
    assert {path for path, _ in commands} >= {("run",), ("replay",), ("export",), ("sessions",), ("sessions", "rm"),
                                                ("models",), ("check",), ("train",)}
    for path, command in [((), cli)] + commands:
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert (command.help or "").strip(), f"tracer {' '.join(path)} has no description"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and "\n" not in param.help.strip(), f"tracer {' '.join(path)} {param.opts[0]}"
                assert param.opts[0] in result.output


def test_help_works_without_a_model_or_torch():
    import subprocess
    import sys

    code = "import sys; from click.testing import CliRunner; from tracer.cli import cli; " \
           "r = CliRunner().invoke(cli, ['run', '--help']); print(r.exit_code, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]
