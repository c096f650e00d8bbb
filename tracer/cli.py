"""The `tracer` command. Heavy imports (torch, textual) live inside the commands that need them."""

from __future__ import annotations

import sys

import click

from tracer import __version__
from tracer.errors import TracerError
from tracer.text import human_size, json_for_terminal, visible


class TracerGroup(click.Group):
    """Turns TracerError into `Error: …` plus its exit code, and Ctrl-C into status 130.

    The message goes through `visible`: it may echo a path, a `--model` value or a file's field."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except KeyboardInterrupt:  # click would print "Aborted!" and exit 1
            click.echo("Interrupted.", err=True)
            ctx.exit(130)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TracerError as exc:
            click.echo(f"Error: {visible(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=TracerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tracer")
def cli():
    """Step through a transformer's computation one tensor at a time."""


SESSIONS_DIR_OPTION = dict(
    default=None, type=click.Path(file_okay=False),
    help="Sessions folder (default: $TRACER_SESSIONS_DIR or ./sessions).",
)


def hand_over_options(command):
    """--save, --force, --sessions-dir, --export and --precision: what `hand_over` does with the
    new trace of `run` and `finetune` (one definition, so the two commands cannot drift apart)."""
    options = [
        click.option("--save", "save_name", default=None, metavar="NAME", help="Save the trace as a session."),
        click.option("--force", is_flag=True, help="With --save: replace a session of the same name."),
        click.option("--sessions-dir", **SESSIONS_DIR_OPTION),
        click.option("--export", "export_path", default=None, type=click.Path(dir_okay=False),
                     help="Write the trace as JSON to this file."),
        click.option("--precision", type=click.IntRange(1, 9), default=None,
                     help="With --export: significant digits for floats (default: full float32)."),
    ]
    for option in reversed(options):  # decorators apply bottom-up: this keeps --help's order
        command = option(command)
    return command


@cli.command()
@click.argument("text")
@click.option("--model", "-m", "model_name", default=None, metavar="NAME|PATH|ORG/NAME",
              help="Bundled model name, a model folder (tracer's or Hugging Face's), or a Hugging Face hub name "
                   "(ORG/NAME[@REVISION], from the local cache; default: de-en-tiny).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--max-new-tokens", type=int, default=None, help="Stop decoding after this many tokens.")
@click.option("--top-k", type=int, default=5, show_default=True, help="Candidates recorded at each decoding step.")
@hand_over_options
@click.option("--no-tui", is_flag=True, help="Print a summary instead of opening the UI (what happens anyway when stdin or stdout is not a terminal).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Weights' dtype (default: float32, even for a bf16/fp16 checkpoint).")
@click.option("--chat", is_flag=True, help="Wrap TEXT as a user message in the model's chat template.")
@click.option("--no-lens", is_flag=True, help="Do not record the logit lens (each layer's prediction: one vocab-sized step per layer and decoding step).")
@click.option("--no-kv-cache", is_flag=True,
              help="Re-run the whole prefix at every decoding step (default: a KV cache, each step runs only the new token).")
@click.option("--estimate", "estimate_only", is_flag=True, help="Print the trace's estimated size and exit.")
@click.option("--max-trace-size", default=None, metavar="SIZE",
              help="Refuse a run whose trace would pass SIZE (e.g. 4GB; default: half the machine's memory, or with --save, which writes each pass to disk as it is recorded, half the free disk space there).")
@click.option("--only", multiple=True, metavar="PATTERN",
              help="Record only taps whose hook name matches (fnmatch, e.g. 'blocks.*.attn.hook_pattern'; repeatable).")
@click.option("--layers", default=None, metavar="0,2-3", help="Record only these layers' taps (and the embeddings and head).")
@click.option("--steps", "decode_steps", default=None, metavar="1,3-5", help="Record only these decoding steps.")
@click.option("--heads", default=None, metavar="0,2-3",
              help="Keep only these attention heads (numbered from 0, as --layers; the UI shows head 1 for 0) of every per-head tap; keys and values "
                   "keep the heads they serve.")
@click.option("--store-dtype", type=click.Choice(["float32", "float16"]), default=None,
              help="Store the trace's floats as this (float16 halves a trace; default: as computed, half types as float32).")
def run(text, model_name, device, max_new_tokens, top_k, save_name, force, sessions_dir, export_path, precision, no_tui,
        dtype, chat, no_lens, no_kv_cache, estimate_only, max_trace_size, only, layers, decode_steps, heads, store_dtype):
    """Translate (or continue) TEXT with a model and record every intermediate.

    \b
    Example:
      tracer run "ich bin piyush" --no-tui
    """
    check_text(text)
    from tracer.capture import trace_text
    from tracer.capture.budget import default_budget, estimate, given_budget, refuse_over_budget
    from tracer.capture.device import resolve_device
    from tracer.capture.select import TapFilter
    from tracer.nn.loading import load_model
    from tracer.text import human_size

    select = TapFilter.parse(only, layers, decode_steps, heads)
    writer = None
    # a trace saved as it is recorded (--save) is held on disk, not in memory: the default budget is the disk's
    if max_trace_size is not None:
        budget = given_budget(max_trace_size)
    elif save_name is not None:
        from tracer.trace.session import sessions_root

        budget = default_budget(sessions_root(sessions_dir))
    else:
        budget = default_budget()
    if save_name is not None and not estimate_only:
        from tracer.trace.session import SessionStore
        from tracer.trace.session_writer import SessionWriter

        # refuses an existing session without --force now, not after the run; each pass's tensors go
        # into it as they are recorded; whatever ends the command before the commit deletes it
        writer = click.get_current_context().with_resource(SessionWriter(SessionStore(sessions_dir), save_name, force))
    loaded = load_model(model_name, resolve_device(device), dtype=dtype)
    options = dict(max_new_tokens=max_new_tokens, kv_cache=not no_kv_cache, select=select, chat=chat, lens=not no_lens,
                   store_dtype=store_dtype)
    if estimate_only:
        found = estimate(loaded, text, **options)
        click.echo(f"about {human_size(found['bytes'])} ({found['bytes']} bytes): {found['passes']} pass(es), "
                   f"prompt {found['prompt']}, up to {found['new_tokens']} new tokens, "
                   f"{'no KV cache' if no_kv_cache else 'KV cache'}; budget {human_size(budget.bytes)} ({budget.of})")
        return
    refuse_over_budget(loaded, text, budget, **options)
    trace = trace_text(loaded, text, top_k=top_k, sink=writer.add if writer else None, **options)
    hand_over(trace, export_path, precision, save_name, force, sessions_dir, no_tui,
              retrace=lambda new_text: trace_text(loaded, new_text, top_k=top_k, **options), writer=writer)


def hand_over(trace, export_path, precision, save_name, force, sessions_dir, no_tui, retrace=None, writer=None) -> None:
    """What run and finetune do with a new trace: export it, save it (`writer`: a session whose
    tensors were written during the run, committed now), then print the summary or open the UI
    (`retrace`: how the UI traces a new sentence)."""
    if export_path is not None:
        write_export(trace, export_path, precision)
    from tracer.trace.session import SessionStore

    if writer is not None:
        writer.commit(trace)
    elif save_name is not None:
        SessionStore(sessions_dir).save(save_name, [trace], force=force)
    if no_tui or not ui_can_run():
        from tracer.summary import print_summary

        print_summary(trace)
    else:
        from tracer.tui import open_traces

        open_traces([trace], retrace=retrace, session_name=save_name, store=SessionStore(sessions_dir))


@cli.command()
@click.argument("text")
@click.option("--model", "-m", "model_name", default=None, metavar="NAME|PATH",
              help="Bundled model name or a model folder (default: de-en-tiny).")
@click.option("--target", default=None, help="Translation models: the target sentence (teacher-forced).")
@click.option("--label", default=None, help="Encoder models: the text's class, one of --labels.")
@click.option("--labels", default=None, metavar="A,B,...",
              help="Encoder models: the classes, comma-separated (a new head on position 0 gets one output each).")
@click.option("--steps", type=int, default=1, show_default=True, help="Training steps to trace.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW decoupled weight decay.")
@click.option("--betas", default="0.9,0.999", show_default=True, help="AdamW beta1,beta2.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for a new head and the LoRA adapters.")
@click.option("--lora", "lora_rank", type=int, default=None, metavar="R",
              help="Train rank-R LoRA adapters instead of all weights.")
@click.option("--lora-alpha", type=float, default=None, help="With --lora: the adapters' scale is alpha/R (default alpha = R).")
@click.option("--lora-targets", default=None, metavar="W_Q,W_V",
              help="With --lora: the projections to adapt (default W_Q,W_V, attention's query and value).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Save the trained model as a new model folder (LoRA merged, head included) that `tracer run` loads.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@hand_over_options
@click.option("--no-tui", is_flag=True, help="Print the loss per step instead of opening the UI (as when stdin or stdout is not a terminal).")
def finetune(text, model_name, target, label, labels, steps, lr, weight_decay, betas, seed, lora_rank, lora_alpha,
             lora_targets, out, device, save_name, force, sessions_dir, export_path, precision, no_tui):
    """Trace training steps on one example: forward, loss, the gradient at every tap, each AdamW update.

    \b
    Examples:
      tracer finetune "ich bin piyush" --target "i am tired" --no-tui
      tracer finetune "the cat drank the milk" --model en-gpt-tiny --lora 4
      tracer finetune "i love this movie" --model en-bert-tiny --label positive --labels negative,positive
    """
    from tracer.errors import BadInput

    if lora_rank is None and lora_targets is not None:
        raise BadInput("--lora-targets needs --lora R")
    request_options = dict(
        target=target, label=label, labels=comma_list(labels, "--labels") if labels is not None else None,
        steps=steps, lr=lr, weight_decay=weight_decay, betas=parse_betas(betas), seed=seed,
        lora_rank=lora_rank, lora_alpha=lora_alpha,
    )
    if lora_targets is not None:
        request_options["lora_targets"] = tuple(comma_list(lora_targets, "--lora-targets"))
    from tracer.capture.device import resolve_device
    from tracer.capture.finetune import FinetuneRequest, finetune as trace_finetune
    from tracer.capture.finetuned_folder import check_out_folder, save_finetuned
    from tracer.nn.loading import load_model

    loaded = load_model(model_name, resolve_device(device))
    if out is not None:
        check_out_folder(out, loaded.path)  # before the work, not after it
    result = trace_finetune(loaded, FinetuneRequest(text, **request_options))
    trace = result.trace
    if out is not None:
        click.echo(f"wrote {save_finetuned(result, out)}", err=True)
    hand_over(trace, export_path, precision, save_name, force, sessions_dir, no_tui)


def comma_list(value: str, option: str) -> list[str]:
    from tracer.errors import BadInput

    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise BadInput(f"{option} {value!r}: give names separated by commas, e.g. a,b")
    return items


def parse_betas(value: str) -> tuple[float, float]:
    from tracer.errors import BadInput

    try:
        numbers = tuple(float(item) for item in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 2:
        raise BadInput(f"--betas {value!r}: give two numbers separated by a comma, e.g. 0.9,0.999")
    return numbers


def check_text(text: str) -> None:
    """TEXT must be Unicode: bytes that are not UTF-8 (a Latin-1 terminal's ü) reach Python as
    lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        from tracer.errors import BadInput

        byte = ord(text[exc.start]) - 0xDC00 if 0xDC80 <= ord(text[exc.start]) <= 0xDCFF else None
        what = f"byte 0x{byte:02x}" if byte is not None else "a character"
        raise BadInput(f"TEXT is not valid UTF-8 ({what} at position {exc.start}); "
                       "set the terminal to UTF-8 or pass the text in UTF-8") from None


def ui_can_run() -> bool:
    """Whether stdin and stdout are a terminal, as the UI needs (it reads keys from one and draws
    on the other); if not, say in one line on stderr that the summary is printed instead."""
    missing = [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout))
               if stream is None or not stream.isatty()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        click.echo(f"{' and '.join(missing)} {verb} not a terminal: printing the summary (as --no-tui) "
                   "instead of opening the UI", err=True)
    return not missing


def write_export(trace, path, precision) -> None:
    from tracer.trace.export import check_room, estimated_size, write_json

    size = estimated_size(trace, precision)
    click.echo(f"exporting {len(trace.steps)} steps to {visible(path)}: about {human_size(size)}", err=True)
    check_room(path, size)
    def progress(done, total):
        if done == total or done % 200 == 0:
            click.echo(f"\r  {done}/{total} steps" + ("\n" if done == total else ""), err=True, nl=False)

    try:
        write_json(trace, path, precision, progress if sys.stderr.isatty() else None)
    except OSError as exc:
        raise TracerError(f"cannot write {path}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("source", metavar="SESSION|FILE.json")
@click.option("--against", "reference", default=None, metavar="SESSION[:N]|FILE.json",
              help="Instead, compare the trace with a reference trace of the same input (another device or "
                   "dtype), reported as `tracer diff REFERENCE SOURCE` does (exit 0 equal, 1 differ, 2 trouble).")
@click.option("--tol", type=click.FloatRange(min=0), default=None, help="With --against: the tolerance, as in `tracer diff`.")
def check(source, reference, tol):
    """Verify a trace's internal consistency from its own recorded tensors.

    Exit 0 when every relation holds, 1 when any step fails (each is named).

    \b
    Example:
      tracer check piyush
      tracer check piyush-cuda --against piyush-cpu
    """
    if reference is not None:
        from tracer.diff_report import run_diff
        from tracer.trace.diff import DEFAULT_TOL

        sys.exit(run_diff(reference, source, tol=DEFAULT_TOL if tol is None else tol, top=10, as_json=False, same_input=True))
    if tol is not None:
        from tracer.errors import BadInput

        raise BadInput("--tol applies only with --against")
    from tracer.trace.check import check_trace
    from tracer.trace.session import open_source

    traces = open_source(source).traces  # a session may hold several traces: check them all
    checked = failed = 0
    skipped: list[str] = []
    for number, trace in enumerate(traces, 1):
        report = check_trace(trace)
        prefix = f"trace {number}: " if len(traces) > 1 else ""
        if report.tolerance_note:  # a --precision export: say what rounding was allowed for
            click.echo(prefix + report.tolerance_note)
        for note in report.notes:  # relations a filtered trace cannot show
            click.echo(prefix + "note: " + note)
        for failure in report.failures:
            click.echo(f"{prefix}FAIL {visible(failure.step_id)}: {visible(failure.message)}")
        checked, failed = checked + report.checked, failed + len(report.failures)
        skipped += report.skipped_kinds
    if not failed:
        click.echo(f"ok: {checked} checks passed")
    else:
        click.echo(f"{failed} of {checked} checks failed")
    if skipped:  # steps of kinds this tracer does not know (a newer tracer's, an imported model's)
        kinds = sorted(set(skipped))
        click.echo(f"skipped {len(skipped)} step{'s' if len(skipped) > 1 else ''} of "
                   f"{'kinds' if len(kinds) > 1 else 'a kind'} tracer does not know: {visible(', '.join(kinds))}")
    if failed:
        sys.exit(1)


@cli.command()
def models():
    """List the models tracer can find (bundled ones, $TRACER_MODELS_DIR, and the Hugging Face cache)."""
    import json

    from tracer.errors import BadInput
    from tracer.nn.config import ModelConfig
    from tracer.nn.hub import cache_dir, cached_models
    from tracer.nn.catalog import available_models

    found = available_models()
    cached = cached_models()
    if not found and not cached:
        click.echo("No models installed. Run `tracer train de-en-tiny` or pass --model PATH.")
        return
    for folder in found:
        try:
            cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text(encoding="utf-8")))
            detail = f"{cfg.arch}, {cfg.n_layers} layers, d_model {cfg.d_model}"
        except (OSError, ValueError, RecursionError):  # ValueError: bad JSON or UTF-8, a 5000-digit integer
            detail = "unreadable config.json"
        except BadInput as exc:
            detail = f"unusable {exc}"
        click.echo(visible(f"{folder.name:16} {detail}  ({folder})"))
    try:
        from tracer.nn.convert import SUPPORTED
    except ImportError:
        SUPPORTED = None
    loadable = [m for m in cached if m.has_weights and m.model_type is not None
                and (SUPPORTED is None or m.model_type in SUPPORTED)]
    if loadable:
        click.echo(visible(f"Hugging Face cache ({cache_dir()}):"))
    for model in loadable:
        detail = model.model_type if SUPPORTED is not None else f"{model.model_type}, needs tracer.nn.convert"
        click.echo(visible(f"{model.name:16} {detail}  ({model.path})"))
    skipped = len(cached) - len(loadable)
    if skipped:
        click.echo(f"({skipped} other cached model(s) not listed: no safetensors weights, or a model_type "
                   f"tracer cannot convert)")


class RecipeChoice(click.Choice):
    """The bundled models' recipes by name, read from tracer.train.recipes (plain data: ModelConfig
    needs no torch) when `tracer train` needs them, not at every start (replay's included)."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        from tracer.train.recipes import RECIPES

        return tuple(RECIPES)


@cli.command()
@click.argument("model_name", metavar="MODEL", type=RecipeChoice())
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder to write the model to (default: a new ./trained/MODEL; the bundled model is left alone).")
@click.option("--force", is_flag=True, help="Replace the model already in --out (needed to rebuild a bundled one).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Training steps (default: the recipe's); a few make a quick smoke run.")
@click.option("--seed", type=int, default=1234, show_default=True, help="Seed for the corpus, initialisation and batches.")
@click.option("--eval-size", type=click.IntRange(min=1), default=None,
              help="Score only this many test sentences at the end (default: the whole test split).")
def train(model_name, out, steps, seed, eval_size, force):
    """Train a bundled model's recipe from scratch: corpus, tokenizer, training, test metrics, MODEL.md.

    \b
    Example:
      tracer train de-en-tiny --steps 200           # into ./trained/de-en-tiny
      tracer train de-en-tiny --out models/de-en-tiny --force   # rebuild the bundled one
    """
    from tracer.train.trainer import destination, train as train_model

    folder = destination(model_name, out, force)
    click.echo(visible(f"training {model_name} into {folder}") + ("" if out else " (the bundled model is left as it is)"))
    result = train_model(model_name, out=folder, force=force, steps=steps, seed=seed, eval_size=eval_size)
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, float) and not k.endswith("seconds")}
    figures = ", ".join(f"{k} {v:.2%}" if k != "perplexity" else f"{k} {v:.2f}" for k, v in shown.items())
    click.echo(f"{model_name}: {result.parameters:,} parameters, {result.seconds / 60:.1f} min; {figures}")
    click.echo(visible(f"wrote {result.folder} (MODEL.md has the details); use it with --model {result.folder}"))




@cli.command()
@click.argument("source", metavar="SESSION|PATH|FILE.json")
@click.option("--no-tui", is_flag=True, help="Print the summary of each trace instead of opening the UI (what happens anyway when stdin or stdout is not a terminal).")
@click.option("--play", is_flag=True, help="Step through automatically (space pauses, +/- change speed).")
@click.option("--sessions-dir", **SESSIONS_DIR_OPTION)
def replay(source, no_tui, play, sessions_dir):
    """Open a saved session (or a JSON export) where it was left; no model, no torch.

    \b
    Example:
      tracer replay piyush
      tracer replay piyush.json --no-tui
    """
    import os

    # Replay does no heavy linear algebra: one BLAS thread, not a pool that OpenBLAS starts on
    # every core when numpy loads and that spins while the first frame is drawn (~60 ms of a
    # 0.6 s start on a 2-core machine, benchmarks/replay.py). Set before numpy is imported.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if no_tui or not ui_can_run():
        from tracer.summary import print_summary
        from tracer.trace.session import open_source

        for number, trace in enumerate(open_source(source, sessions_dir).traces):
            if number:
                click.echo()
            print_summary(trace)
        return
    from tracer.collector import collector_paused
    from tracer.tui import open_traces

    with collector_paused():  # numpy, the session's metadata and the UI all load with the collector off
        from tracer.trace.session import SessionStore, open_source

        session = open_source(source, sessions_dir, first_screen=True)  # the rest is read once the first frame is up
        open_traces(session.traces, state=session.state, session_name=session.name if session.path.is_dir() else None,
                    play=play, store=SessionStore(sessions_dir))


@cli.command()
@click.argument("source", metavar="SESSION|PATH|FILE.json")
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False), help="JSON file to write.")
@click.option("--precision", type=click.IntRange(1, 9), default=None,
              help="Significant digits for floats (default: full float32).")
@click.option("--trace", "trace_number", type=click.IntRange(1), default=None,
              help="Which of the session's traces to export (1 = the first; default: the first).")
@click.option("--sessions-dir", **SESSIONS_DIR_OPTION)
def export(source, output, precision, trace_number, sessions_dir):
    """Write a session's trace as JSON, the format in docs/format.md (replayable with `tracer replay FILE.json`)."""
    from tracer.errors import BadInput
    from tracer.trace.session import open_source

    session = open_source(source, sessions_dir)
    count = len(session.traces)
    if trace_number is not None and trace_number > count:
        raise BadInput(f"--trace {trace_number}: the session has {count} trace(s)")
    write_export(session.traces[(trace_number or 1) - 1], output, precision)
    if trace_number is None and count > 1:
        click.echo(f"note: the session has {count} traces; wrote the first (use --trace N for another)", err=True)
    click.echo(f"wrote {visible(output)}", err=True)


@cli.command("diff")
@click.argument("source_a", metavar="A")
@click.argument("source_b", metavar="B")
@click.option("--tol", type=click.FloatRange(min=0), default=None,
              help="A step differs when max |Δ| > TOL × max(1, its largest |value|) (default 1e-4, for float32).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Rows of the most-changed-steps table.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts instead of the table.")
@click.option("--tui", is_flag=True, help="Open the UI on both traces in compare mode (Δ = B − A; d: next most-changed step).")
@click.option("--sessions-dir", **SESSIONS_DIR_OPTION)
def diff_command(source_a, source_b, tol, top, as_json, tui, sessions_dir):
    """Compare two traces step by step: what changed, how much, and where first.

    A and B are each a session (NAME:N for its N-th trace, from 1), a session folder or a JSON
    export. Steps are aligned by id; token axes of different lengths are compared over the
    positions both have; decoding steps while both decodes chose the same tokens. Exit 0 when
    equal within the tolerance, 1 when not, 2 for bad usage or a file that cannot be read.

    --json prints one object: "a", "b" (source, trace, model, device, input, output),
    "tol", "equal", "first_over_tol", "parted_at", "parted_tokens", "input_lengths",
    "decode_lengths", "counts", "only_in_a", "only_in_b", and "steps" (per step: id, kind,
    status, over_tol, shapes, max_abs, rel_l2, cosine, changed, cells, nonfinite_differ;
    probability steps add kl and predictions). Figures that are not finite are null.

    \b
    Example:
      tracer diff hungrig suess
      tracer diff piyush:1 piyush:2 --json
      tracer diff hungrig suess --tui
    """
    if tui:
        import os

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as replay: the UI needs no BLAS thread pool
    from tracer.diff_report import run_diff
    from tracer.trace.diff import DEFAULT_TOL

    if tui:
        from tracer.diff_report import run_diff_tui

        sys.exit(run_diff_tui(source_a, source_b, tol=DEFAULT_TOL if tol is None else tol, top=top, as_json=as_json,
                              sessions_dir=sessions_dir, can_run=ui_can_run))

    sys.exit(run_diff(source_a, source_b, tol=DEFAULT_TOL if tol is None else tol, top=top, as_json=as_json,
                      sessions_dir=sessions_dir))


@cli.group(cls=TracerGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array for scripts.")
@click.option("--sessions-dir", **SESSIONS_DIR_OPTION)
@click.pass_context
def sessions(ctx, as_json, sessions_dir):
    """List saved sessions: name, created, model, input, output, steps, size on disk."""
    ctx.obj = {"sessions_dir": sessions_dir}
    if ctx.invoked_subcommand is not None:
        return
    from tracer.trace.session import SessionStore

    store = SessionStore(sessions_dir)
    rows = store.list()
    if as_json:
        click.echo(json_for_terminal([row.to_dict() for row in rows], indent=2))
        return
    if not rows:
        click.echo(f"No sessions in {visible(store.root)}. Save one with `tracer run TEXT --save NAME`.")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sessions in {visible(store.root)}", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("input", overflow="ellipsis", max_width=40)
    table.add_column("output", overflow="ellipsis", max_width=40)
    table.add_column("steps", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for row in rows:
        if row.error:
            table.add_row(visible(row.name), "", "", f"damaged: {visible(row.error)}", "", "", human_size(row.size))
            continue
        created = (row.created or "").replace("T", " ").removesuffix("Z")[:16]
        steps = str(row.steps) + (f" ({row.traces} traces)" if row.traces and row.traces > 1 else "")
        table.add_row(*(visible(v) if v is not None else "" for v in (row.name, created, row.model, row.input, row.output)),
                      steps, human_size(row.size))
    # a pipe gets full lines (no wrapping at 80 columns); a terminal gets its own width
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table, markup=False)


@sessions.command("rm")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--sessions-dir", **SESSIONS_DIR_OPTION)
@click.pass_context
def sessions_rm(ctx, name, yes, sessions_dir):
    """Delete the session NAME."""
    from tracer.errors import BadInput
    from tracer.trace.session import SessionStore

    store = SessionStore(sessions_dir or (ctx.obj or {}).get("sessions_dir"))
    path = store.path_of(name)
    if not path.is_dir():
        raise BadInput(f"no session named {name!r} in {store.root}")
    if not yes:
        info = store.info(path)
        click.confirm(f"Remove session {visible(name)!r} ({human_size(info.size)})?", abort=True)
    store.remove(name)
    click.echo(f"removed {visible(name)}", err=True)


def main():
    cli(prog_name="tracer")  # the installed program starts in tracer.entry (Ctrl-C while modules load)


if __name__ == "__main__":
    main()
