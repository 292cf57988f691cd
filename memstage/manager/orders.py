"""OrderQueues: per benefactor, the manager's orders waiting to be fetched. Pure: no I/O.

An order stays queued until the benefactor acknowledges its sequence number (with its next fetch),
so a lost reply costs a repeat, never an order. A benefactor that comes back as a new incarnation
starts with an empty queue: the old process's chunks are gone with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memstage.chunks import HELD_PACKED, ChunkKey, first, second
from memstage.proto import manager_pb2

MAX_BATCH = 256  # orders per fetch


@dataclass(slots=True)
class _Queue:
    next_seq: int = 1
    orders: list[manager_pb2.Order] = field(default_factory=list)


def _packed_holds(hold: list[tuple[ChunkKey, int]]) -> dict[str, Any]:
    """An order's holds as the fields of the shortest form that fits: 16 bytes per chunk when all
    share a length and a generation (a commit's new chunks), else 32."""
    keys, gens = zip(*hold, strict=True)  # a commit holds a thousand chunks: no Python call per chunk
    lengths = set(map(second, keys))
    if len(lengths) == 1 and len(set(gens)) == 1:
        return {"hold_hashes": b"".join(map(first, keys)), "hold_length": lengths.pop(), "hold_gen": gens[0]}
    return {"hold_packed": b"".join(map(HELD_PACKED.pack, map(first, keys), map(second, keys), gens))}


class OrderQueues:
    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        # Benefactors whose count of orders waiting changed, when the caller asks to follow them
        # (and takes them): the manager's heartbeat process answers with that count. And those
        # given new orders (a subset): they are woken.
        self.changed: set[str] | None = None
        self.pushed: set[str] = set()

    def push(self, benefactor: str, namespace: str, *, session: int = 0,
             hold: list[tuple[ChunkKey, int]] | None = None, release: list[ChunkKey] | None = None,
             end_session: bool = False, free: list[tuple[ChunkKey, int]] | None = None,
             copy: list[tuple[ChunkKey, int, str, str]] | None = None,
             build: list[manager_pb2.CopyOrder] | None = None,
             load: list[tuple[ChunkKey, int, str]] | None = None, revoked: list[str] | None = None) -> None:
        """copy: (key, generation to hold it at, source id, source address). build: stripe members
        to compute (copy orders with a stripe). load: (key, generation, drained chunk file) to read
        from the PFS (prefetch)."""
        q = self._queues.setdefault(benefactor, _Queue())
        order = manager_pb2.Order(
            seq=q.next_seq, namespace=namespace, session=session, end_session=end_session,
            revoked_tokens=revoked or (),
            **(_packed_holds(hold) if hold else {}),
            release=[k.to_pb() for k in release or ()],
            free=[manager_pb2.HeldChunk(key=k.to_pb(), gen=g) for k, g in free or ()],
            copy=[manager_pb2.CopyOrder(key=k.to_pb(), gen=g, source_id=sid, source_address=addr)
                  for k, g, sid, addr in copy or ()] + list(build or ())
                 + [manager_pb2.CopyOrder(key=k.to_pb(), gen=g, drained=d) for k, g, d in load or ()])
        q.next_seq += 1
        q.orders.append(order)
        if self.changed is not None:
            self.changed.add(benefactor)
            self.pushed.add(benefactor)

    def take(self, benefactor: str, acked: int) -> list[manager_pb2.Order]:
        """Drop what was acknowledged; the next orders (at most MAX_BATCH), still queued until acked."""
        q = self._queues.get(benefactor)
        if q is None:
            return []
        if acked:
            before = len(q.orders)
            q.orders = [o for o in q.orders if o.seq > acked]
            if len(q.orders) != before and self.changed is not None:
                self.changed.add(benefactor)
        return q.orders[:MAX_BATCH]

    def waiting(self, benefactor: str) -> int:
        """Orders queued for the benefactor (fetched or not, until acknowledged)."""
        q = self._queues.get(benefactor)
        return len(q.orders) if q is not None else 0

    def last(self, benefactor: str) -> int:
        """The sequence number of the last order queued for the benefactor (0: none waits)."""
        q = self._queues.get(benefactor)
        return q.orders[-1].seq if q is not None and q.orders else 0

    def reset(self, benefactor: str) -> None:
        """A new incarnation: its orders start again from 1, and nothing old is carried out."""
        if self._queues.pop(benefactor, None) is not None and self.changed is not None:
            self.changed.add(benefactor)
