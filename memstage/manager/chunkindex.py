"""ChunkIndex: the manager's in-memory index of a deployment's chunks. Pure: no SQL, no locks, no I/O.

Per chunk (and namespace) it keeps `refs`, the versions whose map contains it (once per version),
`mem_refs`, those of them still kept in memory (keep_versions), where it is held (benefactor ->
generation of the hold: a free names it, so a late free never takes a copy held again since) and,
once drained, its chunk file relative to the PFS root. A chunk leaves benefactor memory when
mem_refs reaches 0 (its locations are dropped and returned, to be freed) and the index when refs
does. The Catalog persists every change and serializes access.

Compact, as a deployment holds millions of entries: an entry is a key mapped to a slot in parallel
arrays of counts, the one benefactor (by number) holding its copy and the generation of that hold.
Only chunks with several copies have a small dict of them, and only drained chunks a path. The key
is one int: length, namespace number and hash (length << 152 | ns << 128 | hash), 48 bytes as a
Python object for a chunk of up to 64 MiB, where the same 28 bytes as a bytes object take 64.
About 140 bytes per entry instead of ~550 for an object with a dict per chunk.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field

from memstage.chunks import HOLE_HASH, PACKED_KEY, ChunkKey, first, second

IndexKey = tuple[str, ChunkKey]
Holders = dict[str, int]  # benefactor id -> generation of its hold

_NS_SHIFT = 128  # the hash takes the bits below
_NS_BITS = 24
_LENGTH_SHIFT = _NS_SHIFT + _NS_BITS  # the length goes on top: a longer chunk only makes a larger int
_NS_MASK = (1 << _NS_BITS) - 1
_HASH_MASK = (1 << _NS_SHIFT) - 1
_from_bytes = int.from_bytes


def _ikey(ns: int, h: bytes, length: int) -> int | None:
    """The index key of a chunk; None for one that cannot be in the index (not a 16-byte hash, or a
    negative length), which must not alias another."""
    if len(h) != 16 or length < 0:
        return None
    return _prefix(ns, length) | _from_bytes(h, "big")


def _prefix(ns: int, length: int) -> int:
    """The key bits of a namespace and length (the hash goes below): commits reuse them per length."""
    return length << _LENGTH_SHIFT | ns << _NS_SHIFT


_NONE = -1  # no copy located
_MANY = -2  # several copies: the slot's dict in _many has them all


@dataclass(slots=True)
class Entry:
    """A copy of one entry, as read (changing it changes nothing in the index)."""

    refs: int = 0
    mem_refs: int = 0
    drained: str = ""
    locations: Holders = field(default_factory=dict)


class ChunkIndex:
    def __init__(self) -> None:
        self._ns: dict[str, int] = {}
        self._ns_names: list[str] = []
        self._bf: dict[str, int] = {}
        self._bf_names: list[str] = []
        self._slots: dict[int, int] = {}
        self._refs = array("i")
        self._mem = array("i")
        self._holder = array("i")  # benefactor number, _NONE or _MANY
        self._gen = array("q")
        self._many: dict[int, dict[int, int]] = {}  # slot -> {benefactor number: generation}
        self._drained: dict[int, str] = {}
        self._free: list[int] = []
        # Per namespace number: distinct bytes of chunks an in-memory version needs, kept as mem_refs
        # change (the namespace's memory quota is checked against it on every striping map).
        self._ns_mem: dict[int, int] = {}
        # Per benefactor: [chunks, bytes] of the copies located there, kept as locations change, so
        # status reports what is held as of now rather than as of the last heartbeat.
        self._held: dict[str, list[int]] = {}
        self.location_count = 0  # copies located, over every benefactor

    # -- keys and numbers ------------------------------------------------------------------------
    def _slot(self, key: IndexKey) -> int | None:
        ns = self._ns.get(key[0])
        k = None if ns is None else _ikey(ns, key[1].hash, key[1].length)
        return None if k is None else self._slots.get(k)

    def _key_for(self, key: IndexKey) -> int:
        """The key of a chunk to add (its namespace numbered if new)."""
        k = _ikey(self._ns_number(key[0]), key[1].hash, key[1].length)
        if k is None:
            raise ValueError(f"chunk {key[1]} cannot be indexed (it needs a 16-byte hash)")
        return k

    @staticmethod
    def _intern(numbers: dict[str, int], names: list[str], name: str) -> int:
        n = numbers.get(name)
        if n is None:
            n = numbers[name] = len(names)
            names.append(name)
        return n

    def _ns_number(self, namespace: str) -> int:
        n = self._intern(self._ns, self._ns_names, namespace)
        if n > _NS_MASK:
            raise ValueError(f"more than {_NS_MASK + 1} namespaces in the chunk index")
        return n

    def _bf_number(self, benefactor: str) -> int:
        return self._intern(self._bf, self._bf_names, benefactor)

    def _key_of(self, k: int) -> IndexKey:
        return self._ns_names[k >> _NS_SHIFT & _NS_MASK], ChunkKey((k & _HASH_MASK).to_bytes(16, "big"),
                                                                   k >> _LENGTH_SHIFT)

    def _new_slot(self, packed: int) -> int:
        if self._free:
            slot = self._free.pop()
            self._refs[slot] = self._mem[slot] = 0
            self._holder[slot] = _NONE
            self._gen[slot] = 0
        else:
            slot = len(self._refs)
            self._refs.append(0)
            self._mem.append(0)
            self._holder.append(_NONE)
            self._gen.append(0)
        self._slots[packed] = slot
        return slot

    def _holders(self, slot: int) -> dict[int, int]:
        """The slot's copies as {benefactor number: generation} (a new dict)."""
        h = self._holder[slot]
        if h == _NONE:
            return {}
        if h == _MANY:
            return dict(self._many[slot])
        return {h: self._gen[slot]}

    def _named(self, slot: int) -> Holders:
        names = self._bf_names
        return {names[b]: g for b, g in self._holders(slot).items()}

    def _set_holders(self, slot: int, holders: dict[int, int]) -> None:
        self._many.pop(slot, None)
        if not holders:
            self._holder[slot] = _NONE
            self._gen[slot] = 0
        elif len(holders) == 1:
            ((b, g),) = holders.items()
            self._holder[slot] = b
            self._gen[slot] = g
        else:
            self._holder[slot] = _MANY
            self._gen[slot] = 0
            self._many[slot] = holders

    def _count(self, benefactor: str, length: int, sign: int) -> None:
        held = self._held.get(benefactor)
        if held is None:
            held = self._held[benefactor] = [0, 0]
        held[0] += sign
        held[1] += sign * length
        self.location_count += sign

    # -- reading -----------------------------------------------------------------------------------
    def held_stats(self) -> dict[str, tuple[int, int]]:
        """(chunks, bytes) of the copies located on each benefactor."""
        return {bf: (c, n) for bf, (c, n) in self._held.items()}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: IndexKey) -> bool:
        return self._slot(key) is not None

    def _entry(self, slot: int) -> Entry:
        return Entry(self._refs[slot], self._mem[slot], self._drained.get(slot, ""), self._named(slot))

    def items(self) -> Iterator[tuple[IndexKey, Entry]]:
        """Every entry (copies, as read); the index must not change during the iteration."""
        for packed, slot in self._slots.items():
            yield self._key_of(packed), self._entry(slot)

    def get(self, key: IndexKey) -> Entry | None:
        slot = self._slot(key)
        return None if slot is None else self._entry(slot)

    def refs(self, key: IndexKey) -> int:
        slot = self._slot(key)
        return 0 if slot is None else self._refs[slot]

    def mem_refs(self, key: IndexKey) -> int:
        slot = self._slot(key)
        return 0 if slot is None else self._mem[slot]

    def drained(self, key: IndexKey) -> str:
        slot = self._slot(key)
        return "" if slot is None else self._drained.get(slot, "")

    def locations(self, key: IndexKey) -> Holders:
        slot = self._slot(key)
        return {} if slot is None else self._named(slot)

    def readable(self, key: IndexKey, alive: Set[str]) -> bool:
        """The namespace holds this chunk where a reader can get it: a live benefactor, or the PFS."""
        slot = self._slot(key)
        if slot is None or self._refs[slot] <= 0:
            return False
        if slot in self._drained:
            return True
        names = self._bf_names
        return any(names[b] in alive for b in self._holders(slot))

    def first_holder(self, key: IndexKey, alive: Set[str]) -> str:
        """The live benefactor of lowest id that holds the chunk, or ""."""
        slot = self._slot(key)
        if slot is None:
            return ""
        h = self._holder[slot]
        if h >= 0:  # the common case: one copy
            bf = self._bf_names[h]
            return bf if bf in alive else ""
        names = self._bf_names
        return min((names[b] for b in self._holders(slot) if names[b] in alive), default="")

    def first_holders(self, namespace: str, keys: Sequence[ChunkKey], alive: Set[str]) -> list[str]:
        """first_holder of each of a namespace's chunks, in one loop (a persisted commit asks for all)."""
        ns = self._ns.get(namespace)
        if ns is None:
            return [""] * len(keys)
        slots, holder, names = self._slots, self._holder, self._bf_names
        prefixes: dict[int, int] = {}
        out = []
        for key in keys:
            prefix = prefixes.get(key.length)
            if prefix is None:
                prefix = prefixes[key.length] = _prefix(ns, key.length)
            slot = slots.get(prefix | _from_bytes(key.hash, "big"))
            if slot is None:
                out.append("")
                continue
            h = holder[slot]
            if h >= 0:
                bf = names[h]
                out.append(bf if bf in alive else "")
            else:
                out.append(min((names[b] for b in self._holders(slot) if names[b] in alive), default=""))
        return out

    def numbers(self, benefactors: Set[str]) -> set[int]:
        """The numbers of these benefactors (for short_of)."""
        return {n for bf in benefactors if (n := self._bf.get(bf)) is not None}

    def short_of(self, namespace: str, chunk_map: bytes, copies: int, alive: set[int]) -> bool:
        """Some chunk of a version's packed map (16-byte hash, 8-byte length per chunk) is neither
        drained nor held by `copies` live benefactors (`alive`: their numbers). Walks the map's
        bytes: an index key is the namespace's number followed by the entry's length and hash."""
        ns = self._ns.get(namespace)
        if ns is None:
            return any(chunk_map[at:at + 16] != HOLE_HASH for at in range(0, len(chunk_map), PACKED_KEY.size))
        prefix = ns << _NS_SHIFT
        slots, drained, holder, many = self._slots, self._drained, self._holder, self._many
        for at in range(0, len(chunk_map), PACKED_KEY.size):
            digest = chunk_map[at:at + 16]
            if digest == HOLE_HASH:
                continue
            length = _from_bytes(chunk_map[at + 16:at + PACKED_KEY.size], "big")
            slot = slots.get(length << _LENGTH_SHIFT | prefix | _from_bytes(digest, "big"))
            if slot is None:
                return True
            if slot in drained:
                continue
            h = holder[slot]
            if h >= 0:
                live = 1 if h in alive else 0
            elif h == _MANY:
                live = sum(1 for b in many[slot] if b in alive)
            else:
                live = 0
            if live < copies:
                return True
        return False

    def short_held(self, want: Mapping[str, int], alive: Set[str]
                   ) -> Iterator[tuple[IndexKey, list[str], list[str]]]:
        """Chunks of the namespaces in `want` that an in-memory version needs, not drained, held by
        at least one live benefactor but by fewer than want[namespace]: (key, live holders sorted,
        every holder), in commit order. Repair asks every round: the arrays are read first, and a
        key is built only for what is yielded."""
        limits = {n: want[ns] for ns, n in self._ns.items() if ns in want}
        if not limits:
            return
        live_n = self.numbers(alive)
        names, mem, drained, holder, many = self._bf_names, self._mem, self._drained, self._holder, self._many
        # Every namespace asked the same (the usual case: one namespace): no lookup per entry.
        same = len(limits) == len(self._ns) and len(set(limits.values())) == 1
        uniform = next(iter(limits.values())) if same else None
        for packed, slot in self._slots.items():
            limit = uniform or limits.get(packed >> _NS_SHIFT & _NS_MASK)
            if limit is None or mem[slot] <= 0 or slot in drained:
                continue
            h = holder[slot]
            if h >= 0:
                if h in live_n and limit > 1:
                    yield self._key_of(packed), [names[h]], [names[h]]
            elif h == _MANY:
                copies = many[slot]
                held_live = copies.keys() & live_n  # (in C: most chunks of a healthy namespace stop here)
                if 0 < len(held_live) < limit:
                    yield self._key_of(packed), sorted(names[b] for b in held_live), [names[b] for b in copies]

    def held_by(self, benefactor: str) -> list[IndexKey]:
        b = self._bf.get(benefactor)
        if b is None:
            return []
        holder, many = self._holder, self._many
        return [self._key_of(packed) for packed, slot in self._slots.items()
                if holder[slot] == b or (holder[slot] == _MANY and b in many[slot])]

    def stored_bytes(self) -> dict[str, int]:
        """Distinct chunk bytes an in-memory version references, per namespace."""
        return {ns: stored for ns, (stored, _) in self.usage().items()}

    def usage(self) -> dict[str, tuple[int, int]]:
        """Per namespace: distinct chunk bytes an in-memory version references, and distinct chunk
        bytes of kept versions that are on the PFS (their chunk files)."""
        per_ns: dict[int, list[int]] = {}
        mem, drained = self._mem, self._drained
        for packed, slot in self._slots.items():
            in_memory, on_pfs = mem[slot] > 0, slot in drained
            if in_memory or on_pfs:
                counts = per_ns.setdefault(packed >> _NS_SHIFT & _NS_MASK, [0, 0])
                length = packed >> _LENGTH_SHIFT
                counts[0] += length if in_memory else 0
                counts[1] += length if on_pfs else 0
        return {self._ns_names[ns]: (stored, pfs) for ns, (stored, pfs) in per_ns.items()}

    # -- changes (the caller persists what they return) -----------------------------------------
    def memory_bytes(self, namespace: str) -> int:
        """Distinct bytes of the namespace's chunks that an in-memory version needs."""
        ns = self._ns.get(namespace)
        return 0 if ns is None else self._ns_mem.get(ns, 0)

    def _mem_moved(self, packed: int, length: int, before: int, after: int) -> None:
        """A chunk's mem_refs went from `before` to `after` (0 once it left the index)."""
        if (before > 0) != (after > 0):
            ns = packed >> _NS_SHIFT & _NS_MASK
            self._ns_mem[ns] = self._ns_mem.get(ns, 0) + (length if after > 0 else -length)

    def load(self, key: IndexKey, refs: int, mem_refs: int, drained: str) -> None:
        packed = self._key_for(key)
        slot = self._slots.get(packed)
        if slot is None:
            slot = self._new_slot(packed)
        else:
            self._drop_holders(slot, key[1].length)
        self._mem_moved(packed, key[1].length, self._mem[slot] if self._refs[slot] > 0 else 0,
                        mem_refs if refs > 0 else 0)
        self._refs[slot] = refs
        self._mem[slot] = mem_refs
        if drained:
            self._drained[slot] = drained
        else:
            self._drained.pop(slot, None)

    def _drop_holders(self, slot: int, length: int) -> Holders:
        dropped = self._named(slot)
        for bf in dropped:
            self._count(bf, length, -1)
        self._set_holders(slot, {})
        return dropped

    def bump(self, key: IndexKey, refs: int, mem_refs: int) -> tuple[bool, Holders]:
        """Change a chunk's counts. Returns whether it is still in the index (refs above 0) and the
        locations dropped because no in-memory version needs it any more."""
        packed = self._key_for(key)
        slot = self._slots.get(packed)
        if slot is None:
            slot = self._new_slot(packed)
        before = self._mem[slot] if self._refs[slot] > 0 else 0
        self._refs[slot] += refs
        self._mem[slot] += mem_refs
        self._mem_moved(packed, key[1].length, before, self._mem[slot] if self._refs[slot] > 0 else 0)
        dropped: Holders = {}
        if self._mem[slot] <= 0 or self._refs[slot] <= 0:
            dropped = self._drop_holders(slot, key[1].length)
        if self._refs[slot] <= 0:
            del self._slots[packed]
            self._drained.pop(slot, None)
            self._free.append(slot)
            return False, dropped
        return True, dropped

    def add_version(self, namespace: str, chunks: Sequence[tuple[ChunkKey, Sequence[str]]], gen: int
                    ) -> tuple[list[tuple[ChunkKey, str, int]], dict[str, list[tuple[ChunkKey, int]]]]:
        """A new version: each distinct chunk counts once more in refs and mem_refs, and each copy it
        confirms is located (copies new to the index at `gen`, one generation per commit: a free
        names a chunk and a generation). Returns the new locations (chunk, benefactor, generation)
        and, per benefactor, the holds to order there (chunk, generation). One loop, as a commit
        of a 1 GiB file passes a thousand chunks through it."""
        ns = self._ns_number(namespace)
        slots, refs, mem, holder, gens = self._slots, self._refs, self._mem, self._holder, self._gen
        prefixes: dict[int, int] = {}
        touched: set[int] = set()
        located: list[tuple[ChunkKey, str, int]] = []
        holds: dict[str, list[tuple[ChunkKey, int]]] = {}
        for key, locs in chunks:
            if key.hash == HOLE_HASH:
                continue
            prefix = prefixes.get(key.length)
            if prefix is None:
                prefix = prefixes[key.length] = _prefix(ns, key.length)
            packed = prefix | _from_bytes(key.hash, "big")
            slot = slots.get(packed)
            if slot is None:
                slot = self._new_slot(packed)
            if slot not in touched:
                touched.add(slot)
                if mem[slot] <= 0 or refs[slot] <= 0:
                    self._mem_moved(packed, key.length, 0, 1)
                refs[slot] += 1
                mem[slot] += 1
            for bf in locs:
                b = self._bf.get(bf)
                if b is None:
                    b = self._bf_number(bf)
                h = holder[slot]
                if h == b:
                    held = gens[slot]
                elif h == _NONE:
                    holder[slot], gens[slot], held = b, gen, gen
                    located.append((key, bf, gen))  # counted below
                else:
                    copies = self._holders(slot)
                    got = copies.get(b)
                    if got is None:
                        copies[b] = held = gen
                        self._set_holders(slot, copies)
                        located.append((key, bf, gen))
                    else:
                        held = got
                hold = holds.get(bf)
                if hold is None:
                    hold = holds[bf] = []
                hold.append((key, held))
        counts: dict[str, list[int]] = {}
        for key, bf, _ in located:
            c = counts.get(bf)
            if c is None:
                c = counts[bf] = [0, 0]
            c[0] += 1
            c[1] += key.length
        for bf, (n, nbytes) in counts.items():
            held_now = self._held.get(bf)
            if held_now is None:
                held_now = self._held[bf] = [0, 0]
            held_now[0] += n
            held_now[1] += nbytes
        self.location_count += len(located)
        return located, holds

    def add_placed(self, namespace: str, keys: Sequence[ChunkKey], names: Sequence[str], gen: int
                   ) -> tuple[list[tuple[ChunkKey, str, int]], dict[str, list[tuple[ChunkKey, int]]]] | None:
        """add_version of the usual commit of new data, where keys[i] has one copy, on names[i]:
        done with a few passes in C when every key is new to the index and appears once (no hole),
        else None (nothing changed: add_version does it). A storm of commits of 1 GiB files goes
        through here, a thousand chunks each."""
        if not keys or HOLE_HASH in map(first, keys):
            return None
        ns = self._ns_number(namespace)
        lengths = set(map(second, keys))
        if len(lengths) == 1:
            prefix = _prefix(ns, lengths.pop())
            packed = [prefix | _from_bytes(h, "big") for h in map(first, keys)]
        else:
            prefixes = {n: _prefix(ns, n) for n in lengths}
            packed = [prefixes[k.length] | _from_bytes(k.hash, "big") for k in keys]
        slots = self._slots
        n = len(packed)
        if len(set(packed)) != n or not slots.keys().isdisjoint(packed):
            return None
        numbers = {bf: self._bf_number(bf) for bf in dict.fromkeys(names)}  # in order of first use
        holder = [numbers[bf] for bf in names]
        reused = self._free[max(0, len(self._free) - n):]
        del self._free[len(self._free) - len(reused):]
        for slot, b in zip(reused, holder, strict=False):  # slots freed by evictions first
            self._refs[slot] = self._mem[slot] = 1
            self._holder[slot], self._gen[slot] = b, gen
        start, fresh = len(self._refs), n - len(reused)
        ones = array("i", [1]) * fresh
        self._refs.extend(ones)
        self._mem.extend(ones)
        self._holder.extend(array("i", holder[len(reused):]))
        self._gen.extend(array("q", [gen]) * fresh)
        slots.update(zip(packed, [*reused, *range(start, start + fresh)], strict=True))
        self._ns_mem[ns] = self._ns_mem.get(ns, 0) + sum(map(second, keys))
        holds: dict[str, list[tuple[ChunkKey, int]]] = {bf: [] for bf in numbers}
        for key, bf in zip(keys, names, strict=True):
            holds[bf].append((key, gen))
        for bf, held in holds.items():
            counts = self._held.get(bf)
            if counts is None:
                counts = self._held[bf] = [0, 0]
            counts[0] += len(held)
            counts[1] += sum(map(second, map(first, held)))
        self.location_count += n
        return list(zip(keys, names, [gen] * n, strict=True)), holds

    def add_location(self, key: IndexKey, benefactor: str, gen: int) -> bool:
        """Record a confirmed copy (only of a chunk some in-memory version needs); False if not recorded."""
        slot = self._slot(key)
        if slot is None or self._mem[slot] <= 0:
            return False
        b = self._bf_number(benefactor)
        copies = self._holders(slot)
        if b not in copies:
            self._count(benefactor, key[1].length, 1)
        copies[b] = gen
        self._set_holders(slot, copies)
        return True

    def remove_location(self, key: IndexKey, benefactor: str) -> int:
        """Forget one copy; returns its generation (0 if there was none)."""
        slot = self._slot(key)
        b = self._bf.get(benefactor)
        if slot is None or b is None:
            return 0
        copies = self._holders(slot)
        gen = copies.pop(b, None)
        if gen is None:
            return 0
        self._count(benefactor, key[1].length, -1)
        self._set_holders(slot, copies)
        return gen

    def clear_drained(self, key: IndexKey) -> None:
        """The chunk's file leaves the PFS: it is in memory only from now on."""
        slot = self._slot(key)
        if slot is not None:
            self._drained.pop(slot, None)

    def set_drained(self, key: IndexKey, path: str) -> bool:
        """The chunk's file on the PFS is `path`: the newest drained copy (a later version's hard
        link to the same bytes) replaces an older name, so removing old versions from the PFS
        rarely removes the name readers use. Returns whether the name changed."""
        slot = self._slot(key)
        if slot is None or not path or self._drained.get(slot) == path:
            return False
        self._drained[slot] = path
        return True
