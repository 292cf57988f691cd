"""Catalog: the manager's durable metadata in SQLite (WAL) under its state directory.

Holds benefactor addresses, namespace policies, committed versions with their chunk maps, the
chunk index and the drain queue. A version becomes visible in the same transaction that records
it (and queues its drain tasks), so a crash never exposes half a commit and loses no drain work.
No networking here; the service layer adds liveness from the registry and checks receipts.

The chunk index (ChunkIndex, pure) is kept in memory and written through: every read and change
happens under one lock, and a rolled-back transaction swaps in a freshly loaded index as a whole.
Locations carry the generation of the manager's hold on the copy, so the frees this returns can
name it. Each benefactor's incarnation is remembered: a benefactor that comes back as a new
process voids its old locations (void_benefactor).
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from memstage.chunks import PACKED_KEY, ChunkKey, second
from memstage.drainer.layout import parse_name
from memstage.drainer.prune import PfsCopy
from memstage.errors import Conflict, DataLost, FsError, InvalidArgument, InvalidPath, NotFound, SettingError
from memstage.manager import locationlog
from memstage.manager.checkpoints import EXPLICIT, StepName, series_dir, step_of, under
from memstage.manager.chunkindex import ChunkIndex, Holders, IndexKey
from memstage.manager.drainqueue import DrainQueue, Group, Member, split_task_id, task_id
from memstage.manager.nodes import DIR, FILE, LINK, NODES_SCHEMA, ROW_KINDS, Attrs, Node, NodeTable
from memstage.manager.pfsimport import FoundVersion
from memstage.manager.stripes import ABSENT, Stripe, StripeIndex
from memstage.paths import normalize_file_path, split_drained
from memstage.redundancy import Redundancy

# A set of benefactor names, as callers hold it (the registry gives frozensets).
Names = set[str] | frozenset[str]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS benefactors (
    id TEXT PRIMARY KEY, address TEXT NOT NULL, capacity INTEGER NOT NULL, registered_at REAL NOT NULL,
    incarnation INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS policies (
    ns TEXT PRIMARY KEY, persist_every INTEGER NOT NULL, keep_versions INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL,
    committed_at REAL NOT NULL, chunk_map BLOB NOT NULL,
    persist INTEGER NOT NULL, persisted INTEGER NOT NULL DEFAULT 0, in_memory INTEGER NOT NULL DEFAULT 1,
    lost INTEGER NOT NULL DEFAULT 0, lost_reason TEXT NOT NULL DEFAULT '', drain_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (ns, path, version));
CREATE TABLE IF NOT EXISTS chunks (
    ns TEXT NOT NULL, hash BLOB NOT NULL, length INTEGER NOT NULL, refs INTEGER NOT NULL,
    mem_refs INTEGER NOT NULL, drained TEXT, PRIMARY KEY (ns, hash, length));
CREATE TABLE IF NOT EXISTS location_log (seq INTEGER PRIMARY KEY, ops BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dirs (
    ns TEXT NOT NULL, path TEXT NOT NULL, PRIMARY KEY (ns, path));
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, digest BLOB NOT NULL, grants TEXT NOT NULL, created_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS retired (
    ns TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (ns, path));
CREATE TABLE IF NOT EXISTS checkpoints (
    ns TEXT NOT NULL, series TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,
    started_at REAL NOT NULL, left_memory INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ns, series, step));
CREATE TABLE IF NOT EXISTS stripes (
    id INTEGER PRIMARY KEY, ns TEXT NOT NULL, k INTEGER NOT NULL, m INTEGER NOT NULL, size INTEGER NOT NULL,
    members BLOB NOT NULL);
"""
# Columns added since the first schema: state directories of earlier releases gain them at open.
_ADDED_COLUMNS = (
    ("benefactors", "incarnation", "INTEGER NOT NULL DEFAULT 0"),
    ("versions", "lost_reason", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "drain_error", "TEXT NOT NULL DEFAULT ''"),
    ("nodes", "ino", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "redundancy", "TEXT NOT NULL DEFAULT ''"),
    # The checkpoint a version belongs to ("<series>:<step>"; "" = the version is one by itself),
    # and whether its drain waits for the rest of that checkpoint (a pointer file).
    ("versions", "checkpoint", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "deferred", "INTEGER NOT NULL DEFAULT 0"),
    ("checkpoints", "left_memory", "INTEGER NOT NULL DEFAULT 0"),
    # Where a version's chunk files are on the PFS (relative to its root; "" = <ns>/<path>, as
    # drained before a rename) and the deployment that drained them ("" = this one).
    ("versions", "pfs_dir", "TEXT NOT NULL DEFAULT ''"),
    ("versions", "origin", "TEXT NOT NULL DEFAULT ''"),
    # A renamed version's earlier copy on the PFS ("<deployment>:<directory>"), removed once its
    # drain under the new name is complete.
    ("versions", "pfs_old", "TEXT NOT NULL DEFAULT ''"),
    ("policies", "pfs_keep", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "quota_memory", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "quota_sessions", "INTEGER NOT NULL DEFAULT 0"),
    ("policies", "keep_deleted", "INTEGER NOT NULL DEFAULT 0"),
)

OPEN_CHECKPOINT = "open_checkpoint:"  # meta key prefix: a namespace's begun checkpoint

# Drain tasks that only look for a chunk file on the PFS (its holders died) are placed this far
# ahead of their group's place in the queue: before any task that writes.
PFS_CHECK_AHEAD = 1 << 40

# The location log is compacted (replaced by a snapshot) once it holds this many operations and
# more than twice as many as there are locations.
LOG_COMPACT_AT = 1_000_000

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


class Catalog(NodeTable):
    def __init__(self, state_dir: str, default_policy: Policy = Policy(1, 2)) -> None:
        path = Path(state_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SettingError(f"--state: cannot create {state_dir!r} ({e.strerror})") from None
        if not os.access(path, os.W_OK):
            raise SettingError(f"--state: directory {state_dir!r} is not writable")
        self.default_policy = default_policy
        self.db_path = path / "manager.sqlite3"
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # Group commit: a transaction's COMMIT only writes the WAL; sync() fsyncs it once for every
        # transaction committed so far, and the server acknowledges a call only after that. So what
        # a client was told survives a power cut of the manager's node too (as synchronous=FULL),
        # but concurrent commits share one fsync instead of queueing for one each.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA + NODES_SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS versions_by_checkpoint ON versions (ns, checkpoint)")
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[bytes, dict[str, str]]] = {}  # tokens looked up, not revoked
        self._policies: dict[str, Policy] = {}  # read through: set_policy is the only writer
        self._db.execute("BEGIN IMMEDIATE")  # makes sure the WAL file exists (to fsync it by descriptor)
        self._db.execute("COMMIT")
        self._wal = os.open(f"{self.db_path}-wal", os.O_RDONLY)
        _fsync_dir(path)
        self._committed = 0  # transactions committed (written to the WAL)
        self._synced = 0  # of them, made durable by an fsync of the WAL
        self._sync_lock = threading.Lock()
        self._thread_seq = threading.local()  # the last transaction each thread committed
        self._batch: locationlog.Batch | None = None  # location changes of the open transaction
        # Benefactors given drain tasks since the service last asked (it tells them in heartbeat
        # replies); a lock of its own, so that asking never waits for a commit.
        self._drain_queued: set[str] = set()
        self._queued_lock = threading.Lock()
        self._migrate_locations()
        self._drains = DrainQueue(self._db)
        # Versions let go whose chunk files are to leave the PFS: (namespace, copy, its chunks).
        self._trash: list[tuple[str, PfsCopy, tuple[ChunkKey, ...]]] = []
        # This deployment's identity on the PFS, drawn once with the state: chunk file names carry it.
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('deployment', ?)", (secrets.token_hex(6),))
        self.deployment_id: str = self._db.execute("SELECT value FROM meta WHERE key='deployment'").fetchone()[0]
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
        # Checkpoints begun for a whole namespace (memstage checkpoint begin): namespace -> step.
        self._open_checkpoints = {key.removeprefix(OPEN_CHECKPOINT): int(value) for key, value in self._db.execute(
            "SELECT key, value FROM meta WHERE key LIKE ?", (OPEN_CHECKPOINT + "%",))}
        self.created_at = float(self._db.execute("SELECT value FROM meta WHERE key='created_at'").fetchone()[0])
        # The chunk index is read on every commit, lookup and query: kept in memory, written through.
        self._log_ops = 0  # operations in the location log (set by the load)
        self._top_gen = 0  # the newest generation a loaded location has
        self._index = self._load_index()
        self._stripes = self._load_stripes()
        self._next_stripe = self._db.execute("SELECT MAX(id) FROM stripes").fetchone()[0] or 0
        # Generations of holds grow across restarts too (a free names one): start above the clock.
        self._next_gen = max(self._top_gen, time.time_ns() // 1000) + 1

    def _migrate_locations(self) -> None:
        """A state directory of an earlier release keeps one row per location: it becomes a snapshot
        in the location log."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='locations'").fetchone():
            return
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(locations)")}
        gen = "gen" if "gen" in columns else "0"
        rows = self._db.execute(f"SELECT ns, hash, length, benefactor, {gen} FROM locations").fetchall()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO location_log (ops) VALUES (?)", [(blob,) for blob in locationlog.snapshot(
            (ns, ChunkKey(h, n), bf, g) for ns, h, n, bf, g in rows)])
        self._db.execute("DROP TABLE locations")
        self._db.execute("COMMIT")

    def sync(self) -> None:
        """Make durable every transaction this thread committed (and all before it): one fsync of
        the WAL covers all of them, and callers that arrive during it share the next one."""
        seq = getattr(self._thread_seq, "seq", 0)
        if seq <= self._synced:
            return
        with self._sync_lock:
            if seq <= self._synced:
                return  # another caller's fsync covered it
            target = self._committed  # every transaction up to this one is in the WAL already
            os.fsync(self._wal)
            self._synced = max(self._synced, target)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._wal)

    # -- benefactors and policies ------------------------------------------------------------
    def remember_benefactor(self, benefactor_id: str, address: str, capacity: int, incarnation: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO benefactors VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "address=excluded.address, capacity=excluded.capacity, incarnation=excluded.incarnation",
                (benefactor_id, address, capacity, time.time(), incarnation),
            )

    def incarnation(self, benefactor_id: str) -> int:
        """The incarnation the benefactor last registered as (0 if never)."""
        with self._lock:
            row = self._db.execute("SELECT incarnation FROM benefactors WHERE id=?", (benefactor_id,)).fetchone()
        return row[0] if row else 0

    def benefactor_addresses(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, address FROM benefactors"))

    def known_benefactors(self) -> list[tuple[str, str, int]]:
        """(id, address, incarnation) of every benefactor that ever registered."""
        with self._lock:
            return list(self._db.execute("SELECT id, address, incarnation FROM benefactors"))

    def forget_benefactor(self, benefactor_id: str) -> None:
        """A benefactor that is gone for good (its locations already void) is not listed any more."""
        with self._lock:
            self._db.execute("DELETE FROM benefactors WHERE id=?", (benefactor_id,))

    def policy(self, namespace: str) -> Policy:
        with self._lock:
            policy = self._policies.get(namespace)  # asked several times per commit
            if policy is None:
                row = self._db.execute("SELECT persist_every, keep_versions, redundancy, pfs_keep, quota_memory, "
                                       "quota_sessions, keep_deleted FROM policies WHERE ns=?", (namespace,)).fetchone()
                policy = self._policies[namespace] = (
                    Policy(row[0], row[1], row[2] or self.default_policy.redundancy, row[3], row[4], row[5],
                           bool(row[6])) if row else self.default_policy)
            return policy

    def parity_namespaces(self) -> dict[str, Redundancy]:
        """Namespaces whose policy keeps Reed-Solomon stripes (rs:K+M) -> their policy."""
        with self._lock:
            namespaces = {ns for (ns,) in self._db.execute("SELECT DISTINCT ns FROM versions")}
        out = {}
        for ns in namespaces:
            r = Redundancy.parse(self.policy(ns).redundancy)
            if r.parity:
                out[ns] = r
        return out

    def replicated_namespaces(self) -> dict[str, int]:
        """Namespaces whose policy keeps more than one copy of each chunk -> copies."""
        with self._lock:
            namespaces = {ns for (ns,) in self._db.execute("SELECT DISTINCT ns FROM versions")}
        out = {}
        for ns in namespaces:
            copies = Redundancy.parse(self.policy(ns).redundancy).copies
            if copies > 1:
                out[ns] = copies
        return out

    def set_policy(self, namespace: str, policy: Policy) -> None:
        if policy.keep_versions < 1:
            raise InvalidArgument("keep_versions must be at least 1 (the latest version stays readable)")
        with self._lock:
            self._db.execute("INSERT INTO policies (ns, persist_every, keep_versions, redundancy, pfs_keep, "
                             "quota_memory, quota_sessions, keep_deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                             "ON CONFLICT(ns) DO UPDATE SET persist_every=excluded.persist_every, "
                             "keep_versions=excluded.keep_versions, redundancy=excluded.redundancy, "
                             "pfs_keep=excluded.pfs_keep, quota_memory=excluded.quota_memory, "
                             "quota_sessions=excluded.quota_sessions, keep_deleted=excluded.keep_deleted",
                             (namespace, policy.persist_every, policy.keep_versions, policy.redundancy,
                              policy.pfs_keep, policy.quota_memory, policy.quota_sessions, int(policy.keep_deleted)))
            self._policies.pop(namespace, None)

    # -- access tokens (memstage.auth) ------------------------------------------------------------
    def add_token(self, token_id: str, digest: bytes, grants: dict[str, str], note: str = "") -> None:
        with self._lock:
            self._db.execute("INSERT INTO tokens (id, digest, grants, created_at, note) VALUES (?, ?, ?, ?, ?)",
                             (token_id, digest, json.dumps(grants, sort_keys=True), time.time(), note))

    def token(self, token_id: str) -> tuple[bytes, dict[str, str]] | None:
        """(digest of its secret, grants) of a token that is not revoked. Every client call asks:
        tokens in use are kept in memory, so that a call does not wait for the catalog's lock
        while a commit holds it."""
        known = self._tokens.get(token_id)
        if known is not None:
            return known
        with self._lock:
            row = self._db.execute("SELECT digest, grants FROM tokens WHERE id=? AND revoked=0",
                                   (token_id,)).fetchone()
            if not row:
                return None
            known = self._tokens[token_id] = (bytes(row[0]), json.loads(row[1]))
        return known

    def revoke_token(self, token_id: str) -> bool:
        with self._lock:
            self._tokens.pop(token_id, None)  # under the lock: a lookup cannot put it back
            return bool(self._db.execute("UPDATE tokens SET revoked=1 WHERE id=?", (token_id,)).rowcount)

    def memory_bytes(self, namespace: str) -> int:
        """Distinct bytes of the namespace's chunks that an in-memory version needs."""
        with self._lock:
            return self._index.memory_bytes(namespace)

    def memory_added(self, namespace: str, keys: Sequence[ChunkKey]) -> tuple[int, int]:
        """(the namespace's in-memory bytes, the bytes a version of `keys` would add to them)."""
        with self._lock:
            new = {k for k in keys if not k.is_hole and self._index.mem_refs((namespace, k)) <= 0}
            return self._index.memory_bytes(namespace), sum(k.length for k in new)

    def revoked_tokens(self) -> list[str]:
        with self._lock:
            return [t for (t,) in self._db.execute("SELECT id FROM tokens WHERE revoked=1 ORDER BY id")]

    def tokens(self) -> list[tuple[str, dict[str, str], float, bool, str]]:
        with self._lock:
            rows = self._db.execute("SELECT id, grants, created_at, revoked, note FROM tokens "
                                    "ORDER BY created_at").fetchall()
        return [(i, json.loads(g), at, bool(r), note) for i, g, at, r, note in rows]

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
            if row is None or row[1]:
                return False
            return bool(row[2]) or not self._short(namespace, row[0], redundancy, alive)

    def _short(self, namespace: str, blob: bytes, redundancy: Redundancy, alive: Names) -> bool:
        """(under the lock) Some chunk of the map lacks the protection the policy asks."""
        for key in set(unpack_map(blob)):
            if key.is_hole:
                continue
            ik = (namespace, key)
            if self._index.drained(ik):
                continue
            if redundancy.parity:
                if not any(not self._spread(st, alive)[1] for st in self._stripes.of(ik)):
                    return True
            elif sum(1 for bf in self._index.locations(ik) if bf in alive) < redundancy.copies:
                return True
        return False

    def protection(self, namespace: str, redundancy: Redundancy, alive: Names) -> tuple[int, int, int]:
        """Versions of a namespace still in memory: (protected, degraded, lost). Protected: every
        chunk has `copies` live copies, or is in a stripe with all its members, or is on the PFS."""
        protected = degraded = lost = 0
        with self._lock:
            rows = self._db.execute("SELECT chunk_map, lost, persisted FROM versions WHERE ns=? AND in_memory=1",
                                    (namespace,)).fetchall()
        # Status and every /metrics scrape ask: the lock is taken a batch of versions at a time, so
        # that commits go on meanwhile, and maps without stripes are checked on their bytes.
        for start in range(0, len(rows), 64):
            with self._lock:
                numbers = self._index.numbers(alive)
                for blob, is_lost, persisted in rows[start:start + 64]:
                    if is_lost:
                        lost += 1
                        continue
                    if persisted:
                        short = False
                    elif redundancy.parity:
                        short = self._short(namespace, blob, redundancy, alive)
                    else:
                        short = self._index.short_of(namespace, blob, redundancy.copies, numbers)
                    if short:
                        degraded += 1
                    else:
                        protected += 1
        return protected, degraded, lost

    # -- Reed-Solomon stripes (manager.stripes) ------------------------------------------------
    def _load_stripes(self) -> StripeIndex:
        stripes = StripeIndex()
        for sid, ns, k, m, size, blob in self._db.execute("SELECT id, ns, k, m, size, members FROM stripes"):
            stripes.add(Stripe(sid, ns, k, m, size, Stripe.unpack_members(blob)))
        return stripes

    def new_stripe_id(self) -> int:
        with self._lock:
            self._next_stripe += 1
            return self._next_stripe

    def _spread(self, stripe: Stripe, alive: Names) -> tuple[int, list[int]]:
        """(members readable, members to rebuild): a member is readable from a live benefactor, or
        from the PFS (a data member); it is to rebuild when it is not readable, or when its only
        benefactors each hold another member already (one loss would cost the stripe two)."""
        readable, rebuild, used = 0, list[int](), set[str]()
        for i, key in enumerate(stripe.members):
            ik = (stripe.namespace, key)
            if key == ABSENT or (i < stripe.k and self._index.drained(ik)):
                readable += 1
                continue
            live = alive.intersection(self._index.locations(ik))
            if not live:
                rebuild.append(i)
                continue
            readable += 1
            if live - used:
                used.add(min(live - used))
            else:
                rebuild.append(i)
        return readable, rebuild

    def _available(self, stripe: Stripe, alive: Names) -> int:
        return self._spread(stripe, alive)[0]

    def _recoverable(self, ik: IndexKey, alive: Names) -> bool:
        """(under the lock) Some stripe of the chunk still has K members to rebuild it from."""
        return any(self._available(st, alive) >= st.k for st in self._stripes.of(ik))

    def _beyond(self, ik: IndexKey, alive: Names) -> str:
        """Why a chunk in a stripe cannot be rebuilt ("" when it is in none)."""
        stripes = self._stripes.of(ik)
        if not stripes:
            return ""
        st = stripes[-1]
        return (f"; chunk {ik[1]} cannot be rebuilt: its stripe (rs:{st.k}+{st.m}) has {self._available(st, alive)} "
                f"of its {st.k + st.m} members left, {st.k} are needed")

    def _version_needs(self, ik: IndexKey) -> int:
        """In-memory references of versions (those of stripes not counted)."""
        return self._index.mem_refs(ik) - self._stripes.pins(ik)

    def unstriped(self, namespaces: dict[str, Redundancy], alive: Names
                  ) -> dict[str, list[tuple[IndexKey, list[str]]]]:
        """Per namespace keeping stripes: chunks a version needs in memory, not on the PFS, in no
        stripe yet, with a live holder: (chunk, live holders), in the index's order (commit order)."""
        out: dict[str, list[tuple[IndexKey, list[str]]]] = {}
        with self._lock:
            for ik, live, _ in self._index.short_held({ns: sys.maxsize for ns in namespaces}, alive):
                if not ik[1].is_hole and not self._stripes.pins(ik):
                    out.setdefault(ik[0], []).append((ik, live))
        return out

    def add_stripe(self, stripe: Stripe, parity: dict[int, tuple[str, int]]) -> bool:
        """Record an encoded stripe, its parity held at (benefactor, gen). False (nothing recorded:
        the caller frees the parity) if one of its data members is no longer needed in memory."""
        with self._lock:
            for _, ik in stripe.data():
                if self._version_needs(ik) <= 0 or self._index.drained(ik):
                    return False
            with self._transaction():
                self._db.execute("INSERT INTO stripes VALUES (?, ?, ?, ?, ?, ?)",
                                 (stripe.id, stripe.namespace, stripe.k, stripe.m, stripe.size, stripe.pack()))
                self._stripes.add(stripe)
                for i, ik in stripe.real():
                    self._bump(ik, 1, 1)
                    if i in parity:
                        bf, gen = parity[i]
                        self._index.add_location(ik, bf, gen)
                        self._log().add(ik[0], ik[1], bf, gen)
        return True

    def release_stripes(self) -> Freed:
        """Drop the stripes none of whose data members a version needs in memory any more (gone,
        or on the PFS): their members are unpinned, and what nothing else needs is returned to free."""
        freed: Freed = {}
        with self._lock:
            done = [st for st in self._stripes
                    if not any(self._version_needs(ik) > 0 and not self._index.drained(ik) for _, ik in st.data())]
            if not done:
                return freed
            with self._transaction():
                for st in done:
                    self._db.execute("DELETE FROM stripes WHERE id=?", (st.id,))
                    self._stripes.remove(st.id)
                    for _, ik in st.real():
                        dropped = self._bump(ik, -1, -1)
                        if dropped:
                            freed.setdefault(ik, {}).update(dropped)
        return freed

    def stripe_health(self, alive: Names) -> list[tuple[Stripe, list[int], int]]:
        """Stripes with members to rebuild (no live copy, or sharing their benefactor with another
        member; a data member on the PFS counts as readable): (stripe, those members, members
        readable)."""
        out = []
        with self._lock:
            for st in self._stripes:
                readable, rebuild = self._spread(st, alive)
                if rebuild:
                    out.append((st, rebuild, readable))
        return out

    def stripe_members(self, stripe: Stripe) -> list[tuple[Holders, str]]:
        """Locations and drained path of each member (absent members: none)."""
        with self._lock:
            return [({}, "") if key == ABSENT else
                    (self._index.locations((stripe.namespace, key)), self._index.drained((stripe.namespace, key)))
                    for key in stripe.members]

    def stripes_of(self, namespace: str, keys: Sequence[ChunkKey]) -> list[Stripe | None]:
        """The stripe protecting each chunk (the newest one, if several), or None."""
        with self._lock:
            found = [self._stripes.of((namespace, k)) for k in keys]
            return [s[-1] if s else None for s in found]

    def stripe_count(self) -> int:
        with self._lock:
            return len(self._stripes)

    def new_gen(self) -> int:
        with self._lock:
            return self._new_gen()

    def _new_gen(self) -> int:
        self._next_gen += 1
        return self._next_gen

    # -- versions ----------------------------------------------------------------------------
    def commit(self, namespace: str, path: str, size: int, chunks: Sequence[tuple[ChunkKey, Sequence[str]]],
               alive: Names, now: float | None = None, attrs: Attrs | None = None, placed: Placed | None = None
               ) -> tuple[int, Holds]:
        """Record a new version atomically (queueing its drain if the policy selects it).

        Each chunk lists the benefactors that confirmed storing it for this write (their receipts
        were checked by the caller), or nothing when the write relied on the namespace already
        holding it. Either way, under the same lock as the write, it must be readable: on a live
        benefactor (`alive` is the registry's view) or on the PFS; else DataLost and no version.
        `placed`, when given, is the same chunks as one copy each (the usual commit of new data).
        Returns the version number and, per benefactor, the holds to order (key, generation).
        """
        outcome = self.commit_group([NewVersion(namespace, path, size, chunks, alive, attrs, placed, now)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def commit_group(self, versions: Sequence[NewVersion]) -> list[tuple[int, Holds] | BaseException]:
        """commit() of each, in order, in one transaction: one outcome each, its result or the
        error that refused it (nothing of it recorded). Should the transaction itself fail, each is
        tried again in a transaction of its own, so that only the one that fails fails."""
        outcomes: list[tuple[int, Holds] | BaseException | None] = [None] * len(versions)
        for i, v in enumerate(versions):
            keys = v.placed.keys if v.placed is not None else [k for k, _ in v.chunks]
            if sum(map(second, keys)) != v.size:
                outcomes[i] = InvalidArgument(f"commit of {v.path}: size {v.size} differs from the sum of its "
                                              "chunk lengths")
        with self._lock:
            try:
                with self._transaction():
                    for i, v in enumerate(versions):
                        if outcomes[i] is None:
                            try:
                                self._check_base(v)
                                self._check_readable(v)
                            except (DataLost, Conflict) as e:
                                outcomes[i] = e
                                continue
                            outcomes[i] = self._record_version(v)
            except Exception as e:  # rolled back (and the index reloaded): none of them was recorded
                if len(versions) > 1:
                    return [self.commit_group([v])[0] for v in versions]
                outcomes = [o if isinstance(o, (InvalidArgument, DataLost, Conflict)) else e for o in outcomes]
        return [o if o is not None else AssertionError("commit: no outcome") for o in outcomes]

    def _check_base(self, v: NewVersion) -> None:
        """(under self._lock) Conflict if a merging writer's base is no longer the latest version
        (checked in the transaction that records it, so two merges never both build on one base)."""
        if v.base is None:
            return
        row = self._db.execute("SELECT MAX(version) FROM versions WHERE ns=? AND path=?",
                               (v.namespace, v.path)).fetchone()
        latest = row[0] or 0
        if latest != v.base:
            raise Conflict(f"commit of {v.path}: version {latest} was committed since this writer's base "
                           f"(version {v.base}); merge over it and commit again")

    def _check_readable(self, v: NewVersion) -> None:
        """(under self._lock) DataLost unless every chunk of the version can be read."""
        if v.placed is not None and v.alive.issuperset(v.placed.names):
            return  # every chunk is on a live benefactor
        for i, (key, locs) in enumerate(v.chunks):
            if key.is_hole:
                continue  # zeros: stored nowhere, always readable
            if v.alive.isdisjoint(locs) and not self._index.readable((v.namespace, key), v.alive):
                where = f"on {', '.join(locs)}, not alive" if locs else "no longer held by the namespace"
                raise DataLost(f"commit of {v.path}: chunk {i} ({key}) is {where}; write the file again")

    def _record_version(self, v: NewVersion) -> tuple[int, Holds]:
        """(inside a transaction) The version's rows, index entries, locations and drain tasks."""
        namespace, path, placed, chunks = v.namespace, v.path, v.placed, v.chunks
        keys = placed.keys if placed is not None else [k for k, _ in chunks]
        now = time.time() if v.now is None else v.now
        policy = self.policy(namespace)
        # Numbers go on from those of a file the name held before (deleted or renamed away): its
        # chunk files may be on the PFS under this name, and a number names one version there.
        row = self._db.execute("SELECT MAX(v) FROM (SELECT MAX(version) AS v FROM versions WHERE ns=? AND path=? "
                               "UNION ALL SELECT version FROM retired WHERE ns=? AND path=?)",
                               (namespace, path, namespace, path)).fetchone()
        version = (row[0] or 0) + 1
        explicit = v.checkpoint
        if explicit is None and namespace in self._open_checkpoints and step_of(path) is None:
            explicit = self._open_checkpoints[namespace]  # memstage checkpoint begin STEP, from any writer
        checkpoint, persist, pointer = self._checkpoint_of(namespace, path, version, now, policy.persist_every,
                                                           explicit)
        # A pointer file (one naming the latest checkpoint) drains only once the rest of its
        # checkpoint is on the PFS: the PFS copy never names a checkpoint it does not hold.
        deferred = persist and pointer and not self._checkpoint_persisted(namespace, checkpoint)
        self._db.execute("INSERT INTO versions (ns, path, version, size, committed_at, chunk_map, persist, "
                         "checkpoint, deferred) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (namespace, path, version, v.size, now,
                          placed.chunk_map if placed is not None else pack_map(keys), int(persist), checkpoint,
                          int(deferred)))
        # The file's metadata changes with it: new content is a new mtime unless the writer says.
        when = int(now * 1e9)
        change = v.attrs or Attrs()
        if change.mtime_ns is None:
            change = replace(change, mtime_ns=when)
        self.put_node(namespace, path, change.apply(self.node(namespace, path) or Node.default(FILE, when), when))
        if version == 1:
            self.touch_dirs(namespace, [path], when)  # a new name in its directory
        gen = self._new_gen()
        owners: Sequence[str] | None = None
        if placed is not None and (added := self._index.add_placed(namespace, keys, placed.names, gen)):
            holds = added[1]
            owners = placed.names  # all new: each chunk's one copy, on a live benefactor, drains it
            self._log().add_packed(namespace, placed.chunk_map, placed.names, gen)
        else:
            new_locations, holds = self._index.add_version(namespace, chunks, gen)
            self._log().add_many(namespace, new_locations)
        if persist and not deferred:
            self._queue_drain(namespace, path, version, chunks, v.alive, now, owners)
        return version, holds

    # -- checkpoints (memstage.manager.checkpoints) ---------------------------------------------
    def _checkpoint_of(self, namespace: str, path: str, version: int, now: float, every: int,
                       explicit: int | None = None) -> tuple[str, bool, bool]:
        """(inside a transaction) The checkpoint a new version belongs to, whether the policy
        selects it for the PFS (the first of its series and every `every`-th), and whether the
        version is a pointer file of a step series. A step seen for the first time starts a new
        checkpoint of its series. An explicit checkpoint (the writer's step) is one of the
        namespace's series "@", whatever the path."""
        name = StepName(EXPLICIT, explicit, "") if explicit is not None else step_of(path)
        if name is not None:
            row = self._db.execute("SELECT seq, left_memory FROM checkpoints WHERE ns=? AND series=? AND step=?",
                                   (namespace, name.series, name.step)).fetchone()
            if row is None:
                last = self._db.execute("SELECT MAX(seq) FROM checkpoints WHERE ns=? AND series=?",
                                        (namespace, name.series)).fetchone()[0] or 0
                seq = last + 1
                self._db.execute("INSERT INTO checkpoints (ns, series, step, seq, started_at) VALUES (?, ?, ?, ?, ?)",
                                 (namespace, name.series, name.step, seq, now))
            else:
                seq = row[0]
                if row[1]:  # a late file of a checkpoint that had left memory: retention looks again
                    self._db.execute("UPDATE checkpoints SET left_memory=0 WHERE ns=? AND series=? AND step=?",
                                     (namespace, name.series, name.step))
            return f"{name.series}:{name.step}", _selected(seq, every), False
        # A file beside (or under the directory of) a step series is that series' pointer or side
        # file: it belongs to the series' newest checkpoint.
        newest = None
        for series, step, seq, started in self._db.execute(
                "SELECT series, step, seq, started_at FROM checkpoints c WHERE ns=? AND seq = "
                "(SELECT MAX(seq) FROM checkpoints WHERE ns=c.ns AND series=c.series)", (namespace,)):
            if under(path, series_dir(series)) and (newest is None or started > newest[3]):
                newest = (series, step, seq, started)
        if newest is not None:
            return f"{newest[0]}:{newest[1]}", _selected(newest[2], every), True
        return "", _selected(version, every), False

    def _checkpoint_persisted(self, namespace: str, checkpoint: str) -> bool:
        """(under self._lock) Every version of the checkpoint but its pointer files is on the PFS."""
        return self._db.execute("SELECT 1 FROM versions WHERE ns=? AND checkpoint=? AND deferred=0 AND persist=1 "
                                "AND persisted=0 LIMIT 1", (namespace, checkpoint)).fetchone() is None

    def _release_pointers(self, namespace: str, checkpoint: str, alive: Names, now: float) -> None:
        """(inside a transaction) The rest of a checkpoint is on the PFS: its pointer files drain now."""
        if not checkpoint or not self._checkpoint_persisted(namespace, checkpoint):
            return
        for path, version, blob in self._db.execute(
                "SELECT path, version, chunk_map FROM versions WHERE ns=? AND checkpoint=? AND deferred=1 AND lost=0",
                (namespace, checkpoint)).fetchall():
            self._db.execute("UPDATE versions SET deferred=0 WHERE ns=? AND path=? AND version=?",
                             (namespace, path, version))
            self._queue_drain(namespace, path, version, [(k, ()) for k in unpack_map(blob)], alive, now)

    def begin_checkpoint(self, namespace: str, step: int) -> int | None:
        """Files committed in the namespace from now on belong to checkpoint `step` of its explicit
        series, whoever writes them (a path that names a step itself keeps it), until it ends or
        another begins. Returns the step this one ends, if one was open."""
        with self._lock:
            previous = self._open_checkpoints.get(namespace)
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             (OPEN_CHECKPOINT + namespace, str(step)))
            self._open_checkpoints[namespace] = step
            self.sync()
        return previous

    def end_checkpoint(self, namespace: str) -> int | None:
        """The namespace's open checkpoint is complete. Returns its step (None: none was open)."""
        with self._lock:
            step = self._open_checkpoints.pop(namespace, None)
            self._db.execute("DELETE FROM meta WHERE key=?", (OPEN_CHECKPOINT + namespace,))
            self.sync()
        return step

    def open_checkpoint(self, namespace: str) -> int | None:
        with self._lock:
            return self._open_checkpoints.get(namespace)

    def meta(self, key: str) -> str:
        """A value the state keeps about itself ("" if unset)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else ""

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                             (key, value))
            self.sync()

    def import_persisted(self, found: Iterable[FoundVersion]) -> int:
        """Versions found on the PFS (drained by earlier deployments: memstage.manager.pfsimport)
        become versions of names this catalog does not know yet: persisted, not in memory, read
        from their chunk files. Their step checkpoints are listed too. Returns how many."""
        by_name: dict[tuple[str, str], list[FoundVersion]] = {}
        for f in found:
            by_name.setdefault((f.namespace, f.path), []).append(f)
        imported = 0
        with self._lock, self._transaction():
            steps: dict[tuple[str, str], dict[int, float]] = {}  # (ns, series) -> step -> first commit
            for (ns, path), versions in by_name.items():
                if self.node(ns, path) is not None or self._db.execute(
                        "SELECT 1 FROM versions WHERE ns=? AND path=? LIMIT 1", (ns, path)).fetchone():
                    continue  # this deployment's own name: what it knows stands
                name = step_of(path)
                for v in versions:
                    self._db.execute("INSERT INTO versions (ns, path, version, size, committed_at, chunk_map, persist, "
                                     "persisted, in_memory, checkpoint, origin) VALUES "
                                     "(?, ?, ?, ?, ?, ?, 1, 1, 0, ?, ?)",
                                     (ns, path, v.version, sum(k.length for k in v.keys), v.committed_at,
                                      pack_map(v.keys), f"{name.series}:{name.step}" if name else "", v.deployment))
                    drained = dict(zip(v.keys, v.drained, strict=True))
                    for key in set(v.keys):
                        if key.is_hole:
                            continue
                        ik = (ns, key)
                        self._bump(ik, 1, 0)
                        if self._index.set_drained(ik, drained[key]):
                            self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT(ns, hash, "
                                             "length) DO UPDATE SET drained=excluded.drained",
                                             (ns, key.hash, key.length, drained[key]))
                    imported += 1
                    if name is not None:
                        first = steps.setdefault((ns, name.series), {})
                        first[name.step] = min(first.get(name.step, v.committed_at), v.committed_at)
                when = int(max(v.committed_at for v in versions) * 1e9)
                manifest = max(versions, key=lambda v: v.version).manifest or {}
                self.put_node(ns, path, _with_manifest(Node.default(FILE, when), manifest))
                self.touch_dirs(ns, [path], when)
                for alias in _names(manifest.get("links")):
                    if self.node(ns, alias) is None and not self.has_versions(ns, alias):
                        self.put_node(ns, alias, replace(Node.default(LINK, when), target=path))
                        self.touch_dirs(ns, [alias], when)
            for (ns, series), started in steps.items():
                seq = self._db.execute("SELECT MAX(seq) FROM checkpoints WHERE ns=? AND series=?",
                                       (ns, series)).fetchone()[0] or 0
                for step in sorted(started, key=lambda s: (started[s], s)):
                    seq += 1
                    self._db.execute("INSERT OR IGNORE INTO checkpoints (ns, series, step, seq, started_at, "
                                     "left_memory) VALUES (?, ?, ?, ?, ?, 1)", (ns, series, step, seq, started[step]))
        return imported

    def want_in_memory(self, namespace: str, path: str, alive: Names, latest: bool = False) -> Wanted:
        """The latest version of each file at or below `path` is wanted in memory again (prefetch): a
        persisted one that left memory is counted in memory from now on, so its chunks are kept once
        loaded and evicted as any other's. With `latest`, only the files of the newest persisted
        checkpoint of each step series below `path`. Returns the files, their bytes, the bytes a live
        benefactor holds, and the chunks to load from the PFS (no live holder, a drained file)."""
        with self._lock:
            if latest:
                paths = self.latest_checkpoint_files(namespace, path)
            elif self.kind(namespace, path) == FILE:
                paths = [path]
            else:
                paths = [f.path for f in self.files_under(namespace, path)]
            rows = [self._db.execute("SELECT version, chunk_map, in_memory, persisted, lost FROM versions WHERE ns=? "
                                     "AND path=? ORDER BY version DESC LIMIT 1", (namespace, p)).fetchone()
                    for p in paths]
            wanted = [(p, *row) for p, row in zip(paths, rows, strict=True) if row is not None and not row[4]]
            back = [(p, version, blob) for p, version, blob, in_memory, persisted, _ in wanted
                    if persisted and not in_memory]
            if back:
                with self._transaction():
                    for p, version, blob in back:
                        self._db.execute("UPDATE versions SET in_memory=1 WHERE ns=? AND path=? AND version=?",
                                         (namespace, p, version))
                        for key in set(unpack_map(blob)):
                            if not key.is_hole:
                                self._bump((namespace, key), 0, 1)
            keys = {k for _, _, blob, *_ in wanted for k in unpack_map(blob) if not k.is_hole}
            loaded = 0
            load: list[tuple[IndexKey, str]] = []
            for key in sorted(keys, key=lambda k: k.hash):
                ik = (namespace, key)
                if any(bf in alive for bf in self._index.locations(ik)):
                    loaded += key.length
                elif drained := self._index.drained(ik):
                    load.append((ik, drained))
            return Wanted(len(wanted), sum(k.length for k in keys), loaded, load)

    def manifest(self, namespace: str, path: str, version: int) -> tuple[str, str, dict[str, object]] | None:
        """What a persisted version's manifest on the PFS says (drainer.layout.write_manifest), with
        the directory (relative to the PFS root) and deployment of its chunk files; None if the
        version is gone."""
        with self._lock:
            row = self._db.execute("SELECT size, committed_at, pfs_dir, origin FROM versions WHERE ns=? AND path=? "
                                   "AND version=? AND persisted=1", (namespace, path, version)).fetchone()
            if row is None:
                return None
            size, committed_at, pfs_dir, origin = row
            node = self.node(namespace, path)
            manifest: dict[str, object] = {"path": path, "version": version, "size": size,
                                           "committed_at": committed_at, "links": self.aliases(namespace, path)}
            if node is not None:
                manifest.update(mode=node.mode, uid=node.uid, gid=node.gid, atime_ns=node.atime_ns,
                                mtime_ns=node.mtime_ns, ctime_ns=node.ctime_ns)
        return pfs_dir or f"{namespace}{path}", origin or self.deployment_id, manifest

    def latest_checkpoint_files(self, namespace: str, directory: str = "/") -> list[str]:
        """The files of the newest persisted checkpoint of each step series at or below `directory`
        (what a restart reads), pointer files beside them included."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            out: list[str] = []
            for (series,) in self._db.execute("SELECT DISTINCT series FROM checkpoints WHERE ns=?",
                                              (namespace,)).fetchall():
                for (step,) in self._db.execute("SELECT step FROM checkpoints WHERE ns=? AND series=? "
                                                "ORDER BY seq DESC", (namespace, series)).fetchall():
                    checkpoint = f"{series}:{step}"
                    if not self._checkpoint_persisted(namespace, checkpoint) or not self._db.execute(
                            "SELECT 1 FROM versions WHERE ns=? AND checkpoint=? AND persisted=1 LIMIT 1",
                            (namespace, checkpoint)).fetchone():
                        continue
                    paths = [p for (p,) in self._db.execute(
                        "SELECT DISTINCT path FROM versions WHERE ns=? AND checkpoint=? AND persisted=1",
                        (namespace, checkpoint))]
                    out += [p for p in paths if p.startswith(prefix) or directory == "/"]
                    break
            return sorted(set(out))

    def checkpoints(self, namespace: str, alive: Names | None = None) -> list[dict[str, object]]:
        """The namespace's checkpoints of step series that still hold files, oldest first: series,
        step, sequence number, files, bytes, and their state: persisted, draining, protected (in
        memory with the copies or parity its redundancy asks, when it asks any; needs `alive`),
        in_memory, lost."""
        redundancy = Redundancy.parse(self.policy(namespace).redundancy)
        with self._lock:
            rows = self._db.execute("SELECT series, step, seq, started_at FROM checkpoints WHERE ns=? "
                                    "ORDER BY started_at, seq", (namespace,)).fetchall()
            out: list[dict[str, object]] = []
            for series, step, seq, started in rows:
                checkpoint = f"{series}:{step}"
                files, size, persist, persisted, in_memory, lost = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MIN(persist), 0), "
                    "COALESCE(MIN(persisted), 0), COALESCE(MAX(in_memory), 0), COALESCE(MAX(lost), 0) "
                    "FROM versions WHERE ns=? AND checkpoint=?", (namespace, checkpoint)).fetchone()
                if not files:
                    continue  # left memory unpersisted, or left the PFS: nothing of it remains
                state = ("lost" if lost else "persisted" if persisted else "draining" if persist else
                         "in_memory" if in_memory else "dropped")
                if state == "in_memory" and alive is not None and redundancy.tolerates:
                    maps = self._db.execute("SELECT chunk_map FROM versions WHERE ns=? AND checkpoint=?",
                                            (namespace, checkpoint)).fetchall()
                    if not any(self._short(namespace, blob, redundancy, alive) for (blob,) in maps):
                        state = "protected"
                out.append({"series": series, "step": step, "seq": seq, "started_at": started, "files": files,
                            "bytes": size, "persist": bool(persist), "state": state})
            return out

    def _bump(self, ik: IndexKey, refs: int, mem_refs: int) -> Holders:
        """Change a chunk's counts (inside a transaction). Returns the locations it lost (no in-memory
        version needs it any more), to be freed."""
        ns, key = ik
        # The counts are not stored: a restart derives them from the versions and stripes (one row
        # per commit instead of one per chunk). The chunks table keeps only drained chunk files.
        drained = self._index.drained(ik)
        kept, dropped = self._index.bump(ik, refs, mem_refs)
        if not kept and drained:
            self._db.execute("DELETE FROM chunks WHERE ns=? AND hash=? AND length=?", (ns, key.hash, key.length))
        if dropped:
            self._log().drop(ns, key)
        return dropped

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction (callers hold self._lock). On any error it is rolled back and the
        in-memory index, which the body may have changed already, is replaced by a fresh load."""
        self._db.execute("BEGIN IMMEDIATE")
        self._batch = locationlog.Batch()
        trashed = len(self._trash)
        try:
            yield
            if len(self._batch):
                self._db.execute("INSERT INTO location_log (ops) VALUES (?)", (self._batch.encode(),))
                self._log_ops += len(self._batch)
                if self._log_ops > max(LOG_COMPACT_AT, 2 * self._index.location_count):
                    self._compact_log()
            self._batch = None
            self._db.execute("COMMIT")
            self._committed += 1
            self._thread_seq.seq = self._committed
        except BaseException:
            self._batch = None
            del self._trash[trashed:]  # what the body let go stays: its chunk files too
            self._db.execute("ROLLBACK")
            self._index = self._load_index()
            self._stripes = self._load_stripes()
            raise

    def _log(self) -> locationlog.Batch:
        """The location changes of the open transaction (written with it, as one record)."""
        assert self._batch is not None, "locations change inside a transaction only"
        return self._batch

    def _compact_log(self) -> None:
        """(inside a transaction) Replace the location log by a snapshot of the locations as they are."""
        self._db.execute("DELETE FROM location_log")
        located = ((ns, key, bf, gen) for (ns, key), entry in self._index.items()
                   for bf, gen in entry.locations.items())
        self._db.executemany("INSERT INTO location_log (ops) VALUES (?)",
                             [(blob,) for blob in locationlog.snapshot(located)])
        self._log_ops = self._index.location_count

    def _load_index(self) -> ChunkIndex:
        # Millions of short-lived tuples and no cycles: the cyclic collector, run every few hundred
        # allocations over an ever larger heap, took more than half of a large load.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._load_index_now()
        finally:
            if enabled:
                gc.enable()

    def _load_index_now(self) -> ChunkIndex:
        index = ChunkIndex()
        # refs: the versions whose map holds the chunk; mem_refs: those still in memory, plus the
        # stripes it is a member of (each pins it).
        counts: dict[IndexKey, list[int]] = {}
        for ns, blob, in_memory in self._db.execute("SELECT ns, chunk_map, in_memory FROM versions"):
            for key in set(unpack_map(blob)):
                if not key.is_hole:
                    c = counts.setdefault((ns, key), [0, 0])
                    c[0] += 1
                    c[1] += 1 if in_memory else 0
        for sid, ns, k, m, size, blob in self._db.execute("SELECT id, ns, k, m, size, members FROM stripes"):
            for _, ik in Stripe(sid, ns, k, m, size, Stripe.unpack_members(blob)).real():
                c = counts.setdefault(ik, [0, 0])
                c[0] += 1
                c[1] += 1
        drained_files = {(ns, ChunkKey(h, n)): drained for ns, h, n, drained in self._db.execute(
            "SELECT ns, hash, length, drained FROM chunks WHERE drained IS NOT NULL")}
        for ik, (refs, mem_refs) in counts.items():
            index.load(ik, refs, mem_refs, drained_files.get(ik, ""))
        located, self._log_ops = locationlog.replay(
            blob for (blob,) in self._db.execute("SELECT ops FROM location_log ORDER BY seq"))
        for ns, key, bf, gen in located:
            index.add_location((ns, key), bf, gen)
            self._top_gen = max(self._top_gen, gen)
        return index

    def _queue_drain(self, namespace: str, path: str, version: int, chunks: Sequence[tuple[ChunkKey, Sequence[str]]],
                     alive: Names, now: float, owners: Sequence[str] | None = None) -> None:
        if not chunks:  # an empty file is one empty chunk file with count 0
            owner = min(alive) if alive else ""
            self._drains.add(namespace, path, version, 0, {owner: [Member(0, 0, ChunkKey.of(b""))]}, now)
            self._queued({owner})
            return
        keys = [k for k, _ in chunks]
        if owners is None:
            owners = [holder or self._drainer_for((namespace, key), alive)
                      for key, holder in zip(keys, self._index.first_holders(namespace, keys, alive), strict=True)]
        self._drains.queue_version(namespace, path, version, keys, owners, now)
        self._queued(set(owners))

    def _queued(self, owners: Names) -> None:
        with self._queued_lock:
            self._drain_queued |= owners

    def take_drain_queued(self) -> Names:
        """The benefactors given drain tasks since the last call."""
        with self._queued_lock:
            queued, self._drain_queued = self._drain_queued, set()
        queued.discard("")
        return queued

    def _drainer_for(self, ik: IndexKey, alive: Names) -> str:
        """The benefactor to drain a chunk: one that holds it (the same one for every copy, so
        duplicates queue in order behind the first and become links); any live one to link a
        chunk already drained, or to write a hole's empty file; "" when nobody can (the version is
        then lost)."""
        if ik[1].is_hole:
            return min(alive) if alive else ""
        holder = self._index.first_holder(ik, alive)
        if holder:
            return holder
        if self._index.drained(ik) and alive:
            return min(alive)
        return ""

    def version(self, namespace: str, path: str, version: int = 0) -> VersionRecord:
        """A committed version (0 = the latest); NotFound if there is none."""
        with self._lock:
            if version:
                row = self._db.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE ns=? AND path=? AND version=?",
                                       (namespace, path, version)).fetchone()
            else:
                row = self._db.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE ns=? AND path=? "
                                       "ORDER BY version DESC LIMIT 1", (namespace, path)).fetchone()
        if row is None:
            if version:
                raise NotFound(f"{path}: no version {version} in namespace {namespace!r}")
            raise NotFound(f"{path}: no such file in namespace {namespace!r}")
        return self._record(namespace, path, row)

    @staticmethod
    def _record(namespace: str, path: str, row: tuple) -> VersionRecord:  # type: ignore[type-arg]
        v, size, at, blob, persist, persisted, in_memory, lost, reason, drain_error = row
        return VersionRecord(namespace, path, v, size, at, unpack_map(blob), bool(persist), bool(persisted),
                             bool(in_memory), bool(lost), reason, drain_error)

    def version_count(self, namespace: str, path: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM versions WHERE ns=? AND path=?",
                                        (namespace, path)).fetchone()[0])

    def versions(self, namespace: str, path: str) -> list[VersionRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE ns=? AND path=? ORDER BY version",
                                    (namespace, path)).fetchall()
        return [self._record(namespace, path, r) for r in rows]

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

    # -- explicit directories (a directory also exists while a file is below it) ----------------
    def mkdir(self, namespace: str, path: str) -> None:
        with self._lock:
            if self.versions(namespace, path):
                raise InvalidArgument(f"{path}: is a file")
            self._db.execute("INSERT OR IGNORE INTO dirs VALUES (?, ?)", (namespace, path))

    def rmdir(self, namespace: str, path: str) -> None:
        with self._lock:
            if not self.dir_empty(namespace, path):
                raise FsError(errno.ENOTEMPTY, f"{path}: directory not empty")
            if not self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path)).rowcount:
                raise NotFound(f"{path}: no such directory in namespace {namespace!r}")
            self.drop_node(namespace, path)

    def dir_empty(self, namespace: str, path: str) -> bool:
        with self._lock:
            return not (self.files_under(namespace, path) or self.dirs_under(namespace, path)
                        or any(n.kind in ROW_KINDS for _, n in self.nodes_under(namespace, path)))

    def has_versions(self, namespace: str, path: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM versions WHERE ns=? AND path=? LIMIT 1",
                                    (namespace, path)).fetchone() is not None

    def kind(self, namespace: str, path: str) -> str | None:
        """What `path` names: FILE, DIR, SYMLINK, LINK (another name of a file), a special kind, or None."""
        if path == "/":
            return DIR
        with self._lock:
            node = self.node(namespace, path)
            if node is not None and node.kind in ROW_KINDS:
                return node.kind
            if self.has_versions(namespace, path):
                return FILE
            return DIR if self.is_dir(namespace, path) else None

    def move_tree(self, namespace: str, src: str, dst: str, alive: Names) -> int:
        """Rename by moving rows: the versions (history included), directories and metadata at and
        below `src` go to `dst`, which holds nothing. A version whose drain is under way is drained
        again under its new name (chunks already on the PFS become hard links), so every version
        on the PFS is complete under one name. Returns the files moved."""
        prefix = src + "/"
        span = (namespace, src, prefix, prefix + "\uffff")
        where = "ns=? AND (path=? OR (path >= ? AND path < ?))"
        with self._lock, self._transaction():
            moved = self._db.execute(f"SELECT COUNT(DISTINCT path) FROM versions WHERE {where}", span).fetchone()[0]
            self._retire(where, span)
            draining = self._drains.drop_where(where, span)
            for table in ("versions", "dirs"):
                self._db.execute(f"UPDATE {table} SET path=? || substr(path, ?) WHERE {where}",
                                 (dst, len(src) + 1, *span))
            self.move_nodes(namespace, src, dst)
            requeued = set()
            for old, version in draining:
                new = dst + old[len(src):]
                rec = self._db.execute("SELECT chunk_map, committed_at FROM versions WHERE ns=? AND path=? AND "
                                       "version=?", (namespace, new, version)).fetchone()
                keys = unpack_map(rec[0])
                self._queue_drain(namespace, new, version, [(k, ()) for k in keys], alive, rec[1])
                requeued.add((new, version))
            # Versions already (or partly) on the PFS are drained again under the new name too, as
            # hard links to their chunk files: a new deployment importing the PFS finds them under
            # the name they have now. Their copy under the old name goes once that drain is done.
            dst_span = (namespace, dst, dst + "/", dst + "/\uffff")
            for new, version, blob, at, pfs_dir, origin, persisted in self._db.execute(
                    f"SELECT path, version, chunk_map, committed_at, pfs_dir, origin, persisted FROM versions "
                    f"WHERE {where} AND persist=1 AND lost=0", dst_span).fetchall():
                old = src + new[len(dst):]
                if pfs_dir or persisted:
                    self._db.execute("UPDATE versions SET pfs_old=?, pfs_dir='', origin='' WHERE ns=? AND path=? "
                                     "AND version=?", (f"{origin or self.deployment_id}:{pfs_dir or namespace + old}",
                                                       namespace, new, version))
                if persisted and (new, version) not in requeued:
                    self._queue_drain(namespace, new, version, [(k, ()) for k in unpack_map(blob)], alive, at)
        return int(moved)

    def _retire(self, where: str, args: tuple[str, ...]) -> None:
        """(inside a transaction) The names matching `where` give up their versions: their highest
        number is kept, so that a new file under such a name goes on from it."""
        self._db.execute(f"INSERT INTO retired SELECT ns, path, MAX(version) FROM versions WHERE {where} GROUP BY "
                         "ns, path ON CONFLICT(ns, path) DO UPDATE SET version=MAX(version, excluded.version)", args)

    @contextmanager
    def in_transaction(self) -> Iterator[None]:
        """Several metadata changes made atomically (not around calls that open their own)."""
        with self._lock, self._transaction():
            yield

    def rmdir_if_explicit(self, namespace: str, path: str) -> None:
        """An empty directory that a rename replaces: its row and metadata go."""
        with self._lock:
            self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path))
            self.drop_node(namespace, path)

    def is_dir(self, namespace: str, path: str) -> bool:
        """An explicit directory, or one that exists because something is below it (index lookups only)."""
        prefix = path.rstrip("/") + "/"
        span = (namespace, prefix, prefix + "\uffff")
        with self._lock:
            return any(self._db.execute(query, args).fetchone() for query, args in (
                ("SELECT 1 FROM dirs WHERE ns=? AND path=?", (namespace, path)),
                ("SELECT 1 FROM versions WHERE ns=? AND path >= ? AND path < ? LIMIT 1", span),
                ("SELECT 1 FROM dirs WHERE ns=? AND path >= ? AND path < ? LIMIT 1", span)))

    def subdir_count(self, namespace: str, directory: str) -> int:
        """Explicit directories right below `directory` (its link count is 2 plus these)."""
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM dirs WHERE ns=? AND path >= ? AND path < ? AND instr(substr(path, ?), '/') = 0",
                (namespace, prefix, prefix + "\uffff", len(prefix) + 1)).fetchone()[0])

    def dirs_under(self, namespace: str, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        with self._lock:
            return [p for (p,) in self._db.execute("SELECT path FROM dirs WHERE ns=? AND path >= ? AND path < ?",
                                                   (namespace, prefix, prefix + "\uffff"))]

    def rename_dirs(self, namespace: str, src: str, dst: str) -> None:
        with self._lock:
            for path in [src, *self.dirs_under(namespace, src)]:
                moved = dst + path[len(src):]
                if self._db.execute("DELETE FROM dirs WHERE ns=? AND path=?", (namespace, path)).rowcount:
                    self._db.execute("INSERT OR IGNORE INTO dirs VALUES (?, ?)", (namespace, moved))

    def delete_file(self, namespace: str, path: str) -> tuple[int, Freed]:
        """Delete every version of a file, and its PFS copies unless the policy keeps them
        (keep_deleted). Returns (versions deleted, chunks to free from memory -> the benefactors
        holding them)."""
        keep_on_pfs = self.policy(namespace).keep_deleted
        with self._lock:
            rows = self._db.execute("SELECT version FROM versions WHERE ns=? AND path=?",
                                    (namespace, path)).fetchall()
            if not rows:
                raise NotFound(f"{path}: no such file in namespace {namespace!r}")
            freed: Freed = {}
            with self._transaction():
                self._retire("ns=? AND path=?", (namespace, path))
                for (version,) in rows:
                    freed.update(self._drop_version(namespace, path, version, keep_record=False,
                                                    off_pfs=not keep_on_pfs))
                # Its queued drains go too (the benefactor reports any it already took as missing).
                self._drains.drop_where("ns=? AND path=?", (namespace, path))
                self.drop_node(namespace, path)
            return len(rows), freed

    def _drop_version(self, namespace: str, path: str, version: int, keep_record: bool, off_pfs: bool = True
                      ) -> Freed:
        """Take a version out of memory (keep_record: it stays, readable from the PFS) or out of the
        catalog altogether. Returns the chunks no in-memory version needs any more, with their holders."""
        blob, in_memory, persist, pfs_dir, origin = self._db.execute(
            "SELECT chunk_map, in_memory, persist, pfs_dir, origin FROM versions WHERE ns=? AND path=? AND version=?",
            (namespace, path, version)).fetchone()
        if not keep_record and persist and off_pfs:  # its chunk files (all or some) go from the PFS too
            self._trash_copy(namespace, path, version, pfs_dir, origin, blob)
            self._trash_renamed(namespace, path, version)
        freed: Freed = {}
        for key in set(unpack_map(blob)):
            if key.is_hole:
                continue
            ik = (namespace, key)
            dropped = self._bump(ik, 0 if keep_record else -1, -1 if in_memory else 0)
            if dropped:
                freed[ik] = dropped
        if keep_record:
            self._db.execute("UPDATE versions SET in_memory=0 WHERE ns=? AND path=? AND version=?",
                             (namespace, path, version))
        else:
            self._db.execute("DELETE FROM versions WHERE ns=? AND path=? AND version=?", (namespace, path, version))
        return freed

    # -- the PFS copy (drainer.prune does the file system side) -------------------------------------
    def _trash_copy(self, namespace: str, path: str, version: int, pfs_dir: str, origin: str, blob: bytes) -> None:
        """(inside a transaction) A version's chunk files are to be removed from the PFS."""
        copy = PfsCopy(pfs_dir or f"{namespace}{path}", origin or self.deployment_id, version)
        self._trash.append((namespace, copy, tuple(k for k in set(unpack_map(blob)) if not k.is_hole)))

    def _trash_renamed(self, namespace: str, path: str, version: int) -> None:
        """(inside a transaction) A renamed version's copy under its old name goes, if it has one."""
        row = self._db.execute("SELECT pfs_old, chunk_map FROM versions WHERE ns=? AND path=? AND version=?",
                               (namespace, path, version)).fetchone()
        if row and row[0]:
            origin, _, old_dir = row[0].partition(":")
            self._trash_copy(namespace, path, version, old_dir, origin, row[1])
            self._db.execute("UPDATE versions SET pfs_old='' WHERE ns=? AND path=? AND version=?",
                             (namespace, path, version))

    def _trash_stray(self, drained: str) -> None:
        """(inside a transaction) A chunk file drained for a task that is no longer queued: removed
        (with the rest of its version in that directory) unless a version of that name and number
        still has its copy there."""
        try:
            namespace, _ = split_drained(drained)
        except InvalidPath:
            return
        parsed = parse_name(Path(drained))
        if parsed is None:
            return
        directory = drained.rsplit("/", 1)[0]
        path = directory[len(namespace):]
        if self._db.execute("SELECT 1 FROM versions WHERE ns=? AND version=? AND (pfs_dir=? OR (pfs_dir='' AND "
                            "path=?) OR pfs_old LIKE ?) LIMIT 1",
                            (namespace, parsed.version, directory, path, f"%:{directory}")).fetchone():
            return
        self._trash.append((namespace, PfsCopy(directory, parsed.deployment, parsed.version), (parsed.key,)))

    def take_pfs_trash(self) -> tuple[list[PfsCopy], Names]:
        """Chunk files of versions let go since the last call, to remove from the PFS, and the names
        among them to keep: a chunk another version still needs reads its copy by that name."""
        with self._lock:
            trash, self._trash = self._trash, []
            keep = {d for ns, _, keys in trash for k in keys
                    if self._index.refs((ns, k)) > 0 and (d := self._index.drained((ns, k)))}
        return [copy for _, copy, _ in trash], keep

    def pfs_references(self, namespace: str) -> tuple[set[tuple[str, str, int]], Names]:
        """What of a namespace's PFS directory the catalog refers to: (directory, deployment, version)
        of every version it knows, and every chunk's drained name (memstage gc keeps both)."""
        with self._lock:
            versions: set[tuple[str, str, int]] = set()
            for path, version, pfs_dir, origin, pfs_old in self._db.execute(
                    "SELECT path, version, pfs_dir, origin, pfs_old FROM versions WHERE ns=?", (namespace,)):
                versions.add((pfs_dir or f"{namespace}{path}", origin or self.deployment_id, version))
                if pfs_old:  # a renamed version's copy under its old name, until its new one is complete
                    old_origin, _, old_dir = pfs_old.partition(":")
                    versions.add((old_dir, old_origin, version))
            names = {d for (d,) in self._db.execute("SELECT drained FROM chunks WHERE ns=? AND drained IS NOT NULL",
                                                    (namespace,))}
        return versions, names

    def apply_pfs_keep(self, namespace: str, persisted: Iterable[tuple[str, str]]) -> Freed:
        """pfs_keep K: versions just persisted ((path, checkpoint)) may push older ones of their
        step series (or, outside a series, of their path) beyond the K newest persisted: those leave
        the PFS, and the catalog too unless they are still in memory (then they are dropped by
        retention as versions never persisted). A chunk file another version needs stays."""
        keep = self.policy(namespace).pfs_keep
        freed: Freed = {}
        if keep <= 0:
            return freed
        series = {checkpoint.rsplit(":", 1)[0] for _, checkpoint in persisted if checkpoint}
        paths = {path for path, checkpoint in persisted if not checkpoint}
        with self._lock:
            old: list[tuple[str, int]] = []
            empty: list[tuple[str, int]] = []  # checkpoints that leave the PFS whole
            for name in series:
                done = [step for step, undrained, on_pfs in self._db.execute(
                    "SELECT c.step, SUM(v.persist=1 AND v.deferred=0 AND v.persisted=0), SUM(v.persisted) "
                    "FROM checkpoints c JOIN versions v ON v.ns=c.ns AND v.checkpoint=c.series || ':' || c.step "
                    "WHERE c.ns=? AND c.series=? GROUP BY c.step ORDER BY c.seq DESC", (namespace, name))
                    if on_pfs and not undrained]
                for step in done[keep:]:
                    old += self._db.execute("SELECT path, version FROM versions WHERE ns=? AND checkpoint=? AND "
                                            "persist=1", (namespace, f"{name}:{step}")).fetchall()
                    empty.append((name, step))
            for path in paths:
                rows = self._db.execute("SELECT version FROM versions WHERE ns=? AND path=? AND persisted=1 AND "
                                        "checkpoint='' ORDER BY version DESC", (namespace, path)).fetchall()
                old += [(path, v) for (v,) in rows[keep:]]
            if not old:
                return freed
            with self._transaction():
                for path, version in old:
                    in_memory, pfs_dir, origin, blob = self._db.execute(
                        "SELECT in_memory, pfs_dir, origin, chunk_map FROM versions WHERE ns=? AND path=? AND "
                        "version=?", (namespace, path, version)).fetchone()
                    if in_memory:
                        self._trash_copy(namespace, path, version, pfs_dir, origin, blob)
                        for key in set(unpack_map(blob)):
                            ik = (namespace, key)
                            if not key.is_hole and self._index.refs(ik) == 1 and self._index.drained(ik):
                                # Only this version has the chunk, and it leaves the PFS: so does its file.
                                self._index.clear_drained(ik)
                                self._db.execute("DELETE FROM chunks WHERE ns=? AND hash=? AND length=?",
                                                 (namespace, key.hash, key.length))
                        self._db.execute("UPDATE versions SET persist=0, persisted=0, pfs_dir='' WHERE ns=? AND "
                                         "path=? AND version=?", (namespace, path, version))
                        continue
                    freed.update(self._drop_version(namespace, path, version, keep_record=False))
                    if not self._db.execute("SELECT 1 FROM versions WHERE ns=? AND path=? LIMIT 1",
                                            (namespace, path)).fetchone():
                        self._retire("ns=? AND path=?", (namespace, path))
                        self.drop_node(namespace, path)
                for name, step in empty:
                    if not self._db.execute("SELECT 1 FROM versions WHERE ns=? AND checkpoint=? LIMIT 1",
                                            (namespace, f"{name}:{step}")).fetchone():
                        self._db.execute("DELETE FROM checkpoints WHERE ns=? AND series=? AND step=?",
                                         (namespace, name, step))
            log.info("pfs_keep %d: %d versions of namespace %s leave the PFS", keep, len(old), namespace)
        return freed

    def apply_retention(self, namespace: str, path: str) -> Freed:
        """Versions past keep_versions leave memory: kept on the PFS if persisted, deleted if never
        selected for it; one selected but not yet drained waits (it is never evicted undrained)."""
        keep = self.policy(namespace).keep_versions
        freed: Freed = {}
        with self._lock:
            rows = self._db.execute("SELECT version, persist, persisted FROM versions WHERE ns=? AND path=? AND "
                                    "in_memory=1 ORDER BY version DESC", (namespace, path)).fetchall()
            old = [(path, *row) for row in rows[keep:]]
            gone: list[int] = []  # steps of checkpoints that leave memory whole
            row = self._db.execute("SELECT checkpoint FROM versions WHERE ns=? AND path=? ORDER BY version DESC "
                                   "LIMIT 1", (namespace, path)).fetchone()
            series = row[0].rsplit(":", 1)[0] if row and row[0] else None
            if series is not None:
                # A step series keeps its `keep` newest checkpoints before the one being written.
                newest = self._db.execute("SELECT MAX(seq) FROM checkpoints WHERE ns=? AND series=?",
                                          (namespace, series)).fetchone()[0] or 0
                # Only checkpoints with something in memory still are looked at: a long run's
                # thousands of older ones cost nothing per commit.
                for (step,) in self._db.execute(
                        "SELECT step FROM checkpoints WHERE ns=? AND series=? AND seq < ? AND left_memory=0",
                        (namespace, series, newest - keep)).fetchall():
                    rows = self._db.execute("SELECT path, version, persist, persisted FROM versions WHERE ns=? AND "
                                            "checkpoint=? AND in_memory=1",
                                            (namespace, f"{series}:{step}")).fetchall()
                    old += rows
                    if all(persisted or not persist for _, _, persist, persisted in rows):
                        gone.append(step)  # all of it leaves memory now
            if not old and not gone:
                return freed
            with self._transaction():
                if series is not None:
                    self._db.executemany("UPDATE checkpoints SET left_memory=1 WHERE ns=? AND series=? AND step=?",
                                         [(namespace, series, step) for step in gone])
                for old_path, version, persist, persisted in old:
                    if persisted:
                        freed.update(self._drop_version(namespace, old_path, version, keep_record=True))
                    elif not persist:
                        freed.update(self._drop_version(namespace, old_path, version, keep_record=False))
        return freed

    # -- draining ----------------------------------------------------------------------------
    def drain_work(self, benefactor_id: str, limit: int) -> list[DrainTask]:
        """The oldest tasks of a benefactor, in commit order; a task stays queued until reported done."""
        with self._lock:
            tasks = []
            committed: dict[tuple[str, str, int], float | None] = {}
            for group, m in self._drains.work(benefactor_id, limit):
                vk = group.version_key
                if vk not in committed:
                    row = self._db.execute("SELECT committed_at FROM versions WHERE ns=? AND path=? AND version=?",
                                           vk).fetchone()
                    committed[vk] = row[0] if row else None
                at = committed[vk]
                if at is not None:
                    tasks.append(DrainTask(task_id(group.id, m.index), group.ns, group.path, group.version, m.index,
                                           group.count, m.offset, m.key, self._index.drained((group.ns, m.key)),
                                           int(at * 1000)))
            return tasks

    def drain_done(self, benefactor_id: str, results: Sequence[tuple[int, str, bool, str, int]], alive: Names
                   ) -> DrainOutcome:
        """Record drained chunk files (task id, drained path, missing, error). A task whose chunk the
        benefactor did not have goes to another holder, or its version is lost; a task that cannot
        be drained at all (error) takes its version's drain off the queue; a task no longer queued
        (its file was deleted) is ignored."""
        persisted: set[tuple[str, str]] = set()
        on_pfs: dict[str, list[tuple[str, str]]] = {}
        newly: list[tuple[str, str, int]] = []
        lost: list[tuple[str, str, int, str]] = []
        failed: list[tuple[str, str, int, str]] = []
        drained_bytes = 0
        with self._lock, self._transaction():
            groups: dict[int, Group | None] = {}  # read once per report, written back once at the end
            dropped: set[tuple[str, str, int]] = set()  # versions taken off the queue by this report
            moved: dict[tuple[int, str], list[Member]] = {}  # (group, new owner): tasks that go elsewhere
            touched: set[tuple[str, str, int]] = set()
            for task, drained, missing, error, written in results:
                gid, index = split_task_id(task)
                if gid not in groups:
                    groups[gid] = self._drains.group(gid)
                group = groups[gid]
                if group is None or group.version_key in dropped or index not in group.members:
                    # Reported twice, or the file was deleted or renamed meanwhile: a chunk file it
                    # wrote under a name no version has any more is removed.
                    if drained and group is None:
                        self._trash_stray(drained)
                    continue
                ns, path, version = vk = group.version_key
                if drained and not _drained_under(drained, ns):
                    # Never readable through a grant for this namespace: the task stays queued.
                    log.warning("drain report from %s names %r for %s:%s: not a chunk file of namespace %s; "
                                "ignored", benefactor_id, drained, ns, path, ns)
                    continue
                m = group.members.pop(index)
                group.changed = True
                ik = (ns, m.key)
                if error:
                    # This version cannot go to the PFS: it stays in memory (retention keeps a version
                    # selected for persistence until it is drained), and the tasks behind it go on.
                    self._db.execute("UPDATE versions SET drain_error=? WHERE ns=? AND path=? AND version=?",
                                     (error, ns, path, version))
                    self._drains.drop_version(ns, path, version)
                    dropped.add(vk)
                    failed.append((ns, path, version, error))
                    continue
                if missing:
                    # That benefactor does not hold it (whatever the index said): not a location any more.
                    held = self._index.remove_location(ik, benefactor_id)
                    if held:
                        self._log().delete(ns, ik[1], benefactor_id)
                    # Not in its memory, and (it looked) not on the PFS: another holder, or lost.
                    owner = self._drainer_for(ik, alive - {benefactor_id})
                    if owner:
                        moved.setdefault((gid, owner), []).append(m)
                        self._queued({owner})
                    elif self._recoverable(ik, alive - {benefactor_id}):
                        # Its stripe rebuilds it in memory; the task waits for a holder.
                        moved.setdefault((gid, ""), []).append(m)
                    else:
                        reason = (f"chunk {m.key} was not on benefactor {benefactor_id} when it was drained"
                                  if held else f"chunk {m.key} was held only by benefactors that are gone, "
                                  "and its chunk file is not on the PFS")
                        self._mark_lost(ns, path, version, reason)
                        dropped.add(vk)
                        lost.append((ns, path, version, reason))
                    continue
                drained_bytes += written
                if vk not in touched and drained:
                    self._db.execute("UPDATE versions SET pfs_dir=? WHERE ns=? AND path=? AND version=? AND "
                                     "pfs_dir=''", (drained.rsplit("/", 1)[0], ns, path, version))
                if group.count and not m.key.is_hole and self._index.set_drained(ik, drained):
                    self._db.execute("INSERT INTO chunks VALUES (?, ?, ?, 0, 0, ?) ON CONFLICT(ns, hash, length) "
                                     "DO UPDATE SET drained=excluded.drained", (ns, m.key.hash, m.key.length, drained))
                touched.add(vk)
            for group in groups.values():
                if group is not None and group.changed and group.version_key not in dropped:
                    self._drains.save(group)
            for (gid, owner), members in moved.items():
                group = groups[gid]
                assert group is not None
                if group.version_key not in dropped:
                    self._drains.add(group.ns, group.path, group.version, group.count, {owner: members},
                                     group.queued_at, group.seq)
            for ns, path, version in touched - dropped:
                if not self._drains.has_version(ns, path, version):
                    # Every chunk file is on the PFS: persisted, whatever was feared lost meanwhile.
                    self._db.execute("UPDATE versions SET persisted=1, lost=0, lost_reason='' WHERE ns=? AND "
                                     "path=? AND version=?", (ns, path, version))
                    persisted.add((ns, path))
                    row = self._db.execute("SELECT checkpoint FROM versions WHERE ns=? AND path=? AND version=?",
                                           (ns, path, version)).fetchone()
                    on_pfs.setdefault(ns, []).append((path, row[0] if row else ""))
                    newly.append((ns, path, version))
                    self._trash_renamed(ns, path, version)
                    if row and row[0]:
                        self._release_pointers(ns, row[0], alive, time.time())
        return DrainOutcome(persisted, lost, failed, drained_bytes, on_pfs, newly)

    def _mark_lost(self, ns: str, path: str, version: int, reason: str, keep_tasks: bool = False) -> None:
        """Inside a transaction: the version cannot be read or drained any more (keep_tasks: unless
        its drain, taken up again later, finds its chunk files on the PFS after all)."""
        self._db.execute("UPDATE versions SET lost=1, lost_reason=? WHERE ns=? AND path=? AND version=?",
                         (reason, ns, path, version))
        if not keep_tasks:
            self._drains.drop_version(ns, path, version)

    def reassign_drains(self, dead: str, alive: Names, reason: str, check_pfs: bool = True
                        ) -> list[tuple[str, str, int]]:
        """A benefactor died: give its queued chunks to another holder. A chunk nobody holds any more
        goes to any live benefactor, which looks for its chunk file on the PFS (the dead one may have
        written it without reporting it) and reports it drained, or missing (then its version is
        lost). With no live benefactor the tasks wait for one. Without check_pfs (the benefactor
        stopped after draining what it could: the rest is not on the PFS), a chunk nobody holds
        makes its version lost at once. Returns the versions lost."""
        lost: list[tuple[str, str, int]] = []
        candidates = alive - {dead}
        if not candidates and check_pfs:
            # Nobody can look at the PFS now: lost as far as anyone can tell, until a benefactor
            # is back and finds the chunk files (the tasks stay queued for it).
            with self._lock:
                rows = sorted(self._drains.versions(dead))
                if rows:
                    with self._transaction():
                        for ns, path, version in rows:
                            self._mark_lost(ns, path, version, reason, keep_tasks=True)
                            lost.append((ns, path, version))
            return lost
        with self._lock:
            groups = self._drains.groups_of(dead)
            if not groups:
                return lost
            with self._transaction():
                for group in groups:
                    if group.version_key in lost:
                        continue  # its tasks went with it
                    by_owner: dict[str, list[Member]] = {}
                    checks: dict[str, list[Member]] = {}
                    for m in group.members.values():
                        ik = (group.ns, m.key)
                        owner = self._drainer_for(ik, candidates)
                        if not owner and self._recoverable(ik, candidates):
                            # Its stripe rebuilds it in memory: the task waits (unassigned) for that holder.
                            by_owner.setdefault("", []).append(m)
                            continue
                        if not owner and check_pfs:
                            owner = min(candidates)
                            checks.setdefault(owner, []).append(m)  # a look at the PFS: ahead of the queue
                            continue
                        if not owner:
                            lost.append(group.version_key)
                            self._mark_lost(group.ns, group.path, group.version, reason)
                            break
                        by_owner.setdefault(owner, []).append(m)
                    else:
                        # The tasks keep their place in the queue under their new owners; those
                        # whose chunk nobody holds go first: until their PFS copy is found their
                        # version cannot be read, and looking costs the new owner little.
                        self._drains.drop(group.id)
                        if by_owner:
                            self._drains.add(group.ns, group.path, group.version, group.count, by_owner,
                                             group.queued_at, group.seq)
                        if checks:
                            self._drains.add(group.ns, group.path, group.version, group.count, checks,
                                             group.queued_at, group.seq - PFS_CHECK_AHEAD)
                        self._queued(set(by_owner) | set(checks))
        return lost

    def drain_owners(self) -> Names:
        """Benefactors that have drain tasks queued ("" for tasks nobody could take)."""
        with self._lock:
            return self._drains.owners()

    def void_benefactor(self, benefactor_id: str, alive: Names, reason: str, check_pfs: bool = True
                        ) -> list[tuple[str, str, int]]:
        """A benefactor came back as a new incarnation: every location of the old one is void. Its
        queued drains go to other holders; versions still needed in memory that some chunk is now
        readable from nowhere (no other copy, not drained) are lost. Returns those versions."""
        with self._lock:
            keys = self._index.held_by(benefactor_id)
            if keys:
                with self._transaction():
                    for ik in keys:
                        self._index.remove_location(ik, benefactor_id)
                    self._log().void(benefactor_id)
            # Its chunks, and the members of their stripes: a member lost earlier was recoverable
            # then, and may not be now that this one (say, a parity holder) is gone too.
            candidates = set(keys)
            for ik in keys:
                for st in self._stripes.of(ik):
                    candidates.update(m for _, m in st.real())
            gone = {ik for ik in candidates if not self._index.locations(ik) and not self._index.drained(ik)
                    and not self._recoverable(ik, alive - {benefactor_id})}
            lost = self.reassign_drains(benefactor_id, alive - {benefactor_id}, reason, check_pfs)
            if not gone:
                return lost
            rows = self._db.execute("SELECT ns, path, version, chunk_map FROM versions WHERE in_memory=1 AND "
                                    "persisted=0 AND lost=0").fetchall()
            draining = self._drains.versions()
            with self._transaction():
                for ns, path, version, blob in rows:
                    # A version still being drained is decided by its drain (its files may be on the PFS).
                    missing = next((ik for k in unpack_map(blob) if (ik := (ns, k)) in gone), None)
                    if (ns, path, version) not in draining and missing is not None:
                        self._mark_lost(ns, path, version, reason + self._beyond(missing, alive - {benefactor_id}))
                        lost.append((ns, path, version))
        return lost

    def backlog_of(self, benefactor_id: str) -> tuple[int, int]:
        """(bytes, chunks) a benefactor still has to drain."""
        with self._lock:
            return self._drains.backlog_of(benefactor_id)

    def persist_selected(self, ns: str, path: str, version: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT persist FROM versions WHERE ns=? AND path=? AND version=?",
                                   (ns, path, version)).fetchone()
        return bool(row and row[0])

    def backlog(self) -> dict[str, Backlog]:
        with self._lock:
            return {bf: Backlog(n, oldest) for bf, (n, oldest) in self._drains.backlog().items()}

    def undrainable_versions(self) -> list[tuple[str, str, int, str]]:
        with self._lock:
            return list(self._db.execute("SELECT ns, path, version, drain_error FROM versions WHERE drain_error != '' "
                                         "AND lost=0 ORDER BY ns, path, version"))

    def lost_versions(self) -> list[tuple[str, str, int, str]]:
        with self._lock:
            return list(self._db.execute("SELECT ns, path, version, lost_reason FROM versions WHERE lost=1 "
                                         "ORDER BY ns, path, version"))

    def namespaces(self) -> list[NamespaceSummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ns, COUNT(DISTINCT path), COUNT(*), SUM(size) FROM versions GROUP BY ns").fetchall()
            usage = self._index.usage()
        return [NamespaceSummary(ns, f, v, b or 0, *usage.get(ns, (0, 0))) for ns, f, v, b in rows]


def _with_manifest(node: Node, manifest: dict[str, object]) -> Node:
    """A node with the metadata a version's manifest on the PFS kept (fields of the wrong type are
    left as they are: the manifest is read from a shared directory)."""
    fields = {name: value for name in ("mode", "uid", "gid", "atime_ns", "mtime_ns", "ctime_ns")
              if isinstance(value := manifest.get(name), int) and not isinstance(value, bool)}
    if "mode" in fields:
        fields["mode"] &= 0o7777
    return replace(node, **fields)  # type: ignore[arg-type]


def _names(value: object) -> list[str]:
    """The valid file paths in a manifest's list of other names."""
    if not isinstance(value, list):
        return []
    out = []
    for name in value:
        try:
            out.append(normalize_file_path(name))
        except (InvalidPath, TypeError, AttributeError):
            continue
    return out


def _fsync_dir(path: Path) -> None:
    """The directory entries of the database and its WAL survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drained_under(drained: str, namespace: str) -> bool:
    try:
        return split_drained(drained)[0] == namespace
    except InvalidPath:
        return False


def _selected(seq: int, every: int) -> bool:
    """persist_every N selects the first checkpoint (so a job that dies early has one on the PFS)
    and every N-th; 0 selects none."""
    return every > 0 and (seq == 1 or seq % every == 0)
