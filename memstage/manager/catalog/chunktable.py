"""The chunk index as the catalog's callers read it, and how well each chunk is protected."""

from __future__ import annotations

from collections.abc import Sequence

from memstage.chunks import ChunkKey
from memstage.manager.catalog.records import Names, unpack_map
from memstage.manager.catalog.stripetable import StripeTable
from memstage.manager.chunkindex import Holders, IndexKey
from memstage.manager.protection import PROTECTED, by_chunks, chunk_short, settled, tally
from memstage.redundancy import Redundancy


class ChunkTable(StripeTable):
    def memory_bytes(self, namespace: str) -> int:
        """Distinct bytes of the namespace's chunks that an in-memory version needs."""
        with self._lock:
            return self._index.memory_bytes(namespace)

    def memory_added(self, namespace: str, keys: Sequence[ChunkKey]) -> tuple[int, int]:
        """(the namespace's in-memory bytes, the bytes a version of `keys` would add to them)."""
        with self._lock:
            new = {k for k in keys if not k.is_hole and self._index.mem_refs((namespace, k)) <= 0}
            return self._index.memory_bytes(namespace), sum(k.length for k in new)
    # -- chunk index -------------------------------------------------------------------------
    def refs(self, key: IndexKey) -> int:
        with self._lock:
            return self._index.refs(key)

    def locations(self, key: IndexKey) -> Holders:
        with self._lock:
            return self._index.locations(key)

    def drained(self, key: IndexKey) -> str:
        with self._lock:
            return self._index.drained(key)

    def chunk_refs(self, namespace: str, keys: Sequence[ChunkKey]) -> list[tuple[Holders, str]]:
        """Locations and drained path of each chunk, read together under the lock."""
        with self._lock:
            return [(self._index.locations((namespace, k)), self._index.drained((namespace, k))) for k in keys]

    def find(self, namespace: str, keys: Sequence[ChunkKey], alive: Names) -> list[bool]:
        with self._lock:
            return [self._index.readable((namespace, k), alive) for k in keys]

    def held_stats(self) -> dict[str, tuple[int, int]]:
        """(chunks, bytes) that committed versions hold on each benefactor, as of now."""
        with self._lock:
            return self._index.held_stats()

    def check_held(self, benefactor_id: str, held: Sequence[tuple[IndexKey, int]]
                   ) -> tuple[list[tuple[IndexKey, int]], list[tuple[IndexKey, int]]]:
        """Compare what a benefactor reports holding (key, generation of its hold) with the index.
        Returns (holds to send again: copies the index locates there at a newer generation; frees:
        copies held there that no version locates there, at the reported generation)."""
        hold, free = [], []
        with self._lock:
            for ik, gen in held:
                mine = self._index.locations(ik).get(benefactor_id)
                if mine is None:
                    if gen:
                        free.append((ik, gen))
                elif mine != gen:
                    hold.append((ik, mine))
        return hold, free

    def under_protected(self, copies: dict[str, int], alive: Names) -> list[tuple[IndexKey, list[str], list[str]]]:
        """Chunks still needed in memory and not on the PFS, in a namespace keeping `copies[ns]` copies,
        with fewer live copies than that and at least one: (key, live holders, every holder)."""
        with self._lock:
            # (Drained chunks are left out: a lost copy is read from the PFS, not rebuilt.)
            return list(self._index.short_held({ns: n for ns, n in copies.items() if n >= 2}, alive))

    def add_copy(self, ik: IndexKey, benefactor: str, gen: int) -> bool:
        """A copy made on `benefactor` at `gen` becomes a location (at the newest generation it is
        held there), if a version still needs the chunk in memory (else False: the caller orders it
        freed)."""
        ns, key = ik
        with self._lock:
            entry = self._index.get(ik)
            if entry is None or entry.mem_refs <= 0:
                return False
            if entry.locations.get(benefactor, 0) >= gen:
                return True  # a late report of a copy already recorded at a newer generation
            # (A second copy there, ordered before the first was recorded, holds it at the newer
            # generation: the location follows, so that a free names the hold the benefactor has.)
            with self._transaction():
                self._index.add_location(ik, benefactor, gen)
                self._log().add(ns, key, benefactor, gen)
        return True

    def availability(self, namespace: str, keys: Sequence[ChunkKey], alive: Names) -> tuple[bool, bool]:
        """(every chunk held by a live benefactor, every chunk readable now: held, on the PFS, or
        rebuildable from its stripe)."""
        held = readable = True
        with self._lock:
            for key in set(keys):
                if key.is_hole:
                    continue
                ik = (namespace, key)
                if any(bf in alive for bf in self._index.locations(ik)):
                    continue
                held = False
                if not self._index.drained(ik) and not self._recoverable(ik, alive):
                    readable = False
                    break
        return held, readable

    def version_protected(self, namespace: str, path: str, version: int, redundancy: Redundancy,
                          alive: Names) -> bool:
        """The version has what its policy asks (or is on the PFS); lost versions are not."""
        with self._lock:
            row = self._db.execute("SELECT chunk_map, lost, persisted FROM versions WHERE ns=? AND path=? AND "
                                   "version=?", (namespace, path, version)).fetchone()
            if row is None:
                return False
            state = settled(bool(row[1]), bool(row[2])) or by_chunks(self._short(namespace, row[0], redundancy,
                                                                                 alive))
            return state == PROTECTED

    def _short(self, namespace: str, blob: bytes, redundancy: Redundancy, alive: Names) -> bool:
        """(under the lock) Some chunk of the map lacks the protection the policy asks."""
        for key in set(unpack_map(blob)):
            if key.is_hole:
                continue
            ik = (namespace, key)
            if chunk_short(redundancy, bool(self._index.drained(ik)),
                           sum(1 for bf in self._index.locations(ik) if bf in alive),
                           (not self._spread(st, alive).rebuild for st in self._stripes.of(ik))):
                return True
        return False

    def protection(self, namespace: str, redundancy: Redundancy, alive: Names) -> tuple[int, int, int]:
        """Versions of a namespace still in memory: (protected, degraded, lost). Protected: every
        chunk has `copies` live copies, or is in a stripe with all its members, or is on the PFS."""
        with self._lock:
            rows = self._db.execute("SELECT chunk_map, lost, persisted FROM versions WHERE ns=? AND in_memory=1",
                                    (namespace,)).fetchall()
        states: list[str] = []
        # Status and every /metrics scrape ask: the lock is taken a batch of versions at a time, so
        # that commits go on meanwhile, and maps without stripes are checked on their bytes.
        for start in range(0, len(rows), 64):
            with self._lock:
                numbers = self._index.numbers(alive)
                for blob, is_lost, persisted in rows[start:start + 64]:
                    state = settled(bool(is_lost), bool(persisted))
                    if state is None:
                        short = (self._short(namespace, blob, redundancy, alive) if redundancy.parity else
                                 self._index.short_of(namespace, blob, redundancy.copies, numbers))
                        state = by_chunks(short)
                    states.append(state)
        return tally(states)
