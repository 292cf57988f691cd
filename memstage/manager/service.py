"""The manager's gRPC servicer: translates requests to Registry, SessionTable, OrderQueues and Catalog
calls, errors to status codes.

Chunk lifecycle: a writer opens a session; benefactors acknowledge what it stores with receipts;
its commit names them and the manager records those locations only (a location without a valid
receipt refuses the commit); the commit, an abort or the lease's end ends the session, and
benefactors are ordered to hold what was committed and free the rest. Only this manager orders
frees, each naming the generation of the hold it ends.
"""

from __future__ import annotations

import errno
import functools
import hmac
import logging
import random
import secrets
import stat
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from memstage import auth, commitpack, receipts
from memstage.chunks import HASH_BYTES, HOLE_HASH, MAX_CHUNK_SIZE, MAX_FILE_SIZE, ChunkKey, first, key_of_pair, second
from memstage.drainer.layout import parse_manifest_name, parse_name, write_manifest
from memstage.drainer.prune import Removed, find_orphans, remove_copies, remove_orphans
from memstage.errors import (
    Conflict,
    DataLost,
    DeploymentFull,
    FsError,
    InvalidArgument,
    MemstageError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    SettingError,
    Unauthenticated,
    Unavailable,
    to_rpc_detail,
)
from memstage.manager.access import EVERYONE, POLICY_FIELDS, Access, Caller
from memstage.manager.beatlink import BeatLink
from memstage.manager.catalog import Catalog, Freed, Holds, NewVersion, Placed, VersionRecord
from memstage.manager.chunkindex import IndexKey
from memstage.manager.groupcommit import GroupCommit, NotDurable
from memstage.manager.loads import Loads
from memstage.manager.metrics import ManagerMetrics
from memstage.manager.nodes import DIR, FILE, LINK, ROW_KINDS, SPECIAL, SYMLINK, Attrs, Node
from memstage.manager.orders import OrderQueues
from memstage.manager.registry import MISSED_HEARTBEATS, Placement, Registry, Stats
from memstage.manager.replication import Replicator
from memstage.manager.sessions import Session, SessionTable
from memstage.manager.slots import FairSlots
from memstage.manager.stripes import ABSENT, NewStripe, Stripe, StripeWork, group, targets
from memstage.manager.verifier import ReceiptCheckers, default_workers
from memstage.manager.wakes import Ack, Flags, Wake
from memstage.paths import MAX_PATH_BYTES, check_namespace, normalize_file_path, normalize_path, parent_dirs
from memstage.proto import common_pb2, manager_pb2, manager_pb2_grpc
from memstage.redundancy import Redundancy
from memstage.settings import ManagerSettings
from memstage.units import format_size

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# A striping map reserves room for this many chunks on each benefactor it names, until its session
# ends: enough that the next writers get other benefactors while this one fills its own.
RESERVED_CHUNKS = 8
# Commits worked on at once (see Commit).
COMMIT_SLOTS = 2
# Deaths wait while the heartbeat link has not gone round for this long (it may hold beats not applied).
BEAT_LINK_STALL = 5.0
# A version map names this many live benefactors (a random sample) that may read drained chunks.
PFS_READERS = 8


def rpc(method: F) -> F:
    """Turn domain errors into status codes; anything else is a bug, logged with its traceback."""

    @functools.wraps(method)
    def wrapper(self: ManagerService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            name = method.__name__
            self.metrics.calls.labels(name).inc()
            caller = self.access.caller(name, context.invocation_metadata())
            self.access.check(name, caller, request, self._session_namespace)
            self._local.caller = caller
            reply = method(self, request, context)
            self.catalog.sync()  # what the reply reports is durable before it is sent
            self.note_drains()
            return reply
        except (Unauthenticated, PermissionDenied) as e:
            self.metrics.errors.labels(method.__name__, e.code.name).inc()
            log.warning("refused %s from %s: %s", method.__name__, context.peer(), e)
            context.abort(e.code, to_rpc_detail(e))
        except MemstageError as e:
            self.metrics.errors.labels(method.__name__, e.code.name).inc()
            context.abort(e.code, to_rpc_detail(e))
        except Exception:
            self.metrics.errors.labels(method.__name__, "INTERNAL").inc()
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error (see the manager's log)")

    return wrapper  # type: ignore[return-value]


def _striping_map(placements: Sequence[Placement]) -> manager_pb2.StripingMap:
    return manager_pb2.StripingMap(
        benefactors=[common_pb2.Location(benefactor_id=p.id, address=p.address) for p in placements])


def _stats(pb: manager_pb2.BenefactorStats) -> Stats:
    return Stats(pb.memory_capacity, pb.memory_used, pb.drain_backlog, pb.chunk_count, pb.drain_error,
                 pb.drained_bytes)


def _attrs(pb: manager_pb2.FileAttrs) -> Attrs:
    def given(field: str) -> int | None:
        return getattr(pb, field) if pb.HasField(field) else None

    return Attrs(given("mode"), given("ino"), given("uid"), given("gid"), given("atime_ns"), given("mtime_ns"),
                 access=pb.access)


def _key(pb: common_pb2.ChunkKey) -> ChunkKey:
    h, n = pb.hash, pb.length
    if len(h) == HASH_BYTES and 0 < n <= MAX_CHUNK_SIZE and h != HOLE_HASH:
        return ChunkKey(h, n)  # the common case, checked first: a commit has a thousand of them
    return _key_of(h, n)


_NO_KEY = b"\0" * receipts.KEY_BYTES  # stands in for a benefactor not registered (its location fails anyway)


def _key_of(h: bytes, n: int) -> ChunkKey:
    key = ChunkKey(h, n)
    if key.is_hole and 0 < key.length <= MAX_FILE_SIZE:
        return key  # a run of zeros, stored nowhere
    if len(key.hash) != HASH_BYTES or not 0 < key.length <= MAX_CHUNK_SIZE:
        raise InvalidArgument(f"chunk key {key}: needs a {HASH_BYTES}-byte hash and a length of 1..{MAX_CHUNK_SIZE}")
    return key


class ManagerService(manager_pb2_grpc.ManagerServicer):
    def __init__(self, settings: ManagerSettings, catalog: Catalog, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.monotonic, secret: bytes | None = None):
        self.settings = settings
        self.catalog = catalog
        # secret None: --insecure (nothing is checked).
        self.access = Access(secret, catalog.token)
        self._local = threading.local()  # the caller of the RPC this thread serves
        self.registry = Registry(settings.heartbeat_interval, max_rate=settings.heartbeat_rate)
        self.clock = clock
        self._lock = threading.Lock()  # registry, sessions and order queues
        # Namespace changes (rename, unlink, link, ...) check and change several rows: one at a time.
        self._namespace_lock = threading.RLock()
        self._started_ns = time.time_ns()
        self.sessions = SessionTable(settings.session_lease, on_end=lambda s: self.registry.release(s.reserved))
        self._known_addresses = catalog.benefactor_addresses()  # as last registered (for maps after a restart)
        self._commit_slots = FairSlots(COMMIT_SLOTS)  # in order of arrival: no commit waits much longer than others
        # Commits checked meanwhile are recorded together: one transaction and one fsync per group.
        self._group_commit: GroupCommit[NewVersion, tuple[int, Holds]] = GroupCommit(catalog.commit_group,
                                                                                     catalog.sync)
        self.receipt_checkers = ReceiptCheckers(default_workers())  # large commits' receipts, checked on other cores
        self._drained: dict[str, int] = {}  # bytes each benefactor reported on the PFS since this manager started
        self._drain_waiting: set[str] = set()  # benefactors with drain tasks they have not asked for yet
        self._drain_changed: set[str] = set()  # ... whose entry changed since the heartbeat process was told
        self._drain_new: set[str] = set()  # ... given new tasks since then (a subset: they are woken)
        self.beats: BeatLink | None = None  # the heartbeat process, when the manager runs one (see attach_beats)
        self._following = False  # changes of flags of work waiting are kept (see beat_flags)
        self.orders = OrderQueues()
        self.replicator = Replicator()  # under self._lock
        self.loads = Loads()  # prefetches from the PFS under way; under self._lock
        self._pfs_warned = False  # said once: no pfs setting, drained files of deleted versions stay
        self._manifests: list[tuple[str, str, int]] = []  # persisted versions whose manifest is to write
        self.unprotected = 0  # chunks short of their copies at the last repair round
        self.stripe_work = StripeWork()  # under self._lock
        self.copied_bytes = 0  # by replica copies since the manager started
        self._domains_warned = False
        self._narrow_warned = False  # warned once: too few benefactors for a stripe
        self.wake = threading.Event()  # set: run housekeeping (the repair) now
        # Order numbers start again with each manager process: acknowledgements of another are void.
        self.epoch = secrets.randbits(63) or 1
        self.metrics = ManagerMetrics(registry, self._status_reply, settings.metrics_benefactors)
        # Benefactors known before a restart get one TTL to register again; one that does not is
        # dead, and what only it held is lost (unless its drain finished on the PFS).
        self._started = self.clock()
        self._unheard: set[str] = set()
        owners = self.catalog.drain_owners()
        self._drain_waiting |= owners - {""}  # tasks queued before a restart: their owners are told
        held = self.catalog.held_stats()
        for bf, _, _ in catalog.known_benefactors():
            if held.get(bf, (0, 0))[0] or bf in owners:
                self._unheard.add(bf)
            else:
                self.catalog.forget_benefactor(bf)

    # -- benefactors -------------------------------------------------------------------------
    @rpc
    def Register(self, request: manager_pb2.RegisterRequest, context: grpc.ServicerContext
                 ) -> manager_pb2.RegisterReply:
        bf = request.benefactor_id
        if not bf or not request.address or not request.incarnation:
            raise InvalidArgument("register: benefactor_id, address and incarnation are required")
        with self._lock:
            rec = self.registry.get(bf)
            if rec is not None and rec.incarnation != request.incarnation and self.registry.is_alive(bf, self.clock()):
                # Its id belongs to the process that holds it while that one is alive: a second one
                # (a hijack, or two benefactors given one --id) waits until it stops or is declared dead.
                heard = self.clock() - rec.last_seen
                log.warning("registration of benefactor %s from %s refused: the id is alive at %s (heard %.1fs ago)",
                            bf, context.peer(), rec.address, heard)
                raise PermissionDenied(f"benefactor id {bf} belongs to a live process at {rec.address} (heard "
                                       f"{heard:.1f}s ago); another may take it once that one stops or misses "
                                       f"{MISSED_HEARTBEATS} heartbeats")
        previous = rec.incarnation if rec is not None else self.catalog.incarnation(bf)
        if previous and previous != request.incarnation:
            self._void(bf, f"benefactor {bf} restarted before the version was drained; its memory was lost")
        with self._lock:
            self.registry.register(bf, request.address, _stats(request.stats), self.clock(), request.incarnation,
                                   bytes(request.receipt_key), request.domain)
            if previous != request.incarnation:
                self.orders.reset(bf)
            if self.beats is not None:
                self.beats.known(bf, request.incarnation, request.address, bytes(request.receipt_key))
            if self._following:
                self._drain_changed.add(bf)  # its flags follow (it starts with none there)
        self.catalog.remember_benefactor(bf, request.address, request.stats.memory_capacity, request.incarnation)
        self._known_addresses[bf] = request.address
        held = [((g.namespace, _key(c.key)), c.gen, list(c.sessions)) for g in request.held for c in g.chunks]
        orphans = self._settle_held(bf, held)
        log.info("benefactor %s registered at %s (capacity %d, %d chunks held, %d of them orphans)",
                 bf, request.address, request.stats.memory_capacity, len(held), orphans)
        with self._lock:
            interval = self.registry.announce(self.clock())
        return manager_pb2.RegisterReply(heartbeat_interval_seconds=interval, heartbeat_port=self._beat_port(interval),
                                         revoked_tokens=self.catalog.revoked_tokens())

    def _beat_port(self, interval: float) -> int:
        """The heartbeat process's port, for a reply that tells a benefactor `interval` (the process
        is told that period too). 0: none; benefactors beat to this port."""
        if self.beats is None:
            return 0
        self.beats.interval(interval)
        return self.beats.port

    def _void(self, bf: str, reason: str, check_pfs: bool = True) -> list[tuple[str, str, int]]:
        """A benefactor died, left or came back as a new process: what it held is gone."""
        lost = self.catalog.void_benefactor(bf, self._alive_ids(), reason, check_pfs)
        with self._lock:
            self.loads.gone(bf)
        log.warning("benefactor %s: what it held is void (%s); %d versions lost", bf, reason, len(lost))
        for ns, path, version in lost:
            log.error("%s:%s version %d is lost: %s", ns, path, version, reason)
        return lost

    @rpc
    def Leave(self, request: manager_pb2.LeaveRequest, context: grpc.ServicerContext) -> manager_pb2.LeaveReply:
        bf = request.benefactor_id
        with self._lock:
            rec = self.registry.get(bf)
            if rec is None or rec.incarnation != request.incarnation:
                raise NotFound(f"leave: benefactor {bf} is not registered as this process")
            rec.leaving = True
        if not request.done:
            nbytes, chunks = self.catalog.backlog_of(bf)
            return manager_pb2.LeaveReply(backlog_bytes=nbytes, backlog_chunks=chunks)
        lost = self._void(bf, f"benefactor {bf} was stopped before the version was drained", check_pfs=False)
        memory_only = sum(1 for ns, path, v in lost if not self.catalog.persist_selected(ns, path, v))
        with self._lock:
            self.registry.remove(bf)
            self.orders.reset(bf)
        if self.beats is not None:
            self.beats.gone([bf])
        self.catalog.forget_benefactor(bf)
        log.info("benefactor %s left (%d versions lost, %d memory-only versions dropped)", bf,
                 len(lost) - memory_only, memory_only)
        return manager_pb2.LeaveReply(versions_lost=len(lost) - memory_only, memory_only_dropped=memory_only)

    def _settle_held(self, bf: str, held: Sequence[tuple[IndexKey, int, list[int]]]) -> int:
        """Orders that make what a benefactor reports holding agree with the index: holds it missed
        (at the index's generation), then the end of sessions no longer open, then frees of copies
        no version locates there. Returns how many chunks were orphans."""
        hold, free = self.catalog.check_held(bf, [(ik, gen) for ik, gen, _ in held])
        sessions = {sid for _, _, sids in held for sid in sids}
        with self._lock:
            for ns, items in _by_namespace(hold).items():
                self.orders.push(bf, ns, hold=items)
            for sid in sessions:
                if not self.sessions.is_open(sid):
                    self.orders.push(bf, "", session=sid, end_session=True)
            for ns, items in _by_namespace(free).items():
                self.orders.push(bf, ns, free=items)
        return len(free)

    @rpc
    def Heartbeat(self, request: manager_pb2.HeartbeatRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.HeartbeatReply:
        arrived = self.clock()
        self.registry.heard(request.benefactor_id, request.incarnation, arrived)  # before waiting for the lock
        with self._lock:
            rec = self.registry.get(request.benefactor_id)
            if rec is None or rec.incarnation != request.incarnation:
                return manager_pb2.HeartbeatReply(known=False)
            known = self.registry.heartbeat(request.benefactor_id, _stats(request.stats), arrived)
            interval = self.registry.announce(arrived)
            if known:
                # Chunks of sessions that are over (their end order got lost, or a straggler arrived later).
                for sid in request.sessions:
                    if not self.sessions.is_open(sid):
                        self.orders.push(request.benefactor_id, "", session=sid, end_session=True)
            orders = self.orders.waiting(request.benefactor_id)
            last = self.orders.last(request.benefactor_id)
            drains = request.benefactor_id in self._drain_waiting
        return manager_pb2.HeartbeatReply(known=known, heartbeat_interval_seconds=interval, orders_waiting=orders,
                                          drain_waiting=drains, heartbeat_port=self._beat_port(interval),
                                          orders_last=last, orders_epoch=self.epoch)

    # -- the heartbeat process (see beatlink) --------------------------------------------------
    def attach_beats(self, link: BeatLink) -> None:
        """From now on heartbeats may arrive through the heartbeat process, which is told where work waits."""
        with self._lock:
            self.beats = link
        self.follow_flags()

    def follow_flags(self) -> None:
        """Flags of work waiting are followed from now on: for the heartbeat process, or, without
        one, for the manager, which then wakes benefactors itself (see wakes_for)."""
        with self._lock:
            self.orders.changed = set()
            self._following = True

    def wakes_for(self, flags: list[Flags]) -> list[Wake]:
        """The wakes for flags beat_flags returned: benefactors given work, at their addresses."""
        with self._lock:
            out = []
            for bf, incarnation, orders, drains, new, orders_reply, last in flags:
                rec = self.registry.get(bf)
                if new and (orders or drains) and rec is not None and rec.incarnation == incarnation:
                    mac = receipts.sign_orders(rec.receipt_key, orders_reply) if orders_reply else b""
                    out.append(Wake(bf, incarnation, rec.address, orders > 0, drains, orders_reply, mac, last))
            return out

    def beats_arrived(self, beats: Sequence[tuple[Any, ...]]) -> None:
        """Heartbeats the heartbeat process answered: as Heartbeat does, from when each arrived."""
        with self._lock:
            for bf, incarnation, arrived, stats, sessions in beats:
                rec = self.registry.get(bf)
                if rec is None or rec.incarnation != incarnation:
                    continue
                self.registry.heard(bf, incarnation, arrived)
                if self.registry.heartbeat(bf, Stats(*stats), arrived):
                    for sid in sessions:
                        if not self.sessions.is_open(sid):
                            self.orders.push(bf, "", session=sid, end_session=True)
            interval = self.registry.announce(self.clock())
        self.metrics.calls.labels("Heartbeat").inc(len(beats))
        if self.beats is not None:
            self.beats.interval(interval)

    def beat_flags(self) -> list[Flags]:
        """Work waiting, for benefactors whose flags changed since the last call; with the orders
        waiting for those given orders since (the wake brings them)."""
        with self._lock:
            changed = (self.orders.changed or set()) | self._drain_changed
            pushed = self.orders.pushed
            self.orders.changed, self._drain_changed = set(), set()
            self.orders.pushed, self._drain_new, new = set(), set(), pushed | self._drain_new
            return self._flags_of(changed, new, pushed)

    def _flags_of(self, benefactors: Iterable[str], new: set[str] | None = None,
                  pushed: set[str] | None = None) -> list[Flags]:
        """new: benefactors given work since the flags were last told; pushed: those given orders
        (None: all of them, both)."""
        out = []
        for bf in benefactors:
            rec = self.registry.get(bf)
            if rec is not None:
                waiting = self.orders.waiting(bf)
                batch = b""
                if waiting and (pushed is None or bf in pushed):
                    batch = manager_pb2.OrdersReply(known=True, epoch=self.epoch,
                                                    orders=self.orders.take(bf, 0)).SerializeToString()
                out.append((bf, rec.incarnation, waiting, bf in self._drain_waiting, new is None or bf in new, batch,
                            self.orders.last(bf)))
        return out

    def acks_arrived(self, acks: Sequence[Ack], sent: int = 0, failed: int = 0) -> None:
        """Orders benefactors carried out when a wake brought them: as the acknowledgement of a fetch.
        sent, failed: wakes since the last call."""
        if sent:
            self.metrics.wakes.labels("sent").inc(sent)
        if failed:
            self.metrics.wakes.labels("failed").inc(failed)
        with self._lock:
            for bf, incarnation, epoch, acked in acks:
                rec = self.registry.get(bf)
                if rec is not None and rec.incarnation == incarnation and epoch == self.epoch:
                    self.orders.take(bf, acked)

    def beat_snapshot(self) -> tuple[float, list[tuple[str, int, str, bytes]], list[Flags]]:
        """Everything a (re)started heartbeat process must know: the period, the live incarnations,
        and where work waits."""
        with self._lock:
            live = self.registry.live_ids()
            known = [(r.id, r.incarnation, r.address, r.receipt_key) for r in self.registry.records() if r.id in live]
            waiting = [bf for bf, _, _, _ in known if self.orders.waiting(bf) or bf in self._drain_waiting]
            return self.registry.announce(self.clock()), known, self._flags_of(waiting)

    @rpc
    def Reconcile(self, request: manager_pb2.ReconcileRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.ReconcileReply:
        with self._lock:
            rec = self.registry.get(request.benefactor_id)
            if rec is None or rec.incarnation != request.incarnation:
                return manager_pb2.ReconcileReply()
        held = [((g.namespace, _key(c.key)), c.gen, list(c.sessions)) for g in request.held for c in g.chunks]
        orphans = self._settle_held(request.benefactor_id, held)
        if orphans:
            self.metrics.orphans.inc(orphans)
            log.warning("safety net: %d chunks on %s were held with no version locating them; freeing them",
                        orphans, request.benefactor_id)
        return manager_pb2.ReconcileReply(orphans=orphans)

    @rpc
    def Orders(self, request: manager_pb2.OrdersRequest, context: grpc.ServicerContext) -> manager_pb2.OrdersReply:
        with self._lock:
            rec = self.registry.get(request.benefactor_id)
            if rec is None or rec.incarnation != request.incarnation:
                return manager_pb2.OrdersReply(known=False)
            acked = request.acked if request.epoch == self.epoch else 0
            if request.HasField("memory_used"):
                self.registry.note_memory(request.benefactor_id, request.memory_used)
            reply = manager_pb2.OrdersReply(known=True, epoch=self.epoch,
                                            orders=self.orders.take(request.benefactor_id, acked))
        if request.copied:
            self._copied(request.benefactor_id, request.copied)
        return reply

    def _copied(self, bf: str, results: Sequence[manager_pb2.CopyResult]) -> None:
        """Copies a benefactor made (or could not make): a made copy becomes a location, unless no
        version needs the chunk in memory any more (then it is freed again)."""
        self._record_copies(bf, results)
        with self._lock:
            room = (self.replicator.in_flight < self.replicator.max_in_flight // 2
                    and self.stripe_work.in_flight < self.stripe_work.max_in_flight // 2)
        if room and self.unprotected + self.stripe_work.unprotected:
            self.wake.set()  # more to copy or encode: the next round now, not at the next housekeeping period

    def _record_copies(self, bf: str, results: Sequence[manager_pb2.CopyResult]) -> None:
        for r in results:
            ik = (r.namespace, _key(r.key))
            if r.stripe:
                self._stripe_result(bf, r)
                continue
            if r.loaded:
                self._load_result(bf, ik, r)
                continue
            self.metrics.copies.labels("failed" if r.error else "made").inc()
            if r.error:
                log.warning("copy of chunk %s to %s failed: %s", ik[1], bf, r.error)
            else:
                self.copied_bytes += ik[1].length
                # Recorded before the copy stops being pending: a repair round in between would
                # see the chunk short of a copy and order it again.
                if not self.catalog.add_copy(ik, bf, r.gen):
                    with self._lock:
                        self.orders.push(bf, r.namespace, free=[(ik[1], r.gen)])
            with self._lock:
                self.replicator.finished(ik, bf, not r.error)

    def _load_result(self, bf: str, ik: IndexKey, r: manager_pb2.CopyResult) -> None:
        """A benefactor loaded a chunk from the PFS for a prefetch (or could not)."""
        if r.error:
            log.warning("loading chunk %s from the PFS on %s failed: %s", ik[1], bf, r.error)
        elif not self.catalog.add_copy(ik, bf, r.gen):  # recorded before it stops being pending
            with self._lock:
                self.orders.push(bf, r.namespace, free=[(ik[1], r.gen)])
        with self._lock:
            self.loads.finished(ik, bf, r.gen, r.error)
        self.metrics.prefetched.labels("failed" if r.error else "loaded").inc(ik[1].length)

    def _stripe_result(self, bf: str, r: manager_pb2.CopyResult) -> None:
        """A benefactor computed a stripe member (new parity, or a rebuilt one), or could not."""
        key = _key(r.key)
        self.metrics.stripe_cpu.inc(r.cpu_seconds)
        if r.error:
            log.warning("stripe %d member %d on %s failed: %s", r.stripe, r.index, bf, r.error)
        with self._lock:
            self.stripe_work.cpu_seconds += r.cpu_seconds
            rebuilding = self.stripe_work.rebuilding.get((r.stripe, r.index), ("", 0, 0.0))[:2] == (bf, r.gen)
        if rebuilding and not r.error and not self.catalog.add_copy((r.namespace, key), bf, r.gen):
            with self._lock:  # recorded before it stops being pending (else it might be ordered again)
                self.orders.push(bf, r.namespace, free=[(key, r.gen)])
        with self._lock:
            rebuilt = self.stripe_work.rebuild_done(r.stripe, r.index, bf, not r.error, key.length)
            done = None if rebuilt else self.stripe_work.parity_done(r.stripe, r.index, key, bf, r.gen, not r.error)
        self.metrics.stripe_members.labels("rebuilt" if rebuilding else "encoded",
                                           "failed" if r.error else "made").inc()
        if r.error or rebuilding:
            return
        if done is None:
            return
        members = done.data + tuple(ABSENT for _ in range(done.k - len(done.data)))
        parity = tuple(done.done[done.k + j][0] for j in range(done.m))
        stripe = Stripe(r.stripe, done.namespace, done.k, done.m, done.size, members + parity)
        recorded = self.catalog.add_stripe(stripe, {i: (b, g) for i, (_, b, g) in done.done.items()})
        with self._lock:  # its data members stay pending until recorded: no second stripe for them
            self.stripe_work.finished(r.stripe)
        if not recorded:
            self._free_parity(done.namespace, done.done.values())
        else:
            log.debug("stripe %d of %s encoded: %d data members, %d parity", stripe.id, done.namespace,
                      len(done.data), done.m)

    def _free_parity(self, namespace: str, computed: Iterable[tuple[ChunkKey, str, int]]) -> None:
        with self._lock:
            for key, bf, gen in computed:
                self.orders.push(bf, namespace, free=[(key, gen)])

    def _stripe_spec(self, stripe: Stripe, index: int, addresses: Mapping[str, str], alive: Set[str]
                     ) -> manager_pb2.StripeSpec:
        members = []
        for key, (holders, drained) in zip(stripe.members, self.catalog.stripe_members(stripe), strict=True):
            live = sorted(bf for bf in holders if bf in alive)
            members.append(manager_pb2.ChunkRef(key=key.to_pb(), drained=drained, locations=[
                common_pb2.Location(benefactor_id=bf, address=addresses[bf]) for bf in live if bf in addresses]))
        return manager_pb2.StripeSpec(id=stripe.id, k=stripe.k, m=stripe.m, size=stripe.size, members=members,
                                      index=index)

    def _live_view(self) -> tuple[float, set[str], dict[str, int], dict[str, str], dict[str, str]]:
        """(under self._lock) Now, the live benefactors, the free memory of those that may take new
        copies, their addresses and failure domains (an unlabelled one is a domain of its own)."""
        now = self.clock()
        records = self.registry.alive(now)
        return (now, {r.id for r in records}, {r.id: r.stats.free for r in records if not r.leaving},
                {r.id: r.address for r in records}, {r.id: r.domain or r.id for r in records})

    def repair_stripes(self) -> None:
        """One round for namespaces keeping Reed-Solomon stripes: drop the stripes nothing needs,
        have benefactors encode parity for chunks no stripe protects yet, and rebuild the members
        of stripes that lost some (from any K others) onto benefactors holding none of the stripe."""
        self._free(self.catalog.release_stripes())
        namespaces = self.catalog.parity_namespaces()
        if not namespaces and not self.catalog.stripe_count():
            self.stripe_work.unprotected = self.stripe_work.missing = 0
            return
        with self._lock:
            now, alive, room, addresses, domains = self._live_view()
            abandoned = self.stripe_work.expire(now)
            pending = self.stripe_work.pending_data()
            budget = self.stripe_work.max_in_flight - self.stripe_work.in_flight
        for s in abandoned:
            self._free_parity(s.namespace, s.done.values())
        shared = 0
        orders: list[tuple[str, str, manager_pb2.CopyOrder]] = []  # (target, namespace, order)
        # Rebuild first: a stripe short of members tolerates fewer failures until it is whole again.
        health = self.catalog.stripe_health(alive)
        missing_members = sum(len(missing) for _, missing, _ in health)
        self.metrics.stripe_missing.set(missing_members)
        unstriped = 0
        for stripe, missing, available in health:
            if available < stripe.k:
                continue  # beyond its tolerance: its versions are lost (or on the PFS)
            with self._lock:
                missing = [i for i in missing if (stripe.id, i) not in self.stripe_work.rebuilding]
            if not missing or budget <= 0:
                continue
            holders = {bf for holders, _ in self.catalog.stripe_members(stripe) for bf in holders}
            used = {domains.get(bf, bf) for bf in holders if bf in alive}
            chosen, n_shared = targets(min(len(missing), budget), stripe.size, room, set(holders), used, domains)
            shared += n_shared
            for index, target in zip(missing, chosen, strict=False):
                gen = self.catalog.new_gen()
                spec = self._stripe_spec(stripe, index, addresses, alive)
                orders.append((target, stripe.namespace, manager_pb2.CopyOrder(
                    key=stripe.members[index].to_pb(), gen=gen, stripe=spec)))
                with self._lock:
                    self.stripe_work.rebuilding[(stripe.id, index)] = (target, gen, now + self.stripe_work.timeout)
                budget -= 1
        # Encode: new stripes from chunks no stripe protects.
        waited: set[IndexKey] = set()
        for ns, candidates in self.catalog.unstriped(namespaces, alive).items():
            unstriped += len(candidates)
            red = namespaces[ns]
            candidates = [c for c in candidates if c[0] not in pending]
            short_ok = all(ik in self.stripe_work.waited for ik, _ in candidates)
            for data in group(candidates, red.k, domains, short_ok):
                if budget < red.m:
                    break
                members = {ik: hs for ik, hs in candidates}
                taken = {bf for ik in data for bf in members[ik]}
                used = {domains.get(members[ik][0], members[ik][0]) for ik in data}
                size = max(ik[1].length for ik in data)
                chosen, n_shared = targets(red.m, size, room, taken, used, domains)
                shared += n_shared + len(data) - len(used)
                if len(chosen) < red.m:
                    waited.update(data)
                    if not self._narrow_warned:
                        self._narrow_warned = True
                        log.warning("namespace %s (%s): not enough live benefactors with room for a stripe's %d "
                                    "members on distinct benefactors (%d alive); its new versions stay "
                                    "unprotected until there are", ns, red, red.k + red.m, len(alive))
                    continue  # not enough benefactors holding none of its members: next round
                sid = self.catalog.new_stripe_id()
                keys = tuple(ik[1] for ik in data)
                stripe = Stripe(sid, ns, red.k, red.m, size, keys + tuple(ABSENT for _ in range(red.k - len(keys)))
                                + tuple(ABSENT for _ in range(red.m)))
                new = NewStripe(ns, red.k, red.m, size, keys, now + self.stripe_work.timeout)
                for j, target in enumerate(chosen):
                    gen = self.catalog.new_gen()
                    new.targets[red.k + j] = (target, gen)
                    orders.append((target, ns, manager_pb2.CopyOrder(
                        gen=gen, stripe=self._stripe_spec(stripe, red.k + j, addresses, alive))))
                with self._lock:
                    self.stripe_work.new[sid] = new
                budget -= red.m
            waited.update(ik for ik, _ in candidates)
        with self._lock:
            self.stripe_work.waited = waited
            self.stripe_work.shared_domains = shared
            self.stripe_work.unprotected = unstriped + missing_members
            self.stripe_work.missing = missing_members
            for target, ns, order in orders:
                self.orders.push(target, ns, build=[order])
                self.registry.note_used(target, order.stripe.size)
        self.metrics.shared_domains.set(self.replicator.shared_domains + shared)
        self.metrics.stripes.set(self.catalog.stripe_count())
        if shared and not self._domains_warned:
            self._domains_warned = True
            log.warning("not enough failure domains: %d stripe members share a domain with another member of their "
                        "stripe (label benefactors with --domain, or add benefactors in other domains)", shared)
        if orders:
            log.info("stripes: %d members ordered (%d stripes short of members)", len(orders), len(health))

    def repair(self) -> None:
        """One round of replication and rebuild: order copies of chunks short of their namespace's
        copies (new versions, or a benefactor gone), from a live holder to live benefactors."""
        self.repair_stripes()
        copies = self.catalog.replicated_namespaces()
        if not copies:
            self.unprotected = 0
            self.metrics.unprotected.set(self.stripe_work.unprotected)
            return
        with self._lock:
            now, alive, free, addresses, domains = self._live_view()
        needs = self.catalog.under_protected(copies, alive)
        self.unprotected = len(needs)
        self.metrics.unprotected.set(len(needs) + self.stripe_work.unprotected)
        if not needs:
            return
        with self._lock:
            self.replicator.expire(now)
            plan = self.replicator.plan(needs, copies, free, domains)
            shared = self.replicator.shared_domains
        self.metrics.shared_domains.set(shared)
        if shared and not self._domains_warned:
            self._domains_warned = True
            log.warning("not enough failure domains: %d copies share a domain with another copy of their chunk "
                        "(label benefactors with --domain, or add benefactors in other domains)", shared)
        for ik, source, target in plan:
            gen = self.catalog.new_gen()
            with self._lock:
                self.orders.push(target, ik[0], copy=[(ik[1], gen, source, addresses[source])])
                self.registry.note_used(target, ik[1].length)
                self.replicator.started(ik, target, gen, now)
        if plan:
            log.info("repair: %d chunks short of their copies, %d copies ordered", len(needs), len(plan))

    def resumed(self, away: float) -> None:
        """The manager could not run for `away` seconds: no benefactor is judged by that silence."""
        with self._lock:
            self.registry.resumed(self.clock())
        log.warning("the manager could not run for %.1fs (paused or starved of CPU): benefactors get %.1fs "
                    "from now to be heard before any is declared dead", away, self.registry.ttl)

    def sweep(self) -> None:
        """Log benefactors that just passed their TTL, and end sessions whose lease ran out."""
        with self._lock:
            now = self.clock()
            # Beats the heartbeat process answered but the link has not applied yet would be missed.
            stalled = self.beats is not None and time.monotonic() - self.beats.last_pass > BEAT_LINK_STALL
            dead = [] if stalled else self.registry.newly_dead(now)
            expired = self.sessions.expired(now)
            for session in expired:
                self._end_orders(session, {})
        for session in expired:
            self.metrics.sessions_expired.inc()
            log.warning("write session of %s:%s expired (not renewed for %.0fs): its chunks are freed",
                        session.namespace, session.path, self.settings.session_lease)
        if dead and self.beats is not None:
            self.beats.gone([rec.id for rec in dead])
        for rec in dead:
            log.warning("benefactor %s (%s) missed %d heartbeats: declared dead", rec.id, rec.address, 3)
            self._void(rec.id, f"benefactor {rec.id} died (no heartbeat for {self.registry.ttl:.0f}s) before "
                               "the version was drained")
        if self._unheard and self.clock() - self._started > self.registry.ttl:
            with self._lock:
                gone, self._unheard = {bf for bf in self._unheard if self.registry.get(bf) is None}, set()
            for bf in gone:
                self._void(bf, f"benefactor {bf} did not come back after the manager restarted, before the "
                               "version was drained")
        if self.clock() - self._started <= self.registry.ttl:
            return  # benefactors are still registering again after a manager restart
        self.repair()
        # Drain tasks of benefactors that are gone (or that nobody could take) go to a live one.
        alive = self._alive_ids()
        if alive:
            for owner in self.catalog.drain_owners() - alive:
                if owner == "" or not self._is_alive(owner):
                    self.catalog.reassign_drains(owner, alive, "")

    def _end_orders(self, session: Session, holds: dict[str, list[tuple[ChunkKey, int]]]) -> None:
        """(under self._lock) Tell every benefactor the session may have stored on that it is over,
        with the holds its commit created there."""
        for bf in session.benefactors | set(holds):
            self.orders.push(bf, session.namespace, session=session.id, hold=holds.get(bf, []), end_session=True)

    # -- clients -----------------------------------------------------------------------------
    @rpc
    def OpenSession(self, request: manager_pb2.OpenSessionRequest, context: grpc.ServicerContext
                    ) -> manager_pb2.SessionReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path) if request.path else ""
        placements: list[Placement] = []
        policy = self.catalog.policy(namespace)
        with self._lock:
            if policy.quota_sessions and len(self.sessions.of(namespace)) >= policy.quota_sessions:
                self.metrics.quota_refused.labels(namespace, "sessions").inc()
                raise QuotaExceeded(f"namespace {namespace} has {policy.quota_sessions} write sessions open, its "
                                    "quota (quota_sessions): close files before opening more")
            session = self.sessions.open(namespace, path, self.clock())
            if request.HasField("striping"):  # the first map with the session: a call less per file
                try:
                    placements, _ = self._place(session, request.striping)
                except QuotaExceeded:
                    self.sessions.end(session.id)
                    raise
        grant = self.access.grant(namespace, True, self._caller, self._session_cap(namespace))
        return manager_pb2.SessionReply(session=session.id, lease_seconds=self.sessions.lease, grant=grant,
                                        map=_striping_map(placements) if placements else None)

    @rpc
    def RenewSessions(self, request: manager_pb2.RenewSessionsRequest, context: grpc.ServicerContext
                      ) -> manager_pb2.RenewSessionsReply:
        with self._lock:
            now = self.clock()
            alive = [self.sessions.renew(sid, now) for sid in request.sessions]
            spaces = [s.namespace if (s := self.sessions.get(sid)) is not None else "" for sid in request.sessions]
        return manager_pb2.RenewSessionsReply(open=alive, grants=[
            self.access.grant(ns, True, self._caller, self._session_cap(ns)) if ns else "" for ns in spaces])

    @rpc
    def AbortSession(self, request: manager_pb2.SessionRequest, context: grpc.ServicerContext
                     ) -> manager_pb2.AbortSessionReply:
        with self._lock:
            session = self.sessions.end(request.session)
            if session is not None:
                self._end_orders(session, {})
        if session is not None:
            self.metrics.sessions_aborted.inc()
            log.info("write of %s:%s aborted: its chunks are freed", session.namespace, session.path)
        return manager_pb2.AbortSessionReply()

    @rpc
    def ReleaseChunks(self, request: manager_pb2.ReleaseRequest, context: grpc.ServicerContext
                      ) -> manager_pb2.ReleaseReply:
        namespace = check_namespace(request.namespace)
        by_bf: dict[str, list[ChunkKey]] = defaultdict(list)
        for c in request.chunks:
            for loc in c.locations:
                by_bf[loc.benefactor_id].append(_key(c.key))
        with self._lock:
            session = self.sessions.get(request.session)
            if session is not None and session.namespace == namespace:  # else its end freed them already
                for bf, keys in by_bf.items():
                    if bf in session.benefactors:
                        self.orders.push(bf, namespace, session=session.id, release=keys)
        return manager_pb2.ReleaseReply()

    def _session_namespace(self, sid: int) -> str | None:
        with self._lock:
            session = self.sessions.get(sid)
        return session.namespace if session is not None else None

    @property
    def _caller(self) -> Caller:
        return getattr(self._local, "caller", EVERYONE)

    def _session(self, sid: int, namespace: str) -> Session:
        """(under self._lock) An open session of this namespace, or DataLost naming why not."""
        session = self.sessions.get(sid)
        if session is None or session.namespace != namespace or session.committing:
            raise DataLost(f"the write session has ended (not renewed within {self.sessions.lease:.0f}s, "
                           "aborted, or the manager restarted) and its chunks were freed; nothing was committed, "
                           "write the file again")
        return session

    @rpc
    def GetStripingMap(self, request: manager_pb2.StripingRequest, context: grpc.ServicerContext
                       ) -> manager_pb2.StripingMap:
        namespace = check_namespace(request.namespace)
        with self._lock:
            placements, alive = self._place(self._session(request.session, namespace), request)
        if not placements:
            if alive == 0:
                raise Unavailable("no live benefactors are registered with the manager")
            raise DeploymentFull(f"deployment full: none of the {alive} live benefactors has room "
                                 f"for a {request.chunk_size}-byte chunk (excluded: {len(request.exclude)})")
        return _striping_map(placements)

    def _place(self, session: Session, request: manager_pb2.StripingRequest) -> tuple[list[Placement], int]:
        """(under self._lock) A striping map for the session, with room reserved on its benefactors;
        and how many benefactors are alive. QuotaExceeded if the namespace's memory quota has no room
        for the reservation: what its in-memory versions need plus what its open sessions reserved."""
        reserve = request.chunk_size * RESERVED_CHUNKS
        quota = self.catalog.policy(session.namespace).quota_memory
        if quota and (used := self.catalog.memory_bytes(session.namespace)) >= quota:
            self.metrics.quota_refused.labels(session.namespace, "memory").inc()
            raise QuotaExceeded(f"namespace {session.namespace} is at its memory quota: {format_size(used)} of "
                                f"{format_size(quota)} (quota_memory) in memory; older checkpoints leave memory as "
                                "they drain (keep_versions)")
        placements = self.registry.striping_map(request.width or self.settings.stripe_width, set(request.exclude),
                                                request.chunk_size, self.clock(), reserve)
        session.benefactors.update(p.id for p in placements)
        for p in placements:
            session.reserved[p.id] = session.reserved.get(p.id, 0) + reserve
        return placements, self.registry.live_count()

    @rpc
    def Commit(self, request: manager_pb2.CommitRequest, context: grpc.ServicerContext) -> manager_pb2.CommitReply:
        # A few commits are checked at once, the others wait (blocked, not runnable): a storm of
        # CPU-bound commits in hundreds of threads would queue every heartbeat behind them for the
        # GIL. Checked, they are recorded in groups, one transaction and fsync for each group.
        if request.session:
            with self._lock:
                waiting = self.sessions.get(request.session)
                if waiting is not None:
                    waiting.queued = True  # no expiry while it waits for its turn
        try:
            with self._commit_slots:
                checked = self._check_commit(request)
            return self._record_commit(request, *checked)  # with the commits that wait with it
        finally:
            if request.session:
                with self._lock:
                    left = self.sessions.get(request.session)
                    if left is not None:
                        left.queued = False  # refused before it was taken up: it may expire again

    def _check_commit(self, request: manager_pb2.CommitRequest
                      ) -> tuple[str, str, Session | None, list[tuple[ChunkKey, Sequence[str]]], Placed | None]:
        """A commit's name, session and chunks, with every location's receipt checked."""
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        with self._namespace_lock:
            path = self.catalog.canonical(namespace, path)  # a hard link's commit is its file's
            self._check_parents(namespace, path)
            kind = self.catalog.kind(namespace, path)
            if kind not in (None, FILE):
                raise FsError(errno.EISDIR if kind == DIR else errno.EEXIST, f"{path}: is a {kind}, not a file")
        session: Session | None = None
        packed = request.HasField("packed")
        named = set(request.packed.benefactors) if packed else {
            loc.benefactor_id for c in request.chunks for loc in c.locations}
        with self._lock:
            if request.session:
                # Committing: no expiry, no new maps, and still open to heartbeats (its chunks stay)
                # until the orders below say what became of them.
                session = self._session(request.session, namespace)
                session.committing = True
            receipt_keys = self._receipt_keys(named)
        try:
            chunks, placed = self._confirmed(namespace, request, receipt_keys)
            self._check_quota(namespace, [k for k, _ in chunks] if placed is None else placed.keys)
        except MemstageError:
            self.metrics.commits_refused.labels(namespace).inc()
            if session is not None:
                with self._lock:
                    self.sessions.end(session.id)
                    self._end_orders(session, {})
            raise
        return namespace, path, session, chunks, placed

    def _session_cap(self, namespace: str) -> int:
        """What a write session of the namespace may hold uncommitted on each benefactor: the room
        its memory quota has left (0: no quota). Benefactors refuse a Put beyond it, so sessions
        that are renewed and never committed cannot fill the deployment."""
        quota = self.catalog.policy(namespace).quota_memory
        return max(quota - self.catalog.memory_bytes(namespace), 1) if quota else 0

    def _check_quota(self, namespace: str, keys: Sequence[ChunkKey]) -> None:
        """QuotaExceeded if the chunks a commit brings into memory take the namespace past its memory
        quota (a soft limit: commits checked at once may pass it together by what they bring)."""
        quota = self.catalog.policy(namespace).quota_memory
        if not quota:
            return
        used, added = self.catalog.memory_added(namespace, keys)
        if added and used + added > quota:
            self.metrics.quota_refused.labels(namespace, "memory").inc()
            raise QuotaExceeded(f"namespace {namespace} is at its memory quota: this version brings "
                                f"{format_size(added)} more into memory, {format_size(used)} of "
                                f"{format_size(quota)} (quota_memory) is used; nothing was committed")

    def _record_commit(self, request: manager_pb2.CommitRequest, namespace: str, path: str, session: Session | None,
                       chunks: list[tuple[ChunkKey, Sequence[str]]], placed: Placed | None
                       ) -> manager_pb2.CommitReply:
        alive = self._alive_ids()
        not_durable: BaseException | None = None
        try:
            try:
                version, holds = self._group_commit.submit(NewVersion(
                    namespace, path, request.size, chunks, alive,
                    attrs=_attrs(request.attrs) if request.HasField("attrs") else None, placed=placed,
                    base=request.base_version if request.merge else None,
                    checkpoint=request.checkpoint if request.HasField("checkpoint") else None))
            except NotDurable as e:  # recorded: its holds are ordered below, but the writer is told it failed
                (version, holds), not_durable = e.result, e.cause  # type: ignore[misc]
        except Conflict:
            # Another writer committed first: this one merges over that version and commits again
            # in the same session, whose chunks stay its own meanwhile.
            self.metrics.commit_conflicts.labels(namespace).inc()
            if session is not None:
                with self._lock:
                    session.committing = False
                    self.sessions.renew(session.id, self.clock())
            raise
        except BaseException:
            if session is not None:
                with self._lock:
                    self.sessions.end(session.id)
                    self._end_orders(session, {})
            raise
        with self._lock:
            if session is not None:
                self.sessions.end(session.id)
                self._end_orders(session, holds)
            for bf, held in holds.items():
                self.registry.note_used(bf, sum(map(second, map(first, held))))
        self._free(self.catalog.apply_retention(namespace, path))
        if Redundancy.parse(self.catalog.policy(namespace).redundancy).tolerates:
            self.wake.set()  # its copies are ordered now, not at the next housekeeping round
        if not_durable is not None:
            raise not_durable
        self.metrics.committed(namespace, request.size, request.stats)
        log.info("committed %s:%s version %d (%d bytes, %d chunks)", namespace, path, version, request.size,
                 len(chunks))
        return manager_pb2.CommitReply(version=version)

    def _receipt_keys(self, names: Set[str]) -> dict[str, bytes]:
        """(under self._lock) The receipt keys of the current incarnations of the benefactors a
        commit names (the receipts themselves are checked outside the lock)."""
        keys: dict[str, bytes] = {}
        for bf in names:
            rec = self.registry.get(bf)
            keys[bf] = rec.receipt_key if rec is not None else b""
        return keys

    def _confirmed(self, namespace: str, request: manager_pb2.CommitRequest, receipt_keys: dict[str, bytes]
                   ) -> tuple[list[tuple[ChunkKey, Sequence[str]]], Placed | None]:
        """The commit's chunks with the locations their receipts prove (and the same as Placed when
        each is a plain chunk with one copy); a location without a valid receipt from the
        benefactor's incarnation current at the commit refuses the commit."""
        if request.HasField("packed"):
            if request.chunks:
                raise InvalidArgument("commit: chunks are given either packed or not, not both")
            return self._confirmed_packed(namespace, request, receipt_keys)
        chunks: list[tuple[ChunkKey, Sequence[str]]] = []
        verify = receipts.Verifier(request.session, namespace)
        for i, c in enumerate(request.chunks):
            key = _key(c.key)
            locs = []
            for loc in c.locations:
                if not request.session or not verify(receipt_keys[loc.benefactor_id], key, loc.receipt):
                    raise DataLost(f"chunk {i} ({key}) is not confirmed by benefactor {loc.benefactor_id} "
                                   "(no valid receipt: it restarted since it stored the chunk, or never stored it); "
                                   "nothing was committed, write the file again")
                locs.append(loc.benefactor_id)
            chunks.append((key, locs))
        return chunks, None

    def _confirmed_packed(self, namespace: str, request: manager_pb2.CommitRequest, receipt_keys: dict[str, bytes]
                          ) -> tuple[list[tuple[ChunkKey, Sequence[str]]], Placed | None]:
        """_confirmed, for chunks given packed (one loop over byte strings, no message per chunk)."""
        refs = commitpack.unpack(request.packed)
        lengths = list(map(second, refs.keys))
        plain = bool(lengths) and min(lengths) > 0 and max(lengths) <= MAX_CHUNK_SIZE and \
            HOLE_HASH not in map(first, refs.keys)
        if plain:
            keys = list(map(key_of_pair, refs.keys))  # no call in Python per chunk: all are plain chunk keys
        else:
            keys = [ChunkKey(h, n) if 0 < n <= MAX_CHUNK_SIZE and h != HOLE_HASH else _key_of(h, n)
                    for h, n in refs.keys]
        names = refs.benefactors
        chunks: list[tuple[ChunkKey, Sequence[str]]]
        placed = None
        if len(names) == len(keys) and refs.counts.count(1) == len(keys):  # one copy each: the usual case
            located = keys
            chunks = list(zip(keys, zip(names), strict=True))
            if plain:
                placed = Placed(keys, names, request.packed.keys)  # the keys as a version's map packs them
        else:
            located, chunks, at = [], [], 0
            for key, count in zip(keys, refs.counts, strict=True):
                located += [key] * count
                chunks.append((key, names[at:at + count]))
                at += count
        if not names:
            return chunks, placed
        # The first location without a valid receipt: none at all without a session, else the first
        # at a benefactor not registered or whose receipt differs (the order the per-chunk check has).
        if not request.session:
            unknown: int | None = 0
        elif all(receipt_keys.values()):  # every benefactor named is registered
            unknown = None
        else:
            unknown = next((j for j, bf in enumerate(names) if not receipt_keys[bf]), None)
        if unknown is None and located is keys:  # one copy each: a helper process may check them all
            valid = self.receipt_checkers.check(request.session, namespace, request.packed.keys,
                                                request.packed.locations,
                                                list(map(receipt_keys.__getitem__, request.packed.benefactors)),
                                                refs.receipts)
            if valid:
                return chunks, placed
            # Not valid (or no helper): checked here, which also names the first receipt that fails.
        if unknown != 0:
            want = receipts.expected(request.session, namespace, located,
                                     list(map({bf: k or _NO_KEY for bf, k in receipt_keys.items()}.__getitem__, names)))
            if unknown is None and hmac.compare_digest(want, refs.receipts):
                return chunks, placed
            given, earliest = refs.receipts, unknown
            unknown = next(j for j in range(len(names))
                           if j == earliest or want[16 * j:16 * j + 16] != given[16 * j:16 * j + 16])
        i, at = 0, len(chunks[0][1])
        while at <= unknown:  # the chunk whose locations include the unconfirmed one
            i += 1
            at += len(chunks[i][1])
        raise DataLost(f"chunk {i} ({chunks[i][0]}) is not confirmed by benefactor {names[unknown]} "
                       "(no valid receipt: it restarted since it stored the chunk, or never stored it); "
                       "nothing was committed, write the file again")

    def _registered_as(self, bf: str, incarnation: int, what: str) -> None:
        """Refuse a benefactor call from a process other than the one registered under the id (a
        second process given the same --id must not take or report the first one's drains)."""
        with self._lock:
            rec = self.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                raise NotFound(f"{what}: benefactor {bf} is not registered as this process (incarnation "
                               f"{incarnation}); it registers first")

    def note_drains(self) -> None:
        """Benefactors just given drain tasks are told so in their next heartbeat reply."""
        queued = self.catalog.take_drain_queued()
        if queued:
            with self._lock:
                self._drain_waiting |= queued
                if self._following:
                    self._drain_changed |= queued
                    self._drain_new |= queued

    def _is_alive(self, bf: str) -> bool:
        with self._lock:
            return self.registry.is_alive(bf, self.clock())

    def _alive_ids(self) -> frozenset[str]:
        with self._lock:
            return self.registry.live_ids()

    @rpc
    def FindChunks(self, request: manager_pb2.NamespacedChunks, context: grpc.ServicerContext
                   ) -> manager_pb2.FindChunksReply:
        namespace = check_namespace(request.namespace)
        keys = [_key(k) for k in request.keys]
        return manager_pb2.FindChunksReply(present=self.catalog.find(namespace, keys, self._alive_ids()))

    @rpc
    def Lookup(self, request: manager_pb2.LookupRequest, context: grpc.ServicerContext) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        rec = self.catalog.version(namespace, self.catalog.canonical(namespace, normalize_file_path(request.path)),
                                   request.version)
        return self._version_map(rec, request.stripes)

    @rpc
    def LocateChunks(self, request: manager_pb2.NamespacedChunks, context: grpc.ServicerContext
                     ) -> manager_pb2.VersionMap:
        namespace = check_namespace(request.namespace)
        keys = [_key(k) for k in request.keys]
        return self._chunk_map(namespace, "", 0, sum(k.length for k in keys), keys, 0.0)

    def _version_map(self, rec: VersionRecord, stripes: bool = False) -> manager_pb2.VersionMap:
        return self._chunk_map(rec.namespace, rec.path, rec.version, rec.size, rec.keys, rec.committed_at, stripes)

    def _chunk_map(self, namespace: str, path: str, version: int, size: int, keys: Sequence[ChunkKey],
                   committed_at: float, stripes: bool = False) -> manager_pb2.VersionMap:
        with self._lock:
            alive = self.registry.live_ids()
            sample = self.registry.live_list()
            readers_ids = random.sample(sample, min(PFS_READERS, len(sample)))
        addresses = _Addresses(self)
        chunks = []
        for key, (holders, drained) in zip(keys, self.catalog.chunk_refs(namespace, keys), strict=True):
            # Live benefactors first; the others stay listed (a restarted manager has not heard from them yet).
            locs = sorted(holders, key=lambda bf: (bf not in alive, bf))
            chunks.append(manager_pb2.ChunkRef(
                key=key.to_pb(), drained=drained,
                locations=[common_pb2.Location(benefactor_id=bf, address=addresses.get(bf, "")) for bf in locs]))
        if stripes:
            for ref, key, stripe in zip(chunks, keys, self.catalog.stripes_of(namespace, keys), strict=True):
                if stripe is not None:
                    ref.stripe.CopyFrom(self._stripe_spec(stripe, stripe.members.index(key), addresses, alive))
        readers = [common_pb2.Location(benefactor_id=bf, address=addresses.get(bf, "")) for bf in readers_ids]
        return manager_pb2.VersionMap(path=path, version=version, size=size, chunks=chunks,
                                      committed_at=committed_at, pfs_readers=readers,
                                      grant=self.access.grant(namespace, False, self._caller))

    # -- namespace -----------------------------------------------------------------------------
    def _file_info(self, namespace: str, path: str, protection: bool = False) -> manager_pb2.FileInfo:
        """What stat shows for `path` (a hard link shows what it links: versions, metadata, link count)."""
        kind = self.catalog.kind(namespace, path)
        target = path
        if kind == LINK:
            target = self.catalog.canonical(namespace, path)
            kind = self.catalog.kind(namespace, target)
        if kind is None or kind == LINK:
            raise NotFound(f"{path}: no such file or directory in namespace {namespace!r}")
        if kind == DIR:
            node = self.catalog.node(namespace, path) or Node.default(DIR, self._started_ns)
            subdirs = self.catalog.subdir_count(namespace, path)
            info = self._with_node(manager_pb2.FileInfo(path=path, is_dir=True, nlink=2 + subdirs), node)
            return info
        nlink = 1 + len(self.catalog.aliases(namespace, target))
        if kind == FILE:
            latest = self.catalog.version(namespace, target)  # stat is frequent: the latest only
            node = self.catalog.node(namespace, target) or Node.default(FILE, int(latest.committed_at * 1e9))
            protected = False
            if protection:  # not on every stat (a FUSE getattr): it looks at every chunk
                redundancy = Redundancy.parse(self.catalog.policy(namespace).redundancy)
                protected = not latest.lost and (not redundancy.tolerates or self.catalog.version_protected(
                    namespace, target, latest.version, redundancy, self._alive_ids()))
            return self._with_node(manager_pb2.FileInfo(
                path=path, size=latest.size, version=latest.version, committed_at=latest.committed_at,
                stored=sum(k.length for k in latest.keys if not k.is_hole), protected=protected,
                version_count=self.catalog.version_count(namespace, target), nlink=nlink), node)
        row = self.catalog.node(namespace, target)
        assert row is not None
        if kind == SYMLINK:
            return self._with_node(manager_pb2.FileInfo(path=path, size=len(row.target.encode()), nlink=nlink,
                                                        target=row.target), row)
        return self._with_node(manager_pb2.FileInfo(path=path, nlink=nlink, rdev=int(row.target or 0)), row)

    @staticmethod
    def _with_node(info: manager_pb2.FileInfo, node: Node) -> manager_pb2.FileInfo:
        # Names without a row of their own (directories that exist by their files) get a number
        # from their path, in a range rows never reach.
        if info.path == "/":
            info.ino = 1
        else:
            info.ino = node.ino or (1 << 62) | (zlib.crc32(info.path.encode()) << 20)
        info.mode, info.uid, info.gid = node.st_mode, node.uid, node.gid
        info.atime_ns, info.mtime_ns, info.ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
        return info

    def _children(self, namespace: str, directory: str) -> dict[str, manager_pb2.FileInfo]:
        """The entries right below a directory, by full path (files with their latest version)."""
        base = directory.rstrip("/") + "/"
        entries: dict[str, manager_pb2.FileInfo] = {}
        for d in self.catalog.dirs_under(namespace, directory):
            child = base + d[len(base):].split("/", 1)[0]
            entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
        for f in self.catalog.files_under(namespace, directory):
            name, sep, _ = f.path[len(base):].partition("/")
            child = base + name
            if sep:
                entries.setdefault(child, manager_pb2.FileInfo(path=child, is_dir=True))
            else:
                entries[child] = manager_pb2.FileInfo(path=child, size=f.size, version=f.latest,
                                                      committed_at=f.committed_at, version_count=f.version_count)
        rows: dict[str, Node] = {}
        for p, node in self.catalog.nodes_under(namespace, directory):
            name, sep, _ = p[len(base):].partition("/")
            if not sep:
                rows[p] = node
                if node.kind in ROW_KINDS:
                    entries[p] = manager_pb2.FileInfo(path=p, target=node.target if node.kind == SYMLINK else "")
        for p, info in entries.items():
            row = rows.get(p)
            if row is not None and row.kind == LINK:
                row = self.catalog.node(namespace, row.target)
            self._with_node(info, row or Node.default(DIR if info.is_dir else FILE, 0))
        return entries

    @rpc
    def Stat(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        return self._file_info(check_namespace(request.namespace), normalize_path(request.path), request.protection)

    @rpc
    def List(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.ListReply:
        namespace = check_namespace(request.namespace)
        directory = normalize_path(request.path)
        entries = self._children(namespace, directory)
        if not entries and self.catalog.kind(namespace, directory) != DIR:
            raise NotFound(f"{directory}: no such directory in namespace {namespace!r}")
        return manager_pb2.ListReply(entries=[entries[k] for k in sorted(entries)])

    @rpc
    def Versions(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.VersionsReply:
        namespace = check_namespace(request.namespace)
        path = self.catalog.canonical(namespace, normalize_file_path(request.path))
        versions = self.catalog.versions(namespace, path)
        if not versions:
            raise NotFound(f"{path}: no such file in namespace {namespace!r}")
        alive = self._alive_ids()
        infos = []
        for v in versions:
            # What the benefactors hold now, not what the catalog last recorded: after a restart or
            # a death, a version whose holders are gone is neither in memory nor readable until its
            # PFS copy is found.
            held, readable = self.catalog.availability(namespace, v.keys, alive) if not v.lost else (False, False)
            infos.append(manager_pb2.VersionInfo(
                version=v.version, size=v.size, committed_at=v.committed_at, chunk_count=len(v.keys),
                persist=v.persist, persisted=v.persisted, in_memory=v.in_memory and held, lost=v.lost,
                lost_reason=v.lost_reason, drain_error=v.drain_error, unavailable=not v.lost and not readable))
        return manager_pb2.VersionsReply(versions=infos)

    @rpc
    def Checkpoints(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext
                    ) -> manager_pb2.CheckpointsReply:
        namespace = check_namespace(request.namespace)
        return manager_pb2.CheckpointsReply(checkpoints=[
            manager_pb2.CheckpointInfo(**c)  # type: ignore[arg-type]
            for c in self.catalog.checkpoints(namespace, self._alive_ids())])

    @rpc
    def Prefetch(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.PrefetchReply:
        namespace = check_namespace(request.namespace)
        path = normalize_path(request.path)
        if path != "/":
            path = self.catalog.canonical(namespace, path)
        kind = self.catalog.kind(namespace, path)
        if kind not in (FILE, DIR):
            raise NotFound(f"{path}: no such file or directory in namespace {namespace!r}")
        with self._lock:
            now, alive, free, addresses, _ = self._live_view()
        wanted = self.catalog.want_in_memory(namespace, path, alive, request.latest)
        with self._lock:
            self.loads.expire(now)
            if request.start:  # the first call of a prefetch: what failed before is tried again
                self.loads.retry([ik for ik, _ in wanted.load])
            plan = self.loads.plan(wanted.load, free, now)
            for ik, target, drained in plan:
                gen = self.catalog.new_gen()
                self.orders.push(target, namespace, load=[(ik[1], gen, drained)])
                self.registry.note_used(target, ik[1].length)
                self.loads.started(ik, target, gen, now)
            waiting = [ik for ik, _ in wanted.load]
            failed = [ik for ik in waiting if ik in self.loads.failed]
            pending = sum(1 for ik in waiting if ik in self.loads.pending)
            error = self.loads.failed[failed[-1]] if failed else ""
        if plan:
            log.info("prefetch %s:%s: %d chunks ordered loaded from the PFS", namespace, path, len(plan))
        return manager_pb2.PrefetchReply(files=wanted.files, bytes=wanted.bytes, loaded_bytes=wanted.loaded,
                                         failed_chunks=len(failed), error=error, pending_chunks=pending)

    @rpc
    def Delete(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext
               ) -> manager_pb2.DeleteFileReply:
        namespace = check_namespace(request.namespace)
        path = normalize_file_path(request.path)
        with self._namespace_lock:
            count = self._unlink(namespace, path)
        return manager_pb2.DeleteFileReply(versions_deleted=count)

    def _unlink(self, namespace: str, path: str) -> int:
        """Remove one name. The last name of a file deletes its versions; another name keeps them."""
        kind = self.catalog.kind(namespace, path)
        now = time.time_ns()
        if kind is None:
            raise NotFound(f"{path}: no such file in namespace {namespace!r}")
        if kind == DIR:
            raise FsError(errno.EISDIR, f"{path}: is a directory")
        count = 0
        if kind == LINK:
            with self.catalog.in_transaction():
                canonical = self.catalog.canonical(namespace, path)
                self.catalog.drop_node(namespace, path)
                self._touch_file(namespace, canonical, now)
        elif heirs := self.catalog.aliases(namespace, path):
            # Other names remain: the first of them takes the file (versions, metadata) over.
            self.catalog.move_tree(namespace, path, heirs[0], self._alive_ids())
            self._touch_file(namespace, heirs[0], now)
        elif kind in ROW_KINDS:
            with self.catalog.in_transaction():
                self.catalog.drop_node(namespace, path)
        else:
            count, freed = self.catalog.delete_file(namespace, path)
            self._free(freed)
            log.info("deleted %s:%s (%d versions, %d chunks freed)", namespace, path, count, len(freed))
        with self.catalog.in_transaction():
            self.catalog.touch_dirs(namespace, [path], now)
        return count

    def _touch_file(self, namespace: str, path: str, now: int) -> None:
        """A file's link count changed: its ctime is now."""
        node = self.catalog.node(namespace, path)
        if node is not None and node.kind != LINK:
            self.catalog.put_node(namespace, path, replace(node, ctime_ns=now))

    def _check_parents(self, namespace: str, path: str) -> None:
        for parent in parent_dirs(path)[1:]:
            if self.catalog.kind(namespace, parent) not in (None, DIR):
                raise FsError(errno.ENOTDIR, f"{parent}: not a directory")

    @rpc
    def Rename(self, request: manager_pb2.RenameRequest, context: grpc.ServicerContext) -> manager_pb2.RenameReply:
        namespace = check_namespace(request.namespace)
        src, dst = normalize_file_path(request.path), normalize_file_path(request.destination)
        with self._namespace_lock:
            moved = self._rename(namespace, src, dst)
        log.info("renamed %s:%s to %s (%d files)", namespace, src, dst, moved)
        return manager_pb2.RenameReply(files_moved=moved)

    def _rename(self, namespace: str, src: str, dst: str) -> int:
        """POSIX rename: the destination, if any, is replaced atomically when it is of a compatible
        kind (an empty directory for a directory, a non-directory for a file)."""
        ksrc = self.catalog.kind(namespace, src)
        if ksrc is None:
            raise NotFound(f"{src}: no such file or directory in namespace {namespace!r}")
        if src == dst:
            return 0
        self._check_parents(namespace, dst)
        kdst = self.catalog.kind(namespace, dst)
        now = time.time_ns()
        if ksrc == DIR:
            if dst.startswith(src + "/"):
                raise FsError(errno.EINVAL, f"cannot move {src} into itself ({dst})")
            if kdst not in (None, DIR):
                raise FsError(errno.ENOTDIR, f"{dst}: not a directory")
            if kdst == DIR:
                if not self.catalog.dir_empty(namespace, dst):
                    raise FsError(errno.ENOTEMPTY, f"{dst}: directory not empty")
                self.catalog.rmdir_if_explicit(namespace, dst)
            moved = self.catalog.move_tree(namespace, src, dst, self._alive_ids())
        else:
            if kdst == DIR:
                raise FsError(errno.EISDIR, f"{dst}: is a directory")
            if kdst is not None and self.catalog.canonical(namespace, src) == self.catalog.canonical(namespace, dst):
                return 0  # two names of the same file: nothing to do
            if kdst in ROW_KINDS or (kdst == FILE and (ksrc != FILE or self.catalog.aliases(namespace, dst))):
                self._unlink(namespace, dst)  # the name goes to src; a file with other names keeps them
                kdst = None
            if ksrc != FILE or kdst is None:
                moved = self.catalog.move_tree(namespace, src, dst, self._alive_ids())
            else:
                # The latest version of src becomes the next version of dst, whose history stays
                # (a checkpoint written aside and renamed over its file, as tools do).
                latest = self.catalog.version(namespace, src)
                node = self.catalog.node(namespace, src)
                self.catalog.commit(namespace, dst, latest.size, [(k, []) for k in latest.keys], self._alive_ids())
                self._free(self.catalog.apply_retention(namespace, dst))
                with self.catalog.in_transaction():
                    self.catalog.move_nodes(namespace, src, dst)  # its metadata and other names follow
                    if node is not None:
                        self.catalog.put_node(namespace, dst, node)
                _, freed = self.catalog.delete_file(namespace, src)
                self._free(freed)
                moved = 1
            with self.catalog.in_transaction():
                self._touch_file(namespace, dst, now)
        with self.catalog.in_transaction():
            self.catalog.touch_dirs(namespace, [src, dst], now)
        return moved

    @rpc
    def Mkdir(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.MkdirReply:
        path = normalize_file_path(request.path)
        namespace = check_namespace(request.namespace)
        with self._namespace_lock:
            self._check_parents(namespace, path)
            if self.catalog.kind(namespace, path) not in (None, DIR):
                raise FsError(errno.EEXIST, f"{path}: exists and is not a directory")
            now = time.time_ns()
            for parent in parent_dirs(path)[1:] + [path]:
                self.catalog.mkdir(namespace, parent)
            with self.catalog.in_transaction():
                if request.HasField("attrs"):
                    node = self.catalog.node(namespace, path) or Node.default(DIR, now)
                    self.catalog.put_node(namespace, path, _attrs(request.attrs).apply(node, now))
                self.catalog.touch_dirs(namespace, [path], now)
        return manager_pb2.MkdirReply()

    @rpc
    def Rmdir(self, request: manager_pb2.PathRequest, context: grpc.ServicerContext) -> manager_pb2.MkdirReply:
        namespace, path = check_namespace(request.namespace), normalize_file_path(request.path)
        with self._namespace_lock:
            kind = self.catalog.kind(namespace, path)
            if kind not in (None, DIR):
                raise FsError(errno.ENOTDIR, f"{path}: not a directory")
            self.catalog.rmdir(namespace, path)
            with self.catalog.in_transaction():
                self.catalog.touch_dirs(namespace, [path], time.time_ns())
        return manager_pb2.MkdirReply()

    @rpc
    def SetAttr(self, request: manager_pb2.SetAttrRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        namespace, path = check_namespace(request.namespace), normalize_path(request.path)
        with self._namespace_lock:
            kind = self.catalog.kind(namespace, path)
            if kind is None:
                raise NotFound(f"{path}: no such file or directory in namespace {namespace!r}")
            target = self.catalog.canonical(namespace, path)
            now = time.time_ns()
            with self.catalog.in_transaction():
                node = self.catalog.node(namespace, target)
                if node is None:
                    since = now if kind == DIR else int(self.catalog.version(namespace, target).committed_at * 1e9)
                    node = Node.default(FILE if kind == LINK else kind, since)
                self.catalog.put_node(namespace, target, _attrs(request.attrs).apply(node, now))
            if kind in (FILE, LINK) and not request.attrs.access:
                self._manifest_changed(namespace, target)
        return self._file_info(namespace, path)

    def _manifest_changed(self, namespace: str, path: str) -> None:
        """A file's metadata or names changed: the manifest of its latest version, if that is on the
        PFS, is written again."""
        if self.settings.pfs:
            version = self.catalog.version(namespace, path).version
            with self._lock:
                self._manifests.append((namespace, path, version))

    @rpc
    def Symlink(self, request: manager_pb2.SymlinkRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        namespace, path = check_namespace(request.namespace), normalize_file_path(request.path)
        if not request.target or len(request.target.encode()) > MAX_PATH_BYTES:
            raise FsError(errno.ENAMETOOLONG if request.target else errno.ENOENT,
                          f"{path}: a symbolic link's target is 1..{MAX_PATH_BYTES} bytes")
        return self._create_row(namespace, path, SYMLINK, 0o777, request.target, request.attrs)

    def _create_row(self, namespace: str, path: str, kind: str, mode: int, target: str,
                    attrs: manager_pb2.FileAttrs) -> manager_pb2.FileInfo:
        """A new name that exists by its metadata row alone (a symbolic link, a FIFO, a device)."""
        with self._namespace_lock:
            self._check_parents(namespace, path)
            if self.catalog.kind(namespace, path) is not None:
                raise FsError(errno.EEXIST, f"{path}: exists")
            now = time.time_ns()
            with self.catalog.in_transaction():
                node = _attrs(attrs).apply(Node.default(kind, now), now)
                self.catalog.put_node(namespace, path, replace(node, mode=mode, target=target))
                self.catalog.touch_dirs(namespace, [path], now)
        return self._file_info(namespace, path)

    @rpc
    def MakeNode(self, request: manager_pb2.NodeRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        namespace, path = check_namespace(request.namespace), normalize_file_path(request.path)
        kind = SPECIAL.get(stat.S_IFMT(request.mode))
        if kind is None:
            raise FsError(errno.EINVAL, f"{path}: mode {request.mode:o} is not a FIFO, socket or device node")
        return self._create_row(namespace, path, kind, request.mode & 0o7777, str(request.rdev), request.attrs)

    @rpc
    def Link(self, request: manager_pb2.RenameRequest, context: grpc.ServicerContext) -> manager_pb2.FileInfo:
        namespace = check_namespace(request.namespace)
        src, dst = normalize_file_path(request.path), normalize_file_path(request.destination)
        with self._namespace_lock:
            kind = self.catalog.kind(namespace, src)
            if kind is None:
                raise NotFound(f"{src}: no such file in namespace {namespace!r}")
            if kind == DIR:
                raise FsError(errno.EPERM, f"{src}: hard links to directories are not allowed")
            self._check_parents(namespace, dst)
            if self.catalog.kind(namespace, dst) is not None:
                raise FsError(errno.EEXIST, f"{dst}: exists")
            canonical = self.catalog.canonical(namespace, src)
            now = time.time_ns()
            with self.catalog.in_transaction():
                self.catalog.put_node(namespace, dst, replace(Node.default(LINK, now), target=canonical))
                self._touch_file(namespace, canonical, now)
                self.catalog.touch_dirs(namespace, [dst], now)
            if self.catalog.has_versions(namespace, canonical):
                self._manifest_changed(namespace, canonical)
        return self._file_info(namespace, dst)

    # -- operators ---------------------------------------------------------------------------
    @rpc
    def Status(self, request: manager_pb2.StatusRequest, context: grpc.ServicerContext) -> manager_pb2.StatusReply:
        reply = self._status_reply()
        caller = self._caller
        if not caller.admin:
            # A namespace token sees its own namespaces, and of the deployment only the totals it
            # needs (room left): no benefactor addresses, no paths, no deployment id.
            for name in ("namespaces", "lost", "drain_failed"):
                kept = [x for x in getattr(reply, name) if caller.sees(x.namespace)]
                del getattr(reply, name)[:]
                getattr(reply, name).extend(kept)
            del reply.benefactors[:]
            reply.state_dir = reply.deployment = ""
        return reply

    # -- access tokens ---------------------------------------------------------------------------
    @rpc
    def CreateToken(self, request: manager_pb2.TokenRequest, context: grpc.ServicerContext
                    ) -> manager_pb2.TokenReply:
        grants = {}
        for g in request.grants:
            grants[g.namespace if g.namespace == "*" else check_namespace(g.namespace)] = g.mode
        if not grants:
            raise InvalidArgument("a token needs at least one grant (a namespace, or * for an admin token)")
        try:
            grants = auth.check_grants(grants)
        except SettingError as e:
            raise InvalidArgument(str(e)) from None
        token = auth.Token.new()
        self.catalog.add_token(token.id, token.digest(), grants, request.note)
        log.info("token %s created: %s", token.id, auth.describe(grants))
        return manager_pb2.TokenReply(token=str(token), id=token.id)

    @rpc
    def RevokeToken(self, request: manager_pb2.TokenRequest, context: grpc.ServicerContext
                    ) -> manager_pb2.TokenReply:
        if not self.catalog.revoke_token(request.id):
            raise NotFound(f"token {request.id}: no such token")
        # The grants it was given are refused by every benefactor as soon as this order reaches it
        # (pushed with a wake); a benefactor registering later is told at registration.
        with self._lock:
            for record in self.registry.records():
                self.orders.push(record.id, "", revoked=[request.id])
        log.info("token %s revoked", request.id)
        return manager_pb2.TokenReply(id=request.id)

    @rpc
    def ListTokens(self, request: manager_pb2.TokenRequest, context: grpc.ServicerContext) -> manager_pb2.TokenList:
        return manager_pb2.TokenList(tokens=[
            manager_pb2.TokenInfo(id=i, grants=[manager_pb2.TokenGrant(namespace=ns, mode=m) for ns, m in g.items()],
                                  created_at=at, revoked=revoked, note=note)
            for i, g, at, revoked, note in self.catalog.tokens()])

    def _status_reply(self) -> manager_pb2.StatusReply:
        """What `memstage status` prints and /metrics exports, read from live state: what the manager
        itself knows as of now (chunks committed there, backlog, bytes drained since it started),
        the benefactor's last heartbeat for the rest (capacity, uncommitted data, PFS errors)."""
        backlog = self.catalog.backlog()
        held = self.catalog.held_stats()
        wall = time.time()
        with self._lock:
            now = self.clock()
            live = self.registry.live_ids()  # as commits and lookups see it (a death counts once swept)
            rows = []
            for r in sorted(self.registry.records(), key=lambda r: r.id):
                b = backlog.get(r.id)
                chunks, nbytes = held.get(r.id, (0, 0))
                rows.append(manager_pb2.BenefactorStatus(
                    id=r.id, address=r.address, alive=r.id in live,
                    stats=manager_pb2.BenefactorStats(
                        memory_capacity=r.stats.memory_capacity, memory_used=max(r.stats.memory_used, nbytes),
                        drain_backlog=b.bytes if b else 0, chunk_count=chunks,
                        drain_error=r.stats.drain_error, drained_bytes=self._drained.get(r.id, 0)),
                    last_heartbeat_age_seconds=now - r.last_seen,
                    drain_backlog_bytes=b.bytes if b else 0,
                    oldest_undrained_age_seconds=wall - b.oldest_queued_at if b and b.oldest_queued_at else 0.0))
        alive_ids = {r.id for r in rows if r.alive}
        namespaces = []
        for n in self.catalog.namespaces():
            redundancy = self.catalog.policy(n.namespace).redundancy
            protected, degraded, lost_versions = self.catalog.protection(
                n.namespace, Redundancy.parse(redundancy), alive_ids)
            namespaces.append(manager_pb2.NamespaceStatus(
                namespace=n.namespace, files=n.files, versions=n.versions, bytes_committed=n.bytes_committed,
                bytes_stored=n.bytes_stored, bytes_on_pfs=n.bytes_on_pfs, redundancy=redundancy,
                quota_memory=self.catalog.policy(n.namespace).quota_memory,
                memory_used=self.catalog.memory_bytes(n.namespace),
                versions_protected=protected,
                versions_degraded=degraded, versions_lost=lost_versions))
        lost = [manager_pb2.VersionRef(namespace=ns, path=p, version=v, reason=r)
                for ns, p, v, r in self.catalog.lost_versions()]
        undrainable = [manager_pb2.VersionRef(namespace=ns, path=p, version=v, reason=r)
                       for ns, p, v, r in self.catalog.undrainable_versions()]
        with self._lock:
            w = self.stripe_work
            repair = manager_pb2.RepairStatus(
                chunks_unprotected=self.unprotected + w.unprotected, stripes=self.catalog.stripe_count(),
                members_missing=w.missing, in_flight=self.replicator.in_flight + w.in_flight,
                copies_made=self.replicator.copies_made, members_encoded=w.encoded, members_rebuilt=w.rebuilt,
                bytes_made=w.bytes_made + self.copied_bytes, stripe_cpu_seconds=w.cpu_seconds)
        alive_rows = [r for r in rows if r.alive]
        return manager_pb2.StatusReply(benefactors=rows, namespaces=namespaces, lost=lost, repair=repair,
                                       insecure=self.access.insecure, benefactors_alive=len(alive_rows),
                                       memory_capacity=sum(r.stats.memory_capacity for r in alive_rows),
                                       memory_used=sum(r.stats.memory_used for r in alive_rows),
                                       heartbeat_interval_seconds=self.registry.interval(),
                                       state_dir=self.settings.state, deployment=self.catalog.deployment_id,
                                       drain_failed=undrainable)

    def _free(self, freed: Freed) -> None:
        """Order chunks no in-memory version needs freed on the benefactors holding them."""
        if not freed:
            return
        by_bf: dict[str, dict[str, list[tuple[ChunkKey, int]]]] = defaultdict(lambda: defaultdict(list))
        for (ns, key), holders in freed.items():
            for bf, gen in holders.items():
                by_bf[bf][ns].append((key, gen))
        with self._lock:
            for bf, groups in by_bf.items():
                for ns, items in groups.items():
                    self.orders.push(bf, ns, free=items)
                    # Counted as free at once: the benefactor frees it within moments, and one that is
                    # still full simply refuses (the writer re-plans).
                    self.registry.note_used(bf, -sum(k.length for k, _ in items))

    # -- draining and policy -----------------------------------------------------------------
    @rpc
    def DrainWork(self, request: manager_pb2.DrainWorkRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.DrainWorkReply:
        self._registered_as(request.benefactor_id, request.incarnation, "drain work")
        limit = max(1, min(request.limit or 16, 256))
        with self._lock:
            self._drain_waiting.discard(request.benefactor_id)  # before looking: a commit after sets it again
            if self._following:
                self._drain_changed.add(request.benefactor_id)
        tasks = self.catalog.drain_work(request.benefactor_id, limit)
        if len(tasks) == limit:
            with self._lock:
                self._drain_waiting.add(request.benefactor_id)  # more than one batch
                if self._following:
                    self._drain_changed.add(request.benefactor_id)
        return manager_pb2.DrainWorkReply(tasks=[
            manager_pb2.DrainTask(id=t.id, namespace=t.namespace, path=t.path, version=t.version, index=t.index,
                                  count=t.count, offset=t.offset, key=t.key.to_pb(), link_from=t.link_from,
                                  deployment=self.catalog.deployment_id, committed_ms=t.committed_ms)
            for t in tasks])

    @rpc
    def DrainDone(self, request: manager_pb2.DrainDoneRequest, context: grpc.ServicerContext
                  ) -> manager_pb2.DrainDoneReply:
        self._registered_as(request.benefactor_id, request.incarnation, "drain report")
        outcome = self.catalog.drain_done(
            request.benefactor_id, [(r.task_id, r.drained, r.missing, r.error, r.written) for r in request.results],
            self._alive_ids())
        with self._lock:
            self._drained[request.benefactor_id] = self._drained.get(request.benefactor_id, 0) + outcome.drained_bytes
        persisted = outcome.persisted
        for ns, path, version, reason in outcome.lost:
            log.error("%s:%s version %d is lost: %s", ns, path, version, reason)
        for ns, path, version, reason in outcome.failed:
            self.metrics.drain_failures.inc()
            log.error("%s:%s version %d cannot be drained (it stays in memory): %s", ns, path, version, reason)
        for namespace, path in persisted:
            log.info("%s:%s: a version is now persisted on the PFS", namespace, path)
            self._free(self.catalog.apply_retention(namespace, path))
        for namespace, on_pfs in outcome.on_pfs.items():
            self._free(self.catalog.apply_pfs_keep(namespace, on_pfs))
        if self.settings.pfs and outcome.newly:
            with self._lock:
                self._manifests.extend(outcome.newly)
        return manager_pb2.DrainDoneReply()

    def write_manifests(self) -> int:
        """Write the manifests of versions persisted since the last call beside their chunk files
        (housekeeping calls this; the manager needs its pfs setting). Returns how many."""
        with self._lock:
            todo, self._manifests = self._manifests, []
        written = 0
        for ns, path, version in todo:
            found = self.catalog.manifest(ns, path, version)
            if found is None:
                continue  # deleted meanwhile
            directory, deployment, manifest = found
            try:
                target = Path(self.settings.pfs).resolve() / directory
                if not target.resolve().is_relative_to(Path(self.settings.pfs).resolve()):
                    continue
                write_manifest(target, version, deployment, manifest)
                written += 1
            except OSError as e:  # the names alone still rebuild the version
                log.warning("%s:%s version %d: no manifest on the PFS (%s)", ns, path, version, e)
        return written

    def clear_pfs(self) -> Removed:
        """Remove the chunk files of versions let go (deleted, beyond pfs_keep) from the PFS, once the
        catalog that lets them go is durable (housekeeping calls this). Without the manager's pfs
        setting they stay, and `memstage gc` on a manager that has it removes them later."""
        copies, keep = self.catalog.take_pfs_trash()
        if not copies:
            return Removed(0, 0)
        if not self.settings.pfs:
            if not self._pfs_warned:
                self._pfs_warned = True
                log.warning("drained files of deleted versions stay on the PFS: the manager has no pfs setting "
                            "(set it to the benefactors' PFS directory, then run memstage gc)")
            return Removed(0, 0)
        self.catalog.sync()
        try:
            removed = remove_copies(self.settings.pfs, copies, keep)
        except OSError as e:
            log.warning("removing drained files of %d versions from the PFS failed (memstage gc removes them "
                        "later): %s", len(copies), e)
            return Removed(0, 0)
        self.metrics.pfs_removed.inc(removed.bytes)
        log.info("removed %d chunk files of %d versions from the PFS (%s freed)", removed.files, len(copies),
                 format_size(removed.bytes))
        return removed

    @rpc
    def Policy(self, request: manager_pb2.PolicyRequest, context: grpc.ServicerContext) -> manager_pb2.PolicyReply:
        namespace = check_namespace(request.namespace)
        current = self.catalog.policy(namespace)
        given = {f: getattr(request, f) for f in POLICY_FIELDS if request.HasField(f)}
        if given:
            if "redundancy" in given:
                try:
                    given["redundancy"] = str(Redundancy.parse(given["redundancy"]))
                except SettingError as e:
                    raise InvalidArgument(str(e)) from None
            current = replace(current, **given)
            self.catalog.set_policy(namespace, current)
            log.info("policy of namespace %s: %s", namespace, current)
        return manager_pb2.PolicyReply(namespace=namespace, **asdict(current))

    @rpc
    def MarkCheckpoint(self, request: manager_pb2.CheckpointMark, context: grpc.ServicerContext
                       ) -> manager_pb2.CheckpointMarkReply:
        namespace = check_namespace(request.namespace)
        if request.HasField("begin") == request.end:
            raise InvalidArgument("a checkpoint mark either begins a step or ends the open checkpoint")
        if request.HasField("begin"):
            previous = self.catalog.begin_checkpoint(namespace, request.begin)
            log.info("namespace %s: checkpoint %d begins", namespace, request.begin)
        else:
            previous = self.catalog.end_checkpoint(namespace)
            log.info("namespace %s: checkpoint %s ends", namespace, previous)
        now = self.catalog.open_checkpoint(namespace)
        return manager_pb2.CheckpointMarkReply(was_open=previous is not None, ended=previous or 0,
                                               open=now is not None, step=now or 0)

    @rpc
    def CollectGarbage(self, request: manager_pb2.GcRequest, context: grpc.ServicerContext) -> manager_pb2.GcReply:
        namespace = check_namespace(request.namespace)
        pfs = self.settings.pfs
        if not pfs:
            raise InvalidArgument("gc needs the manager's pfs setting (the PFS directory the benefactors drain to)")
        self.clear_pfs()  # what the catalog let go already, first
        versions, names = self.catalog.pfs_references(namespace)
        candidates = find_orphans(pfs, namespace, lambda d, dep, v: (d, dep, v) in versions, names,
                                  self.catalog.deployment_id, int(self.catalog.created_at * 1000))
        # Asked again after the walk: a version committed meanwhile is not an orphan.
        versions, names = self.catalog.pfs_references(namespace)
        orphans = [o for o in candidates if o.path not in names and not _named_version(o.path, versions)]
        removed = Removed(0, 0) if request.dry_run else remove_orphans(pfs, orphans)
        if removed.files:
            self.metrics.pfs_removed.inc(removed.bytes)
            log.info("gc of namespace %s: removed %d orphan files from the PFS (%s freed)", namespace,
                     removed.files, format_size(removed.bytes))
        return manager_pb2.GcReply(orphans=[manager_pb2.GcOrphan(path=o.path, bytes=o.bytes, why=o.why)
                                            for o in orphans],
                                   removed_files=removed.files, removed_bytes=removed.bytes)


def _named_version(relative: str, versions: Set[tuple[str, str, int]]) -> bool:
    """A chunk file or manifest (relative to the PFS root) belongs to one of these (directory,
    deployment, version)."""
    directory, name = relative.rsplit("/", 1)
    parsed = parse_name(Path(relative))
    vid = (parsed.deployment, parsed.version) if parsed is not None else parse_manifest_name(name)
    return vid is not None and (directory, *vid) in versions


def _by_namespace(items: Sequence[tuple[IndexKey, int]]) -> dict[str, list[tuple[ChunkKey, int]]]:
    out: dict[str, list[tuple[ChunkKey, int]]] = defaultdict(list)
    for (ns, key), gen in items:
        out[ns].append((key, gen))
    return out


class _Addresses(Mapping[str, str]):
    """Benefactor addresses looked up when a map needs them (not copied from a registry of 100k):
    the registry's, else the last one registered (a restarted manager has not heard from all yet).
    Iterating it gives the live ones."""

    def __init__(self, service: ManagerService) -> None:
        self._service = service

    def __getitem__(self, bf: str) -> str:
        rec = self._service.registry.get(bf)
        if rec is not None:
            return rec.address
        return self._service._known_addresses[bf]

    def __iter__(self) -> Iterator[str]:
        return iter(self._service.registry.live_ids())

    def __len__(self) -> int:
        return len(self._service.registry.live_ids())
