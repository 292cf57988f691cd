"""Starting and stopping a benefactor: the gRPC server, its store and its heartbeat."""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry

from memstage import auth
from memstage.benefactor.access import BenefactorAccess
from memstage.benefactor.drain import DrainLoop
from memstage.benefactor.heartbeat import Heartbeat
from memstage.benefactor.metrics import BenefactorMetrics
from memstage.benefactor.orders import OrderLoop
from memstage.benefactor.service import BenefactorService
from memstage.benefactor.store import ChunkStore
from memstage.benefactor.streamport import StreamPort
from memstage.boundary import Boundary
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.errors import SettingError
from memstage.health import add_health, serving
from memstage.metrics import serve_metrics
from memstage.proto import benefactor_pb2, manager_pb2
from memstage.receipts import new_key
from memstage.rpc import CONTROL_TIMEOUT_S, SERVER_OPTIONS, bind
from memstage.settings import BenefactorSettings
from memstage.signalflag import SignalFlag
from memstage.tls import load as load_tls
from memstage.units import format_size

log = logging.getLogger(__name__)


class BenefactorServer:
    def __init__(self, settings: BenefactorSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.id = settings.id or "bf-" + uuid.uuid4().hex[:12]
        # This process start: locations the manager knows from an earlier one (same id) are void.
        self.incarnation = secrets.randbits(63) or 1
        receipt_key = new_key()
        if settings.insecure:
            secret = None
            log.warning("INSECURE: --insecure is set: chunks are served to anyone who reaches this benefactor")
        elif not settings.cluster_secret:
            raise SettingError("benefactor: --cluster-secret FILE is needed (the manager writes it to "
                               "<state>/secrets/cluster.key), or --insecure for a manager run with --insecure")
        else:
            secret = auth.read_secret_file(settings.cluster_secret, "--cluster-secret")
        # Its own proof, current at each call: it names this benefactor and holds for a minute or two.
        proof = auth.RoleProof(secret, auth.benefactor_role(self.id)) if secret is not None else ""
        credentials = ((auth.CLUSTER_HEADER, proof),) if proof else ()
        self.store = ChunkStore(capacity=settings.memory)
        self.registry = CollectorRegistry()
        metrics = BenefactorMetrics(self.registry, self.store, self._drain_state)
        self.service = BenefactorService(self.store, self.id, metrics, receipt_key)
        # Who may call (None: --insecure, nothing is checked); the manager's revocations reach it.
        self.access = (BenefactorAccess(secret, self.id, lambda reason: metrics.refused.labels(reason).inc())
                       if secret is not None else None)
        boundary = Boundary(f"benefactor {self.id}", self.access)
        # One thread per concurrent stream; puts from many clients each hold one.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=SERVER_OPTIONS,
                                   interceptors=[boundary])
        self._server.add_generic_rpc_handlers((self.service.handler(),))
        self.health = add_health(self._server)
        tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name)
        self.address = bind(self._server, settings.listen, "--listen", tls)
        data_listen = settings.data_listen or self.address.rpartition(":")[0] + ":0"
        self.stream_port = StreamPort(self.service, self.access, data_listen,
                                      tls.server_context() if tls.enabled else None, settings.socket_dir,
                                      lambda reason: metrics.refused.labels(reason).inc())
        self.service.ports = self.stream_port.reply
        self.heartbeat = Heartbeat(settings, self.store, self.id, settings.advertise or self.address,
                                   self.incarnation, receipt_key, credentials, tls, clock)
        # Idle loops are woken by the manager (Wake, and heartbeat replies should a wake be lost); they
        # look on their own at most every two periods.
        ceiling = lambda: 2 * self.heartbeat.interval  # noqa: E731
        self.drain = DrainLoop(settings, self.store, self.id, self.heartbeat.stub, self.incarnation, ceiling, clock)
        self.orders = OrderLoop(self.store, self.id, self.incarnation, self.heartbeat.stub, self.address, proof,
                                tls, ceiling, on_hold=self.drain.waker.wake, read_drained=self.drain.read_drained,
                                on_revoked=self._revoke, clock=clock, transport=settings.transport)
        self.heartbeat.on_revoked = self._revoke
        self.heartbeat.drain = self.drain
        self.heartbeat.orders = self.orders
        self.service.incarnation = self.incarnation
        self.service.on_wake = self._woken
        self.service.drain = self.drain
        self._metrics: Any = None

    def _woken(self, request: benefactor_pb2.WakeRequest) -> tuple[int, int]:
        """The manager's wake: carry out the orders it brings (or fetch them), look for drain tasks."""
        if request.drain:
            self.drain.waker.wake()
        if request.orders_reply:
            try:
                return self.orders.deliver(manager_pb2.OrdersReply.FromString(request.orders_reply))
            except DecodeError:
                log.warning("a wake brought orders that do not parse: fetching them instead")
        if request.orders:  # pushed before: fetched unless carried out already
            self.orders.told(request.orders_epoch, request.orders_last)
        return 0, 0

    def _revoke(self, token_ids: list[str]) -> None:
        if self.access is not None:
            self.access.revoke(token_ids)

    def _drain_state(self) -> tuple[int, bool]:
        return self.drain.drained_bytes, bool(self.drain.error)

    def start(self) -> None:
        self._server.start()
        self.stream_port.start()
        self.heartbeat.start()
        self.orders.start()
        self.drain.start()
        serving(self.health)
        self._metrics = serve_metrics(self.registry, self.settings.metrics_port,
                                      self.settings.metrics_host or self.address.rpartition(":")[0],
                                      self.settings.tls_cert, self.settings.tls_key,
                                      self.settings.tls_ca,
                                      require_client_cert=not self.settings.metrics_without_client_cert)
        log.info("benefactor %s serving on %s, donating %d bytes", self.id, self.address, self.store.capacity)

    def drain_before_stop(self, now: SignalFlag | None = None) -> None:
        """Keep serving and draining, with no new chunks coming in, until what is selected for
        persistence is on the PFS (or stop_timeout, or `now` is set); then leave, so that what could
        not be drained is reported lost by the manager, never silently forgotten."""
        stub = self.heartbeat.stub
        request = manager_pb2.LeaveRequest(benefactor_id=self.id, incarnation=self.incarnation)
        deadline = time.monotonic() + self.settings.stop_timeout
        last_log = 0.0
        try:
            while True:
                reply = stub.Leave(request, timeout=CONTROL_TIMEOUT_S)
                if not reply.backlog_chunks:
                    break
                if time.monotonic() >= deadline or (now is not None and now.is_set()):
                    log.error("stopping with %s (%d chunks) not drained to the PFS", format_size(reply.backlog_bytes),
                              reply.backlog_chunks)
                    break
                if time.monotonic() - last_log >= 5:
                    log.warning("draining %s (%d chunks) to the PFS before stopping (at most %.0fs more; "
                                "again to stop now)", format_size(reply.backlog_bytes), reply.backlog_chunks,
                                max(0.0, deadline - time.monotonic()))
                    last_log = time.monotonic()
                (now or SignalFlag()).wait(0.2)
            request.done = True
            reply = stub.Leave(request, timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as e:
            log.error("cannot reach the manager to drain before stopping (%s): the %d chunks held here are lost "
                      "unless already on the PFS", e.code() if isinstance(e, grpc.Call) else e, len(self.store))
            return
        if reply.versions_lost:
            log.error("%d versions selected for persistence could not be drained: reported lost", reply.versions_lost)
        if reply.memory_only_dropped:
            log.warning("%d versions kept in memory only (persist_every) are dropped with this benefactor",
                        reply.memory_only_dropped)
        log.info("left the deployment: nothing it held is needed any more")

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        if self._metrics is not None:
            self._metrics.shutdown()
        self.drain.stop()
        self.orders.stop()
        self.heartbeat.stop()
        self._server.stop(grace).wait()
        self.stream_port.stop()
        self.store.close()
        log.info("benefactor %s stopped", self.id)


def create_server(settings: BenefactorSettings) -> BenefactorServer:
    return BenefactorServer(settings)
