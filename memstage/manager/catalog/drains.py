"""The drain queue as the catalog keeps it: tasks queued with a commit, reports of drained
chunk files, and what a benefactor's death does to its tasks."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from memstage.chunks import ChunkKey
from memstage.manager import drainrules
from memstage.manager.catalog.chunktable import ChunkTable
from memstage.manager.catalog.records import Backlog, DrainOutcome, DrainTask, Names, unpack_map
from memstage.manager.catalog.store import PFS_CHECK_AHEAD
from memstage.manager.catalog.trash import PfsCopies
from memstage.manager.chunkindex import IndexKey
from memstage.manager.drainqueue import Group, Member, split_task_id, task_id
from memstage.manager.drainrules import CHECK_PFS, LOST, MOVE, WAIT, drained_under, drainer, missing_reason, next_holder

log = logging.getLogger("memstage.manager.catalog")


class DrainTable(ChunkTable, PfsCopies):
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
        """(under the lock) The benefactor to drain a chunk (manager.drainrules.drainer)."""
        return drainer(ik[1].is_hole, "" if ik[1].is_hole else self._index.first_holder(ik, alive),
                       bool(self._index.drained(ik)), alive)

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
                if drained and not drained_under(drained, ns):
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
                    self._set_version(ns, path, version, drainrules.failed(error))
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
                    others = alive - {benefactor_id}
                    owner = self._drainer_for(ik, others)
                    step = next_holder(owner, not owner and self._recoverable(ik, others), False, others)
                    if step.kind == MOVE:
                        moved.setdefault((gid, owner), []).append(m)
                        self._queued({owner})
                    elif step.kind == WAIT:
                        # Its stripe rebuilds it in memory; the task waits for a holder.
                        moved.setdefault((gid, ""), []).append(m)
                    else:
                        reason = missing_reason(m.key, benefactor_id, bool(held))
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
                    self._set_version(ns, path, version, drainrules.persisted())
                    persisted.add((ns, path))
                    row = self._db.execute("SELECT checkpoint FROM versions WHERE ns=? AND path=? AND version=?",
                                           (ns, path, version)).fetchone()
                    on_pfs.setdefault(ns, []).append((path, row[0] if row else ""))
                    newly.append((ns, path, version))
                    self._trash_renamed(ns, path, version)
                    if row and row[0]:
                        self._release_pointers(ns, row[0], alive, time.time())
        return DrainOutcome(persisted, lost, failed, drained_bytes, on_pfs, newly)

    def _set_version(self, ns: str, path: str, version: int, columns: dict[str, object]) -> None:
        """(inside a transaction) A drain outcome's changes to a version's row (manager.drainrules)."""
        self._db.execute(f"UPDATE versions SET {', '.join(f'{c}=?' for c in columns)} WHERE ns=? AND path=? AND "
                         "version=?", (*columns.values(), ns, path, version))

    def _mark_lost(self, ns: str, path: str, version: int, reason: str, keep_tasks: bool = False) -> None:
        """Inside a transaction: the version cannot be read or drained any more (keep_tasks: unless
        its drain, taken up again later, finds its chunk files on the PFS after all)."""
        self._set_version(ns, path, version, drainrules.lost(reason))
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
                        step = next_holder(owner, not owner and self._recoverable(ik, candidates), check_pfs,
                                           candidates)
                        if step.kind == WAIT:
                            # Its stripe rebuilds it in memory: the task waits (unassigned) for that holder.
                            by_owner.setdefault("", []).append(m)
                        elif step.kind == CHECK_PFS:
                            checks.setdefault(step.owner, []).append(m)  # a look at the PFS: ahead of the queue
                        elif step.kind == LOST:
                            lost.append(group.version_key)
                            self._mark_lost(group.ns, group.path, group.version, reason)
                            break
                        else:
                            by_owner.setdefault(step.owner, []).append(m)
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

    def backlog(self) -> dict[str, Backlog]:
        with self._lock:
            return {bf: Backlog(n, oldest) for bf, (n, oldest) in self._drains.backlog().items()}

    def backlog_by_namespace(self) -> dict[str, int]:
        """Bytes still to drain, per namespace."""
        with self._lock:
            return self._drains.backlog_by_namespace()
