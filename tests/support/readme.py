"""Code blocks of the README, as a reader would copy them (not a test)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def code_block(section: str, language: str) -> str:
    """The first ```language block after the heading `section` (e.g. "### Python client")."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{section}\n")
    for match in _BLOCK.finditer(text, start):
        if match.group(1) == language:
            return match.group(2)
    raise AssertionError(f"no {language} block after {section!r} in README.md")
