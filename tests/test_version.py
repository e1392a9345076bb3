"""One version, written once (recorder_common/version.py), seen everywhere: the CLI,
the package metadata, the CHANGELOG, the server's ready answer and `server-version`
header (health and reflection included, refusals too), and each client's User-Agent."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.events import RecordStream, aio
from support.recorder import RunningRecorder
from support.user_agent import user_agents_of

from recorder_common.version import SERVER_VERSION_HEADER, __version__
from recorder_server.server import RecorderServer, ServerConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_cli_prints_the_version() -> None:
    script = str(Path(sys.executable).with_name("agent-recorder"))
    for command in ([sys.executable, "-m", "recorder_server.cli"], [script]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (0, f"agent-recorder {__version__}\n"), done


def test_the_package_metadata_takes_the_version_and_says_the_license() -> None:
    info = metadata.metadata("agent-recorder")
    assert info["Version"] == __version__
    assert info["License-Expression"] == "MIT"
    urls = dict(url.split(", ", 1) for url in info.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Changelog", "Issues"}
    classifiers = info.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_changelog_has_an_entry_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {__version__} " in changelog


async def test_the_ready_answer_names_the_server_version(recorder: RunningRecorder) -> None:
    stream = RecordStream(aio(recorder.stub()), "w")
    ready = await stream.hello()
    assert ready.server_version == __version__
    assert await header_of(stream.call) == __version__
    await stream.close()


async def header_of(call: Any) -> str | None:
    """The `server-version` header of a call of any arity, once its headers arrived."""
    value = dict(await call.initial_metadata()).get(SERVER_VERSION_HEADER)
    return None if value is None else str(value)


async def test_every_answer_carries_the_server_version_header(
    recorder: RunningRecorder,
) -> None:
    async with grpc.aio.insecure_channel(recorder.target) as channel:
        stub: api_grpc.RecorderServiceAsyncStub = api_grpc.RecorderServiceStub(channel)
        listing = stub.ListSessions(api.ListSessionsRequest())
        await listing
        assert await header_of(listing) == __version__
        missing = stub.GetSession(api.GetSessionRequest(session_id="nope"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await missing
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert await header_of(missing) == __version__
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert (await check).status == health_pb2.HealthCheckResponse.SERVING
        assert await header_of(check) == __version__
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for answer in reflect:
            names = {s.name for s in answer.list_services_response.service}
            assert "agent_recorder.v1.RecorderService" in names
        assert await header_of(reflect) == __version__


async def test_a_refused_token_still_names_the_server_version(short_tmp: Path) -> None:
    config = ServerConfig(
        db_path=short_tmp / "r.db", listen=f"unix://{short_tmp / 'r.sock'}", token="t0ken"
    )
    async with (
        RecorderServer(config) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub: api_grpc.RecorderServiceAsyncStub = api_grpc.RecorderServiceStub(channel)
        call = stub.ListSessions(api.ListSessionsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await header_of(call) == __version__


async def test_the_python_client_sends_its_user_agent(short_tmp: Path) -> None:
    script = (
        "import asyncio\n"
        "from recorder_client import RecorderClient\n"
        "async def main():\n"
        "    async with RecorderClient.connect() as client:\n"
        "        await client.list_sessions()\n"
        "asyncio.run(main())\n"
    )
    seen = await user_agents_of([sys.executable, "-c", script], short_tmp)
    assert seen[0].startswith(f"agent-recorder-python/{__version__} grpc-python"), seen
