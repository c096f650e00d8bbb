"""The anatomy (tracer/trace/anatomy.py) describes every kind a model records, and a kind it
does not describe still works everywhere, generically.

`python tests/test_anatomy.py` rewrites the generated tables in docs/format.md."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_layers import modules_after_import
from tui_helpers import FIXTURE, screen_text

from tracer.trace import anatomy

OPTIONS = list(itertools.product(["encoder-decoder", "encoder", "decoder"], ["sinusoidal", "learned", "rotary"],
                                 ["post", "pre"], ["relu", "gelu", "swiglu"]))
FORMAT_DOC = Path(__file__).parents[1] / "docs" / "format.md"
BEGIN, END = "<!-- generated from tracer/trace/anatomy.py: python tests/test_anatomy.py -->", "<!-- end of generated -->"
SIZE = (120, 40)


@pytest.mark.parametrize("arch,positional,norm,activation", OPTIONS)
def test_every_kind_a_model_records_is_described(make_model, arch, positional, norm, activation):
    """Every model option: each recorded kind has axes that fit its tensor, a group, an
    explanation, and sources the trace holds."""
    from tracer.capture import trace_text
    from tracer.nn.loading import load_model
    from tracer.tui.view.explain import WORDS, explain
    from tracer.tui.view.outline import group_path

    # the same models as test_check.py's (the session cache builds each once)
    folder = make_model(arch=arch, positional=positional, norm=norm, activation=activation, n_layers=2, n_decoder_layers=1)
    loaded = load_model(folder)
    trace = trace_text(loaded, "der hund", max_new_tokens=2)
    cfg = loaded.cfg
    sizes = {"d_model": cfg.d_model, "head": cfg.n_heads, "d_head": cfg.d_head, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size}
    for step in trace.steps:
        assert anatomy.is_known(step.kind), step.id
        kind = anatomy.KINDS[step.kind]
        assert step.axes in kind.axes, (step.id, step.axes)  # one of its layouts, not generic axes
        for axis, size in zip(step.axes, step.shape):
            if axis in sizes:
                assert size == sizes[axis], (step.id, axis)
            if axis in ("pos", "query", "key"):
                assert len(step.labels[axis]) == size, (step.id, axis)
        if step.component == "cross_attn" and "key" in step.axes:
            assert step.labels["key"] == trace.input["tokens"], step.id  # keys are the source's tokens
        # a group: its own, its module's, or (by design) none
        place = anatomy.Place.of(step.id, trace)
        group = anatomy.group_of(step.kind, place)
        if kind.group is None:
            assert group is None
        elif step.layer is None:
            assert group in anatomy.STACK_GROUPS or step.component == "ln_final", step.id
        else:
            assert group in anatomy.GROUPS and group not in anatomy.STACK_GROUPS, step.id
            assert group_path(step, trace)[-1][1] == anatomy.group_label(group, place)
        # an explanation of its own, and a dataflow that finds every source in the trace
        assert kind.explanation in WORDS, step.id
        assert explain(step, trace).words != "A recorded intermediate value.", step.id
        found = anatomy.sources(step.id, trace)
        assert None not in found, (step.id, found)
        assert found or step.kind == "tokens", step.id


def test_axes_follow_the_rank_and_an_unknown_kind_gets_generic_ones():
    assert anatomy.axes_for("probs", 1) == ("vocab",)
    assert anatomy.axes_for("logits", 2) == ("pos", "vocab")
    assert anatomy.axes_for("pattern", 3) == ("head", "query", "key")
    assert anatomy.axes_for("pattern", 2) == ("dim0", "dim1")   # a rank it is never recorded at
    assert anatomy.axes_for("something_new", 3) == ("dim0", "dim1", "dim2")
    unknown = anatomy.kind_of("something_new")
    assert (unknown.label, unknown.group, unknown.computed_from) == ("something_new", anatomy.BY_MODULE, ())
    # token labels only where an axis runs over tokens and has their length
    own, source = ["<s>", "a"], ["x", "y", "z"]
    assert anatomy.token_labels("decoder.0.cross_attn.hook_k", ("pos", "head", "d_head"), own, source) == {"pos": source}
    assert anatomy.token_labels("decoder.0.cross_attn.hook_q", ("pos", "head", "d_head"), own, source) == {"pos": own}
    assert anatomy.token_labels("decoder.0.cross_attn.hook_pattern", ("head", "query", "key"), own, source) == \
        {"query": own, "key": source}
    assert anatomy.token_labels("blocks.0.hook_resid_pre", ("pos", "d_model"), own, None, shape=(3, 8)) == {}


def test_every_reference_in_the_anatomy_reads():
    """A typo in a reference's scope would only show on the model that uses that rule."""
    rules = [rule for kind in anatomy.KINDS.values() for rule in kind.computed_from] + list(anatomy.LAYER_OUTPUT)
    refs = [ref for rule in rules for ref in rule.sources] + [anatomy.STACK_OUTPUT]
    fields = {"arch", "norm", "stack", "layer", "component", "cross", "first_layer", "embed_norm"}
    for rule in rules:
        assert {name for name, _ in rule.when} <= fields, rule
    for ref in refs:
        for term in ref.removesuffix("?").split("|"):
            scope, _, path = term.strip().rpartition(":")
            assert scope in anatomy.PATH_SCOPES, ref
            assert path == "output" or "hook_" in path, ref
    with pytest.raises(ValueError, match="unknown scope"):
        anatomy.resolve("nowhere:hook_q", anatomy.Place("decoder", "pre", None, 0, "attn", 1), set())


def test_single_stack_logits_and_final_norm_name_their_inputs():
    """The explain panel named no inputs here: the lookup lost `blocks.` from the last layer."""
    from tracer.trace.load import read_json
    from tracer.tui.view.explain import inputs_of

    gpt = read_json(FIXTURE.parent / "gpt-continue.json")     # pre-norm, one layer
    assert inputs_of(gpt.step("ln_final.hook_normalized@2"), gpt) == ["blocks.0.hook_resid_post@2"]
    assert inputs_of(gpt.step("hook_logits@2"), gpt) == ["ln_final.hook_normalized@2"]
    bert = read_json(FIXTURE.parent / "bert-mask.json")       # post-norm, one layer
    assert inputs_of(bert.step("hook_logits"), bert) == ["blocks.0.ln2.hook_normalized"]


# -- a kind tracer does not know ------------------------------------------------------------

def trace_with_unknown_kinds():
    """The GPT fixture with two taps from "a newer tracer": one in self-attention, one at the top."""
    from tracer.trace import Step, Trace
    from tracer.trace.load import read_json

    base = read_json(FIXTURE.parent / "gpt-continue.json")
    rng = np.random.default_rng(0)
    steps = []
    for step in base.steps:
        steps.append(step)
        if step.id == "blocks.0.attn.hook_pattern@1":
            data = rng.normal(size=(2, 4, 4)).astype(np.float32)
            steps.append(Step.from_array("blocks.0.attn.hook_something_new@1", data, anatomy.axes_for("something_new", 3)))
        if step.id == "hook_logits@1":
            data = rng.normal(size=(16,)).astype(np.float32)
            steps.append(Step.from_array("hook_pooled_thing@1", data, anatomy.axes_for("pooled_thing", 1)))
    return Trace(steps, model=base.model, device=base.device, input=base.input, output=base.output, created=base.created)


def test_an_unknown_kind_has_a_generic_place_in_the_outline_and_words():
    from tracer.tui.view.explain import explain
    from tracer.tui.view.outline import build_outline, group_path

    trace = trace_with_unknown_kinds()
    step = trace.step("blocks.0.attn.hook_something_new@1")
    assert [label for _, label in group_path(step, trace)][1:] == ["Layer 0", "Masked self-attention"]  # its module's group
    assert group_path(trace.step("hook_pooled_thing@1"), trace)[1:] == []  # at the top of its decoding step
    leaves = {node.step_id: node.label for node in build_outline(trace).walk() if node.step_id}
    assert leaves["blocks.0.attn.hook_something_new@1"] == "something_new"
    words = explain(step, trace)
    assert (words.title, words.words, words.formula, words.inputs) == \
        ("something_new", "A recorded intermediate value.", "2×4×4", [])


async def test_a_trace_with_an_unknown_kind_opens_in_the_ui_and_walks_past_it():
    from tracer.tui.app import TracerApp

    app = TracerApp([trace_with_unknown_kinds()])
    async with app.run_test(size=SIZE) as pilot:
        screen = app.trace_screen
        screen.go("blocks.0.attn.hook_pattern@1")
        await pilot.press("n")
        assert screen.step_id == "blocks.0.attn.hook_something_new@1"
        text = screen_text(app)
        assert "something_new ◂" in text  # the navigator's current line
        assert "A recorded intermediate value." in app.screen.query_one("#explain").plain
        assert "blocks.0.attn.hook_something_new@1" in str(app.screen.query_one("#tensor-title").content)
        await pilot.press("n")
        assert screen.step_id == "blocks.0.attn.hook_z@1"


def test_check_skips_an_unknown_kind_and_says_so(tmp_path):
    from tracer.cli import cli
    from tracer.trace.check import check_trace
    from tracer.trace.export import write_json

    trace = trace_with_unknown_kinds()
    report = check_trace(trace)
    assert report.ok and report.checked > 20
    assert report.skipped == ["blocks.0.attn.hook_something_new@1", "hook_pooled_thing@1"]
    write_json(trace, tmp_path / "newer.json")
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "newer.json")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: ")
    assert "skipped 2 steps of kinds tracer does not know: pooled_thing, something_new" in result.output


def test_capture_records_a_tap_of_an_unknown_kind(gpt_model):
    """An imported model's extra tap: recorded with generic axes, and check passes around it."""
    from tracer.capture import trace_text
    from tracer.nn import HookPoint
    from tracer.nn.loading import load_model
    from tracer.trace.check import check_trace

    loaded = load_model(gpt_model)
    attn = loaded.model.blocks[0].attn
    attn.hook_something_new = HookPoint()

    def tap(_module, _inputs, out):  # returns None: concat's own value flows on unchanged
        attn.hook_something_new(out.sum(-1))

    attn.hook_concat.register_forward_hook(tap)
    trace = trace_text(loaded, "der hund", max_new_tokens=2)
    step = trace.step("blocks.0.attn.hook_something_new@1")
    assert step.axes == ("dim0",) and step.labels == {}
    report = check_trace(trace)
    assert report.ok and report.skipped == ["blocks.0.attn.hook_something_new@1", "blocks.0.attn.hook_something_new@2"]


# -- layers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["tracer.trace", "tracer.trace.anatomy"])
def test_the_trace_layer_and_the_anatomy_import_neither_torch_nor_textual(module):
    loaded = modules_after_import(module)
    assert "torch" not in loaded and "textual" not in loaded


def test_model_config_imports_without_torch():
    assert "torch" not in modules_after_import("tracer.nn.config")
    code = "import sys; from tracer.nn import ModelConfig; assert 'torch' not in sys.modules; " \
           "from tracer.nn import Stack, build_model, HookPoint, EncoderDecoder; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- docs/format.md ------------------------------------------------------------------------------

def kinds_table() -> str:
    rows = ["| kind | axes | what it is | outline |", "|---|---|---|---|"]
    for kind in anatomy.KINDS.values():
        axes = " or ".join(f"`[{', '.join(layout)}]`" for layout in kind.axes)
        if kind.group is None:
            group = "in its layer (or at the top)"
        elif kind.group == anatomy.BY_MODULE:
            group = "in its module's sub-layer"
        else:
            group = f"in {anatomy.GROUPS[kind.group].label}"
        rows.append(f"| `{kind.name}` | {axes} | {kind.summary} | {kind.label} · {group} |")
    return "\n".join(rows)


def dataflow_table() -> str:
    rows = ["| kind | when | computed from |", "|---|---|---|"]
    named = [(kind.name, kind.computed_from) for kind in anatomy.KINDS.values()]
    named += [("*a layer's `output`*", anatomy.LAYER_OUTPUT),
              ("*a stack's `output`*", (anatomy.Rule((anatomy.STACK_OUTPUT,)),))]
    for name, rules in named:
        for number, rule in enumerate(rules):
            when = ", ".join(f"{field}={value}" for field, value in rule.when) or ("otherwise" if number else "always")
            label = f"`{name}`" if not name.startswith("*") else name
            sources = ", ".join(f"`{ref}`".replace("|", "\\|") for ref in rule.sources)  # a bare | ends a table cell
            rows.append(f"| {label if number == 0 else ''} | {when} | {sources} |")
    return "\n".join(rows)


def generated() -> str:
    return f"{BEGIN}\n\n{kinds_table()}\n\n### Computed from\n\n{dataflow_table()}\n\n{END}"


def test_the_format_reference_lists_every_kind_as_the_anatomy_describes_it():
    text = FORMAT_DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    block = text[text.index(BEGIN):text.index(END) + len(END)]
    assert block == generated(), "docs/format.md is out of date: run `python tests/test_anatomy.py`"


def test_readme_and_export_help_cite_the_format_reference():
    from tracer.cli import cli

    readme = (FORMAT_DOC.parents[1] / "README.md").read_text(encoding="utf-8")
    assert "docs/format.md" in readme and "DESIGN.md" not in readme
    help_text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "docs/format.md" in help_text and "DESIGN.md" not in help_text


if __name__ == "__main__":
    text = FORMAT_DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    FORMAT_DOC.write_text(text[:start] + generated() + text[end:], encoding="utf-8")
    print(f"rewrote the generated tables in {FORMAT_DOC}")
