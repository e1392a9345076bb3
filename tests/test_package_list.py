"""Every Python package in the repo is in pyproject's explicit package list, so the
wheel carries it (a package left out installs fine and fails at import)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / path for name, path in config["package-dir"].items()}
    found = set()
    for top in ("recorder_server", "recorder_client", "recorder_common"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, path in mapped.items():
        found = {f for f in found if not f.startswith(".".join(path.relative_to(ROOT).parts))}
        found |= {
            ".".join((name, *init.parent.relative_to(path).parts))
            for init in path.rglob("__init__.py")
        }
    assert found <= listed, sorted(found - listed)
    data_only = {"recorder_server.ui.static"}
    assert listed - found == data_only
