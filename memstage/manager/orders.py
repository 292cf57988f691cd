"""OrderQueues: the manager's orders to benefactors as messages (see delivery for how they travel).

An order names its namespace and what to hold, release, free, copy, build or load, in the shortest
form that fits; Delivery numbers it and keeps it until the benefactor acknowledges it.
"""

from __future__ import annotations

from typing import Any

from memstage.chunks import HELD_PACKED, ChunkKey, first, second
from memstage.manager.delivery import Delivery
from memstage.proto import manager_pb2


def _packed_holds(hold: list[tuple[ChunkKey, int]]) -> dict[str, Any]:
    """An order's holds as the fields of the shortest form that fits: 16 bytes per chunk when all
    share a length and a generation (a commit's new chunks), else 32."""
    keys, gens = zip(*hold, strict=True)  # a commit holds a thousand chunks: no Python call per chunk
    lengths = set(map(second, keys))
    if len(lengths) == 1 and len(set(gens)) == 1:
        return {"hold_hashes": b"".join(map(first, keys)), "hold_length": lengths.pop(), "hold_gen": gens[0]}
    return {"hold_packed": b"".join(map(HELD_PACKED.pack, map(first, keys), map(second, keys), gens))}


class OrderQueues(Delivery[manager_pb2.Order]):
    """Delivery of protobuf orders, built from what they carry."""

    def push(self, benefactor: str, namespace: str, *, session: int = 0,
             hold: list[tuple[ChunkKey, int]] | None = None, release: list[ChunkKey] | None = None,
             end_session: bool = False, free: list[tuple[ChunkKey, int]] | None = None,
             copy: list[tuple[ChunkKey, int, str, str]] | None = None,
             build: list[manager_pb2.CopyOrder] | None = None,
             load: list[tuple[ChunkKey, int, str]] | None = None, revoked: list[str] | None = None) -> None:
        """copy: (key, generation to hold it at, source id, source address). build: stripe members
        to compute (copy orders with a stripe). load: (key, generation, drained chunk file) to read
        from the PFS (prefetch)."""
        self.queue(benefactor, lambda seq: manager_pb2.Order(
            seq=seq, namespace=namespace, session=session, end_session=end_session,
            revoked_tokens=revoked or (),
            **(_packed_holds(hold) if hold else {}),
            release=[k.to_pb() for k in release or ()],
            free=[manager_pb2.HeldChunk(key=k.to_pb(), gen=g) for k, g in free or ()],
            copy=[manager_pb2.CopyOrder(key=k.to_pb(), gen=g, source_id=sid, source_address=addr)
                  for k, g, sid, addr in copy or ()] + list(build or ())
                 + [manager_pb2.CopyOrder(key=k.to_pb(), gen=g, drained=d) for k, g, d in load or ()]))

    def take(self, benefactor: str, acked: int) -> list[manager_pb2.Order]:
        """Drop what was acknowledged in this epoch; the next orders, still pending until acked."""
        return self.fetch(benefactor, self.epoch, acked)
