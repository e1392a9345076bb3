"""A recorded loop whose tool result is only in its ToolExecutionEnd (the web view's case)."""

from __future__ import annotations

from recorder_client import events as ev
from recorder_client.client import RecorderClient

TOOL_CALL = "call-ls"
TOOL_OUTPUT = "a.txt b.txt"


async def record_tool_result_in_end_only(target: str, session: str) -> str:
    """Record one loop: a turn asks for `ls`, whose result comes in ToolExecutionEnd alone.

    The turn's TurnEnd carries no tool_results, as some runtimes send it. Returns the loop id.
    """
    loop_id = f"{session}.cfg.0"
    answer = ev.assistant_message(
        "let me look", model="m", provider="p", tool_calls=[(TOOL_CALL, "ls", {"path": "/tmp"})]
    )
    async with RecorderClient.connect(target) as client:
        sender = client.sender()
        sender.emit(ev.agent_start(agent_id="tools", session_id=session, loop_id=loop_id))
        sender.emit(ev.turn_start(loop_id, 0))
        sender.emit(ev.message_end(loop_id, answer))
        sender.emit(ev.tool_start(loop_id, TOOL_CALL, "ls", {"path": "/tmp"}))
        sender.emit(ev.tool_end(loop_id, TOOL_CALL, "ls", TOOL_OUTPUT, is_error=True))
        sender.emit(ev.turn_end(loop_id, answer))
        sender.emit(ev.agent_end(loop_id))
        await sender.close()
    return loop_id
