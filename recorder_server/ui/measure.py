"""Drive the web view in the system's headless Chromium: the tests' and the benchmark's way in.

Playwright is a development dependency and its browsers are never downloaded:
Debian's chromium package is launched from its fixed path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from recorder_client.client import RecorderClient
from recorder_server.ui.app import start_ui

if TYPE_CHECKING:
    from playwright.async_api import Browser, Playwright

CHROMIUM: Final = Path("/usr/bin/chromium")
# No sandbox: tests may run as root in a container. The rest keeps the browser
# from calling out to the network on its own.
CHROMIUM_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page marks itself ready once the tree and the timeline are drawn, and shows
# a failure (the sidecar is down, the session unknown) in the tree pane.
SESSION_READY: Final = '#view[data-ready="session"]'
SESSION_FAILED: Final = "#tree .error"


async def launch_chromium(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def session_url(base_url: str, session_id: str) -> str:
    return f"{base_url}#/session/{quote(session_id, safe='')}"


async def measure_ui_open(target: str, session_id: str, *, timeout_s: float = 60.0) -> float:
    """Seconds from navigating to a session's page until its tree and timeline are drawn.

    Raises RuntimeError with the page's message when it cannot show the session.
    Serves the view on a free loopback port against the sidecar at target; the
    static files are fetched once beforehand, as a browser's cache would have them.
    """
    from playwright.async_api import async_playwright

    ui = await start_ui(lambda: RecorderClient.connect(target))
    try:
        async with async_playwright() as playwright:
            browser = await launch_chromium(playwright)
            try:
                page = await browser.new_page()
                await page.goto(ui.url, wait_until="load")
                await page.goto("about:blank")
                started = time.perf_counter()
                await page.goto(session_url(ui.url, session_id), wait_until="load")
                await page.wait_for_selector(
                    f"{SESSION_READY}, {SESSION_FAILED}", timeout=timeout_s * 1000
                )
                elapsed = time.perf_counter() - started
                failure = await page.query_selector(SESSION_FAILED)
                if failure is not None:
                    raise RuntimeError(f"the session page failed: {await failure.inner_text()}")
                return elapsed
            finally:
                await browser.close()
    finally:
        await ui.stop()
