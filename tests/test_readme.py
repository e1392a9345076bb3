"""The README's examples run as pasted, against a real sidecar."""

from __future__ import annotations

import os
import re

from agent_recorder.v1 import session_pb2
from support.processes import run_python
from support.readme import code_block
from support.recorder import RunningRecorder

from recorder_client.client import RecorderClient


async def test_the_python_snippet_runs_as_pasted(recorder: RunningRecorder) -> None:
    snippet = code_block("### Python client", "python")
    env = {**os.environ, "AGENT_RECORDER_TARGET": recorder.target}
    env.pop("AGENT_RECORDER_TOKEN", None)
    code, out, err = await run_python(snippet, env)
    assert code == 0, err
    match = re.fullmatch(r"recorded session ([0-9a-f]{32}): 1 loop\(s\)\n", out)
    assert match is not None, out
    async with RecorderClient.connect(recorder.target) as client:
        session = await client.get_session(match.group(1))
    (loop,) = session.loops
    assert (session.agent_id, loop.loop_id) == ("my-agent", f"{match.group(1)}.cfg.0")
    assert loop.status == session_pb2.LOOP_STATUS_COMPLETED
