"""The committed stubs are exactly what `make proto` generates from protos/.

The protoc commands are taken from the Makefile's proto target, so the test and
the target cannot drift apart; only the output directory is swapped for a temp one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GEN_DIR = ROOT / "recorder_client"
STUBS = GEN_DIR / "agent_recorder" / "v1"
GENERATED = re.compile(r".*_pb2(_grpc)?\.pyi?$")


def _make_variable(makefile: str, name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(.*)$", makefile, re.MULTILINE)
    assert match is not None, f"Makefile has no {name}"
    return match.group(1).strip()


def proto_commands() -> list[str]:
    """The protoc recipe lines of the Makefile's proto target, continuation lines joined."""
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^proto:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target is not None, "Makefile has no proto target"
    recipe = target.group(1).replace("\\\n", " ")
    commands = [line.strip() for line in recipe.splitlines() if "grpc_tools.protoc" in line]
    assert len(commands) == 2, commands
    assert _make_variable(makefile, "GEN_DIR") == "recorder_client"
    assert _make_variable(makefile, "PROTO_SRC") == "$(wildcard protos/agent_recorder/v1/*.proto)"
    return commands


def pinned(package: str) -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["optional-dependencies"]["dev"]:
        name, _, version = str(requirement).partition("==")
        if name == package:
            return version
    raise AssertionError(f"{package} is not pinned in the dev extra")


def test_generator_versions_are_the_pinned_ones() -> None:
    assert metadata.version("grpcio-tools") == pinned("grpcio-tools")
    assert metadata.version("mypy-protobuf") == pinned("mypy-protobuf")


@pytest.mark.slow
def test_committed_stubs_match_a_fresh_make_proto(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    protos = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("agent_recorder/v1/*.proto")
    )
    assert protos, "no .proto files"
    for command in proto_commands():
        expanded = (
            command.replace("$(CURDIR)/$(BIN)", str(bin_dir))
            .replace("$(PY)", str(bin_dir / "python"))
            .replace("$(GEN_DIR)", str(tmp_path))
            .replace("$(PROTO_SRC)", " ".join(protos))
            .replace("$$", "$")
        )
        assert "$(" not in expanded, expanded
        done = subprocess.run(
            ["bash", "-c", expanded],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ},
        )
        assert done.returncode == 0, done.stderr

    fresh_dir = tmp_path / "agent_recorder" / "v1"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir() if GENERATED.match(p.name)}
    committed = {p.name: p.read_bytes() for p in STUBS.iterdir() if GENERATED.match(p.name)}
    assert sorted(fresh) == sorted(committed)
    drifted = [name for name in sorted(fresh) if fresh[name] != committed[name]]
    assert drifted == [], f"stale generated stubs (run `make proto`): {drifted}"
