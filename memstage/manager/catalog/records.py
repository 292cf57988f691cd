"""The catalog's records: what its callers pass in and get back (plain data, no SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from memstage.chunks import PACKED_KEY, ChunkKey
from memstage.manager.chunkindex import Holders, IndexKey
from memstage.manager.nodes import Attrs

# A set of benefactor names, as callers hold it (the registry gives frozensets).
Names = set[str] | frozenset[str]

Freed = dict[IndexKey, Holders]  # chunks to free from memory -> the benefactors holding them, at their generation




@dataclass(frozen=True, slots=True)
class Policy:
    persist_every: int
    keep_versions: int
    redundancy: str = "none"  # none | replicate:R | rs:K+M (memstage.redundancy)
    pfs_keep: int = 0  # persisted checkpoints kept on the PFS (0: all)
    quota_memory: int = 0  # bytes of memory the namespace may use, committed and uncommitted (0: no limit)
    quota_sessions: int = 0  # write sessions it may have open at once (0: no limit)
    keep_deleted: bool = False  # a deleted file's drained copy stays on the PFS (restore and gc still see it)


@dataclass(frozen=True, slots=True)
class VersionRecord:
    namespace: str
    path: str
    version: int
    size: int
    committed_at: float
    keys: tuple[ChunkKey, ...]
    persist: bool = False
    persisted: bool = False
    in_memory: bool = True
    lost: bool = False
    lost_reason: str = ""
    drain_error: str = ""


@dataclass(frozen=True, slots=True)
class FileSummary:
    path: str
    latest: int
    size: int
    committed_at: float
    version_count: int
    chunk_map: bytes = b""  # the latest version's, packed (unpack_map)

    @property
    def stored(self) -> int:
        """Bytes of data in the latest version, holes excluded."""
        return sum(k.length for k in unpack_map(self.chunk_map) if not k.is_hole)


@dataclass(frozen=True, slots=True)
class NamespaceSummary:
    namespace: str
    files: int
    versions: int
    bytes_committed: int
    bytes_stored: int
    bytes_on_pfs: int = 0  # distinct chunk bytes of kept versions on the PFS


@dataclass(frozen=True, slots=True)
class DrainTask:
    id: int
    namespace: str
    path: str
    version: int
    index: int
    count: int
    offset: int
    key: ChunkKey
    link_from: str  # drained path of an identical chunk, or ""
    committed_ms: int = 0


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    persisted: set[tuple[str, str]]  # (namespace, path) of versions that became persisted
    lost: list[tuple[str, str, int, str]]  # (namespace, path, version, reason)
    failed: list[tuple[str, str, int, str]]  # versions that cannot be drained, with the reason
    drained_bytes: int  # bytes written to the PFS (hard links cost none)
    on_pfs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # namespace -> (path, checkpoint) persisted
    newly: list[tuple[str, str, int]] = field(default_factory=list)  # versions that became persisted


@dataclass(frozen=True, slots=True)
class Backlog:
    bytes: int
    oldest_queued_at: float | None


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a prefetch wants in memory (Catalog.want_in_memory)."""

    files: int
    bytes: int
    loaded: int  # bytes a live benefactor holds
    load: list[tuple[IndexKey, str]]  # chunks to load, with their drained names


@dataclass(frozen=True)
class Placed:
    """A commit's chunks when each has one copy: keys[i] on names[i]; chunk_map is pack_map(keys)."""

    keys: Sequence[ChunkKey]
    names: Sequence[str]
    chunk_map: bytes


class NewVersion(NamedTuple):
    """A version to record (see Catalog.commit)."""

    namespace: str
    path: str
    size: int
    chunks: Sequence[tuple[ChunkKey, Sequence[str]]]
    alive: Names
    attrs: Attrs | None = None
    placed: Placed | None = None
    now: float | None = None
    base: int | None = None  # a merging writer's base version: refused (Conflict) unless still the latest
    checkpoint: int | None = None  # the step of an explicit checkpoint (the writer said so), else from the path



Holds = dict[str, list[tuple[ChunkKey, int]]]  # per benefactor: the chunks to hold, with their generation


def pack_map(keys: Sequence[ChunkKey]) -> bytes:
    return b"".join(PACKED_KEY.pack(k.hash, k.length) for k in keys)


def unpack_map(blob: bytes) -> tuple[ChunkKey, ...]:
    return tuple(ChunkKey(h, n) for h, n in PACKED_KEY.iter_unpack(blob))


_VERSION_COLUMNS = ("version, size, committed_at, chunk_map, persist, persisted, in_memory, lost, lost_reason, "
                    "drain_error")
