"""OTLP ingest with hand-made spans: each convention, ids, order, re-export, orphans, refusals.

Spans go over the real TraceService/Export RPC (or OTLP/HTTP) into a real sidecar
on a Unix socket with a real SQLite file; the recorded sessions are read back
with GetSession and checked field by field.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import recorder_service_pb2_grpc as api_grpc
from agent_recorder.v1 import session_pb2, types_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from support.otlp import (
    as_dict,
    event_kinds,
    export,
    follow_loop,
    get_session,
    list_sessions,
    loop_by_span,
    request_of,
    sidecar,
    span,
)

from recorder_server.otlp.assembler import Assembler
from recorder_server.otlp.mapping import fit_id, span_views
from recorder_server.otlp.store import OtlpStore
from recorder_server.ui.outline import loop_outline
from recorder_server.validation import Limits

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
        span(
            TRACE,
            AGENT,
            None,
            "invoke_agent planner",
            0,
            10,
            {
                **common,
                "gen_ai.operation.name": "invoke_agent",
            },
        ),
        span(
            TRACE,
            CHAT1,
            AGENT,
            "chat gpt-x",
            1,
            3,
            {
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
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "weather?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [
                                {"type": "reasoning", "content": "need a tool"},
                                {
                                    "type": "tool_call",
                                    "id": "c1",
                                    "name": "weather",
                                    "arguments": {"city": "Oslo"},
                                },
                            ],
                        }
                    ]
                ),
            },
        ),
        span(
            TRACE,
            TOOL,
            AGENT,
            "execute_tool weather",
            3,
            4,
            {
                **common,
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "weather",
                "gen_ai.tool.call.id": "c1",
                "gen_ai.tool.call.arguments": '{"city": "Oslo"}',
                "gen_ai.tool.call.result": "rain",
            },
        ),
        span(
            TRACE,
            CHAT2,
            AGENT,
            "chat gpt-x",
            4,
            6,
            {
                **common,
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-x",
                "gen_ai.usage.input_tokens": 130,
                "gen_ai.usage.output_tokens": 8,
                "gen_ai.input.messages": json.dumps(
                    [
                        {"role": "user", "parts": [{"type": "text", "content": "weather?"}]},
                        {
                            "role": "assistant",
                            "parts": [
                                {
                                    "type": "tool_call",
                                    "id": "c1",
                                    "name": "weather",
                                    "arguments": {},
                                }
                            ],
                        },
                        {
                            "role": "tool",
                            "parts": [
                                {"type": "tool_call_response", "id": "c1", "response": "rain"}
                            ],
                        },
                    ]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "finish_reason": "stop",
                            "parts": [{"type": "text", "content": "Rain."}],
                        }
                    ]
                ),
            },
        ),
    ]


def check_genai_run(session: session_pb2.Session, session_id: str = "conv-1") -> None:
    assert (session.session_id, session.agent_id) == (session_id, "planner-v2")
    [loop] = session.loops
    assert loop.loop_id == f"{session_id}.otlp.{AGENT}"
    assert (loop.status, loop.agent_id) == (COMPLETED, "planner-v2")
    assert event_kinds(loop) == [
        "agent_start",
        "turn_start",
        "message_end",
        "message_end",
        "turn_end",
        "tool_execution_start",
        "tool_execution_end",
        "turn_start",
        "message_end",
        "turn_end",
        "agent_end",
    ]
    first, second = loop.turns
    assert as_dict(first.usage) == {
        "input": "100",
        "output": "20",
        "reasoning": "5",
        "cache_read": "40",
        "cache_write": "7",
        "total_tokens": "120",
    }
    assert [(m.role, m.extension_kind, m.content[0].text.text) for m in first.input_messages] == [
        (types_pb2.MESSAGE_ROLE_EXTENSION, "system", "be brief"),
        (types_pb2.MESSAGE_ROLE_USER, "", "weather?"),
    ]
    answer = first.output_message
    assert (answer.model, answer.provider, answer.stop_reason) == (
        "gpt-x-2025",
        "openai",
        types_pb2.STOP_REASON_TOOL_USE,
    )
    assert answer.content[0].thinking.thinking == "need a tool"
    call = answer.content[1].tool_call
    assert (call.id, call.name, as_dict(call.arguments)) == ("c1", "weather", {"city": "Oslo"})
    [result] = second.input_messages
    assert (result.role, result.tool_call_id, result.content[0].text.text) == (
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
        "c1",
        "rain",
    )
    assert second.output_message.content[0].text.text == "Rain."
    assert second.output_message.stop_reason == types_pb2.STOP_REASON_STOP
    assert second.output_message.model == "gpt-x"  # no response model: the requested one
    start = loop.events[5].event.tool_execution_start
    end = loop.events[6].event.tool_execution_end
    assert (start.tool_call_id, start.tool_name, as_dict(start.args)) == (
        "c1",
        "weather",
        {"city": "Oslo"},
    )
    assert (end.tool_call_id, end.is_error, end.result.content[0].text.text) == (
        "c1",
        False,
        "rain",
    )
    # The agent span carries no usage: the loop's is the sum of its turns.
    assert as_dict(loop.usage) == {
        "input": "230",
        "output": "28",
        "reasoning": "5",
        "cache_read": "40",
        "cache_write": "7",
        "total_tokens": "258",
    }
    assert as_dict(loop.config) == {
        "model": "gpt-x-2025",
        "provider": "openai",
        "config_id": "otlp",
    }
    assert loop.continuation_kind.WhichOneof("kind") is None
    # ...and the web view says so instead of showing the proto's default, "initial".
    assert loop_outline(loop)["kind"] == {"name": "unknown", "tag": ""}


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
        assert [(lp.loop_id, lp.status, len(lp.turns)) for lp in running.loops] == [
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
        span(
            7,
            1,
            None,
            "agent",
            0,
            9,
            {**common, "openinference.span.kind": "AGENT", "agent.name": "fixer"},
            error="gave up: budget",
        ),
        span(
            7, 2, 1, "llm", 1, 2, {**common, "openinference.span.kind": "LLM"}, error="rate limited"
        ),
        span(
            7,
            3,
            1,
            "tool",
            2,
            3,
            {**common, "openinference.span.kind": "TOOL", "tool.name": "shell"},
            error="exit 1",
        ),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        session = await get_session(server, "s-err")
    [loop] = session.loops
    assert (loop.agent_id, loop.status, loop.rejection) == ("fixer", REJECTED, "gave up: budget")
    answer = loop.turns[0].output_message
    assert (answer.stop_reason, answer.error_message) == (
        types_pb2.STOP_REASON_ERROR,
        "rate limited",
    )
    end = loop.events[-2].event.tool_execution_end
    assert (end.tool_call_id, end.tool_name, end.is_error) == (f"otlp-span-{3:016x}", "shell", True)
    assert end.result.content[0].text.text == "exit 1"


async def test_genai_1_36_names_and_no_agent_span(short_tmp: Path) -> None:
    """Older names (gen_ai.system, prompt/completion tokens, message events); no agent span:
    the trace is one loop for its root, its session the trace id, its agent service.name."""
    trace = 0x136
    spans = [
        span(trace, 1, None, "workflow", 0, 5, {}),
        span(
            trace,
            2,
            1,
            "chat claude",
            1,
            2,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-x",
                "gen_ai.usage.prompt_tokens": 11,
                "gen_ai.usage.completion_tokens": 4,
            },
            events=[
                ("gen_ai.system.message", {"content": "be kind"}),
                ("gen_ai.user.message", {"content": "hi"}),
                (
                    "gen_ai.choice",
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": json.dumps({"role": "assistant", "content": "hello"}),
                    },
                ),
            ],
        ),
        span(
            trace,
            3,
            1,
            "chat claude",
            3,
            4,
            {
                "gen_ai.operation.name": "text_completion",
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-x",
                "gen_ai.usage.prompt_tokens": 5,
                "gen_ai.usage.completion_tokens": 2,
            },
            events=[
                (
                    "gen_ai.content.completion",
                    {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "bye"}])},
                )
            ],
        ),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans, service="legacy-bot")
        session = await get_session(server, f"{trace:032x}")
    assert session.agent_id == "legacy-bot"
    [loop] = session.loops
    assert (loop.loop_id, loop.status) == (f"{trace:032x}.otlp.1", COMPLETED)
    assert as_dict(loop.metadata)["span_name"] == "workflow"
    first, second = loop.turns
    assert [(m.role, m.content[0].text.text) for m in first.input_messages] == [
        (types_pb2.MESSAGE_ROLE_EXTENSION, "be kind"),
        (types_pb2.MESSAGE_ROLE_USER, "hi"),
    ]
    assert (first.output_message.content[0].text.text, first.output_message.provider) == (
        "hello",
        "anthropic",
    )
    assert as_dict(first.usage) == {"input": "11", "output": "4", "total_tokens": "15"}
    assert second.output_message.content[0].text.text == "bye"
    assert as_dict(loop.usage) == {"input": "16", "output": "6", "total_tokens": "22"}


async def test_openinference_names(short_tmp: Path) -> None:
    trace, common = 0x01, {"session.id": "oi-session"}
    llm = {
        **common,
        "openinference.span.kind": "LLM",
        "llm.model_name": "m-1",
        "llm.provider": "acme",
        "llm.token_count.prompt": 50,
        "llm.token_count.completion": 6,
        "llm.token_count.total": 56,
        "llm.token_count.prompt_details.cache_read": 30,
        "llm.token_count.prompt_details.cache_write": 2,
        "llm.token_count.completion_details.reasoning": 1,
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "sum 2 and 3",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "t1",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "add",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"a": 2}',
    }
    spans = [
        span(
            trace,
            1,
            None,
            "Agent",
            0,
            9,
            {**common, "openinference.span.kind": "AGENT", "agent.name": "adder"},
        ),
        span(trace, 2, 1, "step", 0.5, 8, {**common, "openinference.span.kind": "CHAIN"}),
        span(trace, 3, 2, "llm", 1, 2, llm),
        span(
            trace,
            4,
            2,
            "add",
            3,
            4,
            {
                **common,
                "openinference.span.kind": "TOOL",
                "tool.name": "add",
                "tool_call.id": "t1",
                "input.value": '{"a": 2}',
                "output.value": "5",
            },
        ),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        session = await get_session(server, "oi-session")
    [loop] = session.loops
    assert (loop.loop_id, loop.agent_id, loop.status) == ("oi-session.otlp.1", "adder", COMPLETED)
    [turn] = loop.turns
    assert as_dict(turn.usage) == {
        "input": "50",
        "output": "6",
        "reasoning": "1",
        "cache_read": "30",
        "cache_write": "2",
        "total_tokens": "56",
    }
    assert turn.input_messages[0].content[0].text.text == "sum 2 and 3"
    call = turn.output_message.content[0].tool_call
    assert (call.id, call.name, as_dict(call.arguments)) == ("t1", "add", {"a": 2})
    assert (turn.output_message.model, turn.output_message.provider) == ("m-1", "acme")
    end = loop.events[-2].event.tool_execution_end
    assert (end.tool_call_id, end.tool_name, end.result.content[0].text.text) == ("t1", "add", "5")


async def test_openllmetry_names(short_tmp: Path) -> None:
    trace = 0x02
    common = {"traceloop.association.properties.session_id": "tl-1"}
    spans = [
        span(
            trace,
            1,
            None,
            "researcher.agent",
            0,
            9,
            {
                **common,
                "traceloop.span.kind": "agent",
                "traceloop.entity.name": "researcher",
            },
        ),
        span(
            trace,
            2,
            1,
            "openai.chat",
            1,
            2,
            {
                **common,
                "llm.request.type": "chat",
                "gen_ai.system": "OpenAI",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024",
                "gen_ai.usage.prompt_tokens": 9,
                "gen_ai.usage.completion_tokens": 3,
                "llm.usage.total_tokens": 12,
                "gen_ai.usage.cache_read_input_tokens": 4,
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "find it",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.finish_reason": "tool_calls",
                "gen_ai.completion.0.tool_calls.0.id": "q1",
                "gen_ai.completion.0.tool_calls.0.name": "search",
                "gen_ai.completion.0.tool_calls.0.arguments": '{"q": "it"}',
            },
        ),
        span(
            trace,
            3,
            1,
            "search.tool",
            3,
            4,
            {
                **common,
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": "search",
                "traceloop.entity.input": '{"q": "it"}',
                "traceloop.entity.output": '{"hits": 1}',
            },
        ),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        session = await get_session(server, "tl-1")
    [loop] = session.loops
    assert (loop.agent_id, loop.status, as_dict(loop.metadata)["convention"]) == (
        "researcher",
        COMPLETED,
        "openllmetry",
    )
    [turn] = loop.turns
    assert as_dict(turn.usage) == {
        "input": "9",
        "output": "3",
        "cache_read": "4",
        "total_tokens": "12",
    }
    answer = turn.output_message
    assert (answer.model, answer.provider, answer.stop_reason) == (
        "gpt-4o-2024",
        "OpenAI",
        types_pb2.STOP_REASON_TOOL_USE,
    )
    assert as_dict(answer.content[0].tool_call) == {
        "id": "q1",
        "name": "search",
        "arguments": {"q": "it"},
    }
    start = loop.events[-3].event.tool_execution_start
    end = loop.events[-2].event.tool_execution_end
    assert (start.tool_name, as_dict(start.args)) == ("search", {"q": "it"})
    assert end.result.content[0].text.text == '{"hits": 1}'


async def test_bad_spans_are_refused_and_the_rest_kept(short_tmp: Path) -> None:
    good = genai_run()
    short_id = span(TRACE, 0x99, AGENT, "broken", 1, 2, {})
    short_id.span_id = b"\x01\x02\x03"
    backwards = span(TRACE, 0x98, AGENT, "backwards", 5, 4, {})
    bad_json = span(
        TRACE,
        0x97,
        AGENT,
        "chat",
        2,
        3,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.output.messages": "[{not json",
        },
    )
    async with sidecar(short_tmp) as server:
        response = await export(server, [short_id, *good, backwards, bad_json])
        session = await get_session(server, "conv-1")
    assert response.partial_success.rejected_spans == 3
    message = response.partial_success.error_message
    assert "span 010203 ('broken'): span_id must be 8 bytes" in message
    assert f"span {0x98:016x} ('backwards'): end_time_unix_nano is before" in message
    assert (
        f"span {0x97:016x} of trace {TRACE:032x} ('chat'): gen_ai.output.messages: not JSON"
        in message
    )
    check_genai_run(session)


async def test_orphans_are_recorded_after_the_wait(short_tmp: Path) -> None:
    """Children whose agent span never comes: their loop is closed, not dropped."""
    spans = genai_run()
    async with sidecar(short_tmp, otlp_orphan_wait_s=0.2) as server:
        await export(server, spans[1:3])
        async with asyncio.timeout(20):
            await follow_loop(server, f"conv-1.otlp.{AGENT}")
        session = await get_session(server, "conv-1")
    [loop] = session.loops
    assert loop.status == REJECTED
    assert loop.rejection == (
        f"otlp: the loop's own span ({AGENT:016x}) did not arrive within 0.2 s; "
        "closed with what arrived"
    )
    assert event_kinds(loop) == [
        "agent_start",
        "turn_start",
        "message_end",
        "message_end",
        "turn_end",
        "tool_execution_start",
        "tool_execution_end",
        "agent_end",
    ]
    assert loop.ended_at.ToNanoseconds() == spans[2].end_time_unix_nano
    assert as_dict(loop.usage)["input"] == "100"


async def test_a_span_after_its_loop_ended_gets_a_loop_of_its_own(short_tmp: Path) -> None:
    spans = genai_run()
    async with sidecar(short_tmp) as server:
        await export(server, [spans[0], spans[1]])
        await export(server, [spans[3]])
        session = await get_session(server, "conv-1")
    main = loop_by_span(session, AGENT)
    [late] = [loop for loop in session.loops if loop.loop_id != main.loop_id]
    assert (main.status, len(main.turns), list(main.children_loop_ids)) == (
        COMPLETED,
        1,
        [late.loop_id],
    )
    assert late.loop_id == f"conv-1.otlp-late.{CHAT2}"
    assert (late.parent_loop_id, late.status, len(late.turns)) == (main.loop_id, COMPLETED, 1)
    assert as_dict(late.metadata)["late_for_loop_id"] == main.loop_id


async def test_nested_agents(short_tmp: Path) -> None:
    """Agent under agent: a child loop of the same session. Agent under a tool: a
    sub-agent session, derived from the parent's when it names no conversation."""
    common = {"session.id": "nest"}
    oi = "openinference.span.kind"
    spans = [
        span(5, 1, None, "boss", 0, 20, {**common, oi: "AGENT", "agent.name": "boss"}),
        span(5, 2, 1, "llm", 1, 2, {**common, oi: "LLM"}),
        span(5, 3, 1, "helper", 3, 6, {**common, oi: "AGENT", "agent.name": "helper"}),
        span(5, 4, 3, "llm", 4, 5, {**common, oi: "LLM"}),
        span(
            5,
            5,
            1,
            "delegate",
            7,
            12,
            {**common, oi: "TOOL", "tool.name": "delegate", "tool_call.id": "d1"},
        ),
        span(5, 6, 5, "worker", 8, 11, {**common, oi: "AGENT", "agent.name": "worker"}),
        span(5, 7, 6, "llm", 9, 10, {**common, oi: "LLM"}),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        nest = await get_session(server, "nest")
        sub_id = f"nest-sub-{6:016x}"
        sub = await get_session(server, sub_id)
    boss, helper = loop_by_span(nest, 1), loop_by_span(nest, 3)
    assert (helper.parent_loop_id, list(boss.children_loop_ids)) == (boss.loop_id, [helper.loop_id])
    [worker] = sub.loops
    assert (worker.agent_id, worker.parent_loop_id, worker.loop_id) == (
        "worker",
        boss.loop_id,
        f"{sub_id}.otlp.6",
    )
    assert as_dict(sub.parent_spawn_ref) == {
        "parent_session_id": "nest",
        "parent_loop_id": boss.loop_id,
        "tool_call_id": "d1",
        "tool_name": "delegate",
    }
    assert [as_dict(ref) for ref in boss.child_loop_refs] == [
        {
            "tool_call_id": "d1",
            "tool_name": "delegate",
            "child_loop_id": worker.loop_id,
            "child_session_id": sub_id,
        }
    ]


async def test_export_needs_the_token_when_the_sidecar_has_one(short_tmp: Path) -> None:
    async with sidecar(short_tmp, token="s3cret") as server:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await export(server, genai_run())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = await export(server, genai_run(), token="s3cret")
        assert not response.HasField("partial_success")
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            service = "opentelemetry.proto.collector.trace.v1.TraceService"
            check = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_events_planned_before_a_crash_are_delivered_once(short_tmp: Path) -> None:
    """The outbox after a crash: events already committed are recognised, the rest land."""
    db = short_tmp / "recorder.db"
    async with sidecar(short_tmp) as server:
        await export(server, genai_run())
        before = await get_session(server, "conv-1")
    # As if the process died after the writer committed but before the outbox was
    # cleared, and after a second export was planned but before it was sent.
    store = await OtlpStore.open(db)
    try:
        with sqlite3.connect(db) as conn:
            committed = conn.execute(
                "SELECT loop_id, sequence, body FROM events WHERE session_id = 'conv-1' "
                "ORDER BY sequence"
            ).fetchall()
            conn.executemany(
                "INSERT INTO otlp_outbox (loop_id, sequence, event, span) VALUES (?, ?, ?, '')",
                committed,
            )
        views, refused = span_views(request_of(genai_run("conv-2")).resource_spans)
        assert not refused
        # Another trace id: a second run, not a re-export of the first.
        second = [replace(v, trace_id=f"{0xDEF:032x}") for v in views]
        traces = await store.load(v.trace_id for v in second)
        await store.save(Assembler(traces, Limits(), 0).add(second))
    finally:
        await store.close()
    async with sidecar(short_tmp) as server:
        after = await get_session(server, "conv-1")
        planned = await get_session(server, "conv-2")
    assert after == before
    check_genai_run(planned, "conv-2")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM otlp_outbox").fetchone() == (0,)


async def test_a_child_ending_with_its_agent_span_is_still_its_child(short_tmp: Path) -> None:
    spans = [
        span(9, 1, None, "agent", 0, 5, {"gen_ai.operation.name": "invoke_agent"}),
        span(9, 2, 1, "chat", 1, 5, {"gen_ai.operation.name": "chat"}),
        span(9, 3, 1, "tool", 0, 5, {"gen_ai.operation.name": "execute_tool"}),
    ]
    async with sidecar(short_tmp) as server:
        await export(server, spans)
        session = await get_session(server, f"{9:032x}")
    [loop] = session.loops
    assert event_kinds(loop) == [
        "agent_start",
        "turn_start",
        "turn_end",
        "tool_execution_start",
        "tool_execution_end",
        "agent_end",
    ]


async def test_events_the_recorder_refuses_are_named_in_the_answer(short_tmp: Path) -> None:
    """A client flushed the session (its loop ABORTED) before the rest of the spans came."""
    spans = genai_run()
    async with sidecar(short_tmp) as server:
        await export(server, [spans[1]])
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = api_grpc.RecorderServiceStub(channel)
            await stub.Flush(api.FlushRequest(session_id="conv-1"))
        response = await export(server, [spans[2]])
        session = await get_session(server, "conv-1")
    loop_id = f"conv-1.otlp.{AGENT}"
    tool = f"{TRACE:032x}/{TOOL:016x}"
    assert response.partial_success.rejected_spans == 1
    message = response.partial_success.error_message
    assert message.startswith(
        f"span {tool}: the recorder refused tool_execution_start #5 of loop {loop_id}: "
    )
    assert f"span {tool}: the recorder refused tool_execution_end #6 of loop {loop_id}: " in message
    [loop] = session.loops
    assert (loop.status, len(loop.turns)) == (session_pb2.LOOP_STATUS_ABORTED, 1)


OTLP_TABLES = ("otlp_spans", "otlp_keys", "otlp_loops", "otlp_outbox")


def otlp_rows(db: Path, session_id: str) -> dict[str, int]:
    """Rows OTLP ingest keeps for a session's loops, by table (its loop ids start with it)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {
            table: conn.execute(
                f"SELECT COUNT(*) FROM {table} WHERE loop_id LIKE ?", (f"{session_id}.%",)
            ).fetchone()[0]
            for table in OTLP_TABLES
        }


async def test_deleting_or_pruning_a_session_removes_its_otlp_state_and_no_other(
    short_tmp: Path,
) -> None:
    db = short_tmp / "recorder.db"
    other = genai_run("conv-2")
    for s in other:
        s.trace_id = (TRACE + 1).to_bytes(16, "big")
    async with sidecar(short_tmp) as server, grpc.aio.insecure_channel(server.address) as channel:
        stub = api_grpc.RecorderServiceStub(channel)
        await export(server, genai_run()[1:3])  # conv-1 still assembling: its loop open
        await export(server, other)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(  # as if an event of conv-1 were still waiting to be delivered
                "INSERT INTO otlp_outbox (loop_id, sequence, event, span) VALUES (?, 99, x'', '')",
                (f"conv-1.otlp.{AGENT}",),
            )
        assert otlp_rows(db, "conv-1") == {
            "otlp_spans": 2,
            "otlp_keys": 1,
            "otlp_loops": 1,
            "otlp_outbox": 1,
        }
        kept = otlp_rows(db, "conv-2")
        assert kept["otlp_spans"] == 4 and kept["otlp_loops"] == 1

        await stub.DeleteSession(api.DeleteSessionRequest(session_id="conv-1"))
        assert otlp_rows(db, "conv-1") == dict.fromkeys(OTLP_TABLES, 0)
        assert otlp_rows(db, "conv-2") == kept
        # Exported again after the delete, the run is recorded afresh, whole.
        await export(server, genai_run())
        check_genai_run(await get_session(server, "conv-1"))

        await stub.Checkpoint(api.CheckpointRequest(session_id="conv-2"))
        older_than = api.PruneSessionsRequest(older_than=Timestamp(seconds=2**35))
        pruned = await stub.PruneSessions(older_than)
        assert "conv-2" in pruned.session_ids
        assert otlp_rows(db, "conv-2") == dict.fromkeys(OTLP_TABLES, 0)
        assert otlp_rows(db, "conv-1")["otlp_spans"] == 4


async def test_an_ended_loop_s_state_keeps_no_copy_of_its_messages(short_tmp: Path) -> None:
    """A loop's messages are kept in its ingest state only while it assembles."""
    db = short_tmp / "recorder.db"

    def kept_bytes() -> int:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            [(size,)] = conn.execute("SELECT length(messages) FROM otlp_loops").fetchall()
        return int(size)

    async with sidecar(short_tmp) as server:
        await export(server, genai_run()[1:3])
        assert kept_bytes() > 0
        await export(server, genai_run())
        assert kept_bytes() == 0
        session = await get_session(server, "conv-1")
    check_genai_run(session)
    [loop] = session.loops
    assert [m.role for m in loop.messages] == [
        types_pb2.MESSAGE_ROLE_USER,
        types_pb2.MESSAGE_ROLE_ASSISTANT,
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
        types_pb2.MESSAGE_ROLE_ASSISTANT,
    ]
