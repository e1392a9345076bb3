"""Which package may import which: the sidecar never loads the client library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

CLIENT = Path(__file__).parent.parent / "recorder_client"


def loaded_after_importing(module: str) -> set[str]:
    """Top-level packages of this project loaded by importing `module` in a fresh process."""
    code = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split()) & {"recorder_client", "recorder_common", "recorder_server"}


def test_the_sidecar_does_not_import_the_client_library() -> None:
    for module in ("recorder_server.server", "recorder_server.framing", "recorder_server.service"):
        assert loaded_after_importing(module) == {"recorder_common", "recorder_server"}, module


def test_the_client_library_does_not_import_the_server() -> None:
    assert loaded_after_importing("recorder_client") == {"recorder_client", "recorder_common"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_event_sender_does_not_import_the_client() -> None:
    """EventSender is given callables (open a Record stream, find a loop): no import cycle."""
    assert "recorder_client.client" not in imported_modules(CLIENT / "delivery.py")
    assert "recorder_client.delivery" in imported_modules(CLIENT / "client.py")


def test_the_sync_facade_uses_only_the_senders_public_api() -> None:
    tree = ast.parse((CLIENT / "sync.py").read_text(encoding="utf-8"))
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "_sender"
        and node.attr.startswith("_")
    ]
    assert private == []
