"""Heartbeat: the benefactor's soft-state link to the manager.

Registers (with what it holds, so a restarted manager can confirm locations), heartbeats its free
memory every interval, re-registers when the manager answers "unknown", drops chunks the manager
no longer references, and now and then asks which long-unconfirmed chunks are referenced at all
(chunks of writes that were never committed are dropped). An unreachable manager is logged once
per outage and retried; the data service keeps running meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import grpc

from memstage.benefactor.store import ChunkStore

if TYPE_CHECKING:
    from memstage.benefactor.drain import DrainLoop
from memstage.chunks import group_keys, ungroup_keys
from memstage.proto import manager_pb2, manager_pb2_grpc
from memstage.rpc import CONTROL_TIMEOUT_S, control_channel
from memstage.settings import BenefactorSettings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, settings: BenefactorSettings, store: ChunkStore, benefactor_id: str, address: str) -> None:
        self.settings = settings
        self.store = store
        self.id = benefactor_id
        self.address = address
        self.interval = settings.heartbeat_interval
        self._channel = control_channel(settings.manager)
        self.stub = manager_pb2_grpc.ManagerStub(self._channel)
        self.drain: DrainLoop | None = None  # set by the server: its state goes into heartbeats
        self._stop = threading.Event()
        self._registered = False
        self._outage_logged = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._channel.close()

    def _stats(self) -> manager_pb2.BenefactorStats:
        return manager_pb2.BenefactorStats(
            memory_capacity=self.store.capacity,
            memory_used=self.store.used,
            chunk_count=len(self.store),
            drain_error=self.drain.error if self.drain else "",
            drained_bytes=self.drain.drained_bytes if self.drain else 0,
        )

    def _run(self) -> None:
        beats = 0
        while not self._stop.is_set():
            try:
                if not self._registered:
                    self._register()
                else:
                    self._beat()
                beats += 1
                # Reconcile about every orphan_grace/2, at most once per heartbeat.
                if beats % max(1, int(self.settings.orphan_grace / 2 / self.interval)) == 0:
                    self._reconcile()
                if self._outage_logged:
                    log.info("manager %s reachable again", self.settings.manager)
                    self._outage_logged = False
            except grpc.RpcError as e:
                self._registered = False
                if not self._outage_logged:
                    log.warning("manager %s unreachable (%s); retrying every %.1fs",
                                self.settings.manager, e.code() if isinstance(e, grpc.Call) else e, self.interval)
                    self._outage_logged = True
            # Until registered, retry every second: the manager may just be starting alongside us.
            self._stop.wait(self.interval if self._registered else min(1.0, self.interval))

    def _register(self) -> None:
        reply = self.stub.Register(
            manager_pb2.RegisterRequest(
                benefactor_id=self.id, address=self.address, stats=self._stats(),
                held=group_keys(self.store.keys()),
            ),
            timeout=CONTROL_TIMEOUT_S,
        )
        self.interval = reply.heartbeat_interval_seconds or self.interval
        self._registered = True
        log.info("registered with manager %s as %s (%s), heartbeat %.1fs",
                 self.settings.manager, self.id, self.address, self.interval)

    def _beat(self) -> None:
        reply = self.stub.Heartbeat(
            manager_pb2.HeartbeatRequest(benefactor_id=self.id, stats=self._stats()), timeout=CONTROL_TIMEOUT_S
        )
        if not reply.known:
            log.info("manager does not know this benefactor (it restarted?): registering again")
            self._register()
            return
        if reply.drop:
            freed = self.store.delete(ungroup_keys(reply.drop))
            log.debug("dropped chunks the manager released: %d bytes", freed)

    def _reconcile(self) -> None:
        candidates = self.store.unconfirmed_older_than(self.settings.orphan_grace)
        if not candidates:
            return
        reply = self.stub.Reconcile(
            manager_pb2.ReconcileRequest(benefactor_id=self.id, keys=group_keys(candidates)),
            timeout=CONTROL_TIMEOUT_S,
        )
        referenced = set(ungroup_keys(reply.referenced))
        self.store.confirm(referenced)
        orphans = [k for k in candidates if k not in referenced]
        if orphans:
            freed = self.store.delete(orphans)
            log.info("dropped %d chunks no committed version references (%d bytes)", len(orphans), freed)
