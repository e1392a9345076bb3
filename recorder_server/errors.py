"""The recorder's failure kinds, free of gRPC.

The core raises these; `status.py` is the one place that maps them to gRPC status
codes. Each carries a machine-readable reason and the ids it is about, so a client
can tell *which* field, loop or session was refused.
"""

from __future__ import annotations


class RecorderError(Exception):
    """Base of every refusal the recorder answers with a status."""

    reason = "RECORDER_ERROR"

    def __init__(self, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items() if v is not None}


class InvalidArgument(RecorderError):
    """Bad input: the named field is missing, malformed or out of bounds."""

    reason = "INVALID_FIELD"

    def __init__(self, field: str, problem: str, **metadata: object) -> None:
        super().__init__(f"{field}: {problem}", field=field, **metadata)
        self.field = field


class TooLarge(RecorderError):
    """A request or value exceeds a configured size limit."""

    reason = "TOO_LARGE"


class NotFound(RecorderError):
    """The seed's SessionError::NotFound, also used for loops."""

    reason = "NOT_FOUND"


class AlreadyExists(RecorderError):
    reason = "ALREADY_EXISTS"


class LoopNotOpen(RecorderError):
    """An event arrived for a loop that was never started or has ended."""

    reason = "LOOP_NOT_OPEN"

    def __init__(self, loop_id: str, state: str) -> None:
        super().__init__(f"loop {loop_id!r} is not open ({state})", loop_id=loop_id)
        self.loop_id = loop_id


class SequenceConflict(RecorderError):
    """A re-sent (loop_id, sequence) whose content differs from what is stored."""

    reason = "SEQUENCE_CONFLICT"

    def __init__(self, loop_id: str, sequence: int, problem: str) -> None:
        super().__init__(
            f"loop {loop_id!r} sequence {sequence}: {problem}",
            loop_id=loop_id,
            sequence=sequence,
        )


class SequenceGap(RecorderError):
    """A numbered event skips ahead of the loop's next sequence."""

    reason = "SEQUENCE_GAP"

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

    def __init__(self, session_id: str, holder: str) -> None:
        super().__init__(
            f"session {session_id!r} is locked by another writer",
            session_id=session_id,
            holder=holder,
        )


class StorageFull(RecorderError):
    """The disk under the database is full; nothing of the write was kept."""

    reason = "STORAGE_FULL"


class StorageUnavailable(RecorderError):
    """The store cannot take writes right now (I/O error, shutting down)."""

    reason = "STORAGE_UNAVAILABLE"
