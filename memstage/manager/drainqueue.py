"""The drain queue: the chunk files each benefactor still has to write to the PFS.

A version selected for persistence queues one task per chunk. They are stored as one row per
group: the tasks of one version given to one benefactor, with the chunks packed in a blob (index,
offset, hash, length). A commit of a 1 GiB file then writes a row per benefactor it striped over
instead of 1,024 rows with their index entries, which was the largest cost of a persisted commit.

A group holds at most `group_max` chunks (1,024), so that a report of drained chunks rewrites a
bounded blob even for a file of millions of chunks.

A task id is the group id and the chunk index (group << 32 | index): the benefactor reports it
back as it was given. Tasks that move to another benefactor (theirs was gone, or did not hold the
chunk) form a new group that keeps the old one's place in the queue (`seq`), so a benefactor still
drains in commit order. The caller (the catalog) holds its lock and transaction around every call.
"""

from __future__ import annotations

import sqlite3
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from memstage.chunks import ChunkKey, first, second

_MEMBER = struct.Struct(">IQ16sQ")  # chunk index, offset in the file, hash, length
INDEX_BITS = 32
GROUP_MAX = 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS drain_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, ns TEXT NOT NULL, path TEXT NOT NULL,
    version INTEGER NOT NULL, count INTEGER NOT NULL, benefactor TEXT NOT NULL, queued_at REAL NOT NULL,
    chunks INTEGER NOT NULL, bytes INTEGER NOT NULL, members BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS drain_groups_by_benefactor ON drain_groups (benefactor, seq, id);
CREATE INDEX IF NOT EXISTS drain_groups_by_version ON drain_groups (ns, path, version);
"""


@dataclass(frozen=True, slots=True)
class Member:
    index: int  # of the chunk in its version
    offset: int
    key: ChunkKey


def pack(members: Iterable[Member]) -> bytes:
    return b"".join([_MEMBER.pack(m.index, m.offset, m.key.hash, m.key.length) for m in members])


def unpack(blob: bytes) -> dict[int, Member]:
    """Members by chunk index, in queue order."""
    return {i: Member(i, off, ChunkKey(h, n)) for i, off, h, n in _MEMBER.iter_unpack(blob)}


def task_id(group: int, index: int) -> int:
    return group << INDEX_BITS | index


def split_task_id(task: int) -> tuple[int, int]:
    return task >> INDEX_BITS, task & ((1 << INDEX_BITS) - 1)


@dataclass(slots=True)
class Group:
    id: int
    seq: int
    ns: str
    path: str
    version: int
    count: int  # chunks in the version (0: an empty file)
    benefactor: str
    queued_at: float
    members: dict[int, Member]
    changed: bool = field(default=False)

    @property
    def version_key(self) -> tuple[str, str, int]:
        return self.ns, self.path, self.version


_GROUP_COLUMNS = "id, seq, ns, path, version, count, benefactor, queued_at, members"


class DrainQueue:
    def __init__(self, db: sqlite3.Connection, group_max: int = GROUP_MAX) -> None:
        self._db = db
        self._group_max = group_max
        db.executescript(SCHEMA)
        self._migrate()
        self._seq = db.execute("SELECT MAX(seq) FROM drain_groups").fetchone()[0] or 0

    def _migrate(self) -> None:
        """A state directory of an earlier release has a row per task: they become groups, in order."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='drain_tasks'").fetchone():
            return
        groups: dict[tuple[str, str, int, str], tuple[int, float, list[Member]]] = {}
        for ns, path, version, idx, count, off, h, n, bf, at in self._db.execute(
                "SELECT ns, path, version, idx, count, offset, hash, length, benefactor, queued_at "
                "FROM drain_tasks ORDER BY id"):
            groups.setdefault((ns, path, version, bf), (count, at, []))[2].append(Member(idx, off, ChunkKey(h, n)))
        self._db.execute("BEGIN IMMEDIATE")
        for seq, ((ns, path, version, bf), (count, at, members)) in enumerate(groups.items(), start=1):
            for i in range(0, len(members), self._group_max):
                self._insert(seq, ns, path, version, count, bf, at, members[i:i + self._group_max])
        self._db.execute("DROP TABLE drain_tasks")
        self._db.execute("COMMIT")

    def _insert(self, seq: int, ns: str, path: str, version: int, count: int, benefactor: str, queued_at: float,
                members: Sequence[Member]) -> None:
        self._insert_packed(seq, ns, path, version, count, benefactor, queued_at,
                            sum(m.key.length for m in members), pack(members))

    def _insert_packed(self, seq: int, ns: str, path: str, version: int, count: int, benefactor: str,
                       queued_at: float, nbytes: int, members: bytes) -> None:
        self._db.execute("INSERT INTO drain_groups (seq, ns, path, version, count, benefactor, queued_at, chunks, "
                         "bytes, members) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (seq, ns, path, version, count, benefactor, queued_at, len(members) // _MEMBER.size,
                          nbytes, members))

    def _place(self, seq: int) -> int:
        if not seq:
            self._seq += 1
            seq = self._seq
        return seq

    def add(self, ns: str, path: str, version: int, count: int, by_owner: Mapping[str, Sequence[Member]],
            queued_at: float, seq: int = 0) -> None:
        """Queue a version's tasks, grouped by the benefactor to drain them ("" for nobody yet); at
        the end of the queue, or at the place `seq` of the group they come from."""
        seq = self._place(seq)
        for owner, members in by_owner.items():
            for i in range(0, len(members), self._group_max):
                self._insert(seq, ns, path, version, count, owner, queued_at, members[i:i + self._group_max])

    def queue_version(self, ns: str, path: str, version: int, keys: Sequence[ChunkKey], owners: Sequence[str],
                      queued_at: float) -> None:
        """Queue every chunk of a version (a commit's drain: built without an object per chunk), at
        the end of the queue; owners[i] drains keys[i]."""
        seq = self._place(0)
        n = len(keys)
        hashes, lengths = list(map(first, keys)), list(map(second, keys))
        members = list(map(_MEMBER.pack, range(n), accumulate(lengths, initial=0), hashes, lengths))
        # Each owner's chunks in file order: a stable sort by owner, then a slice per owner (no
        # Python loop per chunk).
        order = sorted(range(n), key=owners.__getitem__)
        by_owner = list(map(owners.__getitem__, order))
        step = self._group_max
        for owner in dict.fromkeys(owners):
            mine = order[bisect_left(by_owner, owner):bisect_right(by_owner, owner)]
            for i in range(0, len(mine), step):
                part = mine[i:i + step]
                self._insert_packed(seq, ns, path, version, n, owner, queued_at,
                                    sum(map(lengths.__getitem__, part)), b"".join(map(members.__getitem__, part)))

    def _groups(self, benefactor: str) -> Iterator[Group]:
        """A benefactor's groups in queue order, read as they are asked for."""
        for row in self._db.execute(f"SELECT {_GROUP_COLUMNS} FROM drain_groups WHERE benefactor=? "
                                    "ORDER BY seq, id", (benefactor,)):
            yield _group(row)

    def work(self, benefactor: str, limit: int) -> list[tuple[Group, Member]]:
        """A benefactor's oldest tasks, in queue order (they stay queued until reported)."""
        out: list[tuple[Group, Member]] = []
        for group in self._groups(benefactor):
            for member in group.members.values():
                if len(out) == limit:
                    return out
                out.append((group, member))
        return out

    def groups_of(self, benefactor: str) -> list[Group]:
        return list(self._groups(benefactor))

    def group(self, group_id: int) -> Group | None:
        row = self._db.execute(f"SELECT {_GROUP_COLUMNS} FROM drain_groups WHERE id=?", (group_id,)).fetchone()
        return _group(row) if row else None

    def save(self, group: Group) -> None:
        """Write back a group whose members changed (an empty one goes)."""
        if not group.members:
            self._db.execute("DELETE FROM drain_groups WHERE id=?", (group.id,))
            return
        members = list(group.members.values())
        self._db.execute("UPDATE drain_groups SET chunks=?, bytes=?, members=? WHERE id=?",
                         (len(members), sum(m.key.length for m in members), pack(members), group.id))

    def drop(self, group_id: int) -> None:
        self._db.execute("DELETE FROM drain_groups WHERE id=?", (group_id,))

    def drop_version(self, ns: str, path: str, version: int) -> None:
        self._db.execute("DELETE FROM drain_groups WHERE ns=? AND path=? AND version=?", (ns, path, version))

    def drop_where(self, where: str, args: Sequence[object]) -> list[tuple[str, int]]:
        """Drop the groups of the files matching a condition on (ns, path); returns their (path, version)."""
        versions = self._db.execute(f"SELECT DISTINCT path, version FROM drain_groups WHERE {where}",
                                    args).fetchall()
        self._db.execute(f"DELETE FROM drain_groups WHERE {where}", args)
        return versions

    def has_version(self, ns: str, path: str, version: int) -> bool:
        return self._db.execute("SELECT 1 FROM drain_groups WHERE ns=? AND path=? AND version=? LIMIT 1",
                                (ns, path, version)).fetchone() is not None

    def versions(self, benefactor: str | None = None) -> set[tuple[str, str, int]]:
        if benefactor is None:
            return set(self._db.execute("SELECT DISTINCT ns, path, version FROM drain_groups"))
        return set(self._db.execute("SELECT DISTINCT ns, path, version FROM drain_groups WHERE benefactor=?",
                                    (benefactor,)))

    def owners(self) -> set[str]:
        return {bf for (bf,) in self._db.execute("SELECT DISTINCT benefactor FROM drain_groups")}

    def backlog_of(self, benefactor: str) -> tuple[int, int]:
        n, count = self._db.execute("SELECT SUM(bytes), SUM(chunks) FROM drain_groups WHERE benefactor=?",
                                    (benefactor,)).fetchone()
        return n or 0, count or 0

    def backlog(self) -> dict[str, tuple[int, float]]:
        return {bf: (n or 0, oldest) for bf, n, oldest in self._db.execute(
            "SELECT benefactor, SUM(bytes), MIN(queued_at) FROM drain_groups GROUP BY benefactor")}

    def backlog_by_namespace(self) -> dict[str, int]:
        return {ns: n or 0 for ns, n in self._db.execute("SELECT ns, SUM(bytes) FROM drain_groups GROUP BY ns")}


def _group(row: tuple) -> Group:  # type: ignore[type-arg]
    gid, seq, ns, path, version, count, bf, at, blob = row
    return Group(gid, seq, ns, path, version, count, bf, at, unpack(blob))
