"""The Node.js example (examples/node) against a real server, over a Unix socket and TCP.

The example loads protos/ at run time with @grpc/proto-loader, records a loop
with two turns and a tool call through Append, reads the session back with
GetSession and exits 0 only when it matches. This test then checks, from
Python, that what was stored is what the Node client meant, field by field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from agent_recorder.v1 import session_pb2, types_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from support import parts
from support.events import texts
from support.processes import run_process
from support.user_agent import user_agents_of

from recorder_common.version import __version__
from recorder_server.server import RecorderServer, ServerConfig

# Node runs (npm install, a node process) are slow: not in `make test-fast`.
pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "node"
NPM_INSTALL_TIMEOUT_S = 300
USER, ASSISTANT, TOOL_RESULT = (
    types_pb2.MESSAGE_ROLE_USER,
    types_pb2.MESSAGE_ROLE_ASSISTANT,
    types_pb2.MESSAGE_ROLE_TOOL_RESULT,
)


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its npm dependencies; installed once, kept between runs."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        parts.missing("node", f"the Node.js example needs {' and '.join(missing)} on PATH")
    installed = all(
        (EXAMPLE / "node_modules" / "@grpc" / name / "package.json").exists()
        for name in ("grpc-js", "proto-loader")
    )
    if not installed:
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=NPM_INSTALL_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stdout}\n{done.stderr}"
    return EXAMPLE / "record.js"


async def run_node(
    script: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """`node script args...`: its exit status, stdout and stderr."""
    return await run_process(["node", str(script), *args], dict(os.environ) if env is None else env)


async def run_example(
    script: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    code, out, err = await run_node(script, *args, env=env)
    assert code == 0, f"node exited {code}:\n{out}\n{err}"
    summary: dict[str, Any] = json.loads(out)
    return summary


def ms_after(ts: Timestamp, start: Timestamp) -> int:
    return (ts.ToNanoseconds() - start.ToNanoseconds()) // 1_000_000


async def test_node_client_records_a_loop_that_reads_back_as_sent(
    node_example: Path, server: RecorderServer
) -> None:
    session_id = "node-session-1"
    loop_id = f"{session_id}.default.0"
    summary = await run_example(node_example, server.address, "--session", session_id)
    assert summary == {
        "session_id": session_id,
        "agent_id": "node-example",
        "loop_id": loop_id,
        "status": "LOOP_STATUS_COMPLETED",
        "turns": 2,
        "events": 12,
        "usage": {"input": "300", "output": "40"},
        "matches": True,
    }

    async with grpc.aio.insecure_channel(server.address) as channel:
        stub: api_grpc.RecorderServiceAsyncStub = api_grpc.RecorderServiceStub(channel)
        response = await stub.GetSession(api.GetSessionRequest(session_id=session_id), timeout=10)
    session = response.session
    assert session.session_id == session_id
    assert session.agent_id == "node-example"
    assert session.formation.WhichOneof("kind") == "first_loop"
    assert session.scope == session_pb2.SESSION_SCOPE_EPHEMERAL
    assert not session.HasField("parent_spawn_ref")
    (loop,) = session.loops
    start = loop.started_at
    assert loop.loop_id == loop_id
    assert loop.agent_id == "node-example"
    assert loop.status == session_pb2.LOOP_STATUS_COMPLETED
    assert loop.continuation_kind.WhichOneof("kind") == "initial"
    assert not loop.HasField("parent_loop_id")
    assert (loop.config.model, loop.config.provider) == ("claude-sonnet-4", "anthropic")
    assert (loop.usage.input, loop.usage.output, loop.usage.total_tokens) == (300, 40, 340)
    assert ms_after(loop.ended_at, start) == 8
    assert [m.role for m in loop.messages] == [USER, ASSISTANT, TOOL_RESULT, ASSISTANT]

    turn0, turn1 = loop.turns
    assert (turn0.turn_id.loop_id, turn0.turn_id.turn_index) == (loop_id, 0)
    assert turn0.triggered_by == types_pb2.TURN_TRIGGER_USER
    assert (ms_after(turn0.started_at, start), ms_after(turn0.ended_at, start)) == (1, 5)
    assert (turn0.usage.input, turn0.usage.output, turn0.usage.total_tokens) == (120, 15, 135)
    assert [m.role for m in turn0.input_messages] == [USER, TOOL_RESULT]
    assert texts(turn0.input_messages[0]) == ["What does the README say?"]
    output = turn0.output_message
    assert (output.role, output.model, output.provider) == (
        ASSISTANT,
        "claude-sonnet-4",
        "anthropic",
    )
    assert output.stop_reason == types_pb2.STOP_REASON_TOOL_USE
    assert texts(output) == ["Reading it."]
    (tool_call,) = [b.tool_call for b in output.content if b.HasField("tool_call")]
    assert (tool_call.id, tool_call.name) == ("call-read-1", "read_file")
    assert json_format.MessageToDict(tool_call.arguments) == {"path": "README.md", "max_lines": 20}
    (result,) = turn0.tool_results
    assert (result.tool_call_id, result.tool_name) == ("call-read-1", "read_file")
    assert (result.turn_id.loop_id, result.turn_id.turn_index) == (loop_id, 0)
    assert texts(result) == ["# agent-recorder ..."]
    assert (turn1.turn_id.turn_index, turn1.triggered_by) == (
        1,
        types_pb2.TURN_TRIGGER_CONTINUATION,
    )
    assert (ms_after(turn1.started_at, start), ms_after(turn1.ended_at, start)) == (5, 7)
    assert texts(turn1.output_message) == ["It describes a recording sidecar."]
    assert turn1.output_message.stop_reason == types_pb2.STOP_REASON_STOP

    assert [e.sequence for e in loop.events] == list(range(12))
    assert [e.event.WhichOneof("event") for e in loop.events] == [
        "agent_start",
        "turn_start",
        "message_end",
        "message_end",
        "tool_execution_start",
        "tool_execution_end",
        "message_end",
        "turn_end",
        "turn_start",
        "message_end",
        "turn_end",
        "agent_end",
    ]
    tool_start = loop.events[4].event.tool_execution_start
    assert (tool_start.tool_call_id, tool_start.tool_name) == ("call-read-1", "read_file")
    assert json_format.MessageToDict(tool_start.args) == {"path": "README.md", "max_lines": 20}
    tool_end = loop.events[5].event.tool_execution_end
    assert not tool_end.is_error
    assert [b.text.text for b in tool_end.result.content] == ["# agent-recorder ..."]


def env_without_target(**more: str) -> dict[str, str]:
    hidden = {"AGENT_RECORDER_TARGET", "AGENT_RECORDER_TOKEN", "AGENT_RECORDER_TOKEN_FILE"}
    return {**{k: v for k, v in os.environ.items() if k not in hidden}, **more}


async def test_with_no_arguments_the_example_finds_the_default_socket_and_takes_the_token(
    node_example: Path, short_tmp: Path
) -> None:
    """As pasted: no target, the sidecar on its default socket, a token in a file."""
    token_file = short_tmp / "token"
    token_file.write_text("node-example-token-0123\n")
    socket = short_tmp / "agent-recorder" / "recorder.sock"
    config = ServerConfig(
        db_path=short_tmp / "recorder.db",
        listen=f"unix://{socket}",
        token="node-example-token-0123",
        shutdown_grace_s=1.0,
    )
    async with RecorderServer(config):
        env = env_without_target(XDG_RUNTIME_DIR=str(short_tmp))
        code, out, err = await run_node(node_example, env=env)
        assert code == 2, (out, err)
        assert "UNAUTHENTICATED" in err or "missing or invalid bearer token" in err, err
        env["AGENT_RECORDER_TOKEN_FILE"] = str(token_file)
        summary = await run_example(node_example, env=env)
        assert (summary["status"], summary["events"], summary["matches"]) == (
            "LOOP_STATUS_COMPLETED",
            12,
            True,
        )
        async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
            stub: api_grpc.RecorderServiceAsyncStub = api_grpc.RecorderServiceStub(channel)
            token = (("authorization", "Bearer node-example-token-0123"),)
            response = await stub.GetSession(
                api.GetSessionRequest(session_id=summary["session_id"]), metadata=token, timeout=10
            )
    assert response.session.loops[0].loop_id == summary["loop_id"]
    assert response.session.agent_id == "node-example"


async def test_the_example_sends_its_user_agent_and_the_repo_version(
    node_example: Path, short_tmp: Path
) -> None:
    seen = await user_agents_of(["node", str(node_example)], short_tmp)
    assert seen[0].startswith(f"agent-recorder-node-example/{__version__} "), seen
