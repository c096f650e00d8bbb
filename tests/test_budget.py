"""A trace's size before running (`--estimate`) and the budget a run may not pass (`--max-trace-size`)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tracer.capture.budget import estimate, parse_size
from tracer.capture.run import generate
from tracer.capture.select import TapFilter
from tracer.cli import cli
from tracer.errors import BadInput
from tracer.nn.loading import load_model

CASES = [("de-en-tiny", "ich bin piyush"), ("en-gpt-tiny", "the cat drank the"),
         ("en-bert-tiny", "the cat drank the [MASK]")]
FILTERS = [None, TapFilter.parse(["*attn.hook_pattern"]), TapFilter.parse(layers="1", steps="2-3")]


def stored_bytes(trace) -> int:
    """What a session's tensor file holds: each step's recorded rows."""
    return sum(step.rows.nbytes for step in trace)


@pytest.mark.parametrize("name,text", CASES)
@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("select", FILTERS, ids=["all", "only-pattern", "layer1-steps2-3"])
@pytest.mark.parametrize("lens", [False, True])
def test_the_estimate_is_the_size_of_the_trace(name, text, kv_cache, select, lens):
    """Within 5% of the real size (it counts exactly what is stored) when decoding runs every step."""
    loaded = load_model(name)
    result = generate(loaded, text, max_new_tokens=6, traced=True, kv_cache=kv_cache, select=select, lens=lens)
    passes = len(result.output_ids) + (len(result.output_ids) < 6)  # a stop token ends a pass too
    found = estimate(loaded, text, max_new_tokens=passes, kv_cache=kv_cache, select=select, lens=lens)
    assert abs(found["bytes"] - stored_bytes(result.trace)) <= 0.05 * stored_bytes(result.trace)


def test_the_kv_cache_makes_a_long_decode_grow_linearly_not_cubically():
    loaded = load_model("en-gpt-tiny")
    size = lambda n, kv: estimate(loaded, "the cat drank the", max_new_tokens=n, kv_cache=kv)["bytes"]  # noqa: E731
    assert size(20, True) < 2.6 * size(10, True)   # about twice: one new row per step
    assert size(20, False) > 3 * size(10, False)   # a full re-run: attention grows with the square of the prefix


def test_run_estimate_prints_and_traces_nothing(isolated_sessions):
    result = CliRunner().invoke(cli, ["run", "ich bin piyush", "--estimate", "--save", "s"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("about ") and "KV cache" in result.output
    assert not (isolated_sessions / "s").exists()


def test_over_the_budget_is_refused_in_one_line_with_the_filters_that_fit(isolated_sessions):
    result = CliRunner().invoke(cli, ["run", "the cat drank the", "-m", "en-gpt-tiny", "--max-new-tokens", "20",
                                      "--no-kv-cache", "--max-trace-size", "1MB", "--no-tui", "--save", "s"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "the trace would be about" in lines[0] and "over --max-trace-size 1.0 MB" in lines[0]
    assert "without --no-kv-cache" in lines[0] and "--only" in lines[0]
    assert not (isolated_sessions / "s").exists()
    # what it suggests does fit
    ok = CliRunner().invoke(cli, ["run", "the cat drank the", "-m", "en-gpt-tiny", "--max-new-tokens", "20",
                                  "--max-trace-size", "1MB", "--no-tui"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("text,size", [("4GB", 4 * 1024**3), ("500 MB", 500 * 1024**2), ("1.5k", 1536), ("123", 123)])
def test_sizes_read_as_people_write_them(text, size):
    assert parse_size(text) == size


def test_a_bad_size_is_bad_input():
    with pytest.raises(BadInput, match="--max-trace-size"):
        parse_size("lots")
    result = CliRunner().invoke(cli, ["run", "ich bin piyush", "--max-trace-size", "lots"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_a_run_saved_as_it_is_recorded_is_budgeted_by_the_disk_not_the_memory(isolated_sessions, monkeypatch):
    """--save streams each pass to disk: the default budget is half the free disk space there, each
    pass within half the memory; without --save the whole trace must fit half the memory."""
    import shutil
    from collections import namedtuple

    args = ["run", "the cat drank the", "-m", "en-gpt-tiny", "--max-new-tokens", "12", "--no-kv-cache", "--no-tui"]
    found = estimate(load_model("en-gpt-tiny"), "the cat drank the", max_new_tokens=12, kv_cache=False)
    assert found["largest_pass"] < found["bytes"] // 3
    memory = found["bytes"] // 2  # the whole trace does not fit; any one pass does
    monkeypatch.setattr("tracer.capture.budget.memory_budget", lambda: memory)

    held = CliRunner().invoke(cli, args)
    assert held.exit_code == 2 and "(half the memory)" in held.output and len(held.output.strip().splitlines()) == 1

    saved = CliRunner().invoke(cli, args + ["--save", "s"])
    assert saved.exit_code == 0, saved.output
    assert (isolated_sessions / "s" / "session.json").is_file()

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, found["bytes"]))  # half of it is too little
    full_disk = CliRunner().invoke(cli, args + ["--save", "t"])
    assert full_disk.exit_code == 2 and "half the free disk space in" in full_disk.output, full_disk.output
    assert not (isolated_sessions / "t").exists()
    estimated = CliRunner().invoke(cli, args + ["--save", "t", "--estimate"])
    assert estimated.exit_code == 0 and "half the free disk space in" in estimated.output

    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))
    monkeypatch.setattr("tracer.capture.budget.memory_budget", lambda: found["largest_pass"] - 1)
    one_pass = CliRunner().invoke(cli, args + ["--save", "u"])
    assert one_pass.exit_code == 2 and "one pass of the trace would be about" in one_pass.output, one_pass.output


def test_the_largest_pass_is_the_prompt_under_a_kv_cache_and_the_last_without():
    loaded = load_model("en-gpt-tiny")
    with_cache = estimate(loaded, "the cat drank the", max_new_tokens=8)
    without = estimate(loaded, "the cat drank the", max_new_tokens=8, kv_cache=False)
    first = estimate(loaded, "the cat drank the", max_new_tokens=1)
    assert with_cache["largest_pass"] == first["bytes"]
    assert without["largest_pass"] == without["bytes"] - estimate(loaded, "the cat drank the", max_new_tokens=7, kv_cache=False)["bytes"]
    seq2seq = load_model("de-en-tiny")
    assert estimate(seq2seq, "ich bin piyush", max_new_tokens=4)["largest_pass"] == estimate(seq2seq, "ich bin piyush", max_new_tokens=1)["bytes"]
