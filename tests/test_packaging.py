"""The sdist and the wheel, installed as a user would: plain (the client library) and
with the [server] extra, each in a clean venv. Checks what each pulls in, that the
plain install's command says what is missing, and that a client from the plain
install records into a sidecar from the [server] install and reads it back.

Built offline with this venv's setuptools (the wheel from the unpacked sdist, so
the sdist is proven complete); pip fetches dependencies from the package registry
(pinned by constraints.txt, so from pip's cache when it has them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import parts
from support.readme import code_block

from recorder_common.version import __version__

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT_S = 600
# What a plain install may bring: the client library's dependencies and theirs.
CLIENT_SET = {
    "agent-recorder",
    "grpcio",
    "grpcio-status",
    "googleapis-common-protos",
    "protobuf",
    "tenacity",
    "typing-extensions",
}
SERVER_ONLY = {
    "aiohttp",
    "aiosqlite",
    "rich",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "grpcio-health-checking",
    "grpcio-reflection",
}
DEV_ONLY = {"pytest", "mypy", "ruff", "playwright", "grpcio-tools", "hypothesis"}
# Network failures of pip: the registry is out of reach (not a packaging problem).
UNREACHABLE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


def run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )


def source_tree(dest: Path) -> Path:
    """The files git would commit (tracked, or new and not ignored), copied."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build(kind: str, source: Path, out: Path) -> Path:
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    done = run(sys.executable, "-c", code, cwd=source)
    assert done.returncode == 0, done.stderr
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    work = tmp_path_factory.mktemp("dists")
    sdist = build("sdist", source_tree(work / "src"), work / "dist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    wheel = build("wheel", unpacked, work / "dist")
    return Dists(sdist, wheel)


class Venv:
    def __init__(self, path: Path) -> None:
        done = run(sys.executable, "-m", "venv", path)
        assert done.returncode == 0, done.stderr
        self.bin = path / "bin"

    def install(self, requirement: str) -> None:
        pip: list[str | Path] = [self.bin / "python", "-m", "pip", "install", "-q"]
        done = run(*pip, "-c", ROOT / "constraints.txt", requirement)
        if done.returncode != 0 and any(s in done.stderr for s in UNREACHABLE):
            parts.missing("the package registry", f"pip cannot reach the registry: {done.stderr}")
        assert done.returncode == 0, done.stderr

    def distributions(self) -> set[str]:
        done = run(self.bin / "python", "-m", "pip", "list", "--format=json")
        assert done.returncode == 0, done.stderr
        names = {str(d["name"]).lower().replace("_", "-") for d in json.loads(done.stdout)}
        return names - {"pip", "setuptools", "wheel"}


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def plain(
    request: pytest.FixtureRequest, dists: Dists, tmp_path_factory: pytest.TempPathFactory
) -> Venv:
    """A clean venv with `pip install <wheel or sdist>`."""
    venv = Venv(tmp_path_factory.mktemp("venvs") / f"plain-{request.param}")
    venv.install(getattr(dists, request.param).as_uri())
    return venv


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def server(
    request: pytest.FixtureRequest, dists: Dists, tmp_path_factory: pytest.TempPathFactory
) -> Venv:
    """A clean venv with `pip install 'agent-recorder[server] @ <wheel or sdist>'`."""
    venv = Venv(tmp_path_factory.mktemp("venvs") / f"server-{request.param}")
    venv.install(f"agent-recorder[server] @ {getattr(dists, request.param).as_uri()}")
    return venv


def test_the_sdist_carries_the_contract_license_and_changelog(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "protos/agent_recorder/v1/events.proto"} <= names
    assert dists.wheel.name == f"agent_recorder-{__version__}-py3-none-any.whl"


def test_the_plain_install_is_the_client_library(plain: Venv) -> None:
    assert plain.distributions() == CLIENT_SET
    imports = (
        "import recorder_client, agent_recorder.v1.events_pb2 as events\n"
        "print(recorder_client.RecorderClient.__name__, events.__name__)\n"
    )
    done = run(plain.bin / "python", "-c", imports)
    expected = "RecorderClient agent_recorder.v1.events_pb2\n"
    assert (done.returncode, done.stdout) == (0, expected), done.stderr
    version = run(plain.bin / "agent-recorder", "--version")
    assert version.stdout == f"agent-recorder {__version__} (client library only)\n"
    refused = run(plain.bin / "agent-recorder", "ls")
    assert refused.returncode == 1
    assert "need the [server] extra (missing: " in refused.stderr
    assert "pip install 'agent-recorder[server]'" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_server_install_brings_the_sidecar_and_no_dev_tools(server: Venv) -> None:
    installed = server.distributions()
    assert installed >= CLIENT_SET | SERVER_ONLY
    assert not installed & DEV_ONLY
    version = run(server.bin / "agent-recorder", "--version")
    assert (version.returncode, version.stdout) == (0, f"agent-recorder {__version__}\n")


@pytest.fixture
async def sidecar(server: Venv, short_tmp: Path) -> AsyncIterator[str]:
    """`agent-recorder serve` from the [server] install, until the test ends."""
    socket = short_tmp / "r.sock"
    process = await asyncio.create_subprocess_exec(
        str(server.bin / "agent-recorder"),
        "serve",
        "--db",
        str(short_tmp / "recorder.db"),
        "--listen",
        f"unix://{socket}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b"listening on" not in (line := await process.stdout.readline()):
                assert line, "serve exited at start"
        yield f"unix://{socket}"
    finally:
        process.terminate()
        await process.wait()


async def test_a_plain_client_records_into_the_server_install_and_reads_back(
    plain: Venv, server: Venv, sidecar: str
) -> None:
    env = {**os.environ, "AGENT_RECORDER_TARGET": sidecar}
    env.pop("AGENT_RECORDER_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        str(plain.bin / "python"),
        "-c",
        code_block("### Python client", "python"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    session_id = out.decode().split()[2].rstrip(":")
    shown = await asyncio.create_subprocess_exec(
        str(server.bin / "agent-recorder"),
        "show",
        session_id,
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        out, err = await shown.communicate()
    assert shown.returncode == 0, err.decode()
    session = json.loads(out)
    assert (session["sessionId"], session["agentId"]) == (session_id, "my-agent")
    assert [loop["status"] for loop in session["loops"]] == ["LOOP_STATUS_COMPLETED"]


def test_autostart_in_a_plain_install_says_the_server_extra_is_missing(
    plain: Venv, short_tmp: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_RECORDER_")}
    env |= {"XDG_RUNTIME_DIR": str(short_tmp / "run"), "XDG_DATA_HOME": str(short_tmp / "data")}
    code = (
        "from recorder_client import RecorderClient\n"
        "from recorder_client.autostart import AutostartError\n"
        "try:\n"
        "    RecorderClient.connect(autostart=True)\n"
        "except AutostartError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [plain.bin / "python", "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    log = short_tmp / "data" / "agent-recorder" / "sidecar.log"
    assert done.stdout == (
        "the sidecar exited with status 1 at start: install it with: pip install "
        f"'agent-recorder[server]' (log: {log})\n"
    )
