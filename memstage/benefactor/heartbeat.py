"""Heartbeat: the benefactor's soft-state link to the manager.

Registers as this process's incarnation (with its receipt key, and what it holds, so a restarted
manager can confirm locations), heartbeats its free memory and the write sessions that have chunks
here every interval (at a fixed rate: a slow reply does not push the next beat later), and
re-registers when the manager answers "unknown". Heartbeats go to the manager's heartbeat port
when it told one (there they are answered apart from commits), else, or when that port does not
answer, to its own port. Now and then, on a thread of its own so that it
never delays a beat, it lists chunks whose hold it has not heard about for orphan_grace (a safety
net: the manager orders freed what no version references). It never frees anything itself: see OrderLoop. An unreachable
manager is logged once per outage and retried; the data service keeps running meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from memstage.benefactor.store import ChunkStore, Held
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.tlsprobe import missing_tls, speaks_tls

if TYPE_CHECKING:
    from memstage.benefactor.drain import DrainLoop
    from memstage.benefactor.orders import OrderLoop
from memstage.proto import manager_pb2, manager_pb2_grpc
from memstage.rpc import CONTROL_TIMEOUT_S, control_channel, with_metadata
from memstage.settings import BenefactorSettings
from memstage.tls import Tls

log = logging.getLogger(__name__)

BEAT_PORT_TIMEOUT_S = 5.0  # then the beat goes to the manager's own port


class Heartbeat:
    def __init__(self, settings: BenefactorSettings, store: ChunkStore, benefactor_id: str, address: str,
                 incarnation: int, receipt_key: bytes, credentials: tuple[tuple[str, Any], ...] = (),
                 tls: Tls | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.id = benefactor_id
        self.address = address
        self.incarnation = incarnation
        self.receipt_key = receipt_key
        self.interval = settings.heartbeat_interval
        self._tls = tls
        self._credentials = credentials
        self._channel = control_channel(settings.manager, tls)
        # Every call to the manager proves this benefactor holds the cluster secret.
        self.stub = manager_pb2_grpc.ManagerStub(with_metadata(self._channel, credentials))
        self.beat_port = 0  # the manager's heartbeat port (0: none told)
        self._beat_channel: grpc.Channel | None = None
        self._beat_stub: manager_pb2_grpc.ManagerStub | None = None
        self._beat_port_failing = False
        self.drain: DrainLoop | None = None  # set by the server: its state goes into heartbeats
        self.orders: OrderLoop | None = None  # set by the server: woken when orders are waiting
        # Set by the server: tokens the manager says are revoked (told at each registration).
        self.on_revoked: Callable[[list[str]], None] = lambda tokens: None
        self._stop = threading.Event()
        self._registered = False
        self._outage_logged = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._reconciler = threading.Thread(target=self._reconcile_loop, name="reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._reconciler.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._reconciler.join(timeout=5)
        self._channel.close()
        if self._beat_channel is not None:
            self._beat_channel.close()

    def _adopt_port(self, port: int) -> None:
        """Beat to the heartbeat port the manager told (on its host), or to its own port (0)."""
        if port == self.beat_port:
            return
        if self._beat_channel is not None:
            self._beat_channel.close()
            self._beat_channel = self._beat_stub = None
        self.beat_port = port
        if port:
            address = f"{self.settings.manager.rpartition(':')[0]}:{port}"
            self._beat_channel = control_channel(address, self._tls)
            self._beat_stub = manager_pb2_grpc.ManagerStub(with_metadata(self._beat_channel, self._credentials))

    def _stats(self) -> manager_pb2.BenefactorStats:
        return manager_pb2.BenefactorStats(
            memory_capacity=self.store.capacity,
            memory_used=self.store.used,
            chunk_count=len(self.store),
            drain_error=self.drain.error if self.drain else "",
            drained_bytes=self.drain.drained_bytes if self.drain else 0,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = self.clock.now()
            try:
                if not self._registered:
                    self._register()
                else:
                    self._beat()
                if self._outage_logged:
                    log.info("manager %s reachable again", self.settings.manager)
                    self._outage_logged = False
            except grpc.RpcError as e:
                self._registered = False
                self._log_refusal(e)
            # Until registered, retry every second: the manager may just be starting alongside us.
            period = self.interval if self._registered else min(1.0, self.interval)
            self.clock.wait(self._stop, max(0.0, period - (self.clock.now() - started)))

    def _log_refusal(self, e: grpc.RpcError) -> None:
        code = e.code() if isinstance(e, grpc.Call) else None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            if not self._outage_logged:
                log.error("manager %s refuses this benefactor: %s; retrying every %.1fs",
                          self.settings.manager, e.details() if isinstance(e, grpc.Call) else e, self.interval)
                self._outage_logged = True
        elif not self._outage_logged:
            if code == grpc.StatusCode.UNAVAILABLE and not self.settings.tls_ca and speaks_tls(self.settings.manager):
                log.error("%s; retrying every %.1fs", missing_tls("manager", self.settings.manager), self.interval)
            else:
                log.warning("manager %s unreachable (%s); retrying every %.1fs",
                            self.settings.manager, e.code() if isinstance(e, grpc.Call) else e, self.interval)
            self._outage_logged = True

    def _reconcile_loop(self) -> None:
        while not self.clock.wait(self._stop, max(self.interval, self.settings.orphan_grace / 2)):
            if not self._registered:
                continue
            try:
                self._reconcile()
            except grpc.RpcError as e:
                log.info("reconcile with manager %s failed (%s); next in %.0fs", self.settings.manager,
                         e.code() if isinstance(e, grpc.Call) else e, self.settings.orphan_grace / 2)

    def _register(self) -> None:
        reply = self.stub.Register(
            manager_pb2.RegisterRequest(
                benefactor_id=self.id, address=self.address, stats=self._stats(),
                held=held_chunks(self.store.held()), incarnation=self.incarnation, receipt_key=self.receipt_key,
                domain=self.settings.domain,
            ),
            timeout=CONTROL_TIMEOUT_S,
        )
        self.interval = reply.heartbeat_interval_seconds or self.interval
        self._adopt_port(reply.heartbeat_port)
        self.on_revoked(list(reply.revoked_tokens))
        self._registered = True
        log.info("registered with manager %s as %s (%s), heartbeat %.1fs",
                 self.settings.manager, self.id, self.address, self.interval)

    def _beat(self) -> None:
        request = manager_pb2.HeartbeatRequest(benefactor_id=self.id, stats=self._stats(),
                                               incarnation=self.incarnation, sessions=self.store.sessions())
        reply = None
        if self._beat_stub is not None:
            try:
                reply = self._beat_stub.Heartbeat(request, timeout=min(BEAT_PORT_TIMEOUT_S, self.interval / 3))
                if self._beat_port_failing:
                    log.info("the manager's heartbeat port %d answers again", self.beat_port)
                    self._beat_port_failing = False
            except grpc.RpcError as e:
                # NOT_FOUND: not known there yet (or any more); the manager's port decides.
                code = e.code() if isinstance(e, grpc.Call) else None
                if code != grpc.StatusCode.NOT_FOUND and not self._beat_port_failing:
                    log.warning("the manager's heartbeat port %d does not answer (%s): beating to its port %s "
                                "instead (if this lasts, open port %d to the benefactors, or set the manager's "
                                "heartbeat_listen)", self.beat_port, code, self.settings.manager, self.beat_port)
                    self._beat_port_failing = True
        if reply is None:
            reply = self.stub.Heartbeat(request, timeout=CONTROL_TIMEOUT_S)
        self._adopt_port(reply.heartbeat_port)
        if reply.heartbeat_interval_seconds:
            self.interval = reply.heartbeat_interval_seconds  # a large deployment stretches it
        if reply.orders_waiting and self.orders is not None:
            self.orders.told(reply.orders_epoch, reply.orders_last)
        if reply.drain_waiting and self.drain is not None:
            self.drain.waker.wake()
        if not reply.known:
            log.info("manager does not know this benefactor (it restarted?): registering again")
            self._register()

    def _reconcile(self) -> None:
        candidates = self.store.held_unchecked(self.settings.orphan_grace)
        if not candidates:
            return
        reply = self.stub.Reconcile(
            manager_pb2.ReconcileRequest(benefactor_id=self.id, incarnation=self.incarnation,
                                         held=held_chunks(candidates)),
            timeout=CONTROL_TIMEOUT_S,
        )
        if reply.orphans:
            log.warning("the manager found %d orphaned chunks here (freed on its orders)", reply.orphans)


def held_chunks(held: list[Held]) -> list[manager_pb2.HeldChunks]:
    """The wire form of a report, one group per namespace."""
    groups: dict[str, manager_pb2.HeldChunks] = {}
    for h in held:
        ns, key = h.key
        group = groups.get(ns)
        if group is None:
            group = groups[ns] = manager_pb2.HeldChunks(namespace=ns)
        group.chunks.append(manager_pb2.HeldChunk(key=key.to_pb(), gen=h.gen, sessions=h.sessions))
    return list(groups.values())
