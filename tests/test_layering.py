"""Which package may import which: the sidecar never loads the client library."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)


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
