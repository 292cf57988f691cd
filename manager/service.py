"""The manager's gRPC servicer: translates requests to Registry and Catalog calls, errors to status codes."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from memstage.chunks import HASH_BYTES, MAX_CHUNK_SIZE, ChunkKey, group_keys
from memstage.errors import DeploymentFull, InvalidArgument, MemstageError, NotFound, Unavailable
from memstage.manager.catalog import Catalog, IndexKey, Policy, VersionRecord
from memstage.manager.metrics import ManagerMetrics
from memstage.manager.registry import Registry, Stats
from memstage.paths import check_namespace, normalize_file_path, normalize_path, parent_dirs
from memstage.proto import common_pb2, manager_pb2, manager_pb2_grpc
from memstage.settings import ManagerSettings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Turn domain errors into status codes; anything else is a bug, logged with its traceback."""

    @functools.wraps(method)
    def wrapper(self: ManagerService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except MemstageError as e:
            self.metrics.errors.labels(method.__name__, e.code.name).inc()
            context.abort(e.code, str(e))
        except Exception:
            self.metrics.errors.labels(method.__name__, "INTERNAL").inc()
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error (see the manager's log)")

    return wrapper  # type: ignore[return-value]


def _stats(pb: manager_pb2.BenefactorStats) -> Stats:
    return Stats(pb.memory_capacity, pb.memory_used, pb.drain_backlog, pb.chunk_count, pb.drain_error,
                 pb.drained_bytes)


def _key(pb: common_pb2.ChunkKey) -> ChunkKey:
    key = ChunkKey.from_pb(pb)
    if len(key.hash) != HASH_BYTES or not 0 < key.length <= MAX_CHUNK_SIZE:
        raise InvalidArgument(f"chunk key {key}: needs a {HASH_BYTES}-byte hash and a length of 1..{MAX_CHUNK_SIZE}")
    return key


class ManagerService(manager_pb2_grpc.ManagerServicer):
    def __init__(self, settings: ManagerSettings, catalog: Catalog, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.catalog = catalog
        self.registry = Registry(settings.heartbeat_interval)
        self.clock = clock
        self._lock = threading.Lock()  # registry and pending drops
        # Chunks freed in the catalog that benefactors still hold: sent by the dropper, or with a heartbeat.
        self._drops: dict[str, set[IndexKey]] = defaultdict(set)
        self.drops_pending = threading.Event()
        self.metrics = ManagerMetrics(registry, self._status_reply)

    # -- benefactors -------------------------------------------------------------------------
    @rpc
    def Register(self, request: manager_pb2.RegisterRequest, context: grpc.ServicerContext
                 ) -> manager_pb2.RegisterReply:
        if not request.benefactor_id or not request.address:
            raise InvalidArgument("register: benefactor_id and address are required")
        with self._lock:
            self.registry.register(request.benefactor_id, request.address, _stats(request.stats), self.clock())
        self.catalog.remember_benefactor(request.benefactor_id, request.address, request.stats.memory_capacity)
        held = [(g.namespace, _key(k)) for g in request.held for k in g.keys]
        confirmed = self.catalog.add_locations(request.benefactor_id, held)
        log.info("benefactor %s registered at %s (capacity %d, %d chunks held, %d locations restored)",
                 request.benefactor_id, request.address, request.stats.memory_capacity, len(held), confirmed)
        return manager_pb2.RegisterReply(heartbeat_interval_seconds=self.settings.heartbeat_interval)

    @rpc
    def Heartbeat(self, request: manager_pb2.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.HeartbeatReply:
        with self._lock:
            known = self.registry.heartbeat(request.benefactor_id, _stats(request.stats), self.clock())
            drops = self._drops.pop(request.benefactor_id, set()) if known else set()
        return manager_pb2.HeartbeatReply(known=known, drop=group_keys(drops))

    @rpc
    def Reconcile(self, request: manager_pb2.ReconcileRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.ReconcileReply:
        keys = [(g.namespace, _key(k)) for g in request.keys for k in g.keys]
        referenced = [k for k in keys if self.catalog.wanted_in_memory(k)]
        self.catalog.add_locations(request.benefactor_id, referenced)
        return manager_pb2.ReconcileReply(referenced=group_keys(referenced))

    def sweep(self) -> None:
        """Log benefactors that just passed their TTL (liveness itself is computed on demand)."""
        with self._lock:
            dead = self.registry.newly_dead(self.clock())
        for rec in dead:
            log.warning("benefactor %s (%s) missed %d heartbeats: declared dead", rec.id, rec.address, 3)
            for ns, path, version in self.catalog.reassign_drains(rec.id, self._alive_ids()):
                log.error("%s:%s version %d is lost: benefactor %s died before it was drained", ns, path,
                          version, rec.id)

    # -- clients -----------------------------------------------------------------------------
    @rpc
    def GetStripingMap(self, request: manager_pb2.StripingRequest, context: grpc.ServicerContext
                       ) -> manager_pb2.StripingMap:
        check_namespace(request.namespace)
        width = request.width or self.settings.stripe_width
        with self._lock:
            now = self.clock()
            placements = self.registry.striping_map(width, set(request.exclude), request.chunk_size, now)
            alive = len(self.registry.alive(now))
        if not placements:
            if alive == 0:
                raise Unavailable("no live benefactors are registered with the manager")
            raise DeploymentFull(f"deployment full: none of the {alive} live benefactors has room "
                                 f"for a {request.chunk_size}-byte chunk (excluded: {len(request.exclude)})")
        return manager_pb2.StripingMap(
            benefactors=[common_pb2.Location(benefactor_id=p.id, address=p.address) for p in placements])

    @rpc
    def Commit(self, request: manager_pb2.CommitRequest, context: grpc.ServicerContext) -> manager_pb2.CommitReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        chunks = [(_key(c.key), [loc.benefactor_id for loc in c.locations]) for c in request.chunks]
        alive = self._alive_ids()
        version = self.catalog.commit(namespace, path, request.size, chunks, alive)
        per_benefactor: dict[str, int] = defaultdict(int)
        for key, locs in dict(chunks).items():  # each distinct chunk once
            for bf in alive.intersection(locs):
                per_benefactor[bf] += key.length
        with self._lock:
            for bf, nbytes in per_benefactor.items():
                self.registry.note_used(bf, nbytes)
            # A chunk committed again is referenced again: it must not be freed by an older drop.
            for (key, locs) in chunks:
                for bf in locs:
                    self._drops.get(bf, set()).discard((namespace, key))
        self._free(self.catalog.apply_retention(namespace, path))
        self.metrics.committed(namespace, request.size, request.stats)
        log.info("committed %s:%s version %d (%d bytes, %d chunks)", namespace, path, version, request.size,
                 len(chunks))
        return manager_pb2.CommitReply(version=version)

    def _alive_ids(self) -> set[str]:
        with self._lock:
            return {r.id for r in self.registry.alive(self.clock())}

    @rpc
    def FindChunks(self, request: manager_pb2.NamespacedChunks, context: grpc.ServicerContext
                   ) -> manager_pb2.FindChunksReply:
        namespace = check_namespace(request.namespace)
        keys = [_key(k) for k in request.keys]
        return manager_pb2.FindChunksReply(present=self.catalog.find(namespace, keys, self._alive_ids()))

    @rpc
    def Lookup(self, request: manager_pb2.LookupRequest, context: grpc.ServicerContext) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        rec = self.catalog.version(namespace, normalize_file_path(request.path), request.version)
        return self._version_map(rec)

    @rpc
    def LocateChunks(self, request: manager_pb2.NamespacedChunks, context: grpc.ServicerContext
                     ) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        keys = [_key(k) for k in request.keys]
        return self._chunk_map(namespace, "", 0, sum(k.length for k in keys), keys, 0.0)

    def _version_map(self, rec: VersionRecord) -> manager_pb2.VersionMap:
        return self._chunk_map(rec.namespace, rec.path, rec.version, rec.size, rec.keys, rec.committed_at)

    def _chunk_map(self, namespace: str, path: str, version: int, size: int, keys: Sequence[ChunkKey],
                   committed_at: float) -> manager_pb2.VersionMap:
        addresses = self.catalog.benefactor_addresses()
        with self._lock:
            now = self.clock()
            for r in self.registry.records():
                addresses[r.id] = r.address
            alive = {r.id for r in self.registry.alive(now)}
        chunks = []
        for key in keys:
            ik = (namespace, key)
            # Live benefactors first; the others stay listed (a restarted manager has not heard from them yet).
            locs = sorted(self.catalog.locations(ik), key=lambda bf: (bf not in alive, bf))
            chunks.append(manager_pb2.ChunkRef(
                key=key.to_pb(), drained=self.catalog.drained(ik),
                locations=[common_pb2.Location(benefactor_id=bf, address=addresses.get(bf, "")) for bf in locs]))
        readers = [common_pb2.Location(benefactor_id=bf, address=addresses[bf]) for bf in sorted(alive)]
        return manager_pb2.VersionMap(path=path, version=version, size=size, chunks=chunks,
                                      committed_at=committed_at, pfs_readers=readers)

    @rpc
    def Stat(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        namespace = check_namespace(request.namespace)
        path = normalize_path(request.path)
        if path != "/":
            try:
                versions = self.catalog.versions(namespace, path)
            except NotFound:
                versions = []
            if versions:
                latest = versions[-1]
                return manager_pb2.FileInfo(path=path, size=latest.size, version=latest.version,
                                            committed_at=latest.committed_at, version_count=len(versions))
        if path == "/" or self.catalog.is_dir(namespace, path):
            return manager_pb2.FileInfo(path=path, is_dir=True)
        raise NotFound(f"{path}: no such file or directory in namespace {namespace!r}")

    @rpc
    def List(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.ListReply:
        namespace = check_namespace(request.namespace)
        directory = normalize_path(request.path)
        files = self.catalog.files_under(namespace, directory)
        dirs = self.catalog.dirs_under(namespace, directory)
        if not files and directory != "/" and not self.catalog.is_dir(namespace, directory):
            raise NotFound(f"{directory}: no such directory in namespace {namespace!r}")
        base = directory.rstrip("/") + "/"
        entries: dict[str, manager_pb2.FileInfo] = {}
        for d in dirs:
            child = base + d[len(base):].split("/", 1)[0]
            entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
        for f in files:
            rest = f.path[len(base):]
            name, sep, _ = rest.partition("/")
            child = base + name
            if sep:
                entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
            else:
                entries[child] = manager_pb2.FileInfo(path=child, size=f.size, version=f.latest,
                                                      committed_at=f.committed_at, version_count=f.version_count)
        return manager_pb2.ListReply(entries=[entries[k] for k in sorted(entries)])

    @rpc
    def Versions(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.VersionsReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        versions = self.catalog.versions(namespace, path)
        if not versions:
            raise NotFound(f"{path}: no such file in namespace {namespace!r}")
        return manager_pb2.VersionsReply(versions=[
            manager_pb2.VersionInfo(version=v.version, size=v.size, committed_at=v.committed_at,
                                    chunk_count=len(v.keys), persist=v.persist, persisted=v.persisted,
                                    in_memory=v.in_memory, lost=v.lost) for v in versions])

    @rpc
    def Delete(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext
               ) -> manager_pb2.DeleteFileReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        count, freed = self.catalog.delete_file(namespace, path)
        self._free(freed)
        log.info("deleted %s:%s (%d versions, %d chunks freed)", namespace, path, count, len(freed))
        return manager_pb2.DeleteFileReply(versions_deleted=count)

    @rpc
    def Rename(self, request: manager_pb2.RenameRequest, context: grpc.ServicerContext) -> manager_pb2.RenameReply:
        namespace = check_namespace(request.namespace)
        src, dst = normalize_file_path(request.path), normalize_file_path(request.destination)
        if src == dst:
            return manager_pb2.RenameReply(files_moved=0)
        if dst.startswith(src + "/"):
            raise InvalidArgument(f"cannot move {src} into itself ({dst})")
        files = self.catalog.versions(namespace, src)
        moves = [(src, dst)] if files else [
            (f.path, dst + f.path[len(src):]) for f in self.catalog.files_under(namespace, src)]
        if not moves and not self.catalog.is_dir(namespace, src):
            raise NotFound(f"{src}: no such file or directory in namespace {namespace!r}")
        alive = self._alive_ids()
        for old, new in moves:
            latest = self.catalog.version(namespace, old)
            # The destination's readers switch to the moved content in the commit's one transaction.
            self.catalog.commit(namespace, new, latest.size, [(k, []) for k in latest.keys], alive)
            self._free(self.catalog.apply_retention(namespace, new))
            _, freed = self.catalog.delete_file(namespace, old)
            self._free(freed)
        if not files:
            self.catalog.rename_dirs(namespace, src, dst)
        log.info("renamed %s:%s to %s (%d files)", namespace, src, dst, len(moves))
        return manager_pb2.RenameReply(files_moved=len(moves))

    @rpc
    def Mkdir(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.MkdirReply:
        path = normalize_file_path(request.path)
        namespace = check_namespace(request.namespace)
        for parent in parent_dirs(path)[1:] + [path]:
            self.catalog.mkdir(namespace, parent)
        return manager_pb2.MkdirReply()

    @rpc
    def Rmdir(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.MkdirReply:
        self.catalog.rmdir(check_namespace(request.namespace), normalize_file_path(request.path))
        return manager_pb2.MkdirReply()

    # -- operators ---------------------------------------------------------------------------
    @rpc
    def Status(self, request: manager_pb2.StatusRequest, context: grpc.ServicerContext) -> manager_pb2.StatusReply:
        return self._status_reply()

    def _status_reply(self) -> manager_pb2.StatusReply:
        """What `memstage status` prints and /metrics exports, read from live state."""
        backlog = self.catalog.backlog()
        wall = time.time()
        with self._lock:
            now = self.clock()
            rows = []
            for r in sorted(self.registry.records(), key=lambda r: r.id):
                b = backlog.get(r.id)
                rows.append(manager_pb2.BenefactorStatus(
                    id=r.id, address=r.address, alive=self.registry.is_alive(r.id, now),
                    stats=manager_pb2.BenefactorStats(
                        memory_capacity=r.stats.memory_capacity, memory_used=r.stats.memory_used,
                        drain_backlog=b.bytes if b else 0, chunk_count=r.stats.chunk_count,
                        drain_error=r.stats.drain_error, drained_bytes=r.stats.drained_bytes),
                    last_heartbeat_age_seconds=now - r.last_seen,
                    drain_backlog_bytes=b.bytes if b else 0,
                    oldest_undrained_age_seconds=wall - b.oldest_queued_at if b and b.oldest_queued_at else 0.0))
        namespaces = [manager_pb2.NamespaceStatus(namespace=n.namespace, files=n.files, versions=n.versions,
                                                  bytes_committed=n.bytes_committed, bytes_stored=n.bytes_stored)
                      for n in self.catalog.namespaces()]
        lost = [manager_pb2.VersionRef(namespace=ns, path=p, version=v) for ns, p, v in self.catalog.lost_versions()]
        return manager_pb2.StatusReply(benefactors=rows, namespaces=namespaces, lost=lost,
                                       heartbeat_interval_seconds=self.settings.heartbeat_interval,
                                       state_dir=self.settings.state)

    def _free(self, freed: dict[IndexKey, set[str]]) -> None:
        """Queue chunks no in-memory version needs for freeing on the benefactors holding them."""
        if not freed:
            return
        with self._lock:
            for ik, benefactors in freed.items():
                for bf in benefactors:
                    self._drops[bf].add(ik)
                    # Counted as free at once: the dropper frees it within moments, and a benefactor
                    # that is still full simply refuses (the writer re-plans).
                    self.registry.note_used(bf, -ik[1].length)
        self.drops_pending.set()

    # -- draining and policy -----------------------------------------------------------------
    @rpc
    def DrainWork(self, request: manager_pb2.DrainWorkRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.DrainWorkReply:
        tasks = self.catalog.drain_work(request.benefactor_id, max(1, min(request.limit or 16, 256)))
        return manager_pb2.DrainWorkReply(tasks=[
            manager_pb2.DrainTask(id=t.id, namespace=t.namespace, path=t.path, version=t.version, index=t.index,
                                  count=t.count, offset=t.offset, key=t.key.to_pb(), link_from=t.link_from)
            for t in tasks])

    @rpc
    def DrainDone(self, request: manager_pb2.DrainDoneRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.DrainDoneReply:
        persisted = self.catalog.drain_done([(r.task_id, r.drained) for r in request.results])
        for namespace, path in persisted:
            log.info("%s:%s: a version is now persisted on the PFS", namespace, path)
            self._free(self.catalog.apply_retention(namespace, path))
        return manager_pb2.DrainDoneReply()

    @rpc
    def Policy(self, request: manager_pb2.PolicyRequest, context: grpc.ServicerContext) -> manager_pb2.PolicyReply:
        namespace = check_namespace(request.namespace)
        current = self.catalog.policy(namespace)
        if request.HasField("persist_every") or request.HasField("keep_versions"):
            current = Policy(
                request.persist_every if request.HasField("persist_every") else current.persist_every,
                request.keep_versions if request.HasField("keep_versions") else current.keep_versions)
            self.catalog.set_policy(namespace, current)
            log.info("policy of namespace %s: persist_every %d, keep_versions %d", namespace,
                     current.persist_every, current.keep_versions)
        return manager_pb2.PolicyReply(namespace=namespace, persist_every=current.persist_every,
                                       keep_versions=current.keep_versions)

    # -- dropper support ---------------------------------------------------------------------
    def take_drops(self) -> dict[str, tuple[str, set[IndexKey]]]:
        """Pending drops of live benefactors, with their addresses. Taken drops leave the pending set, so
        a heartbeat reply never hands them out a second time (a benefactor skips only one drop of a
        chunk stored again meanwhile); drops_failed puts them back."""
        with self._lock:
            now = self.clock()
            taken = {}
            for bf, keys in self._drops.items():
                if keys and (rec := self.registry.get(bf)) is not None and self.registry.is_alive(bf, now):
                    taken[bf] = (rec.address, set(keys))
                    keys.clear()
            return taken

    def drops_failed(self, benefactor_id: str, keys: Iterable[IndexKey]) -> None:
        """Back to pending (the next heartbeat carries them), unless committed there again meanwhile."""
        keys = set(keys)
        still = {k for k in keys if benefactor_id not in self.catalog.locations(k)}
        with self._lock:
            self._drops[benefactor_id] |= still

