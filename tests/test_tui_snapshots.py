"""Pictures of the UI (pytest-textual-snapshot). SVGs live in tests/__snapshots__/; after a
deliberate change, look at them and accept with `pytest tests/test_tui_snapshots.py --snapshot-update`.

The trace is the JSON fixture (a seeded random model), so the pictures do not move when torch
or the bundled model changes; textual is pinned exactly in pyproject.toml for the same reason.
"""

from __future__ import annotations

from pathlib import Path

from tui_helpers import make_app

DE_EN_TINY = Path(__file__).parent / "fixtures" / "de-en-tiny-ich-bin-piyush.json"

SIZE = (120, 40)


def go_to(step_id: str, head: int = 0):
    async def run_before(pilot) -> None:
        await pilot.pause()  # auto-pilot can start before the trace screen has mounted
        screen = pilot.app.trace_screen
        screen.head = head
        screen.go(step_id)
        await pilot.pause()

    return run_before


def test_first_screen(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE)


def test_encoder_attention_pattern(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=go_to("encoder.1.attn.hook_pattern", head=1))


def test_cross_attention_pattern_at_decoding_step_2(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=go_to("decoder.0.cross_attn.hook_pattern@2"))


def test_next_token_panel(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=go_to("decoder.hook_probs@2"))


def test_help_screen(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, press=["question_mark"])


def test_masked_self_attention_numbers_at_80x24(snap_compare):
    async def run_before(pilot) -> None:
        await pilot.pause()
        pilot.app.trace_screen.go("decoder.0.attn.hook_attn_scores@3")
        await pilot.press("v")

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=run_before)


def trained_app():
    """The bundled de-en-tiny's real trace of "ich bin piyush" (a committed JSON fixture)."""
    from tracer.trace.load import read_json
    from tracer.tui.app import TracerApp

    return TracerApp([read_json(DE_EN_TINY)])


def test_de_en_tiny_first_screen(snap_compare):
    assert snap_compare(trained_app(), terminal_size=SIZE)


def test_de_en_tiny_next_token_panel_completes_piyush(snap_compare):
    # step 5 chooses "##ush", the last piece of "piyush"; step 6 then chooses </s>
    assert snap_compare(trained_app(), terminal_size=SIZE, run_before=go_to("decoder.hook_probs@5"))
