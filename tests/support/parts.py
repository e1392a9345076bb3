"""Parts that `make test` itself installs (the browser, node): a test missing one skips,
or fails when $CI is set, so CI never passes with those tests quietly skipped."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(part: str, reason: str) -> NoReturn:
    """Skip with `reason`; under CI fail instead, since `make test` should have installed `part`."""
    if under_ci():
        pytest.fail(f"{reason} (under CI `make test` must install {part})", pytrace=False)
    pytest.skip(reason)
