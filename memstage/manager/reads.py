"""Reads of the catalog for clients: stat, listings, versions, checkpoints, and maps of where a
version's chunks are (the replies are assembled here, as they are read)."""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Sequence

from memstage.chunks import ChunkKey
from memstage.errors import FsError, NotFound
from memstage.manager.access import Caller
from memstage.manager.codec import Addresses, stripe_spec, with_node
from memstage.manager.namespace import missing
from memstage.manager.nodes import DIR, FILE, LINK, ROW_KINDS, SYMLINK, Node
from memstage.manager.state import State
from memstage.proto import common_pb2, manager_pb2
from memstage.redundancy import Redundancy

# A version map names this many live benefactors (a random sample) that may read drained chunks.
PFS_READERS = 8


# Stat calls waiting for protection at once; more are answered at once (their clients ask again
# later), so that waiters never take all of the manager's threads.
MAX_PROTECTION_WAITERS = 64


class Reads:
    def __init__(self, state: State) -> None:
        self.s = state
        self._waiters = threading.BoundedSemaphore(MAX_PROTECTION_WAITERS)

    def find(self, namespace: str, keys: Sequence[ChunkKey]) -> list[bool]:
        """Which of the chunks the namespace holds (deduplication)."""
        return list(self.s.catalog.find(namespace, keys, self.s.alive_ids()))

    def version_map(self, namespace: str, path: str, version: int, stripes: bool, caller: Caller
                    ) -> manager_pb2.VersionMap:
        try:
            rec = self.s.catalog.version(namespace, self.s.catalog.canonical(namespace, path), version)
        except NotFound:
            if self.s.catalog.kind(namespace, path) == DIR:  # looked at only when there is no file
                raise FsError(errno.EISDIR, f"{path}: is a directory in namespace {namespace!r}") from None
            raise
        return self.chunk_map(rec.namespace, rec.keys, caller, rec.path, rec.version, rec.size, rec.committed_at,
                              stripes)

    def chunk_map(self, namespace: str, keys: Sequence[ChunkKey], caller: Caller, path: str = "", version: int = 0,
                  size: int | None = None, committed_at: float = 0.0, stripes: bool = False) -> manager_pb2.VersionMap:
        """Where the chunks are (live holders first), with benefactors that may read drained ones
        and a read grant; a version's map names the version."""
        if size is None:
            size = sum(k.length for k in keys)
        with self.s.lock:
            alive = self.s.registry.live_ids()
            sample = self.s.registry.live_list()
            readers_ids = random.sample(sample, min(PFS_READERS, len(sample)))
        addresses = Addresses(self.s)
        chunks = []
        for key, (holders, drained) in zip(keys, self.s.catalog.chunk_refs(namespace, keys), strict=True):
            # Live benefactors first; the others stay listed (a restarted manager has not heard from them yet).
            locs = sorted(holders, key=lambda bf: (bf not in alive, bf))
            chunks.append(manager_pb2.ChunkRef(
                key=key.to_pb(), drained=drained,
                locations=[common_pb2.Location(benefactor_id=bf, address=addresses.get(bf, "")) for bf in locs]))
        if stripes:
            for ref, key, stripe in zip(chunks, keys, self.s.catalog.stripes_of(namespace, keys), strict=True):
                if stripe is not None:
                    index = stripe.members.index(key)
                    ref.stripe.CopyFrom(stripe_spec(self.s.catalog, stripe, index, addresses, alive))
        readers = [common_pb2.Location(benefactor_id=bf, address=addresses.get(bf, "")) for bf in readers_ids]
        return manager_pb2.VersionMap(path=path, version=version, size=size, chunks=chunks,
                                      committed_at=committed_at, pfs_readers=readers,
                                      grant=self.s.access.grant(namespace, False, caller))

    def protected_info(self, namespace: str, path: str, wait_s: float) -> manager_pb2.FileInfo:
        """file_info with protection, answered once the latest version is protected or lost (or
        after `wait_s`): waiting here, woken as stripes and copies are recorded, answers sooner and
        costs the manager less than a client asking again and again."""
        if not self._waiters.acquire(blocking=False):
            return self.file_info(namespace, path, True)
        try:
            deadline = time.monotonic() + wait_s
            moved = self.s.protection_moved
            while True:
                with moved:
                    seen = self.s.protection_epoch
                left = deadline - time.monotonic()
                if left <= 0 or self._settled(namespace, path):
                    return self.file_info(namespace, path, True)
                with moved:  # woken by every change; looked at again now and then regardless
                    moved.wait_for(lambda: self.s.protection_epoch != seen, timeout=min(left, 0.25))  # noqa: B023
        finally:
            self._waiters.release()

    def _settled(self, namespace: str, path: str) -> bool:
        """The latest version of the file at `path` is protected or lost (anything else: True)."""
        target = self.s.catalog.canonical(namespace, path)
        if self.s.catalog.kind(namespace, target) != FILE:
            return True
        latest = self.s.catalog.version(namespace, target)
        if latest.lost:
            return True
        with self.s.lock:  # parity still being made for some chunk: not yet (and no look at every chunk)
            pending = self.s.stripe_work.pending_data()
        if pending and any((namespace, k) in pending for k in latest.keys):
            return False
        redundancy = Redundancy.parse(self.s.catalog.policy(namespace).redundancy)
        return not redundancy.tolerates or self.s.catalog.version_protected(namespace, target, latest.version,
                                                                             redundancy, self.s.alive_ids())

    def file_info(self, namespace: str, path: str, protection: bool = False) -> manager_pb2.FileInfo:
        """What stat shows for `path` (a hard link shows what it links: versions, metadata, link count)."""
        kind = self.s.catalog.kind(namespace, path)
        target = path
        if kind == LINK:
            target = self.s.catalog.canonical(namespace, path)
            kind = self.s.catalog.kind(namespace, target)
        if kind is None or kind == LINK:
            raise missing(namespace, path)
        if kind == DIR:
            node = self.s.catalog.node(namespace, path) or Node.default(DIR, self.s.started_ns)
            subdirs = self.s.catalog.subdir_count(namespace, path)
            info = with_node(manager_pb2.FileInfo(path=path, is_dir=True, nlink=2 + subdirs), node)
            return info
        nlink = 1 + len(self.s.catalog.aliases(namespace, target))
        if kind == FILE:
            latest = self.s.catalog.version(namespace, target)  # stat is frequent: the latest only
            node = self.s.catalog.node(namespace, target) or Node.default(FILE, int(latest.committed_at * 1e9))
            protected = False
            if protection:  # not on every stat (a FUSE getattr): it looks at every chunk
                redundancy = Redundancy.parse(self.s.catalog.policy(namespace).redundancy)
                protected = not latest.lost and (not redundancy.tolerates or self.s.catalog.version_protected(
                    namespace, target, latest.version, redundancy, self.s.alive_ids()))
            return with_node(manager_pb2.FileInfo(
                path=path, size=latest.size, version=latest.version, committed_at=latest.committed_at,
                stored=sum(k.length for k in latest.keys if not k.is_hole), protected=protected,
                version_count=self.s.catalog.version_count(namespace, target), nlink=nlink), node)
        row = self.s.catalog.node(namespace, target)
        assert row is not None
        if kind == SYMLINK:
            return with_node(manager_pb2.FileInfo(path=path, size=len(row.target.encode()), nlink=nlink,
                                                        target=row.target), row)
        return with_node(manager_pb2.FileInfo(path=path, nlink=nlink, rdev=int(row.target or 0)), row)

    def children(self, namespace: str, directory: str) -> dict[str, manager_pb2.FileInfo]:
        """The entries right below a directory, by full path (files with their latest version)."""
        return self._children(namespace, directory)[0]

    def _children(self, namespace: str, directory: str, after: str = ""
                  ) -> tuple[dict[str, manager_pb2.FileInfo], dict[str, Node]]:
        """children() (after: only the names past this one), and the rows of the names that have one."""
        base = directory.rstrip("/") + "/"
        entries: dict[str, manager_pb2.FileInfo] = {}
        for d in self.s.catalog.dirs_under(namespace, directory, after):
            child = base + d[len(base):].split("/", 1)[0]
            entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
        for f in self.s.catalog.files_under(namespace, directory, after):
            name, sep, _ = f.path[len(base):].partition("/")
            child = base + name
            if sep:
                entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
            else:
                entries[child] = manager_pb2.FileInfo(path=child, size=f.size, version=f.latest,
                                                      committed_at=f.committed_at, version_count=f.version_count,
                                                      stored=f.stored)
        rows: dict[str, Node] = {}
        for p, node in self.s.catalog.nodes_under(namespace, directory, after):
            name, sep, _ = p[len(base):].partition("/")
            if not sep:
                rows[p] = node
                if node.kind in ROW_KINDS:
                    entries[p] = manager_pb2.FileInfo(path=p, target=node.target if node.kind == SYMLINK else "")
        for p, info in entries.items():
            row = rows.get(p)
            if row is not None and row.kind == LINK:
                row = self.s.catalog.node(namespace, row.target)
            # Names without a row show what stat shows of them: a directory the manager's start,
            # a file its latest commit.
            with_node(info, row or (Node.default(DIR, self.s.started_ns) if info.is_dir
                                    else Node.default(FILE, int(info.committed_at * 1e9))))
        return entries, rows

    def listing(self, namespace: str, directory: str, after: str = "", limit: int = 0
                ) -> tuple[list[manager_pb2.FileInfo], bool]:
        """The names in `directory` (past `after`, at most `limit` of them), each with what stat
        shows of it (a mount hands these to the kernel as they are: link counts, what hard links
        share, stored bytes); and whether more names follow."""
        entries, rows = self._children(namespace, directory, after)
        if not entries and not after and self.s.catalog.kind(namespace, directory) != DIR:
            raise missing(namespace, directory, "directory")
        base = directory.rstrip("/") + "/"
        names = sorted(p for p in entries if p[len(base):] > after)
        more = bool(limit) and len(names) > limit
        if more:
            names = names[:limit]
        entries = {p: entries[p] for p in names}
        subdirs: dict[str, int] = {}  # explicit directories right below each child directory
        for d in self.s.catalog.dirs_under(namespace, directory, after):
            parts = d[len(base):].split("/")
            if len(parts) == 2:
                subdirs[base + parts[0]] = subdirs.get(base + parts[0], 0) + 1
        links = self.s.catalog.link_counts(namespace, directory)
        out = []
        for path in sorted(entries):
            info = entries[path]
            row = rows.get(path)
            if info.is_dir:
                info.nlink = 2 + subdirs.get(path, 0)
            elif info.version and (row is None or row.kind == FILE):  # a file: what stat adds
                info.nlink = 1 + links.get(path, 0)
            else:  # hard links, symbolic links, device nodes: as stat shows them
                try:
                    info = self.file_info(namespace, path)
                except NotFound:  # gone meanwhile
                    continue
            out.append(info)
        return out, more

    def versions(self, namespace: str, path: str) -> list[manager_pb2.VersionInfo]:
        path = self.s.catalog.canonical(namespace, path)
        versions = self.s.catalog.versions(namespace, path)
        if not versions:
            raise missing(namespace, path, "file")
        alive = self.s.alive_ids()
        infos = []
        for v in versions:
            # What the benefactors hold now, not what the catalog last recorded: after a restart or
            # a death, a version whose holders are gone is neither in memory nor readable until its
            # PFS copy is found.
            held, readable = self.s.catalog.availability(namespace, v.keys, alive) if not v.lost else (False, False)
            infos.append(manager_pb2.VersionInfo(
                version=v.version, size=v.size, committed_at=v.committed_at, chunk_count=len(v.keys),
                persist=v.persist, persisted=v.persisted, in_memory=v.in_memory and held, lost=v.lost,
                lost_reason=v.lost_reason, drain_error=v.drain_error, unavailable=not v.lost and not readable))
        return infos
