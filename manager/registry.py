"""Registry: the manager's soft-state view of benefactors, and striping maps. Pure: no I/O, no clock.

A benefactor is alive while its last register/heartbeat is younger than 3 heartbeat intervals.
Striping maps list alive benefactors by free memory, most first; a client cycles through them.
Callers pass `now` (monotonic seconds) so tests need neither sockets nor sleeps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

MISSED_HEARTBEATS = 3


@dataclass(frozen=True, slots=True)
class Stats:
    memory_capacity: int = 0
    memory_used: int = 0
    drain_backlog: int = 0
    chunk_count: int = 0
    drain_error: str = ""
    drained_bytes: int = 0

    @property
    def free(self) -> int:
        return max(0, self.memory_capacity - self.memory_used)


@dataclass(slots=True)
class BenefactorRecord:
    id: str
    address: str
    stats: Stats
    last_seen: float
    dead_reported: bool = False
    incarnation: int = 0
    receipt_key: bytes = b""
    leaving: bool = False  # stopping: drains what it holds, gets no new chunks
    domain: str = ""  # failure domain label ("" = its own)


@dataclass(frozen=True, slots=True)
class Placement:
    """One entry of a striping map."""

    id: str
    address: str


@dataclass(slots=True)
class Registry:
    heartbeat_interval: float
    _records: dict[str, BenefactorRecord] = field(default_factory=dict)

    @property
    def ttl(self) -> float:
        return MISSED_HEARTBEATS * self.heartbeat_interval

    def register(self, benefactor_id: str, address: str, stats: Stats, now: float, incarnation: int = 0,
                 receipt_key: bytes = b"", domain: str = "") -> None:
        self._records[benefactor_id] = BenefactorRecord(benefactor_id, address, stats, now, False, incarnation,
                                                        receipt_key, domain=domain)

    def heartbeat(self, benefactor_id: str, stats: Stats, now: float) -> bool:
        """Record a heartbeat; False if the benefactor is unknown or was declared dead (it must register)."""
        rec = self._records.get(benefactor_id)
        if rec is None or not self.is_alive(benefactor_id, now):
            return False
        rec.stats = stats
        rec.last_seen = now
        return True

    def is_alive(self, benefactor_id: str, now: float) -> bool:
        rec = self._records.get(benefactor_id)
        return rec is not None and now - rec.last_seen <= self.ttl

    def remove(self, benefactor_id: str) -> None:
        self._records.pop(benefactor_id, None)

    def get(self, benefactor_id: str) -> BenefactorRecord | None:
        return self._records.get(benefactor_id)

    def records(self) -> list[BenefactorRecord]:
        return list(self._records.values())

    def alive(self, now: float) -> list[BenefactorRecord]:
        return [r for r in self._records.values() if now - r.last_seen <= self.ttl]

    def newly_dead(self, now: float) -> list[BenefactorRecord]:
        """Benefactors that passed their TTL since the last call (for a log line each)."""
        out = []
        for rec in self._records.values():
            if not rec.dead_reported and now - rec.last_seen > self.ttl:
                rec.dead_reported = True
                out.append(rec)
            elif rec.dead_reported and now - rec.last_seen <= self.ttl:
                rec.dead_reported = False
        return out

    def striping_map(self, width: int, exclude: set[str], min_free: int, now: float) -> list[Placement]:
        """Up to `width` alive benefactors not in `exclude` with at least `min_free` bytes free."""
        candidates = [r for r in self.alive(now) if r.id not in exclude and r.stats.free >= min_free
                      and not r.leaving]
        candidates.sort(key=lambda r: (-r.stats.free, r.id))
        return [Placement(r.id, r.address) for r in candidates[:width]]

    def note_memory(self, benefactor_id: str, used: int) -> None:
        """The benefactor's memory in use as it reports it between heartbeats."""
        rec = self._records.get(benefactor_id)
        if rec is not None:
            rec.stats = dataclasses.replace(rec.stats, memory_used=min(rec.stats.memory_capacity, used))

    def note_used(self, benefactor_id: str, delta: int) -> None:
        """Account for bytes stored (+) or freed (-) since the last heartbeat, so maps see it at once."""
        rec = self._records.get(benefactor_id)
        if rec is not None:
            s = rec.stats
            used = min(s.memory_capacity, max(0, s.memory_used + delta))
            rec.stats = Stats(s.memory_capacity, used, s.drain_backlog, s.chunk_count, s.drain_error, s.drained_bytes)
