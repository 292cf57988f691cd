"""The manager's gRPC servicer: decodes requests, calls the concern modules (liveness, writes,
commits, namespace, reads, repair, drains, admin, status) and encodes their replies. The server
boundary (memstage.boundary) authenticates each call and turns domain errors into status codes;
an RPC that changed the catalog ends with `state.durable()`, so what its reply reports is durable
before it is sent.

Chunk lifecycle: a writer opens a session; benefactors acknowledge what it stores with receipts;
its commit names them and the manager records those locations only (a location without a valid
receipt refuses the commit); the commit, an abort or the lease's end ends the session, and
benefactors are ordered to hold what was committed and free the rest. Only this manager orders
frees, each naming the generation of the hold it ends.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict

import grpc
from prometheus_client import CollectorRegistry

from memstage.boundary import current_caller
from memstage.chunks import ChunkKey
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.errors import InvalidArgument
from memstage.manager import codec
from memstage.manager.access import EVERYONE, POLICY_FIELDS, Caller
from memstage.manager.admin import Admin
from memstage.manager.catalog import Catalog
from memstage.manager.commits import Commits
from memstage.manager.drains import Drains
from memstage.manager.liveness import Liveness
from memstage.manager.namespace import Namespace
from memstage.manager.reads import Reads
from memstage.manager.repair import Repair
from memstage.manager.state import State
from memstage.manager.status import Status
from memstage.manager.watchers import WatchDesk
from memstage.manager.writes import Ask, Writes
from memstage.paths import check_namespace, normalize_file_path, normalize_path
from memstage.proto import control_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import MOUNT_HEADER
from memstage.settings import ManagerSettings

Context = grpc.ServicerContext
# A Stat that waits for protection holds a server thread: at most this long per call (the client
# asks again).
MAX_PROTECTED_WAIT_S = 5.0


def _caller() -> Caller:
    """The caller the boundary authenticated (everyone, for a call made without the boundary)."""
    caller = current_caller()
    return caller if caller is not None else EVERYONE


def _ask(request: manager_pb2.StripingRequest) -> Ask:
    return Ask(request.chunk_size, request.width, frozenset(request.exclude))


def _origin(context: Context) -> str:
    """The mount a call comes from (its own cache is kept by itself), or ""."""
    for key, value in context.invocation_metadata() or ():
        if key == MOUNT_HEADER:
            return str(value)
    return ""


def _file(request: manager_pb2.PathRequest | manager_pb2.SymlinkRequest | manager_pb2.NodeRequest
          ) -> tuple[str, str]:
    return check_namespace(request.namespace), normalize_file_path(request.path)


class ManagerService(manager_pb2_grpc.ManagerServicer):
    def __init__(self, settings: ManagerSettings, catalog: Catalog, registry: CollectorRegistry,
                 clock: Clock = SYSTEM_CLOCK, secret: bytes | None = None):
        self.state = state = State(settings, catalog, registry, lambda: self.status.reply(), clock.now, secret)
        self.status = Status(state)
        self.repair = Repair(state)
        self.liveness = Liveness(state, self.repair.repair)
        self.writes = Writes(state)
        self.commits = Commits(state)
        self.namespace = Namespace(state)
        self.reads = Reads(state)
        self.drains = Drains(state)
        self.admin = Admin(state)
        self.watch = WatchDesk(settings.cache_lease)
        state.metrics.watching.set_function(self.watch.watching)
        # What the server, the heartbeat link and housekeeping use.
        self.settings, self.catalog, self.access, self.metrics = settings, catalog, state.access, state.metrics
        self.registry, self.sessions, self.orders = state.registry, state.sessions, state.orders
        self.epoch, self.wake = state.epoch, state.wake
        self.receipt_checkers = self.commits.receipt_checkers
        self.attach_beats, self.follow_flags = self.liveness.attach_beats, self.liveness.follow_flags
        self.beats_arrived, self.acks_arrived = self.liveness.beats_arrived, self.liveness.acks_arrived
        self.beat_flags, self.beat_snapshot = self.liveness.beat_flags, self.liveness.beat_snapshot
        self.wakes_for, self.resumed, self.sweep = self.liveness.wakes_for, self.liveness.resumed, self.liveness.sweep
        self.note_drains, self.clear_pfs = state.note_drains, self.drains.clear_pfs
        self.write_manifests = self.drains.write_manifests

    # -- benefactors -------------------------------------------------------------------------
    def Register(self, request: manager_pb2.RegisterRequest, context: Context) -> manager_pb2.RegisterReply:
        joined = self.liveness.register(
            request.benefactor_id, request.address, request.incarnation, codec.stats(request.stats),
            request.stats.memory_capacity, bytes(request.receipt_key), request.domain, codec.held(request.held),
            context.peer())
        self.state.durable()
        return manager_pb2.RegisterReply(heartbeat_interval_seconds=joined.interval,
                                         heartbeat_port=joined.heartbeat_port,
                                         revoked_tokens=self.catalog.revoked_tokens())

    def Leave(self, request: manager_pb2.LeaveRequest, context: Context) -> manager_pb2.LeaveReply:
        left = self.liveness.leave(request.benefactor_id, request.incarnation, request.done)
        self.state.durable()
        return manager_pb2.LeaveReply(backlog_bytes=left.backlog_bytes, backlog_chunks=left.backlog_chunks,
                                      versions_lost=left.versions_lost, memory_only_dropped=left.memory_only_dropped)

    def Heartbeat(self, request: manager_pb2.HeartbeatRequest, context: Context) -> manager_pb2.HeartbeatReply:
        beat = self.liveness.heartbeat(request.benefactor_id, request.incarnation, codec.stats(request.stats),
                                       request.sessions)
        if beat is None:
            return manager_pb2.HeartbeatReply(known=False)
        return manager_pb2.HeartbeatReply(known=beat.known, heartbeat_interval_seconds=beat.interval,
                                          orders_waiting=beat.orders_waiting, drain_waiting=beat.drain_waiting,
                                          heartbeat_port=beat.heartbeat_port, orders_last=beat.orders_last,
                                          orders_epoch=self.epoch)

    def Reconcile(self, request: manager_pb2.ReconcileRequest, context: Context) -> manager_pb2.ReconcileReply:
        orphans = self.liveness.reconcile(request.benefactor_id, request.incarnation, codec.held(request.held))
        self.state.durable()
        return manager_pb2.ReconcileReply(orphans=orphans)

    def Orders(self, request: manager_pb2.OrdersRequest, context: Context) -> manager_pb2.OrdersReply:
        orders = self.liveness.fetch_orders(request.benefactor_id, request.incarnation, request.epoch, request.acked,
                                            request.memory_used if request.HasField("memory_used") else None)
        if orders is None:
            return manager_pb2.OrdersReply(known=False)
        if request.copied:
            self.repair.copied(request.benefactor_id, request.copied)
            self.state.durable()
        return manager_pb2.OrdersReply(known=True, epoch=self.epoch, orders=orders)

    def DrainWork(self, request: manager_pb2.DrainWorkRequest, context: Context) -> manager_pb2.DrainWorkReply:
        tasks = self.drains.work(request.benefactor_id, request.incarnation, request.limit)
        self.state.durable()
        deployment = self.catalog.deployment_id
        return manager_pb2.DrainWorkReply(tasks=[
            manager_pb2.DrainTask(id=t.id, namespace=t.namespace, path=t.path, version=t.version, index=t.index,
                                  count=t.count, offset=t.offset, key=t.key.to_pb(), link_from=t.link_from,
                                  deployment=deployment, committed_ms=t.committed_ms)
            for t in tasks])

    def DrainDone(self, request: manager_pb2.DrainDoneRequest, context: Context) -> manager_pb2.DrainDoneReply:
        self.drains.done(request.benefactor_id, request.incarnation,
                         [(r.task_id, r.drained, r.missing, r.error, r.written) for r in request.results])
        self.state.durable()
        self.state.protection_changed()  # a version on the PFS is protected
        return manager_pb2.DrainDoneReply()

    # -- writes --------------------------------------------------------------------------------
    def OpenSession(self, request: manager_pb2.OpenSessionRequest, context: Context) -> manager_pb2.SessionReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path) if request.path else ""
        opened = self.writes.open(namespace, path, _ask(request.striping) if request.HasField("striping") else None,
                                  _caller())
        return manager_pb2.SessionReply(session=opened.session, lease_seconds=opened.lease, grant=opened.grant,
                                        map=codec.striping_map(opened.placements) if opened.placements else None)

    def RenewSessions(self, request: manager_pb2.RenewSessionsRequest, context: Context
                      ) -> manager_pb2.RenewSessionsReply:
        alive, grants = self.writes.renew(request.sessions, _caller())
        return manager_pb2.RenewSessionsReply(open=alive, grants=grants)

    def AbortSession(self, request: manager_pb2.SessionRequest, context: Context) -> manager_pb2.AbortSessionReply:
        self.writes.abort(request.session)
        return manager_pb2.AbortSessionReply()

    def ReleaseChunks(self, request: manager_pb2.ReleaseRequest, context: Context) -> manager_pb2.ReleaseReply:
        namespace = check_namespace(request.namespace)
        by_bf: dict[str, list[ChunkKey]] = defaultdict(list)
        for c in request.chunks:
            for loc in c.locations:
                by_bf[loc.benefactor_id].append(codec.key(c.key))
        self.writes.release(request.session, namespace, by_bf)
        return manager_pb2.ReleaseReply()

    def GetStripingMap(self, request: manager_pb2.StripingRequest, context: Context) -> manager_pb2.StripingMap:
        namespace = check_namespace(request.namespace)
        return codec.striping_map(self.writes.striping_map(request.session, namespace, _ask(request)))

    def Commit(self, request: manager_pb2.CommitRequest, context: Context) -> manager_pb2.CommitReply:
        version = self.commits.commit(request)
        self.state.durable()
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        self.watch.changed(_origin(context), namespace, [path])
        if not request.want_info:
            return manager_pb2.CommitReply(version=version)
        return manager_pb2.CommitReply(version=version, info=self.reads.file_info(namespace, path))

    # -- reads ---------------------------------------------------------------------------------
    def FindChunks(self, request: manager_pb2.NamespacedChunks, context: Context) -> manager_pb2.FindChunksReply:
        namespace = check_namespace(request.namespace)
        return manager_pb2.FindChunksReply(present=self.reads.find(namespace, [codec.key(k) for k in request.keys]))

    def Lookup(self, request: manager_pb2.LookupRequest, context: Context) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        return self.reads.version_map(namespace, normalize_file_path(request.path), request.version, request.stripes,
                                      _caller())

    def LocateChunks(self, request: manager_pb2.NamespacedChunks, context: Context) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        return self.reads.chunk_map(namespace, [codec.key(k) for k in request.keys], _caller())

    def Stat(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.FileInfo:
        if request.protection and request.wait_protected_ms:
            wait = min(request.wait_protected_ms / 1000, MAX_PROTECTED_WAIT_S)
            return self.reads.protected_info(check_namespace(request.namespace), normalize_path(request.path), wait)
        return self.reads.file_info(check_namespace(request.namespace), normalize_path(request.path),
                                    request.protection)

    def List(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.ListReply:
        namespace = check_namespace(request.namespace)
        entries, more = self.reads.listing(namespace, normalize_path(request.path), request.after, request.limit)
        return manager_pb2.ListReply(entries=entries, more=more)

    def Versions(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.VersionsReply:
        namespace = check_namespace(request.namespace)
        return manager_pb2.VersionsReply(versions=self.reads.versions(namespace, normalize_file_path(request.path)))

    def Checkpoints(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.CheckpointsReply:
        namespace = check_namespace(request.namespace)
        return manager_pb2.CheckpointsReply(checkpoints=[
            manager_pb2.CheckpointInfo(**c)  # type: ignore[arg-type]
            for c in self.catalog.checkpoints(namespace, self.state.alive_ids())])

    def Prefetch(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.PrefetchReply:
        namespace = check_namespace(request.namespace)
        reply = self.repair.prefetch(namespace, normalize_path(request.path), request.latest, request.start)
        self.state.durable()
        return reply

    def Persist(self, request: manager_pb2.LookupRequest, context: Context) -> manager_pb2.VersionInfo:
        namespace = check_namespace(request.namespace)
        path = self.catalog.canonical(namespace, normalize_file_path(request.path))
        version, _ = self.catalog.persist_version(namespace, path, request.version, self.state.alive_ids(),
                                                  time.time())
        self.state.durable()  # its benefactors are told of the drain
        return self._version_info(namespace, path, version)

    def Free(self, request: manager_pb2.LookupRequest, context: Context) -> manager_pb2.VersionInfo:
        namespace = check_namespace(request.namespace)
        path = self.catalog.canonical(namespace, normalize_file_path(request.path))
        version, _, freed = self.catalog.free_version(namespace, path, request.version)
        self.state.durable()
        self.state.free(freed)
        return self._version_info(namespace, path, version)

    def _version_info(self, namespace: str, path: str, version: int) -> manager_pb2.VersionInfo:
        return next(v for v in self.reads.versions(namespace, path) if v.version == version)

    # -- the namespace ---------------------------------------------------------------------------
    def Delete(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.DeleteFileReply:
        namespace, path = _file(request)
        count = self.namespace.delete(namespace, path)
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [path])
        return manager_pb2.DeleteFileReply(versions_deleted=count)

    def Rename(self, request: manager_pb2.RenameRequest, context: Context) -> manager_pb2.RenameReply:
        namespace = check_namespace(request.namespace)
        src, dst = normalize_file_path(request.path), normalize_file_path(request.destination)
        moved = self.namespace.rename(namespace, src, dst)
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [src, dst])
        if not request.want_info:
            return manager_pb2.RenameReply(files_moved=moved)
        return manager_pb2.RenameReply(files_moved=moved, info=self.reads.file_info(namespace, dst))

    def Mkdir(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.MkdirReply:
        path = normalize_file_path(request.path)
        namespace = check_namespace(request.namespace)
        self.namespace.mkdir(namespace, path, codec.attrs(request.attrs) if request.HasField("attrs") else None)
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [path])
        return manager_pb2.MkdirReply()

    def Rmdir(self, request: manager_pb2.PathRequest, context: Context) -> manager_pb2.MkdirReply:
        namespace, path = _file(request)
        self.namespace.rmdir(namespace, path)
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [path])
        return manager_pb2.MkdirReply()

    def SetAttr(self, request: manager_pb2.SetAttrRequest, context: Context) -> manager_pb2.FileInfo:
        namespace, path = check_namespace(request.namespace), normalize_path(request.path)
        self.namespace.set_attrs(namespace, path, codec.attrs(request.attrs))
        self.state.durable()
        if not request.attrs.access:  # a read's atime is not worth a round of the mounts (as relatime)
            self.watch.changed(_origin(context), namespace, [path])
        return self.reads.file_info(namespace, path)

    def Symlink(self, request: manager_pb2.SymlinkRequest, context: Context) -> manager_pb2.FileInfo:
        namespace, path = _file(request)
        self.namespace.symlink(namespace, path, request.target, codec.attrs(request.attrs))
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [path])
        return self.reads.file_info(namespace, path)

    def MakeNode(self, request: manager_pb2.NodeRequest, context: Context) -> manager_pb2.FileInfo:
        namespace, path = _file(request)
        self.namespace.make_node(namespace, path, request.mode, request.rdev, codec.attrs(request.attrs))
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [path])
        return self.reads.file_info(namespace, path)

    def Link(self, request: manager_pb2.RenameRequest, context: Context) -> manager_pb2.FileInfo:
        namespace = check_namespace(request.namespace)
        src, dst = normalize_file_path(request.path), normalize_file_path(request.destination)
        self.namespace.link(namespace, src, dst)
        self.state.durable()
        self.watch.changed(_origin(context), namespace, [src, dst])
        return self.reads.file_info(namespace, dst)

    # -- mounts' caches (see memstage.manager.watchers) ------------------------------------------
    def Watch(self, request: manager_pb2.WatchRequest, context: Context) -> Iterator[manager_pb2.WatchEvent]:
        namespace = check_namespace(request.namespace)
        if not request.mount:
            raise InvalidArgument("Watch: a mount id is needed")
        watcher = self.watch.watch(request.mount, namespace)
        try:
            yield manager_pb2.WatchEvent(lease=self.watch.lease)  # watched from now on: the mount may ping
            while context.is_active():
                events = self.watch.next_events(watcher, 1.0)
                if events is None:
                    return
                yield from events
        finally:
            self.watch.unwatch(watcher)

    def WatchAck(self, request: manager_pb2.WatchAckRequest, context: Context) -> manager_pb2.WatchAckReply:
        return manager_pb2.WatchAckReply(known=self.watch.ack(request.mount, request.seq, request.ping))

    # -- clients ---------------------------------------------------------------------------------
    control_ports = control_pb2.ControlPortsReply()  # where the control port serves (set by the server)

    def ControlPorts(self, request: control_pb2.ControlPortsRequest, context: Context
                     ) -> control_pb2.ControlPortsReply:
        return self.control_ports

    # -- operators -------------------------------------------------------------------------------
    def Status(self, request: manager_pb2.StatusRequest, context: Context) -> manager_pb2.StatusReply:
        return self.status.seen_by(_caller())

    def CreateToken(self, request: manager_pb2.TokenRequest, context: Context) -> manager_pb2.TokenReply:
        token = self.admin.create_token({g.namespace: g.mode for g in request.grants}, request.note)
        self.state.durable()
        return manager_pb2.TokenReply(token=str(token), id=token.id)

    def RevokeToken(self, request: manager_pb2.TokenRequest, context: Context) -> manager_pb2.TokenReply:
        self.admin.revoke_token(request.id)
        self.state.durable()
        return manager_pb2.TokenReply(id=request.id)

    def ListTokens(self, request: manager_pb2.TokenRequest, context: Context) -> manager_pb2.TokenList:
        return manager_pb2.TokenList(tokens=[
            manager_pb2.TokenInfo(id=i, grants=[manager_pb2.TokenGrant(namespace=ns, mode=m) for ns, m in g.items()],
                                  created_at=at, revoked=revoked, note=note)
            for i, g, at, revoked, note in self.catalog.tokens()])

    def Policy(self, request: manager_pb2.PolicyRequest, context: Context) -> manager_pb2.PolicyReply:
        namespace = check_namespace(request.namespace)
        policy = self.admin.policy(namespace, {f: getattr(request, f) for f in POLICY_FIELDS if request.HasField(f)})
        self.state.durable()
        return manager_pb2.PolicyReply(namespace=namespace, **asdict(policy))

    def MarkCheckpoint(self, request: manager_pb2.CheckpointMark, context: Context
                       ) -> manager_pb2.CheckpointMarkReply:
        namespace = check_namespace(request.namespace)
        previous, now = self.admin.mark_checkpoint(namespace, request.begin if request.HasField("begin") else None,
                                                   request.end)
        self.state.durable()
        return manager_pb2.CheckpointMarkReply(was_open=previous is not None, ended=previous or 0,
                                               open=now is not None, step=now or 0)

    def CollectGarbage(self, request: manager_pb2.GcRequest, context: Context) -> manager_pb2.GcReply:
        orphans, removed = self.drains.collect_garbage(check_namespace(request.namespace), request.dry_run)
        self.state.durable()
        return manager_pb2.GcReply(orphans=[manager_pb2.GcOrphan(path=o.path, bytes=o.bytes, why=o.why)
                                            for o in orphans],
                                   removed_files=removed.files, removed_bytes=removed.bytes)
