"""Pictures of issue 18's views (pytest-textual-snapshot) on the bundled de-en-tiny's trace of
"die katze trank die milch weil sie hungrig war" (a committed JSON fixture with the logit lens).
Accept a deliberate change with `pytest tests/test_views_snapshots.py --snapshot-update`."""

from __future__ import annotations

from pathlib import Path

KATZE = Path(__file__).parent / "fixtures" / "de-en-tiny-katze.json"
SIZE = (120, 40)


def katze_app():
    from tracer.trace.load import read_json
    from tracer.tui.app import TracerApp

    return TracerApp([read_json(KATZE)])


def at(step_id: str, *keys: str, head: int = 0, row: int = 0):
    async def run_before(pilot) -> None:
        await pilot.pause()
        screen = pilot.app.trace_screen
        screen.head = head
        screen.go(step_id)
        await pilot.pause()
        if row:
            await pilot.press(*["down"] * row)
        if keys:
            await pilot.press(*keys)
        await pilot.pause()

    return run_before


def test_all_heads_of_a_cross_attention_pattern(snap_compare):
    assert snap_compare(katze_app(), terminal_size=SIZE, run_before=at("decoder.1.cross_attn.hook_pattern@7", "A", head=1))


def test_logit_lens_at_decoding_step_9(snap_compare):
    # step 9 chooses "hungry"; layer 0 would still have said something else
    assert snap_compare(katze_app(), terminal_size=SIZE, run_before=at("decoder.hook_probs@9", "l"))


def test_token_view_of_sie(snap_compare):
    # "sie" (encoder position 6): where it attends in both encoder layers and every head
    assert snap_compare(katze_app(), terminal_size=SIZE, run_before=at("encoder.1.attn.hook_pattern", "g", row=6))
