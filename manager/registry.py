"""Registry: the manager's soft-state view of benefactors, and striping maps. Pure: no I/O, no clock.

A benefactor is alive while its last register/heartbeat is younger than 3 heartbeat intervals,
counting from when the heartbeat arrived (not when the manager got round to it), and never from
before the manager itself last resumed after a stall: a manager that could not run cannot tell
silence from its own absence.
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
    awake_since: float = float("-inf")  # nobody is judged by silence from before this

    @property
    def ttl(self) -> float:
        return MISSED_HEARTBEATS * self.heartbeat_interval

    def register(self, benefactor_id: str, address: str, stats: Stats, now: float, incarnation: int = 0,
                 receipt_key: bytes = b"", domain: str = "") -> None:
        self._records[benefactor_id] = BenefactorRecord(benefactor_id, address, stats, now, False, incarnation,
                                                        receipt_key, domain=domain)

    def heard(self, benefactor_id: str, incarnation: int, now: float) -> None:
        """A heartbeat arrived at `now`. Safe without the caller's lock (one attribute store under the
        GIL), so that liveness is recorded before the heartbeat waits for anything."""
        rec = self._records.get(benefactor_id)
        if rec is not None and rec.incarnation == incarnation and not rec.dead_reported and now > rec.last_seen:
            rec.last_seen = now

    def heartbeat(self, benefactor_id: str, stats: Stats, now: float) -> bool:
        """Record a heartbeat that arrived at `now`; False if the benefactor is unknown or was declared
        dead (it must register)."""
        rec = self._records.get(benefactor_id)
        if rec is None or not self._alive(rec, now):
            return False
        rec.stats = stats
        rec.last_seen = max(rec.last_seen, now)
        return True

    def resumed(self, now: float) -> None:
        """The manager could not run for a while (paused, swapped out, starved): silence until now
        says nothing about the benefactors, so each gets a full TTL from now to be heard."""
        self.awake_since = now

    def _silent(self, rec: BenefactorRecord, now: float) -> float:
        return now - max(rec.last_seen, self.awake_since)

    def _alive(self, rec: BenefactorRecord, now: float) -> bool:
        return not rec.dead_reported and self._silent(rec, now) <= self.ttl  # declared dead: until it registers

    def is_alive(self, benefactor_id: str, now: float) -> bool:
        rec = self._records.get(benefactor_id)
        return rec is not None and self._alive(rec, now)

    def remove(self, benefactor_id: str) -> None:
        self._records.pop(benefactor_id, None)

    def get(self, benefactor_id: str) -> BenefactorRecord | None:
        return self._records.get(benefactor_id)

    def records(self) -> list[BenefactorRecord]:
        return list(self._records.values())

    def alive(self, now: float) -> list[BenefactorRecord]:
        return [r for r in self._records.values() if self._alive(r, now)]

    def newly_dead(self, now: float) -> list[BenefactorRecord]:
        """Benefactors that passed their TTL since the last call (for a log line each)."""
        out = []
        for rec in self._records.values():
            if not rec.dead_reported and self._silent(rec, now) > self.ttl:
                rec.dead_reported = True
                out.append(rec)
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
