"""ChunkIndex: the manager's in-memory index of a deployment's chunks. Pure: no SQL, no locks, no I/O.

Per chunk (and namespace) it keeps `refs`, the versions whose map contains it (once per version),
`mem_refs`, those of them still kept in memory (keep_versions), where it is held (benefactor ->
generation of the hold: a free names it, so a late free never takes a copy held again since) and,
once drained, its chunk file relative to the PFS root. A chunk leaves benefactor memory when
mem_refs reaches 0 (its locations are dropped and returned, to be freed) and the index when refs
does. The Catalog persists every change and serializes access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field

from memstage.chunks import HOLE_HASH, ChunkKey

IndexKey = tuple[str, ChunkKey]
Holders = dict[str, int]  # benefactor id -> generation of its hold


@dataclass(slots=True)
class Entry:
    refs: int = 0
    mem_refs: int = 0
    drained: str = ""
    locations: Holders = field(default_factory=dict)


class ChunkIndex:
    def __init__(self) -> None:
        self._entries: dict[IndexKey, Entry] = {}
        # Per benefactor: [chunks, bytes] of the copies located there, kept as locations change, so
        # status reports what is held as of now rather than as of the last heartbeat.
        self._held: dict[str, list[int]] = {}
        self.location_count = 0  # copies located, over every benefactor

    def _count(self, benefactor: str, key: IndexKey, sign: int) -> None:
        held = self._held.setdefault(benefactor, [0, 0])
        held[0] += sign
        held[1] += sign * key[1].length
        self.location_count += sign

    def held_stats(self) -> dict[str, tuple[int, int]]:
        """(chunks, bytes) of the copies located on each benefactor."""
        return {bf: (c, n) for bf, (c, n) in self._held.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: IndexKey) -> bool:
        return key in self._entries

    def items(self) -> Iterator[tuple[IndexKey, Entry]]:
        return iter(self._entries.items())

    def get(self, key: IndexKey) -> Entry | None:
        return self._entries.get(key)

    def refs(self, key: IndexKey) -> int:
        e = self._entries.get(key)
        return e.refs if e else 0

    def mem_refs(self, key: IndexKey) -> int:
        e = self._entries.get(key)
        return e.mem_refs if e else 0

    def drained(self, key: IndexKey) -> str:
        e = self._entries.get(key)
        return e.drained if e else ""

    def locations(self, key: IndexKey) -> Holders:
        e = self._entries.get(key)
        return dict(e.locations) if e else {}

    def readable(self, key: IndexKey, alive: set[str]) -> bool:
        """The namespace holds this chunk where a reader can get it: a live benefactor, or the PFS."""
        e = self._entries.get(key)
        if e is None or e.refs <= 0:
            return False
        return bool(e.drained) or not alive.isdisjoint(e.locations)

    # -- changes (the caller persists what they return) -----------------------------------------
    def load(self, key: IndexKey, refs: int, mem_refs: int, drained: str) -> None:
        self._entries[key] = Entry(refs, mem_refs, drained or "")

    def bump(self, key: IndexKey, refs: int, mem_refs: int) -> tuple[Entry | None, Holders]:
        """Change a chunk's counts. Returns its entry (None once refs reaches 0 and it left the index)
        and the locations dropped because no in-memory version needs it any more."""
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = Entry()
        e.refs += refs
        e.mem_refs += mem_refs
        dropped: Holders = {}
        if e.mem_refs <= 0 or e.refs <= 0:
            dropped, e.locations = e.locations, {}
            for bf in dropped:
                self._count(bf, key, -1)
        if e.refs <= 0:
            del self._entries[key]
            return None, dropped
        return e, dropped

    def add_version(self, namespace: str, chunks: Sequence[tuple[ChunkKey, Sequence[str]]], gen: int
                    ) -> tuple[list[tuple[ChunkKey, str, int]], dict[str, list[tuple[ChunkKey, int]]]]:
        """A new version: each distinct chunk counts once more in refs and mem_refs, and each copy it
        confirms is located (copies new to the index at `gen`, one generation per commit: a free
        names a chunk and a generation). Returns the new locations (chunk, benefactor, generation)
        and, per benefactor, the holds to order there (chunk, generation). One loop, as a commit
        of a 1 GiB file passes a thousand chunks through it."""
        entries, touched = self._entries, set()
        located: list[tuple[ChunkKey, str, int]] = []
        holds: dict[str, list[tuple[ChunkKey, int]]] = {}
        for key, locs in chunks:
            if key.hash == HOLE_HASH:
                continue
            ik = (namespace, key)
            e = entries.get(ik)
            if e is None:
                e = entries[ik] = Entry()
            if ik not in touched:
                touched.add(ik)
                e.refs += 1
                e.mem_refs += 1
            for bf in locs:
                held = e.locations.get(bf)
                if held is None:
                    held = e.locations[bf] = gen
                    self._count(bf, ik, 1)
                    located.append((key, bf, gen))
                hold = holds.get(bf)
                if hold is None:
                    hold = holds[bf] = []
                hold.append((key, held))
        return located, holds

    def first_holder(self, key: IndexKey, alive: Set[str]) -> str:
        """The live benefactor of lowest id that holds the chunk, or ""."""
        e = self._entries.get(key)
        if e is None:
            return ""
        return min((bf for bf in e.locations if bf in alive), default="")

    def add_location(self, key: IndexKey, benefactor: str, gen: int) -> bool:
        """Record a confirmed copy (only of a chunk some in-memory version needs); False if not recorded."""
        e = self._entries.get(key)
        if e is None or e.mem_refs <= 0:
            return False
        if benefactor not in e.locations:
            self._count(benefactor, key, 1)
        e.locations[benefactor] = gen
        return True

    def remove_location(self, key: IndexKey, benefactor: str) -> int:
        """Forget one copy; returns its generation (0 if there was none)."""
        e = self._entries.get(key)
        if e is None or benefactor not in e.locations:
            return 0
        self._count(benefactor, key, -1)
        return e.locations.pop(benefactor)

    def set_drained(self, key: IndexKey, path: str) -> bool:
        e = self._entries.get(key)
        if e is None or e.drained:
            return False
        e.drained = path
        return True

    def held_by(self, benefactor: str) -> list[IndexKey]:
        return [k for k, e in self._entries.items() if benefactor in e.locations]

    def stored_bytes(self) -> dict[str, int]:
        """Distinct chunk bytes an in-memory version references, per namespace."""
        out: dict[str, int] = {}
        for (ns, key), e in self._entries.items():
            if e.mem_refs > 0:
                out[ns] = out.get(ns, 0) + key.length
        return out
