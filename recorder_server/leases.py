"""Rule 14 within one process: a session is written by one writer at a time.

A writer holds a lease on every session it has written to for as long as it has
a live Record stream and the session an open loop. The same writer id
reconnecting takes its leases back at once; when its last stream ends, its
leases are released, and so is a session whose loops have all ended (a
long-lived stream writing one session after another holds only the live ones).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from recorder_server.errors import Locked


class Leases:
    def __init__(self) -> None:
        self._holder: dict[str, str] = {}
        self._held: dict[str, set[str]] = {}
        self._streams: Counter[str] = Counter()

    def attach(self, writer_id: str) -> None:
        """A Record stream of this writer opened."""
        self._streams[writer_id] += 1

    def detach(self, writer_id: str) -> set[str]:
        """A Record stream ended; the writer's last one releases its leases (returned)."""
        self._streams[writer_id] -= 1
        if self._streams[writer_id] > 0:
            return set()
        del self._streams[writer_id]
        released = self._held.pop(writer_id, set())
        for session_id in released:
            self._holder.pop(session_id, None)
        return released

    def holder(self, session_id: str) -> str | None:
        """The live writer holding a session, if any."""
        return self._holder.get(session_id)

    def claim(self, writer_id: str, session_ids: Iterable[str]) -> None:
        """Refuse if another live writer holds any of these sessions; else hold them.

        Writers without a live stream (unary Append) are checked but hold nothing.
        """
        wanted = list(session_ids)
        for session_id in wanted:
            holder = self._holder.get(session_id)
            if holder is not None and holder != writer_id:
                raise Locked(session_id, holder)
        if writer_id and writer_id in self._streams:
            held = self._held.setdefault(writer_id, set())
            for session_id in wanted:
                self._holder[session_id] = writer_id
                held.add(session_id)

    def release(self, session_ids: Iterable[str]) -> None:
        """Sessions left without an open loop: any writer may continue them."""
        for session_id in session_ids:
            self.forget(session_id)

    def forget(self, session_id: str) -> None:
        """A deleted session has no lease."""
        holder = self._holder.pop(session_id, None)
        if holder is not None:
            self._held.get(holder, set()).discard(session_id)
