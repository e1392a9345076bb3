"""The pure OTLP mapping: what a span is, and the ids it maps to."""

from __future__ import annotations

import pytest

from recorder_server.otlp.mapping import Role, fit_id, loop_id_of, role_of


@pytest.mark.parametrize(
    ("attributes", "role"),
    [
        ({"gen_ai.operation.name": "invoke_agent"}, Role.AGENT),
        ({"gen_ai.operation.name": "chat"}, Role.MODEL),
        ({"gen_ai.operation.name": "text_completion"}, Role.MODEL),
        ({"gen_ai.operation.name": "generate_content"}, Role.MODEL),
        ({"gen_ai.operation.name": "execute_tool"}, Role.TOOL),
        ({"gen_ai.operation.name": "embeddings"}, Role.OTHER),
        ({"openinference.span.kind": "AGENT"}, Role.AGENT),
        ({"openinference.span.kind": "LLM"}, Role.MODEL),
        ({"openinference.span.kind": "TOOL"}, Role.TOOL),
        ({"openinference.span.kind": "CHAIN"}, Role.OTHER),
        ({"traceloop.span.kind": "agent"}, Role.AGENT),
        ({"traceloop.span.kind": "tool"}, Role.TOOL),
        ({"traceloop.span.kind": "workflow"}, Role.OTHER),
        ({"llm.request.type": "chat"}, Role.MODEL),
        ({"llm.request.type": "embedding"}, Role.OTHER),
        ({}, Role.OTHER),
    ],
)
def test_roles(attributes: dict[str, str], role: Role) -> None:
    assert role_of(attributes) == role


def test_ids_that_fit_are_kept() -> None:
    assert fit_id("conv-1", 256, dots=False) == "conv-1"
    assert fit_id("agent.v2", 256, dots=True) == "agent.v2"
    assert loop_id_of("conv-1", "00000000000000ff") == "conv-1.otlp.255"
    assert loop_id_of("conv-1", "00000000000000ff", late=True) == "conv-1.otlp-late.255"


def test_ids_that_do_not_fit_map_deterministically_and_apart() -> None:
    dotted, underscored = fit_id("a.b", 256, dots=False), fit_id("a_b", 256, dots=False)
    assert dotted == fit_id("a.b", 256, dots=False)
    assert dotted != underscored == "a_b"
    assert dotted.startswith("a_b-") and len(dotted) == len("a_b-") + 16
    long = fit_id("x" * 300, 256, dots=False)
    # Room is left for ".otlp-late." and a 64-bit number within the limit.
    assert len(long) + len(".otlp-late.18446744073709551615") <= 256
    assert fit_id("bad\x00id", 256, dots=True).startswith("bad_id-")
    assert fit_id("", 256, dots=True) != ""
