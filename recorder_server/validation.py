"""Structural checks of every RPC's input, before the recording core sees it.

The core may then trust shapes (ids present and printable, timestamps in range,
enums known, free-form JSON shallow and finite) and keep only *semantic* rules
(loop open, sequence next, session not locked). Every refusal names the field path
a client must fix, spelled as the proto path (`events[3].event.agent_start.loop_id:
must not be empty`): `InvalidArgument` for a broken rule, `TooLarge` (metadata
`field` and `limit`) for an exceeded `Limits` value.

Pure by design — no I/O, no gRPC — so the same checks serve the servicer, the
importer and tests. `validate_events` is on the ingest hot path: it dispatches on
the event's oneof, touches only the fields a rule needs, returns the events in the
same pass, settles a Record batch's free-form JSON from the bytes it arrived in
when it can (`_json_plan`), else from each value's wire form (`_json_cleared`), and
builds a path only when something fails (internal `_Fault`s gain their prefix on
the way out).

Deliberately not checked: the shape of loop ids (`{session}.{config}.{N}` is the
runtime's convention, but dot-less ids stay valid as in the seed); free text
(bounded as a whole by `Limits.max_request_bytes` at the transport); tool call ids
and names (stored verbatim, never keys); the int64 node ids of messages and reverts
(the runtime's opaque identifiers — any int64, negatives included, fits the store).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from agent_recorder.v1 import events_pb2, recorder_service_pb2, session_pb2, types_pb2
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from recorder_common.finite import finite_on_wire
from recorder_server.errors import InvalidArgument, RecorderError, TooLarge

# Integers the core keeps in SQLite INTEGER columns (sequences, cursors, usage
# totals) must fit a signed 64-bit value; a larger uint64 would fail in the driver.
INT64_MAX = 2**63 - 1
# The range google.protobuf.Timestamp documents: 0001-01-01T00:00:00Z ..
# 9999-12-31T23:59:59.999999999Z. Outside it, conversions to datetime or RFC 3339 fail.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
# ListSessions' contract (recorder_service.proto): at most 1000 per page.
MAX_PAGE_SIZE = 1000

# C0 controls, DEL, C1 controls, and surrogates (a lone one cannot be UTF-8 encoded).
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one request from costing the sidecar unbounded work or memory.

    Defaults are generous for real agents; `serve` flags may change each.
    """

    # Ids are keys, log fields and error metadata; 256 fits a UUID-based loop id
    # with a long config segment many times over.
    max_id_length: int = 256
    # A batch is one all-or-nothing transaction and one acknowledgement; the cap
    # keeps both from growing without bound.
    max_events_per_batch: int = 10_000
    # Nesting of Struct/ListValue containers in free-form JSON. Note the protobuf
    # decoder refuses 100 nested *messages* first (some 30-45 JSON levels inside an
    # event), so over the wire this bound is the backstop, not the usual refusal.
    max_value_depth: int = 64
    # Page tokens are opaque cursors the server made (a time and an id).
    max_page_token_length: int = 1024
    # The server's gRPC max receive message size: it bounds a batch's bytes and
    # every free-text field with one number, so no per-string limit is needed.
    max_request_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"Limits.{f.name} must be at least 1")


class _Fault(Exception):
    """A problem at a path relative to the message being checked.

    Raised deep inside and prefixed by each enclosing check on the way out, so the
    happy path never formats a path string.
    """

    def __init__(self, path: str, problem: str, limit: int | None = None) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem
        self.limit = limit

    def under(self, prefix: str) -> _Fault:
        self.path = f"{prefix}.{self.path}"
        return self

    def error(self) -> RecorderError:
        if self.limit is None:
            return InvalidArgument(self.path, self.problem)
        return TooLarge(f"{self.path}: {self.problem}", field=self.path, limit=self.limit)


# --- leaf checks -------------------------------------------------------------------


def _check_id(value: str, path: str, limits: Limits) -> None:
    if not value:
        raise _Fault(path, "must not be empty")
    if len(value) > limits.max_id_length:
        raise _Fault(
            path, f"must be at most {limits.max_id_length} characters", limits.max_id_length
        )
    # isascii() is O(1) and isprintable() a tight C loop: the common id skips the regex.
    if not (value.isascii() and value.isprintable()):
        bad = _BAD_ID_CHAR.search(value)
        if bad is not None:
            raise _Fault(
                path,
                f"must not contain control characters or lone surrogates "
                f"(U+{ord(bad.group()):04X} at index {bad.start()})",
            )


def _check_optional_id(value: str, path: str, limits: Limits) -> None:
    """For plain string ids where empty means "not given" (e.g. generate one)."""
    if value:
        _check_id(value, path, limits)


def _check_timestamp(ts: timestamp_pb2.Timestamp, path: str) -> None:
    if not TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS:
        raise _Fault(f"{path}.seconds", "must be within 0001-01-01..9999-12-31")
    if not 0 <= ts.nanos <= 999_999_999:
        raise _Fault(f"{path}.nanos", "must be within 0..999999999")


def _require_timestamp(owner: Message, name: str, path: str) -> None:
    """`owner.<name>` must be set and in range.

    An unset Timestamp reads 0, so only a zero reading (unset, or set to the epoch)
    pays for HasField, and "must be set" still comes before any range fault.
    """
    ts = getattr(owner, name)
    if not (ts.seconds or ts.nanos or owner.HasField(name)):
        raise _Fault(path, "must be set")
    _check_timestamp(ts, path)


def _check_int64(value: int, path: str) -> None:
    if value > INT64_MAX:
        raise _Fault(path, f"must be at most {INT64_MAX}")


_USAGE_FIELDS = ("input", "output", "reasoning", "cache_read", "cache_write", "total_tokens")


def _check_usage(usage: types_pb2.Usage, path: str) -> None:
    for name in _USAGE_FIELDS:
        if getattr(usage, name) > INT64_MAX:
            raise _Fault(f"{path}.{name}", f"must be at most {INT64_MAX}")


# Proto3 enums are open: a peer with a newer schema (or a bug) can send any int32.
_ROLES = frozenset(types_pb2.MessageRole.values())
_STOP_REASONS = frozenset(types_pb2.StopReason.values())
_TRIGGERS = frozenset(types_pb2.TurnTrigger.values())
_APIS = frozenset(types_pb2.ApiProtocol.values())
_THINKING_LEVELS = frozenset(types_pb2.ThinkingLevel.values())
_SCOPES = frozenset(session_pb2.SessionScope.values())


def _check_enum(value: int, known: frozenset[int], path: str) -> None:
    if value not in known:
        raise _Fault(path, f"unknown enum value {value}")


# Above this size two byte scans cost more than walking the few, large values such
# a message usually holds, so `_json_cleared` gives up and lets the walk decide.
_SCAN_MAX_BYTES = 4096


def _json_cleared(message: Message, limit: int) -> bool:
    """Whether the wire form alone proves every JSON value inside `message` valid.

    Touching a protobuf submessage from Python makes a wrapper object per access,
    so walking content blocks and Structs dominates validation. One
    C-speed serialization plus byte scans settles the common case instead:
    - every nesting level costs at least 4 bytes of tags and lengths, so a message
      of at most 4 * limit - 4 bytes holds nothing deeper than `limit`;
    - every nested container is a Value whose struct_value or list_value tag is the
      byte 0x2A or 0x32, so fewer than `limit` of those bytes bound the depth too;
    - a non-finite double has all exponent bits set, so its little-endian bytes
      contain 0x7F or 0xFF; bytes without either hold no NaN or Infinity.
    Every bound over-counts (text holds such bytes too), never under-counts: False
    means "walk to find out", not "invalid".

    Serializing recurses in C: a value nested some 15,000 levels would overflow the
    stack here, as it would wherever protobuf serializes it (the store included).
    Only in-process code can build one; the wire decoder stops at 100 levels.
    """
    data = message.SerializeToString()
    size = len(data)
    if size > max(_SCAN_MAX_BYTES, 4 * limit - 4) or b"\x7f" in data or b"\xff" in data:
        return False
    return size <= 4 * limit - 4 or data.count(b"*") + data.count(b"2") < limit


def _check_json(
    root: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue, path: str, limits: Limits
) -> None:
    """Bound the nesting of free-form JSON and keep it JSON (no NaN or Infinity)."""
    if not _json_cleared(root, limits.max_value_depth):
        _walk_json(root, path, limits.max_value_depth)


def _walk_json(
    root: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue, path: str, limit: int
) -> None:
    """The exact check: a Struct or ListValue is one level, scalars add none.

    Iterative, with an explicit stack of pending containers, so hostile depth costs
    memory proportional to the input rather than a RecursionError.
    """
    pending: list[tuple[Iterable[struct_pb2.Value], int]]
    if isinstance(root, struct_pb2.Value):
        pending = [((root,), 0)]
    elif isinstance(root, struct_pb2.Struct):
        pending = [(root.fields.values(), 1)]
    else:
        pending = [(root.values, 1)]
    while pending:
        values, depth = pending.pop()
        for value in values:
            kind = value.WhichOneof("kind")
            children: Iterable[struct_pb2.Value]
            if kind == "struct_value":
                children = value.struct_value.fields.values()
            elif kind == "list_value":
                children = value.list_value.values
            else:
                if kind == "number_value" and not math.isfinite(value.number_value):
                    raise _Fault(path, "contains NaN or Infinity, which JSON cannot carry")
                continue
            if depth >= limit:
                raise _Fault(path, f"must not nest deeper than {limit} levels", limit)
            pending.append((children, depth + 1))


# --- messages inside events --------------------------------------------------------


def _check_blocks(blocks: Sequence[types_pb2.ContentBlock], limits: Limits) -> None:
    for j, block in enumerate(blocks):
        try:
            if block.HasField("extra"):
                _check_json(block.extra, "extra", limits)
            if block.WhichOneof("block") == "tool_call" and block.tool_call.HasField("arguments"):
                _check_json(block.tool_call.arguments, "tool_call.arguments", limits)
        except _Fault as fault:
            raise fault.under(f"content[{j}]") from None


def _check_message(message: types_pb2.AgentMessage, limits: Limits, json: bool) -> None:
    # The hottest function (AgentEnd and TurnEnd repeat every message): inline
    # checks, and no HasField before a timestamp, as an unset one reads in range.
    if message.role not in _ROLES:
        raise _Fault("role", f"unknown enum value {message.role}")
    if message.stop_reason not in _STOP_REASONS:
        raise _Fault("stop_reason", f"unknown enum value {message.stop_reason}")
    _check_timestamp(message.timestamp, "timestamp")
    if not json or _json_cleared(message, limits.max_value_depth):
        return
    _check_blocks(message.content, limits)
    if message.HasField("extension_data"):
        _check_json(message.extension_data, "extension_data", limits)
    if message.HasField("tags"):
        _check_json(message.tags, "tags", limits)
    if message.HasField("provenance_hint"):
        _check_json(message.provenance_hint, "provenance_hint", limits)
    if message.HasField("extra"):
        _check_json(message.extra, "extra", limits)


def _check_message_at(
    message: types_pb2.AgentMessage, path: str, limits: Limits, json: bool
) -> None:
    try:
        _check_message(message, limits, json)
    except _Fault as fault:
        raise fault.under(path) from None


def _check_messages(
    messages: Sequence[types_pb2.AgentMessage], path: str, limits: Limits, json: bool
) -> None:
    for j, message in enumerate(messages):
        try:
            _check_message(message, limits, json)
        except _Fault as fault:
            raise fault.under(f"{path}[{j}]") from None


def _check_tool_result(result: types_pb2.ToolResult, path: str, limits: Limits, json: bool) -> None:
    try:
        if result.HasField("child_loop_id"):
            _check_id(result.child_loop_id, "child_loop_id", limits)
        if not json or _json_cleared(result, limits.max_value_depth):
            return
        _check_blocks(result.content, limits)
        if result.HasField("details"):
            _check_json(result.details, "details", limits)
    except _Fault as fault:
        raise fault.under(path) from None


# An event batch as the writer takes it: (sequence, or None if not given; event).
CheckedEvents = list[tuple[int | None, events_pb2.AgentEvent]]


@dataclass
class CheckedBatch:
    """A batch's events in order, and why each refused one was refused (by index).

    A refused event stays in `events` (its position is its index in the batch);
    the writer keeps it as a refusal instead of applying it.
    """

    events: CheckedEvents = field(default_factory=list)
    faults: dict[int, RecorderError] = field(default_factory=dict)


# --- one check per event kind (paths relative to the event's oneof field) ----------


def _agent_start(e: events_pb2.AgentStart, limits: Limits, json: bool) -> None:
    _check_id(e.agent_id, "agent_id", limits)
    _check_id(e.session_id, "session_id", limits)
    _check_id(e.loop_id, "loop_id", limits)
    if e.HasField("parent_loop_id"):
        _check_id(e.parent_loop_id, "parent_loop_id", limits)
    _require_timestamp(e, "timestamp", "timestamp")
    if json and e.HasField("metadata"):
        _check_json(e.metadata, "metadata", limits)
    if e.HasField("config_snapshot"):
        config = e.config_snapshot
        _check_enum(config.api, _APIS, "config_snapshot.api")
        _check_enum(config.thinking_level, _THINKING_LEVELS, "config_snapshot.thinking_level")


def _agent_end(e: events_pb2.AgentEnd, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _check_messages(e.messages, "messages", limits, json)
    _check_usage(e.usage, "usage")
    _require_timestamp(e, "timestamp", "timestamp")


def _turn_start(e: events_pb2.TurnStart, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _require_timestamp(e, "timestamp", "timestamp")
    _check_enum(e.triggered_by, _TRIGGERS, "triggered_by")


def _turn_request(e: events_pb2.TurnRequest, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    if json and e.HasField("payload"):
        _check_json(e.payload, "payload", limits)
    _require_timestamp(e, "timestamp", "timestamp")


def _turn_end(e: events_pb2.TurnEnd, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _check_message_at(e.message, "message", limits, json)
    _check_usage(e.usage, "usage")
    _require_timestamp(e, "timestamp", "timestamp")
    _check_messages(e.tool_results, "tool_results", limits, json)


def _message_event(
    e: events_pb2.MessageStart | events_pb2.MessageUpdate | events_pb2.MessageEnd,
    limits: Limits,
    json: bool,
) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _check_message_at(e.message, "message", limits, json)


def _tool_execution_start(e: events_pb2.ToolExecutionStart, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    if json and e.HasField("args"):
        _check_json(e.args, "args", limits)


def _tool_execution_update(e: events_pb2.ToolExecutionUpdate, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _check_tool_result(e.partial_result, "partial_result", limits, json)


def _tool_execution_end(e: events_pb2.ToolExecutionEnd, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _check_tool_result(e.result, "result", limits, json)
    if e.HasField("child_loop_id"):
        _check_id(e.child_loop_id, "child_loop_id", limits)


def _loop_only(
    e: events_pb2.ProgressMessage | events_pb2.InputRejected, limits: Limits, json: bool
) -> None:
    _check_id(e.loop_id, "loop_id", limits)


def _parallel_loop_start(e: events_pb2.ParallelLoopStart, limits: Limits, json: bool) -> None:
    _check_id(e.session_id, "session_id", limits)
    if not e.loop_ids:
        raise _Fault("loop_ids", "must not be empty")
    seen: set[str] = set()
    for j, loop_id in enumerate(e.loop_ids):
        _check_id(loop_id, f"loop_ids[{j}]", limits)
        if loop_id in seen:
            raise _Fault(f"loop_ids[{j}]", f"repeats loop id {loop_id!r}")
        seen.add(loop_id)
    _require_timestamp(e, "timestamp", "timestamp")


def _parallel_loop_end(e: events_pb2.ParallelLoopEnd, limits: Limits, json: bool) -> None:
    _check_id(e.session_id, "session_id", limits)
    _check_id(e.selected_loop_id, "selected_loop_id", limits)
    _check_int64(e.selected_config_index, "selected_config_index")
    _check_usage(e.evaluation_usage, "evaluation_usage")
    _require_timestamp(e, "timestamp", "timestamp")


def _loop_and_time(
    e: events_pb2.CompactionStarted | events_pb2.CompactionEnded | events_pb2.RevertApplied,
    limits: Limits,
    json: bool,
) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    _require_timestamp(e, "timestamp", "timestamp")


def _prun_applied(e: events_pb2.PrunApplied, limits: Limits, json: bool) -> None:
    _check_id(e.loop_id, "loop_id", limits)
    for j, ts in enumerate(e.pruned_timestamps):
        _check_timestamp(ts, f"pruned_timestamps[{j}]")
    _require_timestamp(e, "timestamp", "timestamp")


# Keyed by the AgentEvent oneof field name, as WhichOneof returns it.
_EVENT_CHECKS: dict[str, Callable[[Any, Limits, bool], None]] = {
    "agent_start": _agent_start,
    "agent_end": _agent_end,
    "turn_start": _turn_start,
    "turn_request": _turn_request,
    "turn_end": _turn_end,
    "message_start": _message_event,
    "message_update": _message_event,
    "message_end": _message_event,
    "tool_execution_start": _tool_execution_start,
    "tool_execution_update": _tool_execution_update,
    "tool_execution_end": _tool_execution_end,
    "progress_message": _loop_only,
    "input_rejected": _loop_only,
    "parallel_loop_start": _parallel_loop_start,
    "parallel_loop_end": _parallel_loop_end,
    "compaction_started": _loop_and_time,
    "compaction_ended": _loop_and_time,
    "prun_applied": _prun_applied,
    "revert_applied": _loop_and_time,
}


# --- public API --------------------------------------------------------------------


def validate_id(value: str, field: str, limits: Limits) -> None:
    """Refuse an id the store could not key on or a log line could not show.

    Non-empty, at most `limits.max_id_length` characters, no C0/C1 control
    characters or DEL, no lone surrogates. Any other text is fine, dots optional.
    """
    try:
        _check_id(value, field, limits)
    except _Fault as fault:
        raise fault.error() from None


def validate_envelopes(
    envelopes: Sequence[recorder_service_pb2.EventEnvelope],
    limits: Limits,
    field_prefix: str = "events",
) -> None:
    """Refuse if any event is structurally unusable, naming the first such field.

    `field_prefix` is where the list sits in the request, so paths read as the
    client wrote them (`batch.events[2]...` for Record, `events[2]...` for Append).
    """
    _whole(_check_envelopes(envelopes, limits, field_prefix, True))


def _check_envelopes(
    envelopes: Sequence[recorder_service_pb2.EventEnvelope],
    limits: Limits,
    field_prefix: str,
    json: bool | None,
) -> CheckedBatch:
    """The events as (sequence, or None if not given; event), read in the checking pass,
    and a fault per event that fails (the others are unaffected).

    `json` is `_json_plan`'s verdict: check free-form JSON everywhere (True), nowhere
    (False), or in the events whose own bytes might hold a non-finite number (None).
    Only the batch's size refuses the batch as a whole.
    """
    if len(envelopes) > limits.max_events_per_batch:
        raise TooLarge(
            f"{field_prefix}: {len(envelopes)} events, at most "
            f"{limits.max_events_per_batch} per batch",
            field=field_prefix,
            limit=limits.max_events_per_batch,
        )
    checks = _EVENT_CHECKS
    checked = CheckedBatch()
    for i, envelope in enumerate(envelopes):
        event = envelope.event
        sequence = envelope.sequence
        try:
            _check_envelope(envelope, event, checks, limits, json)
        except _Fault as fault:
            checked.faults[i] = fault.under(f"{field_prefix}[{i}]").error()
        # Only a zero can be "not given", so HasField (dearer than the read) runs
        # just for those: a loop's first event, or an unnumbered one.
        checked.events.append(
            (sequence if sequence or envelope.HasField("sequence") else None, event)
        )
    return checked


def _check_envelope(
    envelope: recorder_service_pb2.EventEnvelope,
    event: events_pb2.AgentEvent,
    checks: dict[str, Callable[[Any, Limits, bool], None]],
    limits: Limits,
    json: bool | None,
) -> None:
    if envelope.sequence > INT64_MAX:
        raise _Fault("sequence", f"must be at most {INT64_MAX}")
    kind = event.WhichOneof("event")
    if kind is None:
        raise _Fault("event", "no event kind set")
    event_json = json
    if event_json is None:
        event_json = not finite_on_wire(envelope.SerializeToString())
    try:
        checks[kind](getattr(event, kind), limits, event_json)
    except _Fault as fault:
        raise fault.under(f"event.{kind}") from None


# --- what the wire form of a decoded request proves ---------------------------------

# The deepest JSON protobuf's decoder lets through inside a Record or Append request.
# It refuses messages nested 100 deep, and every JSON level is at least two of them
# (Value and ListValue) below the request, envelope, event and event kind; the
# tests check this bound at every JSON site.
DECODED_JSON_DEPTH_MAX = 48


def _nested_lists(levels: int) -> bytes:
    value = struct_pb2.Value()
    current = value
    for _ in range(levels - 1):
        current = current.list_value.values.add()
    current.list_value.SetInParent()
    return value.SerializeToString()


# 102 nested messages: refused while protobuf keeps its default nesting cap of 100,
# decoded if something in the process lifted it (SetAllowOversizeProtos).
_PAST_THE_DECODER_CAP = _nested_lists(51)


def _decoder_caps_nesting() -> bool:
    try:
        struct_pb2.Value.FromString(_PAST_THE_DECODER_CAP)
    except DecodeError:
        return True
    return False


def _json_plan(wire: bytes | None, limits: Limits) -> bool | None:
    """Which events' free-form JSON needs checking, given the bytes of their request.

    Walking content blocks to find the JSON is most of the cost of validating the
    large events (a Python wrapper per submessage), and re-encoding to scan a
    message's bytes costs as much. The bytes the request arrived in settle the
    common batch in one C-speed pass instead: the decoder bounded the depth, so
    only a non-finite number could fail, and `finite_on_wire` rules those out:
    False, no event needs a check. When the scan cannot (now and then, for a
    varint that looks like a double's top bytes), None: each
    event is scanned on its own re-encoded bytes and only a suspect one is checked.
    True (check everything) without wire bytes or with a depth limit the decoder
    does not already enforce.
    """
    if (
        wire is None
        or limits.max_value_depth < DECODED_JSON_DEPTH_MAX
        or not _decoder_caps_nesting()
    ):
        return True
    return False if finite_on_wire(wire) else None


def _record(
    request: recorder_service_pb2.RecordRequest, limits: Limits, json: bool | None = True
) -> CheckedBatch:
    kind = request.WhichOneof("kind")
    if kind == "hello":
        _check_id(request.hello.writer_id, "hello.writer_id", limits)
        return CheckedBatch()
    if kind == "batch":
        return _check_envelopes(request.batch.events, limits, "batch.events", json)
    raise _Fault("kind", "set hello or batch")


def _append(request: recorder_service_pb2.AppendRequest, limits: Limits) -> CheckedBatch:
    # Empty writer_id is allowed: a one-shot Append client need not name itself;
    # the servicer decides what identity such a writer gets.
    _check_optional_id(request.writer_id, "writer_id", limits)
    return _check_envelopes(request.events, limits, "events", True)


def _get_session(request: recorder_service_pb2.GetSessionRequest, limits: Limits) -> None:
    _check_id(request.session_id, "session_id", limits)


def _check_page(page_size: int, page_token: str, limits: Limits) -> None:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise _Fault("page_size", f"must be within 0..{MAX_PAGE_SIZE} (0 means the default)")
    if len(page_token) > limits.max_page_token_length:
        raise _Fault(
            "page_token",
            f"must be at most {limits.max_page_token_length} characters",
            limits.max_page_token_length,
        )


def _list_sessions(request: recorder_service_pb2.ListSessionsRequest, limits: Limits) -> None:
    _check_optional_id(request.agent_id, "agent_id", limits)
    _check_page(request.page_size, request.page_token, limits)
    if request.HasField("scope"):
        _check_enum(request.scope, _SCOPES, "scope")
    if request.HasField("since"):
        _check_timestamp(request.since, "since")


def _get_loop(request: recorder_service_pb2.GetLoopRequest, limits: Limits) -> None:
    _check_id(request.loop_id, "loop_id", limits)


def _stream_events(request: recorder_service_pb2.StreamEventsRequest, limits: Limits) -> None:
    target = request.WhichOneof("target")
    if target is None:
        raise _Fault("target", "set session_id or loop_id")
    _check_id(getattr(request, target), target, limits)
    _check_int64(request.after_cursor, "after_cursor")
    if request.page_size > MAX_PAGE_SIZE:
        raise _Fault("page_size", f"must be within 0..{MAX_PAGE_SIZE} (0 means the default)")


def _check_spawn_ref(ref: session_pb2.SpawnRef, limits: Limits) -> None:
    _check_id(ref.parent_session_id, "parent_spawn_ref.parent_session_id", limits)
    _check_id(ref.parent_loop_id, "parent_spawn_ref.parent_loop_id", limits)


def _open_session(request: recorder_service_pb2.OpenSessionRequest, limits: Limits) -> None:
    _check_optional_id(request.session_id, "session_id", limits)
    _check_id(request.agent_id, "agent_id", limits)
    _check_enum(request.scope, _SCOPES, "scope")
    if request.HasField("parent_spawn_ref"):
        _check_spawn_ref(request.parent_spawn_ref, limits)
    if request.HasField("timestamp"):
        _check_timestamp(request.timestamp, "timestamp")


# A threshold longer than the whole Timestamp range can never elapse and would
# overflow the core's datetime arithmetic.
_MAX_THRESHOLD_SECS = TIMESTAMP_MAX_SECONDS - TIMESTAMP_MIN_SECONDS


def _rotate_session(request: recorder_service_pb2.RotateSessionRequest, limits: Limits) -> None:
    _check_id(request.agent_id, "agent_id", limits)
    if not 0 < request.threshold_secs <= _MAX_THRESHOLD_SECS:
        raise _Fault("threshold_secs", f"must be within 1..{_MAX_THRESHOLD_SECS}")
    _check_optional_id(request.new_session_id, "new_session_id", limits)
    _check_enum(request.scope, _SCOPES, "scope")
    if request.HasField("timestamp"):
        _check_timestamp(request.timestamp, "timestamp")


def _one_or_all_sessions(
    request: recorder_service_pb2.FlushRequest | recorder_service_pb2.CheckpointRequest,
    limits: Limits,
) -> None:
    if request.HasField("session_id"):
        _check_id(request.session_id, "session_id", limits)


def _delete_session(request: recorder_service_pb2.DeleteSessionRequest, limits: Limits) -> None:
    _check_id(request.session_id, "session_id", limits)


def _prune_sessions(request: recorder_service_pb2.PruneSessionsRequest, limits: Limits) -> None:
    _require_timestamp(request, "older_than", "older_than")


def _watch_sessions(request: recorder_service_pb2.WatchSessionsRequest, limits: Limits) -> None:
    _check_optional_id(request.agent_id, "agent_id", limits)


_LOOP_STATUSES = frozenset(session_pb2.LoopStatus.values()) - {session_pb2.LOOP_STATUS_UNSPECIFIED}


def _import_session(request: recorder_service_pb2.ImportSessionRequest, limits: Limits) -> None:
    """A whole session must look as the rules would have stored it (ids, gapless events)."""
    if not request.HasField("session"):
        raise _Fault("session", "must be set")
    session = request.session
    _check_id(session.session_id, "session.session_id", limits)
    _check_id(session.agent_id, "session.agent_id", limits)
    _check_enum(session.scope, _SCOPES, "session.scope")
    _require_timestamp(session, "created_at", "session.created_at")
    _require_timestamp(session, "last_active_at", "session.last_active_at")
    seen: set[str] = set()
    for i, loop in enumerate(session.loops):
        try:
            _check_imported_loop(loop, session.session_id, limits)
            if loop.loop_id in seen:
                raise _Fault("loop_id", f"{loop.loop_id!r} appears twice in the session")
            seen.add(loop.loop_id)
        except _Fault as fault:
            raise fault.under(f"session.loops[{i}]") from None


def _check_imported_loop(loop: session_pb2.LoopRecord, session_id: str, limits: Limits) -> None:
    _check_id(loop.loop_id, "loop_id", limits)
    if loop.session_id != session_id:
        raise _Fault("session_id", f"{loop.session_id!r} is not the session's {session_id!r}")
    _check_id(loop.agent_id, "agent_id", limits)
    _check_enum(loop.status, _LOOP_STATUSES, "status")
    _require_timestamp(loop, "started_at", "started_at")
    _check_usage(loop.usage, "usage")
    for j, item in enumerate(loop.events):
        try:
            if item.sequence != j:
                raise _Fault("sequence", f"is {item.sequence}, expected {j} (gapless from 0)")
            if item.HasField("refused"):
                if item.HasField("event"):
                    raise _Fault("refused", "a slot holds an event or a refusal, not both")
                continue
            kind = item.event.WhichOneof("event")
            if kind is None:
                raise _Fault("event", "no event kind set")
            payload = getattr(item.event, kind)
            try:
                _EVENT_CHECKS[kind](payload, limits, True)
                if getattr(payload, "loop_id", loop.loop_id) != loop.loop_id:
                    raise _Fault("loop_id", f"{payload.loop_id!r} is not this loop's")
            except _Fault as fault:
                raise fault.under(f"event.{kind}") from None
        except _Fault as fault:
            raise fault.under(f"events[{j}]") from None


def _list_refusals(request: recorder_service_pb2.ListRefusalsRequest, limits: Limits) -> None:
    if request.HasField("session_id"):
        _check_id(request.session_id, "session_id", limits)
    _check_page(request.page_size, request.page_token, limits)


def _get_usage(request: recorder_service_pb2.GetUsageRequest, limits: Limits) -> None:
    _check_optional_id(request.agent_id, "agent_id", limits)
    for name in ("since", "until"):
        if request.HasField(name):
            _check_timestamp(getattr(request, name), name)
    _check_enum(request.group_by, _USAGE_GROUPINGS, "group_by")


_USAGE_GROUPINGS = frozenset(recorder_service_pb2.UsageGrouping.values())

_REQUEST_CHECKS: dict[type[Message], Callable[[Any, Limits], object]] = {
    recorder_service_pb2.RecordRequest: lambda r, limits: _whole(_record(r, limits)),
    recorder_service_pb2.AppendRequest: lambda r, limits: _whole(_append(r, limits)),
    recorder_service_pb2.GetSessionRequest: _get_session,
    recorder_service_pb2.ListSessionsRequest: _list_sessions,
    recorder_service_pb2.GetLoopRequest: _get_loop,
    recorder_service_pb2.StreamEventsRequest: _stream_events,
    recorder_service_pb2.OpenSessionRequest: _open_session,
    recorder_service_pb2.RotateSessionRequest: _rotate_session,
    recorder_service_pb2.FlushRequest: _one_or_all_sessions,
    recorder_service_pb2.CheckpointRequest: _one_or_all_sessions,
    recorder_service_pb2.DeleteSessionRequest: _delete_session,
    recorder_service_pb2.PruneSessionsRequest: _prune_sessions,
    recorder_service_pb2.WatchSessionsRequest: _watch_sessions,
    recorder_service_pb2.ImportSessionRequest: _import_session,
    recorder_service_pb2.GetUsageRequest: _get_usage,
    recorder_service_pb2.ListRefusalsRequest: _list_refusals,
}


def validate_request(request: Message, limits: Limits) -> None:
    """Check any RecorderService request; the one call every handler makes first.

    Raises InvalidArgument/TooLarge naming the field; TypeError for a message type
    that is not a RecorderService request (a programming error, not bad input).
    """
    check = _REQUEST_CHECKS.get(type(request))
    if check is None:
        raise TypeError(f"not a RecorderService request: {type(request).__name__}")
    try:
        check(request, limits)
    except _Fault as fault:
        raise fault.error() from None


def _whole(checked: CheckedBatch) -> None:
    """`validate_request`'s verdict on a request with events: its first fault, if any."""
    if checked.faults:
        raise checked.faults[min(checked.faults)]


def validate_events(
    request: recorder_service_pb2.RecordRequest | recorder_service_pb2.AppendRequest,
    limits: Limits,
    wire: bytes | None = None,
) -> CheckedBatch:
    """Check the requests that carry events, event by event, returning those events.

    Each comes back as (sequence, or None if not given; event), read in the pass
    that checks it, so the servicer needs no second pass over a batch (none for a
    Record hello), with the fault of each event that fails: one bad event is
    refused alone (DESIGN.md §Refusals). Only what concerns the whole request
    (its kind, its size) raises. `wire`, the exact bytes a RecordRequest was
    decoded from, lets its JSON be settled from them (`_json_plan`); the verdict
    is the same.
    """
    try:
        if isinstance(request, recorder_service_pb2.RecordRequest):
            return _record(request, limits, _json_plan(wire, limits))
        return _append(request, limits)
    except _Fault as fault:
        raise fault.error() from None
