"""The recorder's failure kinds, free of gRPC.

The core raises these. Each kind carries its status code as a google.rpc.Code
value (`code`, the one mapping of failures to codes; `status.py` turns it into a
gRPC status), a machine-readable reason and the ids it is about, so a client can
tell *which* field, loop or session was refused. A refused event keeps its code,
reason and message in the store, which is why the code lives here, free of gRPC.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2


class RecorderError(Exception):
    """Base of every refusal the recorder answers with a status."""

    reason = "RECORDER_ERROR"
    code: int = code_pb2.INTERNAL

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items() if v is not None}


class InvalidArgument(RecorderError):
    """Bad input: the named field is missing, malformed or out of bounds."""

    reason = "INVALID_FIELD"
    code = code_pb2.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str, **metadata: object) -> None:
        super().__init__(f"{field}: {problem}", field=field, **metadata)
        self.field = field


class TooLarge(RecorderError):
    """A request or value exceeds a configured size limit."""

    reason = "TOO_LARGE"
    code = code_pb2.RESOURCE_EXHAUSTED


class NotFound(RecorderError):
    """The seed's SessionError::NotFound, also used for loops."""

    reason = "NOT_FOUND"
    code = code_pb2.NOT_FOUND


class AlreadyExists(RecorderError):
    reason = "ALREADY_EXISTS"
    code = code_pb2.ALREADY_EXISTS


class LoopNotOpen(RecorderError):
    """An event arrived for a loop that was never started or has ended."""

    reason = "LOOP_NOT_OPEN"
    code = code_pb2.FAILED_PRECONDITION

    def __init__(self, loop_id: str, state: str) -> None:
        ended = state in ("completed", "rejected", "aborted")
        what = f"has ended ({state})" if ended else f"is not open ({state})"
        super().__init__(f"loop {loop_id!r} {what}", loop_id=loop_id)
        self.loop_id = loop_id


class SequenceConflict(RecorderError):
    """A re-sent (loop_id, sequence) whose content differs from what is stored."""

    reason = "SEQUENCE_CONFLICT"
    code = code_pb2.ABORTED

    def __init__(self, loop_id: str, sequence: int, problem: str) -> None:
        super().__init__(
            f"loop {loop_id!r} sequence {sequence}: {problem}",
            loop_id=loop_id,
            sequence=sequence,
        )


class SequenceGap(RecorderError):
    """A numbered event skips ahead of the loop's next sequence."""

    reason = "SEQUENCE_GAP"
    code = code_pb2.FAILED_PRECONDITION

    def __init__(self, loop_id: str, sequence: int, expected: int) -> None:
        super().__init__(
            f"loop {loop_id!r}: sequence {sequence} sent, next is {expected}",
            loop_id=loop_id,
            sequence=sequence,
            expected=expected,
        )


class Locked(RecorderError):
    """The seed's SessionError::Locked: another live writer holds the session."""

    reason = "LOCKED"
    code = code_pb2.ABORTED

    def __init__(self, session_id: str, holder: str) -> None:
        super().__init__(
            f"session {session_id!r} is locked by another writer",
            session_id=session_id,
            holder=holder,
        )


class StorageFull(RecorderError):
    """The disk under the database is full; nothing of the write was kept."""

    reason = "STORAGE_FULL"
    code = code_pb2.RESOURCE_EXHAUSTED


class StorageUnavailable(RecorderError):
    """The store cannot take writes right now (I/O error, shutting down)."""

    reason = "STORAGE_UNAVAILABLE"
    code = code_pb2.UNAVAILABLE


class Internal(RecorderError):
    """An unexpected failure of the recorder itself (a bug): that job alone fails."""

    reason = "INTERNAL"
    code = code_pb2.INTERNAL


class FellBehind(RecorderError):
    """A WatchSessions subscriber stopped reading: its stream ends, saying from where
    to resume (ListSessions with `since` covers what it missed)."""

    reason = "FELL_BEHIND"
    code = code_pb2.RESOURCE_EXHAUSTED

    def __init__(self, backlog: int, last: Timestamp | None) -> None:
        since = last.ToJsonString() if last is not None else None
        resume = f"ListSessions(since={since})" if since else "ListSessions"
        super().__init__(
            f"subscriber fell {backlog} lifecycle events behind and was cut off; "
            f"watch again and catch up with {resume}",
            backlog=backlog,
            resume_since=since,
        )
