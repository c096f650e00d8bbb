"""`tracer finetune` end to end: the loss per step, sessions, replay, export, --out, bad input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from session_helpers import run_without_torch

from tracer.capture.finetune import FinetuneRequest, example_loss, finetune
from tracer.cli import cli
from tracer.nn.loading import load_model
from tracer.trace.load import read_json
from tracer.trace.session import SessionStore

BUNDLED = Path(__file__).resolve().parents[1] / "models"
EXAMPLES = {
    "de-en-tiny": ["ich bin piyush", "--target", "i am tired"],
    "en-gpt-tiny": ["the cat drank the milk"],
    "en-bert-tiny": ["i love this movie", "--label", "positive", "--labels", "negative,positive"],
}


def run(*args):
    return CliRunner().invoke(cli, list(args))


def losses_printed(output: str) -> list[float]:
    return [float(line.split()[-1]) for line in output.splitlines() if line.startswith("step ")]


@pytest.mark.parametrize("model", sorted(EXAMPLES))
def test_each_bundled_model_trains_saves_replays_and_exports(model, tmp_path, isolated_sessions):
    out = tmp_path / "trace.json"
    result = run("finetune", *EXAMPLES[model], "--model", model, "--steps", "2", "--lora", "2",
                 "--no-tui", "--save", "ft", "--export", str(out))
    assert result.exit_code == 0, result.output
    losses = losses_printed(result.output)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert "after   loss" in result.output

    replayed = run("replay", "ft", "--no-tui")
    assert replayed.exit_code == 0, replayed.output
    assert losses_printed(replayed.output) == losses  # the loss per step is in the saved trace

    saved = SessionStore(isolated_sessions).load("ft").traces[0]
    exported = read_json(out)
    assert saved.ids == exported.ids and len(saved) > 100
    for step_id in ("hook_loss@s2", saved.find(kind="grad")[0].id, saved.find(kind="adam_step")[-1].id):
        np.testing.assert_array_equal(saved[step_id], exported[step_id])
    assert exported.output["training"]["losses"] == pytest.approx(losses, abs=1e-6)
    assert run("export", "ft", "-o", str(tmp_path / "again.json")).exit_code == 0
    assert run("check", "ft").exit_code == 0


def test_full_finetuning_of_a_bundled_model_lowers_its_loss(isolated_sessions):
    result = run("finetune", *EXAMPLES["en-gpt-tiny"], "--model", "en-gpt-tiny", "--steps", "3", "--no-tui", "--save", "full")
    assert result.exit_code == 0, result.output
    losses = losses_printed(result.output)
    assert losses[2] < losses[0]
    trace = SessionStore(isolated_sessions).load("full").traces[0]
    assert len(trace.find(kind="new")) == 3 * len(trace.output["training"]["trained_parameters"])


def test_a_training_session_replays_and_exports_without_torch(gpt_model, isolated_sessions, tmp_path):
    assert run("finetune", "the cat drank the milk", "--model", str(gpt_model), "--no-tui", "--save", "nt").exit_code == 0
    out = tmp_path / "nt.json"
    args = [["replay", "nt", "--no-tui"], ["export", "nt", "-o", str(out)], ["replay", str(out), "--no-tui"]]
    after = (f"import tracer\ntrace = tracer.load({str(isolated_sessions / 'nt')!r})\n"
             "assert trace['blocks.0.attn.hook_pattern.grad@s1'].shape[0] == 4")
    run_without_torch(args, isolated_sessions, after=after)
    assert out.exists()


# -- --out -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lora", [[], ["--lora", "2"]])
def test_out_writes_a_model_folder_tracer_run_loads_with_a_lower_loss(seq2seq_model, tmp_path, lora):
    out = tmp_path / "tuned"
    result = run("finetune", "ich bin piyush", "--target", "i am tired", "--model", str(seq2seq_model),
                 "--steps", "3", "--lr", "0.01", *lora, "--out", str(out), "--no-tui")
    assert result.exit_code == 0, result.output
    assert (out / "MODEL.md").is_file() and not (out / "classifier.json").exists()
    ran = run("run", "ich bin piyush", "--model", str(out), "--no-tui", "--max-new-tokens", "3")
    assert ran.exit_code == 0, ran.output
    request = FinetuneRequest("ich bin piyush", target="i am tired")
    before = example_loss(load_model(seq2seq_model), request)
    after = example_loss(load_model(out), request)
    assert after < before
    assert after == pytest.approx(float(result.output.split("after   loss")[1].split()[0]), rel=1e-4)


def test_out_saves_the_classification_head_and_finetune_reads_it_back(bert_model, tmp_path):
    out = tmp_path / "sentiment"
    args = ["the cat drank the milk", "--label", "positive", "--labels", "negative,positive", "--model", str(bert_model)]
    result = run("finetune", *args, "--steps", "3", "--lr", "0.01", "--out", str(out), "--no-tui")
    assert result.exit_code == 0, result.output
    assert (out / "classifier.json").is_file() and (out / "classifier.safetensors").is_file()
    assert "classifier.json" in (out / "MODEL.md").read_text()
    assert run("run", "the cat drank the [MASK]", "--model", str(out), "--no-tui").exit_code == 0
    request = FinetuneRequest("the cat drank the milk", label="positive")  # labels come from the folder's head
    losses = losses_printed(result.output)
    assert example_loss(load_model(out), request) < losses[0]
    # training on from the saved folder starts from the saved head, not a new one
    again = finetune(load_model(out), request).trace
    assert again.output["training"]["loss_before"] == pytest.approx(example_loss(load_model(out), request), rel=1e-5)
    wrong = run("finetune", "the cat", "--label", "a", "--labels", "a,b", "--model", str(out), "--no-tui")
    assert wrong.exit_code == 2 and "negative,positive" in wrong.output


def digest(folder: Path) -> str:
    return hashlib.sha256(b"".join((folder / f).read_bytes() for f in sorted(os.listdir(folder)))).hexdigest()


def test_out_never_writes_over_a_bundled_model_or_an_existing_folder(tmp_path):
    before = digest(BUNDLED / "en-gpt-tiny")
    result = run("finetune", "the cat drank the milk", "--model", "en-gpt-tiny", "--out", str(BUNDLED / "en-gpt-tiny"), "--no-tui")
    assert result.exit_code == 2 and "choose a new folder" in result.output
    assert digest(BUNDLED / "en-gpt-tiny") == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run("finetune", "the cat drank the milk", "--model", "en-gpt-tiny", "--out", str(busy), "--no-tui")
    assert result.exit_code == 2 and (busy / "notes.txt").read_text() == "mine"


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model, args, message", [
    ("de-en-tiny", ["ich bin piyush"], "--target"),
    ("en-gpt-tiny", ["the cat", "--target", "x"], "--target is for translation models"),
    ("de-en-tiny", ["ich bin", "--target", "i am", "--label", "x"], "--label and --labels are for encoder models"),
    ("en-bert-tiny", ["i love it"], "--label"),
    ("en-bert-tiny", ["i love it", "--label", "good"], "--labels"),
    ("en-bert-tiny", ["i love it", "--label", "good", "--labels", "bad,fine"], "not one of"),
    ("en-bert-tiny", ["i love it", "--label", "a", "--labels", "a,a"], "distinct"),
    ("en-gpt-tiny", ["the cat", "--lora-alpha", "4"], "--lora-alpha needs --lora"),
    ("en-gpt-tiny", ["the cat", "--lora-targets", "W_K"], "--lora-targets needs --lora"),
    ("en-gpt-tiny", ["the cat", "--lora", "0"], "at least 1"),
    ("en-gpt-tiny", ["the cat", "--lora", "2", "--lora-targets", "W_X"], "no projection W_X"),
    ("en-gpt-tiny", ["the cat", "--betas", "0.9"], "two numbers"),
    ("en-gpt-tiny", ["the cat", "--betas", "0.9,1.5"], "[0, 1)"),
    ("en-gpt-tiny", ["the cat", "--steps", "0"], "--steps"),
    ("en-gpt-tiny", ["the cat", "--lr", "0"], "--lr"),
    ("en-gpt-tiny", ["the cat", "--weight-decay", "-1"], "--weight-decay"),
    ("en-gpt-tiny", ["   "], "empty"),
])
def test_bad_combinations_are_one_line_exit_2(model, args, message):
    result = run("finetune", *args, "--model", model, "--no-tui")
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


async def test_the_ui_opens_on_a_training_trace_and_steps_through_every_kind(gpt_model):
    """Forward, loss, backward and update steps all draw (the UI has no words for them yet)."""
    from tracer.tui.app import TracerApp

    trace = finetune(load_model(gpt_model), FinetuneRequest("the cat drank the milk", lora_rank=2)).trace
    wanted = ["hook_loss@s1", "blocks.0.attn.hook_pattern.grad@s1", "blocks.0.attn.W_Q.hook_lora_a@s1",
              "blocks.0.attn.W_Q.lora_A.weight.grad@s1", "blocks.0.attn.W_Q.lora_B.weight.adam_step@s1"]
    app = TracerApp([trace])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        for step_id in wanted:
            app.trace_screen.go(step_id)
            await pilot.press("n", "p")  # a move away and back redraws it from the key path
            assert app.trace_screen.step_id == step_id


def test_diff_compares_the_base_model_with_the_finetuned_one(tmp_path):
    """The bundled GPT continues "the cat drank the" with "water"; three steps on "…the milk" change that."""
    out = tmp_path / "milk"
    assert run("finetune", "the cat drank the milk", "--model", "en-gpt-tiny", "--steps", "3", "--out", str(out),
               "--no-tui").exit_code == 0
    base = run("run", "the cat drank the", "--model", "en-gpt-tiny", "--save", "base", "--no-tui")
    assert "milk" not in base.output.split("output:")[1].splitlines()[0]
    tuned = run("run", "the cat drank the", "--model", str(out), "--save", "tuned", "--no-tui")
    assert "milk" in tuned.output.split("output:")[1].splitlines()[0]
    diff = run("diff", "base", "tuned")
    assert diff.exit_code == 1 and "B chose 'milk'" in diff.output


def test_without_no_tui_the_training_trace_opens_in_the_ui(gpt_model, monkeypatch):
    opened = {}
    monkeypatch.setattr("tracer.tui.open_traces", lambda traces, **kw: opened.update(traces=traces, **kw))
    monkeypatch.setattr("tracer.cli.ui_can_run", lambda: True)  # as on a terminal (CliRunner's streams are not)
    result = run("finetune", "the cat drank the milk", "--model", str(gpt_model), "--save", "ui")
    assert result.exit_code == 0, result.output
    (trace,) = opened["traces"]
    assert opened["session_name"] == "ui" and "hook_loss@s1" in trace
    assert "step 1" not in result.output  # the summary is not printed when the UI opens


def test_a_run_whose_updates_would_not_fit_in_memory_is_refused_before_training(monkeypatch):
    monkeypatch.setattr("tracer.capture.finetune.MAX_UPDATE_BYTES", 10 * 1024**2)  # 10 MB instead of 4 GB
    result = run("finetune", "the cat drank the milk", "--model", "en-gpt-tiny", "--steps", "3", "--no-tui")
    assert result.exit_code == 2 and "--lora" in result.output and result.output.count("\n") == 1
    assert run("finetune", "the cat drank the milk", "--model", "en-gpt-tiny", "--steps", "3", "--lora", "2",
               "--no-tui").exit_code == 0
