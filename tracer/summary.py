"""The --no-tui summary: input tokens, output, and each prediction's top-k (rich; no torch)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracer.input_notes import input_notes
from tracer.text import visible
from tracer.trace import Trace


def _literal(value) -> Text:
    """User text is shown as typed: never parsed as Rich markup, control characters escaped."""
    return Text(visible(value))


def print_summary(trace: Trace, console: Console | None = None) -> None:
    console = console or Console(highlight=False, soft_wrap=True)
    model = trace.model
    header = Text()
    header.append("tracer", style="bold")
    header.append(visible(f" · {model.get('name', '?')} ({trace.arch}) · {trace.device} · {len(trace)} steps"))
    console.print(header)
    console.print(Text("input:  ", style="bold") + _literal(trace.input.get("text", "")))
    console.print(Text("tokens: ", style="bold") + _literal(" | ".join(map(str, trace.input.get("tokens", [])))))
    console.print(Text("output: ", style="bold") + _literal(trace.output.get("text", "")))
    for note in input_notes(trace):  # the model does not know the words; BERT without [MASK]
        console.print(Text("note:   ", style="bold yellow") + Text(note))
    if isinstance(trace.output.get("training"), dict):
        print_training(trace, console)
        return
    predictions = trace.predictions()
    if not predictions:
        return
    encoder_only = trace.arch == "encoder"
    table = Table(title="masked-position predictions" if encoder_only else "decoding steps", title_justify="left")
    table.add_column("position" if encoder_only else "step", justify="right")
    table.add_column("chosen")
    table.add_column("p", justify="right")
    table.add_column("top-k")
    for item in predictions:
        chosen = item.get("chosen") or {}
        prob = next((e["prob"] for e in item["top_k"] if e.get("id") == chosen.get("id")), None)
        top = ", ".join(f"{e['token']} {e['prob']:.3f}" for e in item["top_k"])
        table.add_row(str(item["step"]), _literal(chosen.get("token", "")), "" if prob is None else f"{prob:.3f}", _literal(top))
    console.print(table)


def print_training(trace: Trace, console: Console) -> None:
    """A `tracer finetune` trace: what was taught, then the loss at each step and after the last."""
    training, target = trace.output["training"], trace.input.get("target") or {}
    if "label" in target:
        taught = f"label {target.get('label')}"
    elif training.get("task") == "causal-lm":
        taught = "each next token"
    else:
        taught = f"target {target.get('text', '')}"
    optimizer = training.get("optimizer") or {}
    how = f"{training.get('task', '?')}, {taught}, AdamW lr {optimizer.get('lr')}"
    lora = training.get("lora")
    if isinstance(lora, dict):
        how += f", LoRA rank {lora.get('rank')} on {','.join(map(str, lora.get('targets', [])))}"
    console.print(Text("train:  ", style="bold") + _literal(how))
    for number, loss in enumerate(training.get("losses") or [], 1):
        console.print(f"step {number}  loss {loss:.6f}")
    if isinstance(training.get("loss_after"), (int, float)):
        console.print(f"after   loss {training['loss_after']:.6f}")
