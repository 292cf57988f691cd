"""Retention in the catalog: versions past keep_versions leave memory, checkpoints past pfs_keep
leave the PFS; and one version persisted or freed when a user asks (memstage persist, free)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from memstage.errors import DataLost, InvalidArgument, NotFound
from memstage.manager.catalog.records import Freed, Names, unpack_map
from memstage.manager.catalog.tree import TreeTable
from memstage.manager.retention import (
    EVICT,
    QUEUE,
    REFUSE,
    WAIT,
    chunk_file_goes,
    leaves_whole,
    leaving,
    on_free,
    on_persist,
    past_keep,
    pfs_expired,
    series_cutoff,
)

log = logging.getLogger("memstage.manager.catalog")


class RetentionTable(TreeTable):
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
                steps = self._db.execute(
                    "SELECT c.step, SUM(v.persist=1 AND v.deferred=0 AND v.persisted=0), SUM(v.persisted) "
                    "FROM checkpoints c JOIN versions v ON v.ns=c.ns AND v.checkpoint=c.series || ':' || c.step "
                    "WHERE c.ns=? AND c.series=? GROUP BY c.step ORDER BY c.seq DESC", (namespace, name)).fetchall()
                for step in pfs_expired(steps, keep):
                    old += self._db.execute("SELECT path, version FROM versions WHERE ns=? AND checkpoint=? AND "
                                            "persist=1", (namespace, f"{name}:{step}")).fetchall()
                    empty.append((name, step))
            for path in paths:
                rows = self._db.execute("SELECT version FROM versions WHERE ns=? AND path=? AND persisted=1 AND "
                                        "checkpoint='' ORDER BY version DESC", (namespace, path)).fetchall()
                old += [(path, v) for (v,) in past_keep(rows, keep)]
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
                            if not key.is_hole and chunk_file_goes(self._index.refs(ik), bool(self._index.drained(ik))):
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
            old = [(path, *row) for row in past_keep(rows, keep)]
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
                        (namespace, series, series_cutoff(newest, keep))).fetchall():
                    rows = self._db.execute("SELECT path, version, persist, persisted FROM versions WHERE ns=? AND "
                                            "checkpoint=? AND in_memory=1",
                                            (namespace, f"{series}:{step}")).fetchall()
                    old += rows
                    if leaves_whole((bool(persist), bool(persisted)) for _, _, persist, persisted in rows):
                        gone.append(step)  # all of it leaves memory now
            if not old and not gone:
                return freed
            with self._transaction():
                if series is not None:
                    self._db.executemany("UPDATE checkpoints SET left_memory=1 WHERE ns=? AND series=? AND step=?",
                                         [(namespace, series, step) for step in gone])
                for old_path, version, persist, persisted in old:
                    action = leaving(bool(persist), bool(persisted))
                    if action != WAIT:
                        freed.update(self._drop_version(namespace, old_path, version, keep_record=action == EVICT))
        return freed

    def _asked_version(self, namespace: str, path: str, version: int) -> tuple[int, bool, bool, bool, bool, str,
                                                                               bytes]:
        """(under the lock) A version `persist` or `free` names (0: the latest): its number,
        persist, persisted, in_memory, lost, lost_reason and chunk map; NotFound if there is none."""
        row = self._db.execute(
            "SELECT version, persist, persisted, in_memory, lost, lost_reason, chunk_map, deferred FROM versions "
            "WHERE ns=? AND path=? " + ("AND version=?" if version else "ORDER BY version DESC LIMIT 1"),
            (namespace, path, version) if version else (namespace, path)).fetchone()
        if row is None:
            what = f"no version {version}" if version else "no such file"
            raise NotFound(f"{path}: {what} in namespace {namespace!r}")
        number, persist, persisted, in_memory, lost, reason, blob, deferred = row
        return number, bool(persist and deferred), bool(persisted), bool(in_memory), bool(lost), reason, blob

    def persist_version(self, namespace: str, path: str, version: int, alive: Names, now: float) -> tuple[int, str]:
        """memstage persist: queue the version's drain to the PFS (manager.retention.on_persist).
        Returns the version's number and what was done (QUEUE or ALREADY); DataLost if it is lost."""
        with self._lock, self._transaction():
            number, deferred, persisted, _, lost, reason, blob = self._asked_version(namespace, path, version)
            action = on_persist(persisted, deferred or self._drains.has_version(namespace, path, number), lost)
            if action == REFUSE:
                raise DataLost(f"{path} version {number} is lost ({reason}): nothing is left to drain")
            if action == QUEUE:
                self._db.execute("UPDATE versions SET persist=1, deferred=0, drain_error='' WHERE ns=? AND path=? "
                                 "AND version=?", (namespace, path, number))
                self._queue_drain(namespace, path, number, [(k, ()) for k in unpack_map(blob)], alive, now)
                log.info("%s:%s version %d: persist asked, its drain is queued", namespace, path, number)
        return number, action

    def free_version(self, namespace: str, path: str, version: int) -> tuple[int, str, Freed]:
        """memstage free: the version leaves memory if it is on the PFS (manager.retention.on_free).
        Returns its number, what was done (EVICT or ALREADY) and the chunks to free; InvalidArgument
        if memory holds its only copy."""
        with self._lock, self._transaction():
            number, _, persisted, in_memory, _, _, _ = self._asked_version(namespace, path, version)
            action = on_free(in_memory, persisted)
            if action == REFUSE:
                raise InvalidArgument(f"{path} version {number} is not on the PFS: freeing it would lose its only "
                                      f"copy (persist it first: memstage persist --wait {path} --version {number})")
            freed = self._drop_version(namespace, path, number, keep_record=True) if action == EVICT else {}
            if action == EVICT:
                log.info("%s:%s version %d: free asked, it leaves memory (%d chunks freed)", namespace, path,
                         number, len(freed))
        return number, action, freed
