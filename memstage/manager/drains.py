"""Draining to the PFS: drain tasks handed to benefactors and their reports, manifests written
beside drained versions, and removing from the PFS what no version needs (let go, or orphaned)."""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from pathlib import Path

from memstage.drainer.layout import parse_manifest_name, parse_name, pfs_dir, write_manifest
from memstage.drainer.prune import Orphan, Removed, find_orphans, remove_copies, remove_orphans
from memstage.errors import InvalidArgument, InvalidPath
from memstage.manager.catalog import DrainTask
from memstage.manager.state import State
from memstage.units import format_size

log = logging.getLogger(__name__)


def named_version(relative: str, versions: Set[tuple[str, str, int]]) -> bool:
    """A chunk file or manifest (relative to the PFS root) belongs to one of these (directory,
    deployment, version)."""
    directory, name = relative.rsplit("/", 1)
    parsed = parse_name(Path(relative))
    vid = (parsed.deployment, parsed.version) if parsed is not None else parse_manifest_name(name)
    return vid is not None and (directory, *vid) in versions


class Drains:
    def __init__(self, state: State) -> None:
        self.s = state
        self._pfs_warned = False  # said once: no pfs setting, drained files of deleted versions stay

    def work(self, bf: str, incarnation: int, limit: int) -> list[DrainTask]:
        """Drain tasks for a benefactor (at most `limit`: 0 asks for the default)."""
        self.s.registered_as(bf, incarnation, "drain work")
        limit = max(1, min(limit or 16, 256))
        with self.s.lock:
            self.s.drain_waiting.discard(bf)  # before looking: a commit after sets it again
            self.s.drain_flag_changed(bf)
        tasks = self.s.catalog.drain_work(bf, limit)
        if len(tasks) == limit:
            with self.s.lock:
                self.s.drain_waiting.add(bf)  # more than one batch
                self.s.drain_flag_changed(bf)
        return tasks

    def done(self, bf: str, incarnation: int, results: Sequence[tuple[int, str, bool, str, int]]) -> None:
        """What a benefactor drained (or could not): versions persisted let go of memory as their
        policy says, and their manifests are written."""
        self.s.registered_as(bf, incarnation, "drain report")
        outcome = self.s.catalog.drain_done(bf, results, self.s.alive_ids())
        with self.s.lock:
            self.s.drained[bf] = self.s.drained.get(bf, 0) + outcome.drained_bytes
        persisted = outcome.persisted
        for ns, path, version, reason in outcome.lost:
            log.error("%s:%s version %d is lost: %s", ns, path, version, reason)
        for ns, path, version, reason in outcome.failed:
            self.s.metrics.drain_failures.inc()
            log.error("%s:%s version %d cannot be drained (it stays in memory): %s", ns, path, version, reason)
        for namespace, path in persisted:
            log.debug("%s:%s: a version is now persisted on the PFS", namespace, path)
            self.s.free(self.s.catalog.apply_retention(namespace, path))
        for namespace, on_pfs in outcome.on_pfs.items():
            self.s.free(self.s.catalog.apply_pfs_keep(namespace, on_pfs))
        if self.s.settings.pfs and outcome.newly:
            with self.s.lock:
                self.s.manifests.extend(outcome.newly)

    def write_manifests(self) -> int:
        """Write the manifests of versions persisted since the last call beside their chunk files
        (housekeeping calls this; the manager needs its pfs setting). Returns how many."""
        with self.s.lock:
            todo, self.s.manifests = self.s.manifests, []
        written = 0
        for ns, path, version in todo:
            found = self.s.catalog.manifest(ns, path, version)
            if found is None:
                continue  # deleted meanwhile
            directory, deployment, manifest = found
            try:
                # Walked from the PFS root refusing links, whatever its length (drainer.dirfd).
                write_manifest(pfs_dir(self.s.settings.pfs, directory), version, deployment, manifest)
                written += 1
            except InvalidPath as e:
                log.warning("%s:%s version %d: no manifest on the PFS (%s)", ns, path, version, e)
            except OSError as e:  # the names alone still rebuild the version
                log.warning("%s:%s version %d: no manifest on the PFS (%s)", ns, path, version, e)
        return written

    def clear_pfs(self) -> Removed:
        """Remove the chunk files of versions let go (deleted, beyond pfs_keep) from the PFS, once the
        catalog that lets them go is durable (housekeeping calls this). Without the manager's pfs
        setting they stay, and `memstage gc` on a manager that has it removes them later."""
        copies, keep = self.s.catalog.take_pfs_trash()
        if not copies:
            return Removed(0, 0)
        if not self.s.settings.pfs:
            if not self._pfs_warned:
                self._pfs_warned = True
                log.warning("drained files of deleted versions stay on the PFS: the manager has no pfs setting "
                            "(set it to the benefactors' PFS directory, then run memstage gc)")
            return Removed(0, 0)
        self.s.catalog.sync()
        try:
            removed = remove_copies(self.s.settings.pfs, copies, keep)
        except OSError as e:
            log.warning("removing drained files of %d versions from the PFS failed (memstage gc removes them "
                        "later): %s", len(copies), e)
            return Removed(0, 0)
        self.s.metrics.pfs_removed.inc(removed.bytes)
        log.info("removed %d chunk files of %d versions from the PFS (%s freed)", removed.files, len(copies),
                 format_size(removed.bytes))
        return removed

    def collect_garbage(self, namespace: str, dry_run: bool) -> tuple[list[Orphan], Removed]:
        """Files on the PFS under the namespace that no version names (removed unless dry_run)."""
        pfs = self.s.settings.pfs
        if not pfs:
            raise InvalidArgument("gc needs the manager's pfs setting (the PFS directory the benefactors drain to)")
        self.clear_pfs()  # what the catalog let go already, first
        versions, names = self.s.catalog.pfs_references(namespace)
        candidates = find_orphans(pfs, namespace, lambda d, dep, v: (d, dep, v) in versions, names,
                                  self.s.catalog.deployment_id, int(self.s.catalog.created_at * 1000))
        # Asked again after the walk: a version committed meanwhile is not an orphan.
        versions, names = self.s.catalog.pfs_references(namespace)
        orphans = [o for o in candidates if o.path not in names and not named_version(o.path, versions)]
        removed = Removed(0, 0) if dry_run else remove_orphans(pfs, orphans)
        if removed.files:
            self.s.metrics.pfs_removed.inc(removed.bytes)
            log.info("gc of namespace %s: removed %d orphan files from the PFS (%s freed)", namespace,
                     removed.files, format_size(removed.bytes))
        return orphans, removed
