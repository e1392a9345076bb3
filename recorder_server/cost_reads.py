"""Cost queries: the stored loops and turns a cost needs, priced by cost.py.

Records and turns are parsed as their pricing views (session.proto), which
leave the messages undecoded. One `CostReader` serves one request and remembers
what it priced, so a sub-agent tree or a page of sessions reads each loop once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import aiosqlite
from agent_recorder.v1 import recorder_service_pb2 as api
from agent_recorder.v1 import session_pb2

from recorder_server.cost import PriceBook, Total, price_loop, total_of

# Ids per IN (...) query, well under SQLite's limit on bound parameters.
CHUNK = 500
# Spawn refs followed at most this deep (a guard against a malformed store).
MAX_TREE_DEPTH = 64


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


class CostReader:
    """Prices sessions and loops read on one connection."""

    def __init__(self, conn: aiosqlite.Connection, book: PriceBook) -> None:
        self.conn = conn
        self.book = book
        self._loops: dict[str, list[tuple[api.LoopCost, Total]]] = {}
        self._children: dict[str, list[str]] = {}
        self._agents: dict[str, str] = {}

    async def loops(
        self, loops: Sequence[tuple[str, bytes]]
    ) -> list[tuple[session_pb2.LoopPricingView, api.LoopCost, Total]]:
        """(loop_id, record) rows priced, in the order given."""
        views = [session_pb2.LoopPricingView.FromString(bytes(record)) for _, record in loops]
        turns: dict[str, list[session_pb2.TurnPricingView]] = defaultdict(list)
        for chunk in _chunks([loop_id for loop_id, _ in loops]):
            marks = ",".join("?" * len(chunk))
            rows = await self.conn.execute_fetchall(
                f"SELECT loop_id, body FROM turns WHERE loop_id IN ({marks}) "
                "ORDER BY loop_id, turn_no",
                list(chunk),
            )
            for loop_id, body in rows:
                turns[loop_id].append(session_pb2.TurnPricingView.FromString(bytes(body)))
        priced = []
        for (loop_id, _), view in zip(loops, views, strict=True):
            cost, total = price_loop(self.book, view, turns.get(loop_id, ()))
            priced.append((view, cost, total))
        return priced

    async def load_sessions(self, session_ids: Iterable[str]) -> None:
        """Prices the loops of sessions not priced yet, and notes whom each spawned."""
        wanted = [sid for sid in dict.fromkeys(session_ids) if sid not in self._loops]
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            for sid, agent in await self.conn.execute_fetchall(
                f"SELECT session_id, agent_id FROM sessions WHERE session_id IN ({marks})",
                list(chunk),
            ):
                self._agents[sid] = agent
            rows = list(
                await self.conn.execute_fetchall(
                    f"SELECT session_id, loop_id, record FROM loops WHERE session_id IN ({marks}) "
                    "ORDER BY position",
                    list(chunk),
                )
            )
            for sid in chunk:
                self._loops[sid] = []
                self._children[sid] = []
            priced = await self.loops([(loop_id, record) for _, loop_id, record in rows])
            for (sid, _, _), (view, cost, total) in zip(rows, priced, strict=True):
                self._loops[sid].append((cost, total))
                for ref in view.child_loop_refs:
                    child = ref.child_session_id
                    if child and child != sid and child not in self._children[sid]:
                        self._children[sid].append(child)

    def session_total(self, session_id: str) -> Total:
        return total_of(total for _, total in self._loops.get(session_id, ()))

    async def tree(self, session_id: str) -> tuple[Total, list[api.SpawnedSessionCost]]:
        """The session plus every stored session spawned from it, transitively."""
        await self.load_sessions([session_id])
        seen = {session_id}
        spawned: list[api.SpawnedSessionCost] = []
        total = self.session_total(session_id)
        layer = [(session_id, child) for child in self._children.get(session_id, ())]
        for _ in range(MAX_TREE_DEPTH):
            layer = [(parent, child) for parent, child in layer if child not in seen]
            if not layer:
                break
            await self.load_sessions(child for _, child in layer)
            next_layer = []
            for parent, child in layer:
                if child in seen or child not in self._agents:
                    continue  # spawned but not (yet) stored: nothing recorded to price
                seen.add(child)
                own = self.session_total(child)
                total = total + own
                spawned.append(
                    api.SpawnedSessionCost(
                        session_id=child,
                        agent_id=self._agents[child],
                        parent_session_id=parent,
                        cost=own.to_proto(),
                    )
                )
                next_layer += [(child, grandchild) for grandchild in self._children[child]]
            layer = next_layer
        _fill_subtrees(spawned, {sid: self.session_total(sid) for sid in seen})
        return total, spawned

    async def session_cost(self, session_id: str) -> api.SessionCost:
        tree, spawned = await self.tree(session_id)
        loops = self._loops.get(session_id, [])
        return api.SessionCost(
            session=self.session_total(session_id).to_proto(),
            tree=tree.to_proto(),
            loops=[cost for cost, _ in loops],
            spawned=spawned,
        )


def _fill_subtrees(spawned: list[api.SpawnedSessionCost], own: dict[str, Total]) -> None:
    """Each spawned session's `tree`: itself and its descendants. Children come after
    their parents in `spawned`, so a backward pass has folded them in first."""
    trees = dict(own)
    for entry in reversed(spawned):
        subtree = trees[entry.session_id]
        entry.tree.CopyFrom(subtree.to_proto())
        trees[entry.parent_session_id] = trees[entry.parent_session_id] + subtree
