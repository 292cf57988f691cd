"""Catalog: the manager's durable metadata in SQLite (WAL) under its state directory.

Holds benefactor addresses, committed versions with their chunk maps, and the chunk index
(per namespace: key -> reference count and locations). A version becomes visible in the same
transaction that records it, so a crash never exposes half a commit; a restart loses nothing
committed. No networking here; the service layer adds liveness from the registry.

A chunk's reference count is the number of versions whose map contains it (once per version).
When it reaches zero the chunk leaves the index and the caller is told where to free it.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.errors import DataLost, InvalidArgument, NotFound, SettingError

_ENTRY = struct.Struct(">16sQ")  # one chunk of a version's map: hash, length

_SCHEMA = """
CREATE TABLE IF NOT EXISTS benefactors (
    id TEXT PRIMARY KEY, address TEXT NOT NULL, capacity INTEGER NOT NULL, registered_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL,
    committed_at REAL NOT NULL, chunk_map BLOB NOT NULL, PRIMARY KEY (ns, path, version));
CREATE TABLE IF NOT EXISTS chunks (
    ns TEXT NOT NULL, hash BLOB NOT NULL, length INTEGER NOT NULL, refs INTEGER NOT NULL,
    PRIMARY KEY (ns, hash, length));
CREATE TABLE IF NOT EXISTS locations (
    ns TEXT NOT NULL, hash BLOB NOT NULL, length INTEGER NOT NULL, benefactor TEXT NOT NULL,
    PRIMARY KEY (ns, hash, length, benefactor));
"""

IndexKey = tuple[str, ChunkKey]


@dataclass(frozen=True, slots=True)
class VersionRecord:
    namespace: str
    path: str
    version: int
    size: int
    committed_at: float
    keys: tuple[ChunkKey, ...]


@dataclass(frozen=True, slots=True)
class FileSummary:
    path: str
    latest: int
    size: int
    committed_at: float
    version_count: int


@dataclass(frozen=True, slots=True)
class NamespaceSummary:
    namespace: str
    files: int
    versions: int
    bytes_committed: int
    bytes_stored: int


def pack_map(keys: Sequence[ChunkKey]) -> bytes:
    return b"".join(_ENTRY.pack(k.hash, k.length) for k in keys)


def unpack_map(blob: bytes) -> tuple[ChunkKey, ...]:
    return tuple(ChunkKey(h, n) for h, n in _ENTRY.iter_unpack(blob))


class Catalog:
    def __init__(self, state_dir: str) -> None:
        path = Path(state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SettingError(f"--state: cannot create {state_dir!r} ({e.strerror})") from None
        if not os.access(path, os.W_OK):
            raise SettingError(f"--state: directory {state_dir!r} is not writable")
        self.db_path = path / "manager.sqlite3"
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit acknowledged to a client survives a power cut of the manager's node too.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        # The chunk index is read on every commit, lookup and reconcile: kept in memory, written through.
        self._refs: dict[IndexKey, int] = {}
        self._locations: dict[IndexKey, set[str]] = {}
        for ns, h, n, refs in self._db.execute("SELECT ns, hash, length, refs FROM chunks"):
            self._refs[(ns, ChunkKey(h, n))] = refs
        for ns, h, n, bf in self._db.execute("SELECT ns, hash, length, benefactor FROM locations"):
            self._locations.setdefault((ns, ChunkKey(h, n)), set()).add(bf)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- benefactors -------------------------------------------------------------------------
    def remember_benefactor(self, benefactor_id: str, address: str, capacity: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO benefactors VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "address=excluded.address, capacity=excluded.capacity",
                (benefactor_id, address, capacity, time.time()),
            )

    def benefactor_addresses(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, address FROM benefactors"))

    # -- chunk index -------------------------------------------------------------------------
    def refs(self, key: IndexKey) -> int:
        return self._refs.get(key, 0)

    def locations(self, key: IndexKey) -> set[str]:
        return set(self._locations.get(key, ()))

    def add_locations(self, benefactor_id: str, keys: Iterable[IndexKey]) -> int:
        """Record that a benefactor holds these chunks (only those still referenced). Returns how many were new."""
        added = 0
        with self._lock, self._db:
            for key in keys:
                if self._refs.get(key, 0) > 0 and benefactor_id not in self._locations.get(key, set()):
                    self._locations.setdefault(key, set()).add(benefactor_id)
                    ns, k = key
                    self._db.execute("INSERT OR IGNORE INTO locations VALUES (?, ?, ?, ?)",
                                     (ns, k.hash, k.length, benefactor_id))
                    added += 1
        return added

    def readable(self, key: IndexKey, alive: set[str]) -> bool:
        """The namespace holds this chunk somewhere a reader can get it: a live benefactor."""
        return self._refs.get(key, 0) > 0 and not self._locations.get(key, set()).isdisjoint(alive)

    def find(self, namespace: str, keys: Sequence[ChunkKey], alive: set[str]) -> list[bool]:
        with self._lock:
            return [self.readable((namespace, k), alive) for k in keys]

    # -- versions ----------------------------------------------------------------------------
    def commit(self, namespace: str, path: str, size: int, chunks: Sequence[tuple[ChunkKey, Sequence[str]]],
               alive: set[str], now: float | None = None) -> int:
        """Record a new version atomically and return its number.

        Each chunk lists where the client stored it, or nothing when it relied on the namespace
        already holding it. Either way, under the same lock as the write, at least one live
        benefactor must hold it (`alive` is the registry's view); else DataLost and no version.
        """
        keys = [k for k, _ in chunks]
        if sum(k.length for k in keys) != size:
            raise InvalidArgument(f"commit of {path}: size {size} differs from the sum of its chunk lengths")
        with self._lock:
            for i, (key, locs) in enumerate(chunks):
                if alive.isdisjoint(locs) and not self.readable((namespace, key), alive):
                    where = f"on {', '.join(locs)}, not alive" if locs else "no longer held by the namespace"
                    raise DataLost(f"commit of {path}: chunk {i} ({key}) is {where}; write the file again")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT MAX(version) FROM versions WHERE ns=? AND path=?",
                                       (namespace, path)).fetchone()
                version = (row[0] or 0) + 1
                self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?)",
                                 (namespace, path, version, size, time.time() if now is None else now,
                                  pack_map(keys)))
                new_refs: dict[IndexKey, int] = {}
                new_locs: list[tuple[IndexKey, str]] = []
                for key, locs in chunks:
                    ik = (namespace, key)
                    if ik not in new_refs:
                        new_refs[ik] = self._refs.get(ik, 0) + 1
                        self._db.execute(
                            "INSERT INTO chunks VALUES (?, ?, ?, 1) ON CONFLICT(ns, hash, length) "
                            "DO UPDATE SET refs = refs + 1", (namespace, key.hash, key.length))
                    for bf in locs:
                        if bf not in self._locations.get(ik, set()):
                            new_locs.append((ik, bf))
                            self._db.execute("INSERT OR IGNORE INTO locations VALUES (?, ?, ?, ?)",
                                             (namespace, key.hash, key.length, bf))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._refs.update(new_refs)
            for ik, bf in new_locs:
                self._locations.setdefault(ik, set()).add(bf)
            return version

    def version(self, namespace: str, path: str, version: int = 0) -> VersionRecord:
        """A committed version (0 = the latest); NotFound if there is none."""
        with self._lock:
            if version:
                row = self._db.execute(
                    "SELECT version, size, committed_at, chunk_map FROM versions WHERE ns=? AND path=? AND version=?",
                    (namespace, path, version)).fetchone()
            else:
                row = self._db.execute(
                    "SELECT version, size, committed_at, chunk_map FROM versions WHERE ns=? AND path=? "
                    "ORDER BY version DESC LIMIT 1", (namespace, path)).fetchone()
        if row is None:
            if version:
                raise NotFound(f"{path}: no version {version} in namespace {namespace!r}")
            raise NotFound(f"{path}: no such file in namespace {namespace!r}")
        return VersionRecord(namespace, path, row[0], row[1], row[2], unpack_map(row[3]))

    def versions(self, namespace: str, path: str) -> list[VersionRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT version, size, committed_at, chunk_map FROM versions WHERE ns=? AND path=? ORDER BY version",
                (namespace, path)).fetchall()
        return [VersionRecord(namespace, path, v, s, t, unpack_map(m)) for v, s, t, m in rows]

    def files_under(self, namespace: str, directory: str) -> list[FileSummary]:
        """Every file at or below `directory` ('/' for all), latest version of each."""
        prefix = directory.rstrip("/") + "/"
        # Range scan on the primary key: paths starting with prefix sort between prefix and prefix+U+FFFF.
        with self._lock:
            rows = self._db.execute(
                "SELECT path, MAX(version), COUNT(*) FROM versions WHERE ns=? AND path >= ? AND path < ? "
                "GROUP BY path", (namespace, prefix, prefix + "\uffff")).fetchall()
            out = []
            for path, latest, count in rows:
                size, at = self._db.execute("SELECT size, committed_at FROM versions WHERE ns=? AND path=? AND "
                                            "version=?", (namespace, path, latest)).fetchone()
                out.append(FileSummary(path, latest, size, at, count))
        return out

    def delete_file(self, namespace: str, path: str) -> tuple[int, dict[IndexKey, set[str]]]:
        """Delete every version of a file. Returns (versions deleted, freed chunks -> where they were)."""
        with self._lock:
            rows = self._db.execute("SELECT chunk_map FROM versions WHERE ns=? AND path=?",
                                    (namespace, path)).fetchall()
            if not rows:
                raise NotFound(f"{path}: no such file in namespace {namespace!r}")
            freed: dict[IndexKey, set[str]] = {}
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM versions WHERE ns=? AND path=?", (namespace, path))
                refs: dict[IndexKey, int] = {}  # new counts of the keys this delete touches
                for (blob,) in rows:
                    for key in set(unpack_map(blob)):
                        ik = (namespace, key)
                        refs[ik] = refs.get(ik, self._refs.get(ik, 0)) - 1
                        if refs[ik] <= 0:
                            freed[ik] = self._locations.get(ik, set())
                            self._db.execute("DELETE FROM chunks WHERE ns=? AND hash=? AND length=?",
                                             (namespace, key.hash, key.length))
                            self._db.execute("DELETE FROM locations WHERE ns=? AND hash=? AND length=?",
                                             (namespace, key.hash, key.length))
                        else:
                            self._db.execute("UPDATE chunks SET refs=? WHERE ns=? AND hash=? AND length=?",
                                             (refs[ik], namespace, key.hash, key.length))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for ik, n in refs.items():
                if n > 0:
                    self._refs[ik] = n
                else:
                    self._refs.pop(ik, None)
                    self._locations.pop(ik, None)
            return len(rows), freed

    def namespaces(self) -> list[NamespaceSummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ns, COUNT(DISTINCT path), COUNT(*), SUM(size) FROM versions GROUP BY ns").fetchall()
            stored = dict(self._db.execute("SELECT ns, SUM(length) FROM chunks GROUP BY ns").fetchall())
        return [NamespaceSummary(ns, f, v, b or 0, stored.get(ns) or 0) for ns, f, v, b in rows]
