"""Where chunk copies are, kept durable as a log of changes. Pure: no SQL, no I/O.

A commit of a 1 GiB file makes 1,024 locations at once; one table row per location put 1,024
random-key B-tree inserts (and their pages in the WAL) on every commit. Instead, every transaction
appends one record: a batch of operations encoded in a blob. Loading replays the records in
order, and a snapshot (the current locations as ADD operations) replaces the log once it has grown
well past what it describes.

Operations:
- ADD: a copy of a chunk is held on a benefactor at a generation (a newer ADD replaces it);
- DEL: that copy is gone;
- DROP: every copy of the chunk is gone (no in-memory version needs it);
- VOID: every copy on the benefactor is gone (it died or came back as a new process);
- ADDS: many ADDs of one namespace and generation (a commit's new chunks), as the packed keys the
  commit brought and a benefactor number per key: no encoding per chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from memstage.chunks import PACKED_KEY, ChunkKey, second

ADD, DEL, DROP, VOID, ADDS = 1, 2, 3, 4, 5
_MAGIC = b"L1"
_COUNT = struct.Struct(">I")
_NAME = struct.Struct(">H")
_ADD = struct.Struct(">BI16sQIQ")  # kind, namespace, hash, length, benefactor, generation
_DEL = struct.Struct(">BI16sQI")
_DROP = struct.Struct(">BI16sQ")
_VOID = struct.Struct(">BI")
_ADDS = struct.Struct(">BIIQ")  # kind, namespace, count, generation; then the keys, then the benefactors

Location = tuple[str, ChunkKey, str, int]  # namespace, chunk, benefactor, generation


@dataclass
class Batch:
    """The operations of one transaction, encoded as they come (names interned per record)."""

    _names: dict[str, int] = field(default_factory=dict)
    _ops: list[bytes] = field(default_factory=list)
    _count: int = 0  # operations (an ADDS counts as its ADDs)

    def __len__(self) -> int:
        return self._count

    def _name(self, name: str) -> int:
        i = self._names.get(name)
        if i is None:
            i = self._names[name] = len(self._names)
        return i

    def add(self, namespace: str, key: ChunkKey, benefactor: str, gen: int) -> None:
        self._count += 1
        self._ops.append(_ADD.pack(ADD, self._name(namespace), key.hash, key.length, self._name(benefactor), gen))

    def add_many(self, namespace: str, located: Sequence[tuple[ChunkKey, str, int]]) -> None:
        ns, pack = self._name(namespace), _ADD.pack
        numbers = {bf: self._name(bf) for bf in dict.fromkeys(map(second, located))}  # a few per commit
        self._ops += [pack(ADD, ns, k.hash, k.length, numbers[bf], gen) for k, bf, gen in located]
        self._count += len(located)

    def add_packed(self, namespace: str, keys: bytes, benefactors: Sequence[str], gen: int) -> None:
        """ADD of each packed key (hash, length: 24 bytes each) on benefactors[i], at one generation."""
        n = len(benefactors)
        assert len(keys) == n * PACKED_KEY.size, "one benefactor per packed key"
        if not n:
            return
        numbers = {bf: self._name(bf) for bf in dict.fromkeys(benefactors)}
        self._ops += (_ADDS.pack(ADDS, self._name(namespace), n, gen), keys,
                      struct.pack(f">{n}I", *map(numbers.__getitem__, benefactors)))
        self._count += n

    def delete(self, namespace: str, key: ChunkKey, benefactor: str) -> None:
        self._count += 1
        self._ops.append(_DEL.pack(DEL, self._name(namespace), key.hash, key.length, self._name(benefactor)))

    def drop(self, namespace: str, key: ChunkKey) -> None:
        self._count += 1
        self._ops.append(_DROP.pack(DROP, self._name(namespace), key.hash, key.length))

    def void(self, benefactor: str) -> None:
        self._count += 1
        self._ops.append(_VOID.pack(VOID, self._name(benefactor)))

    def encode(self) -> bytes:
        names = [n.encode() for n in self._names]
        parts = [_MAGIC, _COUNT.pack(len(names))]
        for n in names:
            parts += (_NAME.pack(len(n)), n)
        parts.append(_COUNT.pack(self._count))
        parts += self._ops
        return b"".join(parts)


def decode(blob: bytes) -> Iterator[tuple[int, str, ChunkKey | None, str, int]]:
    """The operations of a record: (kind, namespace, chunk, benefactor, generation), with "" / None
    / 0 where the kind has no such field."""
    if blob[:2] != _MAGIC:
        raise ValueError("not a location log record")
    pos = 2
    (count,) = _COUNT.unpack_from(blob, pos)
    pos += 4
    names = []
    for _ in range(count):
        (n,) = _NAME.unpack_from(blob, pos)
        names.append(blob[pos + 2:pos + 2 + n].decode())
        pos += 2 + n
    (count,) = _COUNT.unpack_from(blob, pos)
    pos += 4
    while count > 0:
        kind = blob[pos]
        count -= 1
        if kind == ADDS:
            _, ns, n, gen = _ADDS.unpack_from(blob, pos)
            pos += _ADDS.size
            keys = PACKED_KEY.iter_unpack(blob[pos:pos + n * PACKED_KEY.size])
            pos += n * PACKED_KEY.size
            owners = struct.unpack_from(f">{n}I", blob, pos)
            pos += 4 * n
            count -= n - 1
            for (h, length), bf in zip(keys, owners, strict=True):
                yield ADD, names[ns], ChunkKey(h, length), names[bf], gen
        elif kind == ADD:
            _, ns, h, length, bf, gen = _ADD.unpack_from(blob, pos)
            pos += _ADD.size
            yield ADD, names[ns], ChunkKey(h, length), names[bf], gen
        elif kind == DEL:
            _, ns, h, length, bf = _DEL.unpack_from(blob, pos)
            pos += _DEL.size
            yield DEL, names[ns], ChunkKey(h, length), names[bf], 0
        elif kind == DROP:
            _, ns, h, length = _DROP.unpack_from(blob, pos)
            pos += _DROP.size
            yield DROP, names[ns], ChunkKey(h, length), "", 0
        elif kind == VOID:
            _, bf = _VOID.unpack_from(blob, pos)
            pos += _VOID.size
            yield VOID, "", None, names[bf], 0
        else:
            raise ValueError(f"location log record: unknown operation {kind}")


def replay(records: Iterable[bytes]) -> tuple[list[Location], int]:
    """The locations the records (oldest first) leave, and how many operations they hold.

    A VOID is not applied by scanning: each copy remembers the position of its ADD, and a copy
    added before the last VOID of its benefactor is dropped at the end."""
    copies: dict[tuple[str, ChunkKey], dict[str, tuple[int, int]]] = {}
    voided: dict[str, int] = {}
    pos = 0
    for blob in records:
        for kind, ns, key, bf, gen in decode(blob):
            pos += 1
            if kind == ADD:
                copies.setdefault((ns, key), {})[bf] = (gen, pos)  # type: ignore[arg-type]
            elif kind == DEL:
                held = copies.get((ns, key))  # type: ignore[arg-type]
                if held is not None:
                    held.pop(bf, None)
            elif kind == DROP:
                copies.pop((ns, key), None)  # type: ignore[arg-type]
            else:
                voided[bf] = pos
    out = [(ns, key, bf, gen) for (ns, key), held in copies.items() for bf, (gen, at) in held.items()
           if at > voided.get(bf, 0)]
    return out, pos


def snapshot(locations: Iterable[Location], per_record: int = 65536) -> Iterator[bytes]:
    """Records that describe `locations` as they are (to replace the whole log)."""
    batch = Batch()
    for ns, key, bf, gen in locations:
        batch.add(ns, key, bf, gen)
        if len(batch) >= per_record:
            yield batch.encode()
            batch = Batch()
    if len(batch):
        yield batch.encode()
