"""Committing versions and reading them back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from memstage.chunks import ChunkKey, second
from memstage.errors import Conflict, DataLost, InvalidArgument, NotFound
from memstage.manager.catalog.accounts import Accounts
from memstage.manager.catalog.drains import DrainTable
from memstage.manager.catalog.records import (
    _VERSION_COLUMNS,
    FileSummary,
    Holds,
    Names,
    NamespaceSummary,
    NewVersion,
    Placed,
    VersionRecord,
    pack_map,
    unpack_map,
)
from memstage.manager.checkpoints import EXPLICIT, StepName, series_dir, step_of, under
from memstage.manager.nodes import FILE, Attrs, Node
from memstage.manager.retention import selected


class VersionTable(DrainTable, Accounts):
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
            return f"{name.series}:{name.step}", selected(seq, every), False
        # A file beside (or under the directory of) a step series is that series' pointer or side
        # file: it belongs to the series' newest checkpoint.
        newest = None
        for series, step, seq, started in self._db.execute(
                "SELECT series, step, seq, started_at FROM checkpoints c WHERE ns=? AND seq = "
                "(SELECT MAX(seq) FROM checkpoints WHERE ns=c.ns AND series=c.series)", (namespace,)):
            if under(path, series_dir(series)) and (newest is None or started > newest[3]):
                newest = (series, step, seq, started)
        if newest is not None:
            return f"{newest[0]}:{newest[1]}", selected(newest[2], every), True
        return "", selected(version, every), False

    def version(self, namespace: str, path: str, version: int = 0) -> VersionRecord:
        """A committed version (0 = the latest); NotFound if there is none."""
        with self._lock:
            if version >= 1 << 63:  # beyond what SQLite holds, so beyond every version
                row = None
            elif version:
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

    def files_under(self, namespace: str, directory: str, after: str = "") -> list[FileSummary]:
        """Every file at or below `directory` ('/' for all), latest version of each (after: only
        paths past <directory>/<after>)."""
        prefix = directory.rstrip("/") + "/"
        low, op = (prefix + after, ">") if after else (prefix, ">=")
        # Range scan on the primary key: paths starting with prefix sort between prefix and prefix+U+FFFF.
        # One query: with a single MAX() aggregate, SQLite takes the other bare columns from the row
        # that has the maximum (the latest version), so no query per file.
        with self._lock:
            rows = self._db.execute(
                f"SELECT path, MAX(version), COUNT(*), size, committed_at, chunk_map FROM versions WHERE ns=? AND "
                f"path {op} ? AND path < ? GROUP BY path", (namespace, low, prefix + "\uffff")).fetchall()
        return [FileSummary(path, latest, size, at, count, blob) for path, latest, count, size, at, blob in rows]

    def has_versions(self, namespace: str, path: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM versions WHERE ns=? AND path=? LIMIT 1",
                                    (namespace, path)).fetchone() is not None

    def persist_selected(self, ns: str, path: str, version: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT persist FROM versions WHERE ns=? AND path=? AND version=?",
                                   (ns, path, version)).fetchone()
        return bool(row and row[0])

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
