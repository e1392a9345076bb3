"""The client's side of "lose nothing, crash nothing", against a real sidecar.

Refused events are counted and named by the next flush; the sender's own bad
events are refused at emit before they are numbered; a loop is numbered on after
its AgentEnd and continued where the server says it stands; an unreachable
sidecar is named as such, and leaving `async with` then warns once and returns.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import pytest
from agent_recorder.v1 import session_pb2
from agent_recorder.v1.recorder_service_pb2 import EventEnvelope
from support.events import agent_end, agent_start, progress, tool_start, turn_start
from support.recorder import RunningRecorder

from recorder_client import (
    DeliveryConfig,
    DeliveryError,
    EventsRefused,
    RecorderClient,
    SidecarUnreachable,
    SyncRecorder,
)
from recorder_client.checks import EventLimits
from recorder_server.server import RecorderServer, ServerConfig
from recorder_server.validation import Limits

pytestmark = pytest.mark.timeout(60)

FAST = DeliveryConfig(linger=0.001, initial_backoff=0.02, max_backoff=0.2)
# Gives up quickly when nothing answers.
IMPATIENT = DeliveryConfig(
    linger=0.001, initial_backoff=0.02, max_backoff=0.1, reconnect_deadline=0.5, exit_grace=0.5
)


def sequences(record: session_pb2.LoopRecord) -> list[tuple[int, str | None]]:
    return [(e.sequence, e.event.WhichOneof("event")) for e in record.events]


async def test_emit_refuses_a_bad_event_before_numbering_it(recorder: RunningRecorder) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=FAST)
        sender.emit(agent_start("e1", "e1.c.0"))
        bad = tool_start("e1.c.0", "call-1", "calc", {"x": 0})
        bad.tool_execution_start.args.struct_value.fields["x"].number_value = math.nan
        with pytest.raises(ValueError, match=r"event\.tool_execution_start\.args: contains nan"):
            sender.emit(bad)
        with pytest.raises(ValueError, match=r"event\.turn_start\.loop_id: must not be empty"):
            await sender.emit_wait(turn_start("", 0))
        sender.emit(turn_start("e1.c.0", 0))
        sender.emit(agent_end("e1.c.0"))
        await sender.flush(10)
        stats = sender.stats()
        assert (stats.emitted, stats.acknowledged, stats.refused, stats.pending) == (3, 3, 0, 0)
        loop = await client.get_loop("e1.c.0")
    assert sequences(loop) == [(0, "agent_start"), (1, "turn_start"), (2, "agent_end")]
    assert loop.status == session_pb2.LOOP_STATUS_COMPLETED


async def test_the_sync_facade_refuses_a_bad_event_at_emit(recorder: RunningRecorder) -> None:
    """The facade blocks, so it runs in a worker thread while this loop serves."""

    def agent() -> int:
        with SyncRecorder(recorder.target, config=FAST) as recording:
            recording.emit(agent_start("e2", "e2.c.0"))
            with pytest.raises(ValueError, match=r"event\.progress_message\.loop_id"):
                recording.emit(progress("e2\x00", "c", "t", "x"))
            recording.emit(agent_end("e2.c.0"))
            recording.flush(10)
            return recording.stats().acknowledged

    assert await asyncio.to_thread(agent) == 2


async def test_a_loop_is_continued_by_a_second_sender_where_the_server_says(
    recorder: RunningRecorder,
) -> None:
    """An agent that restarted goes on with its open loop; nothing is refused as a re-send."""
    async with RecorderClient.connect(recorder.target) as first:
        sender = first.sender(config=FAST)
        sender.emit(agent_start("k1", "k1.c.0"))
        for i in range(3):
            sender.emit(turn_start("k1.c.0", i))
    async with RecorderClient.connect(recorder.target) as second:
        sender = second.sender(config=FAST)
        sender.emit(turn_start("k1.c.0", 3))
        sender.emit(agent_end("k1.c.0"))
        await sender.flush(10)
        assert second.target == recorder.target
        assert await second.next_sequence("k1.c.0") == 6
        assert await second.next_sequence("k1.absent.0") == 0
        loop = await second.get_loop("k1.c.0")
    assert [s for s, _ in sequences(loop)] == list(range(6))
    assert [e.event.turn_start.turn_index for e in loop.events[1:5]] == [0, 1, 2, 3]
    assert loop.status == session_pb2.LOOP_STATUS_COMPLETED


async def test_wait_ready_names_an_unreachable_sidecar(recorder: RunningRecorder) -> None:
    target = recorder.target
    await recorder.stop()
    async with RecorderClient.connect(target) as client:
        sender = client.sender(config=FAST)
        with pytest.raises(SidecarUnreachable) as caught:
            await sender.wait_ready(1.0)
    assert str(caught.value) == (
        f"sidecar at {target} unreachable: no socket at that path (no Record stream within 1 s)"
    )


async def test_flush_names_the_cause_when_the_sidecar_is_unreachable(
    recorder: RunningRecorder,
) -> None:
    target = recorder.target
    await recorder.stop()
    async with RecorderClient.connect(target) as client:
        sender = client.sender(config=FAST)
        sender.emit(agent_start("u1", "u1.c.0"))
        with pytest.raises(DeliveryError) as caught:
            await sender.flush(0.5)
        assert caught.value.unacknowledged == 1
        assert str(caught.value) == (
            f"1 event(s) still unacknowledged at the deadline:"
            f" sidecar at {target} unreachable: no socket at that path"
        )
        await recorder.start()  # nothing was given up: it arrives once the sidecar is back
        await sender.flush(15)
        assert sequences(await client.get_loop("u1.c.0")) == [(0, "agent_start")]


async def test_leaving_async_with_while_unreachable_warns_once_and_returns(
    recorder: RunningRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    target = recorder.target
    await recorder.stop()
    with caplog.at_level(logging.WARNING, logger="recorder_client"):
        async with RecorderClient.connect(target) as client:
            sender = client.sender(config=IMPATIENT)
            sender.emit(agent_start("w1", "w1.c.0"))
            sender.emit(turn_start("w1.c.0", 0))
    warnings = [r.getMessage() for r in caplog.records if r.name == "recorder_client"]
    assert warnings == [
        f"agent-recorder: not every event was stored: 2 event(s) given up undelivered:"
        f" sidecar at {target} unreachable: no socket at that path"
    ]
    stats = sender.stats()
    assert (stats.emitted, stats.failed, stats.pending) == (2, 2, 0)


async def test_explicit_close_while_unreachable_raises_naming_the_cause(
    recorder: RunningRecorder,
) -> None:
    target = recorder.target
    await recorder.stop()
    client = RecorderClient.connect(target)
    sender = client.sender(config=IMPATIENT)
    sender.emit(agent_start("w2", "w2.c.0"))
    with pytest.raises(DeliveryError, match="unreachable: no socket at that path") as caught:
        await client.close()
    assert caught.value.failed == 1


async def test_leaving_the_sync_facade_while_unreachable_warns_once(
    recorder: RunningRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    target = recorder.target
    await recorder.stop()

    def agent() -> None:
        with SyncRecorder(target, config=IMPATIENT) as recording:
            recording.emit(agent_start("w3", "w3.c.0"))

    with caplog.at_level(logging.WARNING, logger="recorder_client"):
        await asyncio.to_thread(agent)
    warnings = [r.getMessage() for r in caplog.records if r.name == "recorder_client"]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        f"1 event(s) given up undelivered: sidecar at {target} unreachable: no socket at that path"
    )


async def test_a_sender_idle_for_long_still_delivers_what_it_emits_just_before_closing(
    recorder: RunningRecorder,
) -> None:
    """The grace without a connection counts from the close, not from the sender's birth."""
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=IMPATIENT)
        await asyncio.sleep(1.0)  # idle, never connected, longer than exit_grace
        sender.emit(agent_start("g1", "g1.c.0"))
        await sender.close()
        assert sender.stats().acknowledged == 1
        assert sequences(await client.get_loop("g1.c.0")) == [(0, "agent_start")]


# -- against the server's per-event refusals ------------------------------------------------


async def test_one_refused_event_costs_nothing_else_and_flush_names_it(
    recorder: RunningRecorder,
) -> None:
    """A batch of two loops with one event the server refuses (an enum it does not know)."""
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=DeliveryConfig(linger=3600))
        sender.emit(agent_start("b1", "b1.c.0"))
        sender.emit(agent_start("b1", "b1.c.1"))
        sender.emit(turn_start("b1.c.0", 0, trigger=99))  # passes emit: no limit decides it
        sender.emit(turn_start("b1.c.1", 0))
        sender.emit(turn_start("b1.c.0", 1))
        sender.emit(agent_end("b1.c.0"))
        sender.emit(agent_end("b1.c.1"))
        with pytest.raises(EventsRefused) as caught:
            await sender.flush(10)
        stats = sender.stats()
        first = await client.get_loop("b1.c.0")
        second = await client.get_loop("b1.c.1")
    [refused] = caught.value.refusals
    assert (refused.loop_id, refused.sequence, refused.holds_slot) == ("b1.c.0", 1, True)
    assert refused.reason == "INVALID_FIELD"
    assert "turn_start.triggered_by" in refused.message
    assert str(caught.value).startswith(
        "1 event(s) refused by the sidecar: turn_start at loop b1.c.0 sequence 1: INVALID_FIELD:"
    )
    assert (stats.emitted, stats.acknowledged, stats.refused, stats.pending) == (7, 6, 1, 0)
    assert [e.sequence for e in first.events] == [0, 1, 2, 3]
    assert first.events[1].HasField("refused") and not first.events[1].HasField("event")
    assert first.status == session_pb2.LOOP_STATUS_COMPLETED
    assert sequences(second) == [(0, "agent_start"), (1, "turn_start"), (2, "agent_end")]


async def test_a_late_event_of_an_ended_loop_is_refused_as_not_open_with_its_sequence(
    recorder: RunningRecorder,
) -> None:
    async with RecorderClient.connect(recorder.target) as client:
        sender = client.sender(config=FAST)
        sender.emit(agent_start("n2", "n2.c.0"))
        sender.emit(agent_end("n2.c.0"))
        await sender.flush(10)
        sender.emit(progress("n2.c.0", "c", "t", "late"))
        sender.emit(agent_start("n2", "n2.c.1"))
        with pytest.raises(EventsRefused) as caught:
            await sender.flush(10)
        assert sequences(await client.get_loop("n2.c.1")) == [(0, "agent_start")]
    [refused] = caught.value.refusals
    assert (refused.loop_id, refused.sequence, refused.reason) == ("n2.c.0", 2, "LOOP_NOT_OPEN")
    assert refused.message == "loop 'n2.c.0' has ended (completed)"


async def test_append_names_a_nan_refused_alone_and_stores_the_rest(
    recorder: RunningRecorder,
) -> None:
    bad = tool_start("a1.c.0", "call-1", "calc", {"x": 0})
    bad.tool_execution_start.args.struct_value.fields["x"].number_value = math.nan
    envelopes = [
        EventEnvelope(sequence=0, event=agent_start("a1", "a1.c.0")),
        EventEnvelope(sequence=1, event=bad),
        EventEnvelope(sequence=2, event=turn_start("a1.c.0", 0)),
    ]
    async with RecorderClient.connect(recorder.target) as client:
        with pytest.raises(EventsRefused) as caught:
            await client.append(envelopes)
        loop = await client.get_loop("a1.c.0")
    [refused] = caught.value.refusals
    assert (refused.sequence, refused.holds_slot, refused.reason) == (1, True, "INVALID_FIELD")
    assert "events[1].event.tool_execution_start.args" in refused.message
    assert caught.value.sequences == [0, 1, 2]
    assert [e.sequence for e in loop.events] == [0, 1, 2]
    assert loop.events[2].event == envelopes[2].event


async def test_the_server_announces_its_limits_and_emit_applies_them(short_tmp: Path) -> None:
    config = ServerConfig(
        db_path=short_tmp / "r.db",
        listen=f"unix://{short_tmp}/r.sock",
        limits=Limits(max_id_length=40, max_value_depth=4, max_request_bytes=64 * 1024),
    )
    async with RecorderServer(config), RecorderClient.connect(config.listen) as client:
        sender = client.sender(config=FAST)
        await sender.wait_ready(10)
        assert sender.limits == EventLimits(40, 4, 64 * 1024)
        with pytest.raises(ValueError, match="loop_id: must be at most 40 characters"):
            sender.emit(agent_start("l1", "l1." + "c" * 40 + ".0"))
        with pytest.raises(ValueError, match="args: must not nest deeper than 4 levels"):
            sender.emit(tool_start("l1.c.0", "c", "t", {"a": {"b": {"c": {"d": {"e": 1}}}}}))
        with pytest.raises(ValueError, match="request limit of 65536 bytes"):
            sender.emit(tool_start("l1.c.0", "c", "t", {"blob": "x" * 70_000}))


async def test_wait_ready_gives_up_at_once_on_a_refusal_no_reconnect_changes(
    short_tmp: Path,
) -> None:
    config = ServerConfig(
        db_path=short_tmp / "r.db", listen=f"unix://{short_tmp}/r.sock", token="s3cret"
    )
    async with (
        RecorderServer(config),
        RecorderClient.connect(config.listen, token="wrong") as client,
    ):
        sender = client.sender(config=FAST)
        with pytest.raises(SidecarUnreachable) as caught:
            await sender.wait_ready(30)  # answered at once, not after 30 s
    assert str(caught.value).startswith("UNAUTHENTICATED: ")
    assert str(caught.value).endswith(" (gave up)")
