"""Registry: the manager's soft-state view of benefactors, and striping maps. Pure: no I/O, no clock.

A benefactor is alive while its last register/heartbeat is younger than 3 heartbeat intervals,
counting from when the heartbeat arrived (not when the manager got round to it), and never from
before the manager itself last resumed after a stall: a manager that could not run cannot tell
silence from its own absence.
Striping maps list alive benefactors by free memory minus what open write sessions have reserved
there, most first (a client cycles through them): each map reserves room on the benefactors it
names until its session ends, so concurrent writers spread over the pool instead of all getting the
same few. Maps come from a heap in O(width log N); the set of live benefactors is kept as deaths
and registrations happen, not recomputed per call. Callers pass `now` (monotonic seconds) so tests
need neither sockets nor sleeps.
"""

from __future__ import annotations

import dataclasses
import heapq
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
    # Heartbeats per second the manager aims at (0: the interval is fixed). With more benefactors
    # than heartbeat_interval x max_rate, the interval told to them stretches, and the TTL with it.
    max_rate: float = 0.0
    _records: dict[str, BenefactorRecord] = field(default_factory=dict)
    _told: float = 0.0  # the longest interval told recently (some benefactor may still beat at it)
    _told_at: float = float("-inf")
    awake_since: float = float("-inf")  # nobody is judged by silence from before this
    # Registered and not declared dead (kept by register, sweep and remove; hot paths read it).
    _live: set[str] = field(default_factory=set)
    _live_frozen: frozenset[str] | None = None
    _live_list: tuple[str, ...] = ()
    # Placement: (-(free - reserved), id, stamp); an entry whose stamp is not the id's latest is stale.
    _heap: list[tuple[int, str, int]] = field(default_factory=list)
    _stamps: dict[str, int] = field(default_factory=dict)
    _reserved: dict[str, int] = field(default_factory=dict)
    _stamp: int = 0

    def interval(self) -> float:
        """The heartbeat period for the current number of benefactors."""
        if self.max_rate <= 0:
            return self.heartbeat_interval
        return max(self.heartbeat_interval, len(self._records) / self.max_rate)

    def announce(self, now: float) -> float:
        """The period to tell a benefactor now (in its register or heartbeat reply). A shorter one
        than before is in force for the TTL only once every benefactor had a beat to hear it."""
        current = self.interval()
        if current >= self._told or now - self._told_at > self._told:
            self._told, self._told_at = current, now
        return current

    @property
    def ttl(self) -> float:
        return MISSED_HEARTBEATS * max(self.interval(), self._told)

    def register(self, benefactor_id: str, address: str, stats: Stats, now: float, incarnation: int = 0,
                 receipt_key: bytes = b"", domain: str = "") -> None:
        self._records[benefactor_id] = rec = BenefactorRecord(benefactor_id, address, stats, now, False, incarnation,
                                                              receipt_key, domain=domain)
        if benefactor_id not in self._live:
            self._live.add(benefactor_id)
            self._live_frozen = None
        self._place(rec)

    def _place(self, rec: BenefactorRecord) -> None:
        """(Re)index a benefactor for placement after its free memory or reservations changed."""
        self._stamp += 1
        self._stamps[rec.id] = self._stamp
        heapq.heappush(self._heap, (self._reserved.get(rec.id, 0) - rec.stats.free, rec.id, self._stamp))
        if len(self._heap) > 2 * len(self._records) + 64:  # mostly stale entries: rebuild
            self._heap = [(self._reserved.get(r.id, 0) - r.stats.free, r.id, self._stamps[r.id])
                          for r in self._records.values()]
            heapq.heapify(self._heap)

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
        moved = rec.stats.free != stats.free
        rec.stats = stats
        rec.last_seen = max(rec.last_seen, now)
        if moved:
            self._place(rec)
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
        self._stamps.pop(benefactor_id, None)
        self._reserved.pop(benefactor_id, None)
        self._unlive(benefactor_id)

    def _unlive(self, benefactor_id: str) -> None:
        if benefactor_id in self._live:
            self._live.discard(benefactor_id)
            self._live_frozen = None

    def live_ids(self) -> frozenset[str]:
        """Registered and not declared dead, as of the last sweep (one that just passed its TTL stays
        until the next): what commits and lookups check against, without a walk over the registry
        (a copy is made only after the set changed)."""
        if self._live_frozen is None:
            self._live_frozen = frozenset(self._live)
            self._live_list = ()
        return self._live_frozen

    def live_count(self) -> int:
        return len(self._live)

    def live_list(self) -> tuple[str, ...]:
        """live_ids() as a sequence (to sample from)."""
        live = self.live_ids()
        if len(self._live_list) != len(live):
            self._live_list = tuple(live)
        return self._live_list

    def get(self, benefactor_id: str) -> BenefactorRecord | None:
        return self._records.get(benefactor_id)

    def records(self) -> list[BenefactorRecord]:
        return list(self._records.values())

    def alive(self, now: float) -> list[BenefactorRecord]:
        return [r for r in self._records.values() if self._alive(r, now)]

    def newly_dead(self, now: float) -> list[BenefactorRecord]:
        """Benefactors that passed their TTL since the last call (for a log line each)."""
        # Silent for more than the TTL: heard before the cutoff and not since the manager resumed.
        # The sweep asks every second: one comparison per record (100,000 of them at scale).
        cutoff = now - self.ttl
        if self.awake_since >= cutoff:
            return []
        out = [rec for rec in self._records.values() if rec.last_seen < cutoff and not rec.dead_reported]
        for rec in out:
            rec.dead_reported = True
            self._unlive(rec.id)
        return out

    def striping_map(self, width: int, exclude: set[str], min_free: int, now: float, reserve: int = 0
                     ) -> list[Placement]:
        """Up to `width` alive benefactors not in `exclude` with at least `min_free` bytes free, most
        room after reservations first; `reserve` bytes are then reserved on each one named (give them
        back with release()). Reservations only order the choice: a deployment is full when memory
        is, not when writers have reserved it."""
        chosen: list[BenefactorRecord] = []
        aside: list[tuple[int, str, int]] = []
        while self._heap and len(chosen) < width:
            entry = heapq.heappop(self._heap)
            _, bf, stamp = entry
            rec = self._records.get(bf)
            if rec is None or self._stamps.get(bf) != stamp or rec.dead_reported:
                continue  # stale (a newer entry exists), gone, or dead (registering again indexes it)
            if bf in exclude or rec.leaving or rec.stats.free < min_free or not self._alive(rec, now):
                aside.append(entry)
                continue
            chosen.append(rec)
        for entry in aside:
            heapq.heappush(self._heap, entry)
        for rec in chosen:
            if reserve:
                self._reserved[rec.id] = self._reserved.get(rec.id, 0) + reserve
            self._place(rec)  # back in the heap (with less room when it reserved)
        return [Placement(r.id, r.address) for r in chosen]

    def release(self, reserved: dict[str, int]) -> None:
        """Give back reservations of a write session that ended."""
        for bf, nbytes in reserved.items():
            left = self._reserved.get(bf, 0) - nbytes
            if left > 0:
                self._reserved[bf] = left
            else:
                self._reserved.pop(bf, None)
            rec = self._records.get(bf)
            if rec is not None:
                self._place(rec)

    def reserved(self, benefactor_id: str) -> int:
        return self._reserved.get(benefactor_id, 0)

    def note_memory(self, benefactor_id: str, used: int) -> None:
        """The benefactor's memory in use as it reports it between heartbeats."""
        rec = self._records.get(benefactor_id)
        if rec is not None:
            rec.stats = dataclasses.replace(rec.stats, memory_used=min(rec.stats.memory_capacity, used))
            self._place(rec)

    def note_used(self, benefactor_id: str, delta: int) -> None:
        """Account for bytes stored (+) or freed (-) since the last heartbeat, so maps see it at once."""
        rec = self._records.get(benefactor_id)
        if rec is not None:
            s = rec.stats
            used = min(s.memory_capacity, max(0, s.memory_used + delta))
            rec.stats = Stats(s.memory_capacity, used, s.drain_backlog, s.chunk_count, s.drain_error, s.drained_bytes)
            self._place(rec)
