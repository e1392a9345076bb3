"""What CI relies on: a skip for a part `make test` installs fails under CI=true, and
every skip prints its reason (pytest runs as a child, with node hidden from PATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import parts

ROOT = Path(__file__).resolve().parent.parent


def run_node_tests_without_node(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = "/nonexistent"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_node_client.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_outside_ci_a_missing_part_skips_and_says_why() -> None:
    done = run_node_tests_without_node(None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SKIPPED" in done.stdout
    assert "the Node.js example needs node and npm on PATH" in done.stdout
    assert "failed" not in done.stdout


@pytest.mark.slow
def test_under_ci_a_missing_part_fails() -> None:
    done = run_node_tests_without_node("true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the Node.js example needs node and npm on PATH" in done.stdout
    assert "under CI `make test` must install node" in done.stdout
    assert "SKIPPED" not in done.stdout


@pytest.mark.parametrize(
    ("value", "ci"),
    [(None, False), ("", False), ("false", False), ("0", False), ("true", True), ("1", True)],
)
def test_ci_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, ci: bool
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert parts.under_ci() is ci


def test_ci_runs_lint_before_the_suite() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    lint, test = script.index("make lint"), script.index("make test\n")
    assert lint < test
    assert 'export CI="${CI:-true}"' in script
