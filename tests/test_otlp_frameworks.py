"""Real instrumented agent frameworks recorded through the real OTel SDK and exporter.

pydantic-ai (GenAI semantic conventions, instrument=True) with its TestModel, a
tool and a delegated sub-agent; smolagents with OpenInference's instrumentor, a
model whose HTTP client is replaced by a local fake (no network) and a tool. Each
exports over OTLP/gRPC into a real sidecar, all at once (batch processor) and
span by span (simple processor); the recorded tree is checked field by field.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from agent_recorder.v1 import session_pb2, types_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from pydantic_ai import Agent, RunContext
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel
from support.events import texts
from support.otlp import (
    as_dict,
    event_kinds,
    get_session,
    grpc_exporter,
    list_sessions,
    loop_id_for,
    named,
    one,
    run_instrumented,
    sidecar,
    span_hex,
    trace_hex,
)

COMPLETED = session_pb2.LOOP_STATUS_COMPLETED
MODES = pytest.mark.parametrize("batch", [True, False], ids=["batch", "span-by-span"])


def run_pydantic_ai(provider: TracerProvider) -> str:
    settings = InstrumentationSettings(tracer_provider=provider, include_content=True)
    helper = Agent(TestModel(custom_output_text="helped"), name="helper")
    main = Agent(TestModel(), name="main")
    helper.instrument = settings
    main.instrument = settings

    @main.tool
    async def delegate(ctx: RunContext[Any], question: str) -> str:
        result = await helper.run(question, usage=ctx.usage)
        return result.output

    return main.run_sync("hello").output


def scope_version(span: ReadableSpan) -> str | None:
    assert span.instrumentation_scope is not None
    return span.instrumentation_scope.version


@MODES
async def test_pydantic_ai_agent_with_tool_and_sub_agent(short_tmp: Path, batch: bool) -> None:
    async with sidecar(short_tmp) as server:
        output, spans = await run_instrumented(
            run_pydantic_ai, grpc_exporter(server), "pai-app", batch=batch
        )
        assert output == '{"delegate":"helped"}'
        sessions = await list_sessions(server)
        main_span, helper_span = one(spans, "invoke_agent main"), one(spans, "invoke_agent helper")
        main_sid = str(main_span.attributes["gen_ai.conversation.id"])  # type: ignore[index]
        helper_sid = str(helper_span.attributes["gen_ai.conversation.id"])  # type: ignore[index]
        assert {(s.session_id, s.agent_id) for s in sessions} == {
            (main_sid, "main"),
            (helper_sid, "helper"),
        }
        main = await get_session(server, main_sid)
        helper = await get_session(server, helper_sid)

    main_loop_id, helper_loop_id = (
        loop_id_for(main_sid, main_span),
        loop_id_for(helper_sid, helper_span),
    )
    assert [loop.loop_id for loop in main.loops] == [main_loop_id]
    loop = main.loops[0]
    assert (loop.agent_id, loop.status) == ("main", COMPLETED)
    assert loop.continuation_kind.WhichOneof("kind") is None
    assert not loop.HasField("parent_loop_id")
    assert as_dict(loop.config) == {"model": "test", "provider": "test", "config_id": "otlp"}
    assert as_dict(loop.usage) == {"input": "103", "output": "14", "total_tokens": "117"}
    # All at once, the agent span is there when the loop opens and names it; span
    # by span the loop opens from its first model call, before the agent span came.
    assert as_dict(loop.metadata) == {
        "source": "otlp",
        "convention": "genai",
        "trace_id": trace_hex(main_span),
        "span_id": span_hex(main_span),
        **({"span_name": "invoke_agent main"} if batch else {}),
        "opened_by_span_id": as_dict(loop.metadata)["opened_by_span_id"],
        "scope": {"name": "pydantic-ai", "version": scope_version(main_span)},
        "service_name": "pai-app",
        "original_ids": {},
    }
    # The loop opened with its first span to arrive: its first model call.
    first_chat = named(spans, "chat test")[0]
    assert (
        first_chat.attributes is not None and first_chat.attributes["gen_ai.agent.name"] == "main"
    )
    assert as_dict(loop.metadata)["opened_by_span_id"] == span_hex(first_chat)
    assert event_kinds(loop) == [
        "agent_start",
        "turn_start",
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
    assert (first.turn_id.turn_index, second.turn_id.turn_index) == (0, 1)
    assert as_dict(first.usage) == {"input": "51", "output": "5", "total_tokens": "56"}
    assert [(m.role, texts(m)) for m in first.input_messages] == [
        (types_pb2.MESSAGE_ROLE_USER, ["hello"])
    ]
    call = first.output_message.content[0].tool_call
    assert (call.id, call.name, as_dict(call.arguments)) == (
        "pyd_ai_tool_call_id__delegate",
        "delegate",
        {"question": "a"},
    )
    assert (first.output_message.model, first.output_message.provider) == ("test", "test")
    assert as_dict(second.usage) == {"input": "52", "output": "9", "total_tokens": "61"}
    [result] = second.input_messages
    assert (result.role, result.tool_call_id, result.tool_name, texts(result)) == (
        types_pb2.MESSAGE_ROLE_TOOL_RESULT,
        "pyd_ai_tool_call_id__delegate",
        "delegate",
        ["helped"],
    )
    assert texts(second.output_message) == ['{"delegate":"helped"}']
    assert texts(loop.messages[-1]) == ['{"delegate":"helped"}']
    tool_start = loop.events[4].event.tool_execution_start
    tool_end = loop.events[5].event.tool_execution_end
    assert (tool_start.tool_call_id, tool_start.tool_name, as_dict(tool_start.args)) == (
        "pyd_ai_tool_call_id__delegate",
        "delegate",
        {"question": "a"},
    )
    assert (tool_end.tool_call_id, tool_end.is_error, tool_end.child_loop_id) == (
        "pyd_ai_tool_call_id__delegate",
        False,
        helper_loop_id,
    )
    assert [b.text.text for b in tool_end.result.content] == ["helped"]
    assert [as_dict(ref) for ref in loop.child_loop_refs] == [
        {
            "tool_call_id": "pyd_ai_tool_call_id__delegate",
            "tool_name": "delegate",
            "child_loop_id": helper_loop_id,
            "child_session_id": helper_sid,
        }
    ]

    assert as_dict(helper.parent_spawn_ref) == {
        "parent_session_id": main_sid,
        "parent_loop_id": main_loop_id,
        "tool_call_id": "pyd_ai_tool_call_id__delegate",
        "tool_name": "delegate",
    }
    [sub] = helper.loops
    assert (sub.loop_id, sub.agent_id, sub.status) == (helper_loop_id, "helper", COMPLETED)
    # All at once, the helper's agent span is known when its loop opens, and names
    # its parent; span by span its loop opened from its model call, before that.
    assert sub.HasField("parent_loop_id") == batch
    if batch:
        assert sub.parent_loop_id == main_loop_id
    assert event_kinds(sub) == ["agent_start", "turn_start", "message_end", "turn_end", "agent_end"]
    assert as_dict(sub.usage) == {"input": "51", "output": "1", "total_tokens": "52"}
    assert [texts(m) for m in sub.turns[0].input_messages] == [["a"]]
    assert texts(sub.turns[0].output_message) == ["helped"]


class FakeInferenceClient:
    """Stands in for huggingface_hub's InferenceClient: answers without a network."""

    def __init__(self) -> None:
        self.calls = 0

    def chat_completion(self, **_: Any) -> Any:
        from smolagents.models import ChatMessageToolCall, ChatMessageToolCallFunction

        self.calls += 1
        name, args = (
            ("add", {"a": 2, "b": 3}) if self.calls == 1 else ("final_answer", {"answer": "5"})
        )
        call = ChatMessageToolCall(
            id=f"call_{self.calls}",
            type="function",
            function=ChatMessageToolCallFunction(name=name, arguments=args),
        )
        message = SimpleNamespace(role="assistant", content="", tool_calls=[call])
        usage = SimpleNamespace(prompt_tokens=10 * self.calls, completion_tokens=3)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)], usage=usage)


def run_smolagents(provider: TracerProvider) -> Any:
    from openinference.instrumentation.smolagents import SmolagentsInstrumentor
    from smolagents import InferenceClientModel, ToolCallingAgent, tool

    @tool  # type: ignore[untyped-decorator]  # smolagents has no type hints
    def add(a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: the first number
            b: the second number
        """
        return a + b

    instrumentor = SmolagentsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        model = InferenceClientModel(model_id="fake-model", token="unused")
        model.client = FakeInferenceClient()
        agent = ToolCallingAgent(
            tools=[add], model=model, name="calc", max_steps=3, verbosity_level=0
        )
        return agent.run("2+3?")
    finally:
        instrumentor.uninstrument()


@MODES
async def test_smolagents_with_openinference(short_tmp: Path, batch: bool) -> None:
    async with sidecar(short_tmp) as server:
        output, spans = await run_instrumented(
            run_smolagents, grpc_exporter(server), "smol-app", batch=batch
        )
        assert output == "5"
        agent_span = one(spans, "calc.run")
        session_id = trace_hex(agent_span)  # no session.id: the trace is the session
        assert [(s.session_id, s.agent_id) for s in await list_sessions(server)] == [
            (session_id, "smol-app")
        ]
        session = await get_session(server, session_id)
    # Span by span, the first model call arrives under "Step 1", a CHAIN span not
    # seen yet: the loop opens for that span, then passes up to the agent span,
    # and "Step 2"'s spans join it (same trace, session and agent).
    key = agent_span if batch else one(spans, "Step 1")
    [loop] = session.loops
    assert loop.loop_id == loop_id_for(session_id, key)
    assert (loop.agent_id, loop.status) == ("smol-app", COMPLETED)
    metadata = as_dict(loop.metadata)
    assert (metadata["convention"], metadata["span_id"], metadata["scope"]["name"]) == (
        "openinference",
        span_hex(key),
        "openinference.instrumentation.smolagents",
    )
    assert metadata.get("span_name") == ("calc.run" if batch else None)
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
        "message_end",
        "turn_end",
        "tool_execution_start",
        "tool_execution_end",
        "agent_end",
    ]
    assert as_dict(loop.config) == {"model": "fake-model", "config_id": "otlp"}
    # The agent span carries its own token counts (llm.token_count.*): they are the loop's.
    assert as_dict(loop.usage) == {"input": "30", "output": "6", "total_tokens": "36"}
    first, second = loop.turns
    assert as_dict(first.usage) == {"input": "10", "output": "3", "total_tokens": "13"}
    assert as_dict(second.usage) == {"input": "20", "output": "3", "total_tokens": "23"}
    assert [m.role for m in first.input_messages] == [
        types_pb2.MESSAGE_ROLE_EXTENSION,
        types_pb2.MESSAGE_ROLE_USER,
    ]
    assert first.input_messages[0].extension_kind == "system"
    assert texts(first.input_messages[1]) == ["New task:\n2+3?"]
    call = first.output_message.content[-1].tool_call
    assert (call.id, call.name) == ("call_1", "add")
    assert second.output_message.content[-1].tool_call.name == "final_answer"
    # What came after the model's last answer: smolagents' own roles, kept as said.
    assert [(m.role, m.extension_kind, texts(m)) for m in second.input_messages] == [
        (types_pb2.MESSAGE_ROLE_EXTENSION, "tool-call", [texts(second.input_messages[0])[0]]),
        (types_pb2.MESSAGE_ROLE_TOOL_RESULT, "", ["Observation:\n5"]),
    ]
    starts = [
        e.event.tool_execution_start
        for e in loop.events
        if e.event.HasField("tool_execution_start")
    ]
    ends = [
        e.event.tool_execution_end for e in loop.events if e.event.HasField("tool_execution_end")
    ]
    assert [(s.tool_name, as_dict(s.args)["kwargs"]) for s in starts] == [
        ("add", {"a": 2, "b": 3}),
        ("final_answer", {"answer": "5"}),
    ]
    assert [(e.tool_name, [b.text.text for b in e.result.content], e.is_error) for e in ends] == [
        ("add", ["5"], False),
        ("final_answer", ["5"], False),
    ]
