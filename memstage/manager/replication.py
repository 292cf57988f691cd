"""Replicator: which chunk copies to make next, so that every chunk a namespace still needs in memory
has as many live copies as its redundancy policy asks. Pure: no I/O, no clock of its own.

The same plan serves both new versions (copies made right after the commit, off the writer's path)
and rebuild (a benefactor died: its chunks are copied again from survivors). A copy is an order to
the target benefactor to fetch the chunk from a live holder; it stays pending until the target
reports it, or until it times out and is planned again. Targets are live benefactors not holding
the chunk, with room for it, most free memory first; copies in flight are bounded so ingest keeps
its share of the benefactors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memstage.manager.chunkindex import IndexKey


@dataclass(frozen=True, slots=True)
class Pending:
    target: str
    gen: int
    deadline: float


class Replicator:
    def __init__(self, max_in_flight: int = 256, timeout: float = 30.0) -> None:
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._pending: dict[IndexKey, list[Pending]] = {}
        self.copies_made = 0
        self.copies_failed = 0
        self.shared_domains = 0  # copies of the last plan that share a domain with another copy

    @property
    def in_flight(self) -> int:
        return sum(len(p) for p in self._pending.values())

    def expire(self, now: float) -> None:
        """Copies not reported in time are forgotten (planned again if still needed)."""
        for ik in list(self._pending):
            left = [p for p in self._pending[ik] if p.deadline > now]
            if left:
                self._pending[ik] = left
            else:
                del self._pending[ik]

    def plan(self, needs: Sequence[tuple[IndexKey, Sequence[str], Sequence[str]]], copies: dict[str, int],
             free: dict[str, int], domains: dict[str, str] | None = None) -> list[tuple[IndexKey, str, str]]:
        """needs: (chunk, live holders, all holders). free: live benefactors that may take copies ->
        bytes free. domains: benefactor -> failure domain (a copy goes to a domain none of the chunk's
        live copies is in, while there is one with room; else to another benefactor, counted in
        shared_domains). Returns (chunk, source, target) for the copies to order now."""
        room = dict(free)
        domain = domains or {}
        budget = self.max_in_flight - self.in_flight
        self.shared_domains = 0
        out: list[tuple[IndexKey, str, str]] = []
        for ik, live, holders in needs:
            if budget <= 0:
                break
            pending = self._pending.get(ik, [])
            missing = copies.get(ik[0], 1) - len(live) - len(pending)
            if missing <= 0 or not live:
                continue
            taken = set(holders) | {p.target for p in pending}
            used = {domain.get(bf, bf) for bf in [*live, *(p.target for p in pending)]}
            size = ik[1].length
            for i in range(min(missing, budget)):
                fits = [bf for bf, n in room.items() if bf not in taken and n >= size]
                if not fits:
                    break
                # Most free memory first, in a domain no copy of this chunk is in yet if there is one.
                target = min(fits, key=lambda bf: (domain.get(bf, bf) in used, -room[bf], bf))
                if domain.get(target, target) in used:
                    self.shared_domains += 1
                out.append((ik, live[i % len(live)], target))
                taken.add(target)
                used.add(domain.get(target, target))
                room[target] -= size
                budget -= 1
        return out

    def started(self, ik: IndexKey, target: str, gen: int, now: float) -> None:
        self._pending.setdefault(ik, []).append(Pending(target, gen, now + self.timeout))

    def finished(self, ik: IndexKey, target: str, ok: bool) -> None:
        left = [p for p in self._pending.get(ik, []) if p.target != target]
        if left:
            self._pending[ik] = left
        else:
            self._pending.pop(ik, None)
        if ok:
            self.copies_made += 1
        else:
            self.copies_failed += 1
