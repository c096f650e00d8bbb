"""The `tracer` command. Heavy imports (torch, textual) live inside the commands that need them."""

from __future__ import annotations

import sys

import click

from tracer import __version__
from tracer.errors import TracerError


class TracerGroup(click.Group):
    """Turns TracerError into `Error: …` plus its exit code, and Ctrl-C into status 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TracerError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=TracerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli():
    """Step through a transformer's computation one tensor at a time."""


@cli.command()
@click.argument("text")
@click.option("--model", "-m", "model_name", default=None, metavar="NAME|PATH",
              help="Bundled model name or a model folder (default: de-en-tiny).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--max-new-tokens", type=int, default=None, help="Stop decoding after this many tokens.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Candidates recorded at each decoding step.")
@click.option("--save", "save_name", default=None, metavar="NAME", help="Save the trace as a session.")
@click.option("--force", is_flag=True, help="With --save: replace a session of the same name.")
@click.option("--sessions-dir", default=None, type=click.Path(file_okay=False),
              help="Sessions folder (default: $TRACER_SESSIONS_DIR or ./sessions).")
@click.option("--export", "export_path", default=None, type=click.Path(dir_okay=False),
              help="Write the trace as JSON to this file.")
@click.option("--precision", type=click.IntRange(1, 9), default=None,
              help="With --export: significant digits for floats (default: full float32).")
@click.option("--no-tui", is_flag=True, help="Print a summary instead of opening the UI.")
def run(text, model_name, device, max_new_tokens, top_k, save_name, force, sessions_dir, export_path, precision, no_tui):
    """Translate (or continue) TEXT with a model and record every intermediate.

    \b
    Example:
      tracer run "ich bin piyush" --no-tui
    """
    from tracer.capture import trace_text
    from tracer.capture.device import resolve_device
    from tracer.nn.loading import load_model

    loaded = load_model(model_name, resolve_device(device))
    trace = trace_text(loaded, text, max_new_tokens=max_new_tokens, top_k=top_k)
    if export_path:
        write_export(trace, export_path, precision)
    if save_name:
        from tracer.trace.session import SessionStore

        SessionStore(sessions_dir).save(save_name, [trace], force=force)
    if no_tui:
        from tracer.summary import print_summary

        print_summary(trace)
    else:
        from tracer.tui import open_traces

        open_traces([trace], retrace=lambda new_text: trace_text(loaded, new_text, max_new_tokens=max_new_tokens, top_k=top_k))


def write_export(trace, path, precision) -> None:
    from tracer.trace.export import write_json

    try:
        write_json(trace, path, precision)
    except OSError as exc:
        raise TracerError(f"cannot write {path}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("source", metavar="SESSION|FILE.json")
def check(source):
    """Verify a trace's internal consistency from its own recorded tensors.

    Exit 0 when every relation holds, 1 when any step fails (each is named).
    """
    from tracer.trace.check import check_trace
    from tracer.trace.load import load_trace

    report = check_trace(load_trace(resolve_source(source)))
    for failure in report.failures:
        click.echo(f"FAIL {failure.step_id}: {failure.message}")
    if report.ok:
        click.echo(f"ok: {report.checked} checks passed")
    else:
        click.echo(f"{len(report.failures)} of {report.checked} checks failed")
        sys.exit(1)


def resolve_source(source: str):
    """A session name (in the sessions folder), a session folder, or a JSON file."""
    from pathlib import Path

    path = Path(source)
    if path.exists():
        return path
    try:
        from tracer.trace.session import SessionStore
    except ImportError:
        return path
    return SessionStore(None).path_of(source)


@cli.command()
def models():
    """List the models tracer can find (bundled ones and $TRACER_MODELS_DIR)."""
    import json

    from tracer.nn.loading import available_models

    found = available_models()
    if not found:
        click.echo("No models installed. Run `tracer train de-en-tiny` or pass --model PATH.")
        return
    for folder in found:
        try:
            cfg = json.loads((folder / "config.json").read_text())
            detail = f"{cfg.get('arch', '?')}, {cfg.get('n_layers', '?')} layers, d_model {cfg.get('d_model', '?')}"
        except (OSError, ValueError):
            detail = "unreadable config.json"
        click.echo(f"{folder.name:16} {detail}  ({folder})")


def main():
    cli(prog_name="tracer")


if __name__ == "__main__":
    main()
