"""Child processes a test runs while its sidecar may run in the same event loop (not a test)."""

from __future__ import annotations

import asyncio
import sys

RUN_TIMEOUT_S = 60.0


async def run_python(code: str, env: dict[str, str]) -> tuple[int, str, str]:
    """`python -c code` without blocking the loop (the test's sidecar may run in it)."""
    return await run_process([sys.executable, "-c", code], env)


async def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """`agent-recorder args...` (as `python -m recorder_server.cli`) in a child process."""
    return await run_process([sys.executable, "-m", "recorder_server.cli", *args], env)


async def run_process(command: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Its exit status, stdout and stderr, within RUN_TIMEOUT_S."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
