"""What `show`, `tail`, `export` and `refused` were given: a session id, a loop id, or a
unique prefix of a session id (the README's examples use the first 8 characters)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from recorder_client.client import RecorderClient
from recorder_client.errors import RecorderRpcError

# Prefixes shorter than this would match too much to be meant as one session.
MIN_PREFIX = 4


class NotResolved(Exception):
    """No session or loop, or several sessions, answer to what was given."""


@dataclass(frozen=True)
class Found:
    session_id: str
    loop_id: str | None = None  # set when a loop id was given


async def _session_exists(client: RecorderClient, session_id: str) -> bool:
    try:
        await client.get_session(session_id, skip_events=True, skip_messages=True)
    except RecorderRpcError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True


async def resolve(client: RecorderClient, given: str) -> Found:
    """The session or loop `given` names: an exact session id, else an exact loop id,
    else the one session whose id starts with it."""
    if await _session_exists(client, given):
        return Found(given)
    try:
        loop = await client.get_loop(given, skip_events=True)
    except RecorderRpcError as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise
    else:
        return Found(loop.session_id, loop.loop_id)
    if len(given) < MIN_PREFIX:
        raise NotResolved(f"no session or loop {given!r} (a prefix needs {MIN_PREFIX}+ characters)")
    matches = [s.session_id async for s in client.iter_sessions() if s.session_id.startswith(given)]
    if not matches:
        raise NotResolved(f"no session or loop {given!r}, and no session id starts with it")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise NotResolved(f"{given!r} starts {len(matches)} session ids: {shown}")
    return Found(matches[0])
