"""The web view's server side without a browser: what it refuses, and its JSON."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.recorder import RunningRecorder
from support.tool_loops import TOOL_CALL, TOOL_OUTPUT, record_tool_result_in_end_only

from recorder_client.client import RecorderClient
from recorder_server import demo
from recorder_server.cli import main as cli_main
from recorder_server.server import RecorderServer, ServerConfig
from recorder_server.ui.app import RunningUi, start_ui


@pytest.fixture
async def ui(recorder: RunningRecorder) -> AsyncIterator[RunningUi]:
    running = await start_ui(lambda: RecorderClient.connect(recorder.target))
    try:
        yield running
    finally:
        await running.stop()


async def fetch(url: str, path: str, host: str | None = None) -> tuple[int, Any]:
    address, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)

    def get() -> tuple[int, Any]:
        connection = http.client.HTTPConnection(address, int(port), timeout=10)
        try:
            connection.request("GET", path, headers={"Host": host or f"{address}:{port}"})
            response = connection.getresponse()
            body = response.read()
            is_json = response.getheader("Content-Type", "").startswith("application/json")
            return response.status, json.loads(body) if is_json else body
        finally:
            connection.close()

    return await asyncio.to_thread(get)


def test_ui_refuses_a_non_loopback_address_without_allow_remote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["ui", "--http", "0.0.0.0:0"]) == 2
    assert "not a loopback address" in capsys.readouterr().err


async def test_ui_refuses_a_foreign_host_name(ui: RunningUi) -> None:
    """A page served under another name (DNS rebinding) cannot read the recordings."""
    port = ui.url.rstrip("/").rsplit(":", 1)[1]
    assert (await fetch(ui.url, "/api/sessions", host=f"localhost:{port}"))[0] == 200
    assert (await fetch(ui.url, "/api/sessions", host=f"attacker.example:{port}"))[0] == 403


async def test_loop_events_come_in_pages_that_resume_after_a_cursor(
    recorder: RunningRecorder, ui: RunningUi
) -> None:
    session, _ = await demo.record(recorder.target)
    loop_id = f"{session}.{demo.PROVIDER}-{demo.MODEL}.0"
    status, first = await fetch(ui.url, f"/api/loops/{loop_id}/events?limit=3")
    assert status == 200 and first["more"] is True
    assert [e["sequence"] for e in first["events"]] == [0, 1, 2]
    assert list(first["events"][0]["event"]) == ["agentStart"]
    after = first["events"][-1]["cursor"]
    _, rest = await fetch(ui.url, f"/api/loops/{loop_id}/events?after={after}&limit=1000")
    assert rest["more"] is False
    assert [e["sequence"] for e in rest["events"]] == list(range(3, 3 + len(rest["events"])))
    assert list(rest["events"][-1]["event"]) == ["agentEnd"]


async def test_session_outline_and_errors(recorder: RunningRecorder, ui: RunningUi) -> None:
    session, sub_session = await demo.record(recorder.target)
    status, outline = await fetch(ui.url, f"/api/sessions/{session}")
    assert status == 200
    assert outline["finalized"] is True and outline["cursor"] is None
    assert len(outline["loops"]) == 8
    origin = outline["loops"][0]
    assert origin["kind"] == {"name": "initial", "tag": ""}
    assert origin["childRefs"][0]["childSessionId"] == sub_session
    assert [t["name"] for turn in origin["turns"] for t in turn["tools"]] == [
        "web_search",
        "delegate",
    ]
    assert outline["usage"]["input"] == sum(loop["usage"]["input"] for loop in outline["loops"])
    status, error = await fetch(ui.url, "/api/sessions/no-such-session")
    assert status == 404 and error["code"] == "NOT_FOUND"
    status, _ = await fetch(ui.url, "/api/sessions?scope=bogus")
    assert status == 400


@pytest.mark.slow
async def test_ui_command_prints_its_url_and_serves_the_page(recorder: RunningRecorder) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder_server.cli",
        "ui",
        "--target",
        recorder.target,
        "--http",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        assert url.startswith("http://127.0.0.1:")
        status, page = await fetch(url, "/")
        assert status == 200 and b"/static/app.js" in page
        status, listing = await fetch(url, "/api/sessions")
        assert (status, listing) == (200, {})
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_ui_reads_a_token_protected_sidecar_with_the_sidecars_token(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = f"unix://{short_tmp / 'r.sock'}"
    config = ServerConfig(db_path=short_tmp / "r.db", listen=target, token="s3cret")
    async with RecorderServer(config):
        monkeypatch.delenv("AGENT_RECORDER_TOKEN", raising=False)
        monkeypatch.delenv("AGENT_RECORDER_TOKEN_FILE", raising=False)
        without = await start_ui(lambda: RecorderClient.connect(target))
        try:
            status, error = await fetch(without.url, "/api/sessions")
            assert (status, error["code"]) == (502, "UNAUTHENTICATED")
        finally:
            await without.stop()
        monkeypatch.setenv("AGENT_RECORDER_TOKEN", "s3cret")
        with_token = await start_ui(lambda: RecorderClient.connect(target))
        try:
            assert await fetch(with_token.url, "/api/sessions") == (200, {})
        finally:
            await with_token.stop()


def test_ui_says_when_its_port_is_taken(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any call: the sidecar need not even exist."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        target = f"unix://{short_tmp / 'none.sock'}"
        assert cli_main(["ui", "--target", target, "--http", f"127.0.0.1:{port}"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


async def test_a_tool_result_recorded_in_its_execution_end_is_served(
    recorder: RunningRecorder, ui: RunningUi
) -> None:
    loop_id = await record_tool_result_in_end_only(recorder.target, "tools")
    status, loop = await fetch(ui.url, f"/api/loops/{loop_id}")
    assert status == 200
    assert "toolResults" not in loop["turns"][0]  # the turn does not carry it
    status, end = await fetch(ui.url, f"/api/loops/{loop_id}/tools/{TOOL_CALL}")
    assert status == 200
    assert end["toolCallId"] == TOOL_CALL
    assert end["toolName"] == "ls"
    assert end["isError"] is True
    assert end["result"]["content"] == [{"text": {"text": TOOL_OUTPUT}}]
    assert await fetch(ui.url, f"/api/loops/{loop_id}/tools/no-such-call") == (200, None)
