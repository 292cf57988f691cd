"""Loads: chunks of persisted versions brought back into memory from the PFS (prefetch).

A prefetch names chunks that a version wants in memory and that no benefactor holds; each is
loaded by one benefactor, which reads its chunk file from the PFS, verifies it and holds it (a copy
order with a drained name). This module only decides who loads what and keeps track: no sockets.
Loads are spread over the live benefactors by free memory, a chunk is never ordered twice while a
load of it is under way, an order not reported within its deadline may be ordered again, and a
chunk that failed is not ordered again until the next prefetch asks for it anew (reads fall back to
the PFS meanwhile): a deployment too small for a checkpoint reports it, it does not loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from memstage.manager.chunkindex import IndexKey

DEADLINE_S = 60.0  # a load not reported by then is ordered again (its benefactor died or restarted)


@dataclass(slots=True)
class Loads:
    pending: dict[IndexKey, tuple[str, int, float]] = field(default_factory=dict)  # -> (benefactor, gen, deadline)
    failed: dict[IndexKey, str] = field(default_factory=dict)  # -> why
    loaded_bytes: int = 0  # since the start (a metric)

    def plan(self, wanted: Iterable[tuple[IndexKey, str]], free: dict[str, int], now: float
             ) -> list[tuple[IndexKey, str, str]]:
        """(chunk, its drained name) wanted in memory -> (chunk, benefactor to load it, drained name)
        for those not pending or failed, each on the benefactor with the most room left (the room
        taken by each load counted), none where it does not fit."""
        room = dict(free)
        out: list[tuple[IndexKey, str, str]] = []
        for ik, drained in wanted:
            if ik in self.pending or ik in self.failed or not drained:
                continue
            if not room:
                break
            target = max(room, key=lambda b: (room[b], b))
            if room[target] < ik[1].length:
                self.failed[ik] = "no benefactor has room for it"
                continue
            room[target] -= ik[1].length
            out.append((ik, target, drained))
        return out

    def started(self, ik: IndexKey, benefactor: str, gen: int, now: float) -> None:
        self.pending[ik] = (benefactor, gen, now + DEADLINE_S)

    def finished(self, ik: IndexKey, benefactor: str, gen: int, error: str) -> bool:
        """A benefactor's report of a load. Returns whether it was the pending one (a late report
        of an expired order is not)."""
        if self.pending.get(ik, ("", 0, 0.0))[:2] != (benefactor, gen):
            return False
        del self.pending[ik]
        if error:
            self.failed[ik] = error
        else:
            self.loaded_bytes += ik[1].length
        return True

    def expire(self, now: float) -> list[IndexKey]:
        """Orders past their deadline stop being pending (and may be ordered again)."""
        late = [ik for ik, (_, _, deadline) in self.pending.items() if deadline <= now]
        for ik in late:
            del self.pending[ik]
        return late

    def gone(self, benefactor: str) -> None:
        """A benefactor died: its loads will not be reported."""
        for ik in [ik for ik, (bf, _, _) in self.pending.items() if bf == benefactor]:
            del self.pending[ik]

    def retry(self, chunks: Sequence[IndexKey]) -> None:
        """A new prefetch: chunks that failed before are tried again."""
        for ik in chunks:
            self.failed.pop(ik, None)
