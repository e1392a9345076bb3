"""OTLP ingest with hand-made spans: each convention, ids, order, re-export, orphans, refusals.

Spans go over the real TraceService/Export RPC (or OTLP/HTTP) into a real sidecar
on a Unix socket with a real SQLite file; the recorded sessions are read back
with GetSession and checked field by field.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import session_pb2, types_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from support.otlp import (
    as_dict,
    event_kinds,
    export,
    get_session,
    list_sessions,
    loop_by_span,
    sidecar,
    span,
)

from recorder_server.otlp.mapping import fit_id

COMPLETED = session_pb2.LOOP_STATUS_COMPLETED
RUNNING = session_pb2.LOOP_STATUS_RUNNING
REJECTED = session_pb2.LOOP_STATUS_REJECTED
TRACE = 0xABC
AGENT, CHAT1, TOOL, CHAT2 = 0x11, 0x12, 0x13, 0x14


def genai_run(conversation: str = "conv-1") -> list[trace_pb2.Span]:
    """An agent (latest GenAI names): a model call asking for a tool, the tool, a final answer."""
    common = {
        "gen_ai.conversation.id": conversation,
        "gen_ai.agent.name": "planner",
        "gen_ai.agent.id": "planner-v2",  # the id wins over the name
    }
    return [
        span(TRACE, AGENT, None, "invoke_agent planner", 0, 10, {
            **common, "gen_ai.operation.name": "invoke_agent",
        }),
        span(TRACE, CHAT1, AGENT, "chat gpt-x", 1, 3, {
            **common,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.response.model": "gpt-x-2025",
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.output_tokens": 20,
            "gen_ai.usage.cache_read.input_tokens": 40,
            "gen_ai.usage.cache_creation.input_tokens": 7,
            "gen_ai.usage.reasoning.output_tokens": 5,
            "gen_ai.response.finish_reasons": ["tool_calls"],
            "gen_ai.input.messages": json.dumps([
                {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
                {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
            ]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"type": "reasoning", "content": "need a tool"},
                {"type": "tool_call", "id": "c1", "name": "weather", "arguments": {"city": "Oslo"}},
            ]}]),
        }),
        span(TRACE, TOOL, AGENT, "execute_tool weather", 3, 4, {
            **common,
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": "weather",
            "gen_ai.tool.call.id": "c1",
            "gen_ai.tool.call.arguments": '{"city": "Oslo"}',
            "gen_ai.tool.call.result": "rain",
        }),
        span(TRACE, CHAT2, AGENT, "chat gpt-x", 4, 6, {
            **common,
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-x",
            "gen_ai.usage.input_tokens": 130,
            "gen_ai.usage.output_tokens": 8,
            "gen_ai.input.messages": json.dumps([
                {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
                {"role": "assistant", "parts": [
                    {"type": "tool_call", "id": "c1", "name": "weather", "arguments": {}}]},
                {"role": "tool", "parts": [
                    {"type": "tool_call_response", "id": "c1", "response": "rain"}]},
            ]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "finish_reason": "stop",
                                                  "parts": [{"type": "text", "content": "Rain."}]}]),
        }),
    ]


def check_genai_run(session: session_pb2.Session, session_id: str = "conv-1") -> None:
    assert (session.session_id, session.agent_id) == (session_id, "planner-v2")
    [loop] = session.loops
    assert loop.loop_id == f"{session_id}.otlp.{AGENT}"
    assert (loop.status, loop.agent_id) == (COMPLETED, "planner-v2")
    assert event_kinds(loop) == [
        "agent_start",
        "turn_start", "message_end", "message_end", "turn_end",
        "tool_execution_start", "tool_execution_end",
        "turn_start", "message_end", "turn_end",
        "agent_end",
    ]
    first, second = loop.turns
    assert as_dict(first.usage) == {
        "input": "100", "output": "20", "reasoning": "5", "cache_read": "40", "cache_write": "7",
        "total_tokens": "120",
    }
    assert [(m.role, m.extension_kind) for m in first.input_messages] == [
        (types_pb2.MESSAGE_ROLE_EXTENSION, "system"), (types_pb2.MESSAGE_ROLE_USER, ""),
    ]
    answer = first.output_message
    assert (answer.model, answer.provider, answer.stop_reason) == (
        "gpt-x-2025", "openai", types_pb2.STOP_REASON_TOOL_USE
    )
    assert answer.content[0].thinking.thinking == "need a tool"
    call = answer.content[1].tool_call
    assert (call.id, call.name, as_dict(call.arguments)) == ("c1", "weather", {"city": "Oslo"})
    [result] = second.input_messages
    assert (result.role, result.tool_call_id, result.content[0].text.text) == (
        types_pb2.MESSAGE_ROLE_TOOL_RESULT, "c1", "rain"
    )
    assert second.output_message.content[0].text.text == "Rain."
    assert second.output_message.stop_reason == types_pb2.STOP_REASON_STOP
    assert second.output_message.model == "gpt-x"  # no response model: the requested one
    start = loop.events[5].event.tool_execution_start
    end = loop.events[6].event.tool_execution_end
    assert (start.tool_call_id, start.tool_name, as_dict(start.args)) == (
        "c1", "weather", {"city": "Oslo"}
    )
    assert (end.tool_call_id, end.is_error, end.result.content[0].text.text) == ("c1", False, "rain")
    # The agent span carries no usage: the loop's is the sum of its turns.
    assert as_dict(loop.usage) == {
        "input": "230", "output": "28", "reasoning": "5", "cache_read": "40", "cache_write": "7",
        "total_tokens": "258",
    }
    assert as_dict(loop.config) == {"model": "gpt-x-2025", "provider": "openai", "config_id": "otlp"}
    assert loop.continuation_kind.WhichOneof("kind") is None


async def test_genai_latest_names(short_tmp: Path) -> None:
    async with sidecar(short_tmp) as server:
        response = await export(server, genai_run())
        assert not response.HasField("partial_success")
        session = await get_session(server, "conv-1")
    check_genai_run(session)
    assert as_dict(session.loops[0].metadata) == {
        "source": "otlp",
        "convention": "genai",
        "trace_id": f"{TRACE:032x}",
        "span_id": f"{AGENT:016x}",
        "span_name": "invoke_agent planner",
        "opened_by_span_id": f"{CHAT1:016x}",
        "scope": {"name": "hand.made", "version": "1.0"},
        "service_name": "hand-made",
        "original_ids": {},
    }


async def test_spans_in_any_order_and_separate_exports(short_tmp: Path) -> None:
    """Children first, one export each: RUNNING from the first, COMPLETED with its own span."""
    spans = genai_run()
    async with sidecar(short_tmp) as server:
        await export(server, [spans[1]])
        running = await get_session(server, "conv-1")
        assert [(l.loop_id, l.status, len(l.turns)) for l in running.loops] == [
            (f"conv-1.otlp.{AGENT}", RUNNING, 1)
        ]
        await export(server, [spans[2]])
        await export(server, [spans[3]])
        assert (await get_session(server, "conv-1")).loops[0].status == RUNNING
        await export(server, [spans[0]])
        session = await get_session(server, "conv-1")
    check_genai_run(session)


async def test_one_export_in_reverse_order(short_tmp: Path) -> None:
    async with sidecar(short_tmp) as server:
        await export(server, list(reversed(genai_run())))
        check_genai_run(await get_session(server, "conv-1"))


async def test_re_exported_spans_change_nothing(short_tmp: Path) -> None:
    async with sidecar(short_tmp) as server:
        await export(server, genai_run()[1:3])
        await export(server, genai_run())
        response = await export(server, genai_run())
        assert not response.HasField("partial_success")
        session = await get_session(server, "conv-1")
        assert len(await list_sessions(server)) == 1
    check_genai_run(session)


async def test_restart_between_exports_loses_nothing(short_tmp: Path) -> None:
    spans = genai_run()
    async with sidecar(short_tmp) as server:
        await export(server, spans[1:3])
    async with sidecar(short_tmp) as server:
        await export(server, [spans[1], spans[3], spans[0]])
        check_genai_run(await get_session(server, "conv-1"))


async def test_ids_that_do_not_fit_are_mapped_and_kept(short_tmp: Path) -> None:
    raw = "tenant.42.conv/7"
    mapped = fit_id(raw, 256, dots=False)
    assert "." not in mapped and mapped.startswith("tenant_42_conv/7-")
    async with sidecar(short_tmp) as server:
        await export(server, genai_run(raw))
        session = await get_session(server, mapped)
        assert [s.session_id for s in await list_sessions(server)] == [mapped]
    check_genai_run(session, mapped)
    assert as_dict(session.loops[0].metadata)["original_ids"] == {"session_id": raw}


async def test_error_statuses(short_tmp: Path) -> None:
    """ERROR on a tool: is_error; on a model call: an error answer; on the agent: not COMPLETED."""
    common = {"session.id": "s-err"}
    spans = [
        span(7, 1, None, "agent", 0, 9, {**common, "openinference.span.kind": "AGENT",
                                         "agent.name": "fixer"}, error="gave up: budget"),
        span(7, 2, 1, "llm", 1, 2, {**common, "openinference.span.kind": "LLM"},
             error="rate limited"),
        span(7, 3, 1, "tool", 2, 3, {**common, "openinference.span.kind": "TOOL",
                                     "tool.name": "shell"}, error="exit 1"),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        session = await get_session(server, "s-err")
    [loop] = session.loops
    assert (loop.agent_id, loop.status, loop.rejection) == ("fixer", REJECTED, "gave up: budget")
    answer = loop.turns[0].output_message
    assert (answer.stop_reason, answer.error_message) == (types_pb2.STOP_REASON_ERROR, "rate limited")
    end = loop.events[-2].event.tool_execution_end
    assert (end.tool_call_id, end.tool_name, end.is_error) == (
        f"otlp-span-{3:016x}", "shell", True
    )
    assert end.result.content[0].text.text == "exit 1"
