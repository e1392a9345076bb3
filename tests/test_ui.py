"""The web view in a real headless Chromium against a real sidecar.

Set AGENT_RECORDER_UI_SCREENSHOTS=docs to write the README's screenshots.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_recorder.v1 import events_pb2, types_pb2
from playwright.async_api import Page, async_playwright, expect
from support import events as se
from support import priced
from support.events import aio, append_response
from support.parts import missing
from support.priced import record_priced_tree
from support.recorder import RunningRecorder
from support.tool_loops import TOOL_CALL, TOOL_OUTPUT, record_tool_result_in_end_only

from recorder_client import events as ev
from recorder_client.client import RecorderClient
from recorder_server import demo
from recorder_server.ui.app import RunningUi, start_ui
from recorder_server.ui.measure import (
    CHROMIUM,
    SESSION_READY,
    launch_chromium,
    measure_ui_open,
    session_url,
)

# The browser is slow: not in `make test-fast`.
pytestmark = pytest.mark.slow

SCREENSHOTS = os.environ.get("AGENT_RECORDER_UI_SCREENSHOTS")


@pytest.fixture
async def ui(recorder: RunningRecorder) -> AsyncIterator[RunningUi]:
    running = await start_ui(lambda: RecorderClient.connect(recorder.target))
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    if not CHROMIUM.exists():
        missing("chromium", f"{CHROMIUM} is missing (apt-get install chromium failed)")
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield await browser.new_page(viewport={"width": 1500, "height": 860})
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> None:
    """Playwright makes the directory; the README's pictures come from here."""
    if SCREENSHOTS:
        await page.screenshot(path=str(Path(SCREENSHOTS) / name))


async def test_sessions_list_shows_recorded_sessions(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    earlier, _ = await demo.record(recorder.target)
    session, sub_session = await demo.record(recorder.target)
    await page.goto(ui.url, wait_until="load")
    rows = page.locator("tr.session-row")
    await expect(rows).to_have_count(4)
    row = page.locator(f'tr.session-row[data-session="{session}"]')
    await expect(row).to_contain_text(demo.AGENT)
    await expect(row).to_contain_text("2,560")
    sub_row = page.locator(f'tr.session-row[data-session="{sub_session}"]')
    await expect(sub_row).to_contain_text("summarizer")
    await expect(sub_row).to_contain_text("↑ delegate")
    await expect(rows.last).to_have_attribute("data-session", earlier)
    await screenshot(page, "ui-sessions.png")


async def test_session_page_shows_tree_timeline_and_winner(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    session, sub_session = await demo.record(recorder.target)
    await page.goto(session_url(ui.url, session), wait_until="load")
    await page.wait_for_selector(SESSION_READY)
    await expect(page.locator("#tree .node")).to_have_count(8)
    await expect(page.locator("#timeline .row.loop")).to_have_count(8)
    winner = page.locator("#tree .node:has(.badge.winner)")
    await expect(winner).to_have_count(1)
    await expect(winner).to_have_attribute("data-loop", f"{session}.cfg-deep.4")
    await expect(page.locator("#tree .node:has-text('parallel')")).to_have_count(2)
    await expect(
        page.locator(f'#tree .node[data-loop="{session}.{demo.PROVIDER}-{demo.MODEL}.6"] .dot')
    ).to_have_class("dot s-rejected")

    await page.locator("#timeline .row.tool .bar[data-tool='call-1']").click()
    await expect(page.locator("#tool-arguments")).to_contain_text("sqlite wal synchronous normal")
    await page.locator("#timeline button[data-zoom='4']").click()
    await expect(page.locator("#timeline")).to_have_attribute("style", "--zoom: 4;")
    await screenshot(page, "ui-session.png")

    await page.locator("#tree a.badge.sub").click()
    await expect(page.locator("#tree .node")).to_have_count(1)
    await expect(page.locator("#tree .node")).to_have_attribute(
        "data-loop", f"{sub_session}.openai-{demo.SUB_MODEL}.0"
    )


async def test_clicking_a_tool_call_shows_its_arguments(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    session, _ = await demo.record(recorder.target)
    await page.goto(session_url(ui.url, session), wait_until="load")
    await page.locator("#timeline .row.tool .label", has_text="delegate").click()
    await expect(page.locator("#details h2")).to_have_text("Tool call delegate")
    await expect(page.locator("#tool-arguments")).to_contain_text('"task": "summarize results"')
    await expect(page.locator("#details")).to_contain_text("session ")


def start(session: str, loop_id: str, parent: str | None = None) -> events_pb2.AgentEvent:
    return ev.agent_start(
        agent_id="live-agent", session_id=session, loop_id=loop_id, parent_loop_id=parent
    )


async def test_a_loop_recorded_while_the_page_is_open_appears_without_reload(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender()
        sender.emit(start("live", "live.cfg.0"))
        await sender.flush(timeout=10)
        await page.goto(session_url(ui.url, "live"), wait_until="load")
        await expect(page.locator("#tree .node")).to_have_count(1)
        await expect(page.locator("#live")).to_be_visible()
        await page.evaluate("window.__notReloaded = true")
        await page.locator('#tree .node[data-loop="live.cfg.0"]').click()
        await expect(page.locator("#details dl.kv").first).to_contain_text("running")
        await expect(page.locator("#details table.events tr.ev")).to_have_count(1)

        sender.emit(ev.agent_end("live.cfg.0", tokens=ev.usage(input=10, output=5)))
        sender.emit(start("live", "live.cfg.1", parent="live.cfg.0"))
        await sender.flush(timeout=10)
        new_node = page.locator('#tree .node[data-loop="live.cfg.1"]')
        await expect(new_node).to_be_visible()
        await expect(new_node.locator(".dot")).to_have_class("dot s-running")
        await expect(page.locator('#tree .node[data-loop="live.cfg.0"] .dot')).to_have_class(
            "dot s-completed"
        )
        await expect(page.locator("#details dl.kv").first).to_contain_text("completed")
        await expect(page.locator("#details table.events tr.ev")).to_have_count(2)
        assert await page.evaluate("window.__notReloaded") is True
        await sender.close()


async def test_measure_ui_open_times_a_drawn_page_and_names_a_failure(
    recorder: RunningRecorder,
) -> None:
    session, _ = await demo.record(recorder.target)
    assert await measure_ui_open(recorder.target, session) > 0
    with pytest.raises(RuntimeError, match="not found"):
        await measure_ui_open(recorder.target, "no-such-session")


# A 1x1 transparent PNG: the page shows image blocks inline, from the recorded bytes.
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


async def test_a_loops_messages_show_thinking_and_image_blocks(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    answer = ev.assistant_message("Here is the chart.", model="m", provider="p")
    answer.content.add().thinking.thinking = "the user wants a picture"
    answer.content.add().image.CopyFrom(types_pb2.ImageContent(data=PIXEL, mime_type="image/png"))
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender()
        sender.emit(start("pics", "pics.cfg.0"))
        sender.emit(ev.agent_end("pics.cfg.0", messages=[answer]))
        await sender.close()
    await page.goto(session_url(ui.url, "pics"), wait_until="load")
    await page.locator('#tree .node[data-loop="pics.cfg.0"]').click()
    message = page.locator("#details .msg.role-assistant")
    await expect(message.locator(".block-text")).to_have_text("Here is the chart.")
    await expect(message.locator(".block-thinking")).to_have_text("the user wants a picture")
    image = message.locator(".block-image img")
    await expect(image).to_have_attribute("src", f"data:image/png;base64,{PIXEL}")
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 1


async def test_a_loops_raw_events_come_a_page_at_a_time(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender()
        sender.emit(start("long", "long.cfg.0"))
        for index in range(125):
            sender.emit(ev.turn_start("long.cfg.0", index))
            sender.emit(
                ev.turn_end("long.cfg.0", ev.assistant_message("ok", model="m", provider="p"))
            )
        sender.emit(ev.agent_end("long.cfg.0"))
        await sender.close()
    await page.goto(session_url(ui.url, "long"), wait_until="load")
    await page.locator('#tree .node[data-loop="long.cfg.0"]').click()
    rows = page.locator("#details table.events tr.ev")
    await expect(rows).to_have_count(200)
    await page.locator("#details button", has_text="load more").click()
    await expect(rows).to_have_count(252)
    await expect(page.locator("#details button", has_text="load more")).to_be_hidden()
    await rows.last.click()
    await expect(page.locator("#details table.events tr:not(.ev)").last).to_contain_text("agentEnd")


async def test_costs_on_the_list_the_session_header_loops_turns_and_sub_agent_tree(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    # The run and its hand-computed costs: support/priced.py.
    await record_priced_tree(recorder.target)
    await page.goto(ui.url, wait_until="load")
    lead_row = page.locator('tr.session-row[data-session="lead"]')
    await expect(lead_row.locator('[data-role="session-cost"]')).to_have_text(f"${priced.LEAD}")
    tree_cost = lead_row.locator('[data-role="tree-cost"]')
    await expect(tree_cost).to_have_text(f"${priced.TREE} + 1 unpriced")
    await expect(tree_cost).to_have_class("cost unpriced")

    await page.goto(session_url(ui.url, "lead"), wait_until="load")
    await page.wait_for_selector(SESSION_READY)
    await expect(page.locator("#session-cost .cost")).to_have_text(f"${priced.LEAD}")
    await expect(page.locator("#tree-cost summary .cost")).to_have_text(
        f"${priced.TREE} + 1 unpriced"
    )
    helper = page.locator('#tree-cost li[data-session="helper"]')
    await expect(helper).to_contain_text("(helper)")
    await expect(helper.locator(".cost")).to_have_text(f"${priced.HELPER} + 1 unpriced")
    lead = page.locator('#tree .node[data-loop="lead.0"]')
    await expect(lead.locator("> .cost")).to_have_text(f"${priced.LEAD}")
    # The sub-agent's badge: what it and everything it spawned cost.
    await expect(lead.locator("a.badge.sub .cost")).to_have_text(f"${priced.HELPER} + 1 unpriced")
    await page.locator("#timeline .row.turn .label", has_text="turn 0").click()
    await expect(page.locator("#details h2")).to_have_text("Turn 0")
    await expect(page.locator("#details")).to_contain_text("model claude-sonnet-4")
    await expect(page.locator("#details .cost").first).to_have_text(f"${priced.LEAD_TURNS[0]}")
    await screenshot(page, "ui-cost.png")

    await page.goto(session_url(ui.url, "helper"), wait_until="load")
    await page.wait_for_selector(SESSION_READY)
    unpriced = page.locator('#tree .node[data-loop="helper.1"] .cost')
    await expect(unpriced).to_have_text("unpriced")
    await expect(unpriced).to_have_class("cost unpriced")
    await expect(unpriced).to_have_attribute("title", re.compile("unknown model 'my-finetune'"))
    await page.locator('#tree .node[data-loop="helper.1"]').click()
    await expect(page.locator("#details")).to_contain_text("why unpriced")
    await expect(page.locator("#details")).to_contain_text("unknown model 'my-finetune'")


async def test_a_tool_shows_the_result_recorded_in_its_execution_end(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    await record_tool_result_in_end_only(recorder.target, "tools")
    await page.goto(session_url(ui.url, "tools"), wait_until="load")
    await page.wait_for_selector(SESSION_READY)
    tool_row = page.locator(f"#timeline .row.tool:has(.bar[data-tool='{TOOL_CALL}'])")
    await tool_row.locator(".label").click()
    await expect(page.locator("#details h2")).to_have_text("Tool call ls")
    result = page.locator("#tool-result")
    await expect(result.locator(".block-text")).to_have_text(TOOL_OUTPUT)
    await expect(result).to_contain_text("error")
    await expect(result).not_to_contain_text("no result recorded")


async def test_refused_events_are_marked_with_their_reason(
    recorder: RunningRecorder, ui: RunningUi, page: Page
) -> None:
    """A NaN in one tool call's arguments: the slot is marked, the rest is stored."""
    stub = aio(recorder.stub())
    response = await append_response(
        stub,
        [
            se.agent_start("nan", "nan.cfg.0", at=1),
            se.tool_start("nan.cfg.0", "c1", "bash", {"x": math.nan}),
            se.tool_start("nan.cfg.0", "c2", "bash", {"x": 1}),
            se.progress("gone.cfg.0", "c3", "bash", "orphan"),
        ],
    )
    assert [(r.index, r.holds_slot) for r in response.refusals] == [(1, True), (3, False)]
    await page.goto(session_url(ui.url, "nan"), wait_until="load")
    await expect(page.locator("#session-refused")).to_have_text("1 refused")
    node = page.locator('#tree .node[data-loop="nan.cfg.0"]')
    await expect(node.locator(".badge.refused")).to_have_text("1 refused")
    await node.click()
    rows = page.locator("#details table.events tr.ev")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(1)).to_have_class("ev refused")
    await expect(rows.nth(1)).to_contain_text("REFUSED INVALID_FIELD")
    await expect(rows.nth(1)).to_contain_text("args")
    await expect(rows.nth(2)).to_contain_text("toolExecutionStart")
    await page.locator("#session-refused").click()
    await expect(page.locator("#details h2")).to_have_text("Refused events")
    await expect(page.locator("#details .refusal-message")).to_contain_text("NaN or Infinity")
