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

import gc
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memstage.chunks import ChunkKey
from memstage.drainer.prune import PfsCopy
from memstage.errors import SettingError
from memstage.manager import locationlog
from memstage.manager.catalog import schema
from memstage.manager.catalog.records import Holders, Policy, unpack_map
from memstage.manager.catalog.schema import fsync_dir
from memstage.manager.chunkindex import ChunkIndex, IndexKey
from memstage.manager.drainqueue import DrainQueue
from memstage.manager.nodes import NodeTable
from memstage.manager.stripes import Stripe, StripeIndex

OPEN_CHECKPOINT = "open_checkpoint:"  # meta key prefix: a namespace's begun checkpoint

# Drain tasks that only look for a chunk file on the PFS (its holders died) are placed this far
# ahead of their group's place in the queue: before any task that writes.
PFS_CHECK_AHEAD = 1 << 40

# The location log is compacted (replaced by a snapshot) once it holds this many operations and
# more than twice as many as there are locations.
LOG_COMPACT_AT = 1_000_000

DEFAULT_POLICY = Policy(1, 2)


class CatalogStore(NodeTable):
    """The connection, its lock and transactions, and the in-memory indexes loaded from it."""

    def __init__(self, state_dir: str, default_policy: Policy = DEFAULT_POLICY) -> None:
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
        schema.create(self._db)
        self._lock = threading.RLock()
        self._tokens: dict[str, tuple[bytes, dict[str, str]]] = {}  # tokens looked up, not revoked
        self._policies: dict[str, Policy] = {}  # read through: set_policy is the only writer
        self._db.execute("BEGIN IMMEDIATE")  # makes sure the WAL file exists (to fsync it by descriptor)
        self._db.execute("COMMIT")
        self._wal = os.open(f"{self.db_path}-wal", os.O_RDONLY)
        fsync_dir(path)
        self._committed = 0  # transactions committed (written to the WAL)
        self._synced = 0  # of them, made durable by an fsync of the WAL
        self._sync_lock = threading.Lock()
        self._sync_interval = 0.0  # see sync_every()
        self._stop_syncing: threading.Event | None = None
        self._thread_seq = threading.local()  # the last transaction each thread committed
        self._batch: locationlog.Batch | None = None  # location changes of the open transaction
        # Benefactors given drain tasks since the service last asked (it tells them in heartbeat
        # replies); a lock of its own, so that asking never waits for a commit.
        self._drain_queued: set[str] = set()
        self._queued_lock = threading.Lock()
        schema.migrate_locations(self._db)
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


    def sync_every(self, interval: float) -> None:
        """From now on sync() returns at once: what was committed is in the WAL (a crash of the
        manager loses none of it) and a thread fsyncs it every `interval` seconds (a power cut
        of the node loses at most that much)."""
        self._sync_interval = interval
        stop = self._stop_syncing = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(stop,), name="wal-sync", daemon=True)
        self._syncer.start()

    def _sync_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self._sync_interval):
            self._fsync_committed()

    def _fsync_committed(self) -> None:
        with self._sync_lock:
            target = self._committed
            if target > self._synced:
                os.fsync(self._wal)
                self._synced = target

    def sync(self) -> None:
        """Make durable every transaction this thread committed (and all before it): one fsync of
        the WAL covers all of them, and callers that arrive during it share the next one."""
        seq = getattr(self._thread_seq, "seq", 0)
        if seq <= self._synced or self._sync_interval:
            return
        with self._sync_lock:
            if seq <= self._synced:
                return  # another caller's fsync covered it
            target = self._committed  # every transaction up to this one is in the WAL already
            os.fsync(self._wal)
            self._synced = max(self._synced, target)

    def close(self) -> None:
        if self._stop_syncing is not None:
            self._stop_syncing.set()
            self._syncer.join(timeout=5)
            self._fsync_committed()
        with self._lock:
            self._db.close()
            os.close(self._wal)

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

    def new_gen(self) -> int:
        with self._lock:
            return self._new_gen()

    def _new_gen(self) -> int:
        self._next_gen += 1
        return self._next_gen

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

    def _load_stripes(self) -> StripeIndex:
        stripes = StripeIndex()
        for sid, ns, k, m, size, blob in self._db.execute("SELECT id, ns, k, m, size, members FROM stripes"):
            stripes.add(Stripe(sid, ns, k, m, size, Stripe.unpack_members(blob)))
        return stripes

    @contextmanager
    def in_transaction(self) -> Iterator[None]:
        """Several metadata changes made atomically (not around calls that open their own)."""
        with self._lock, self._transaction():
            yield
