"""Starting and stopping the manager: gRPC server, catalog, and its housekeeping thread (deaths, leases)."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from memstage import auth
from memstage.boundary import Boundary, CallMetrics
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.health import add_health, serving
from memstage.manager.access import authenticator
from memstage.manager.beatlink import BeatLink
from memstage.manager.catalog import Catalog, Policy
from memstage.manager.controlport import ControlPort
from memstage.manager.pfsimport import found_versions
from memstage.manager.policyfile import apply_policies, parse_policies
from memstage.manager.service import ManagerService
from memstage.manager.wakes import WakeSender
from memstage.metrics import serve_metrics
from memstage.proto import manager_pb2_grpc
from memstage.rpc import CONTROL_SERVER_OPTIONS, bind
from memstage.settings import ManagerSettings
from memstage.tls import load as load_tls

log = logging.getLogger(__name__)

RPC_THREADS = 256
WAKE_TICK = 0.05  # seconds between looks for benefactors to wake (without a heartbeat process)
GC_THRESHOLD = 50_000  # container allocations between collections of the youngest generation


class ManagerServer:
    def __init__(self, settings: ManagerSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.clock = clock
        self.tls = load_tls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_server_name)
        self.catalog = Catalog(settings.state, Policy(settings.persist_every, settings.keep_versions,
                                                                settings.redundancy))
        if settings.sync_interval:
            self.catalog.sync_every(settings.sync_interval)
        if settings.policies:
            apply_policies(self.catalog, parse_policies(settings.policies))
        if settings.pfs:
            self._import_pfs(settings.pfs)
        self.registry = CollectorRegistry()
        self.secret = None if settings.insecure else self._secrets()
        self.service = ManagerService(settings, self.catalog, self.registry, clock, secret=self.secret)
        # Many threads: a storm of commits waiting for the catalog must leave threads free for
        # heartbeats (a blocked thread costs no CPU).
        boundary = Boundary("manager", authenticator(self.service.access, self.service.state.session_namespace),
                            CallMetrics(self.service.metrics.calls, self.service.metrics.errors))
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=RPC_THREADS), options=CONTROL_SERVER_OPTIONS,
                                   interceptors=[boundary])
        manager_pb2_grpc.add_ManagerServicer_to_server(self.service, self._server)
        self.health = add_health(self._server)
        self.address = bind(self._server, settings.listen, "--listen", self.tls)
        host, _, port = self.address.rpartition(":")
        self.control = ControlPort(self.service, boundary, settings.control_listen or f"{host}:0",
                                   self.tls.server_context() if self.tls.cert else None, settings.socket_dir,
                                   f"manager-{port}.sock",
                                   lambda reason: self.service.metrics.control_refused.labels(reason).inc())
        self.service.control_ports = self.control.reply
        self._stop = threading.Event()
        self._metrics: Any = None
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        # What was loaded stays: the cyclic collector need not walk it again. And a commit makes
        # thousands of short-lived containers that reference counting frees: collecting every 700
        # of them took a tenth of the manager's time in a commit storm, and its long passes over
        # the registry held up heartbeats. Cycles are rare here; they are still collected.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, 50, 100)
        self._wakes: WakeSender | None = None  # without a heartbeat process, the manager wakes benefactors itself
        self._waker = threading.Thread(target=self._wake_loop, name="wakes-due", daemon=True)
        self.beats = self._beat_link()  # last: nothing after it can fail and leave the process behind

    def _secrets(self) -> bytes:
        """The cluster secret, and a first admin token, kept in --secrets (<state>/secrets; files 0600):
        created on the first start, so a manager is never open to whoever reaches its port unless told
        --insecure. An existing cluster.key (e.g. a Kubernetes Secret) is used as it is."""
        folder = Path(self.settings.secrets or Path(self.settings.state) / "secrets")
        if self.settings.cluster_secret:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            secret = auth.read_secret_file(self.settings.cluster_secret, "--cluster-secret")
        else:
            secret = auth.new_secret_file(folder / "cluster.key")
        admin = folder / "admin.token"
        if not admin.exists():  # the first start (or the file was removed: a new admin token replaces it)
            token = auth.Token.new()
            self.catalog.add_token(token.id, token.digest(), {"*": "admin"}, "created with the state")
            fd = os.open(admin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"{token}\n")
            log.info("admin token written to %s", admin)
        return secret

    def _beat_link(self) -> BeatLink | None:
        """The heartbeat process (launched now: it starts while the rest of the manager does)."""
        if self.settings.heartbeat_listen == "off":
            return None
        listen = self.settings.heartbeat_listen or f"{self.settings.listen.rpartition(':')[0]}:0"
        # The heartbeat process checks each benefactor's proof and proves itself on its wakes: it
        # gets the secret (hex; "" when insecure), as the manager process has it.
        secret = self.secret.hex() if self.secret is not None else ""
        link = BeatLink(listen, self.tls, secret, logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                        self.service.beats_arrived, self.service.beat_flags, self.service.beat_snapshot,
                        self.service.acks_arrived, epoch=self.service.epoch)
        link.launch()
        return link

    def start(self) -> None:
        if self.beats is not None:
            if self.settings.heartbeat_listen:  # a port was given: one that cannot be had stops the start
                try:
                    self.beats.wait_ready()
                except Exception:
                    self.beats.stop()
                    raise
            self.service.attach_beats(self.beats)
            self.beats.start()
        else:
            self.service.follow_flags()
            self._wakes = WakeSender(self.tls, auth.RoleProof(self.secret, auth.MANAGER)
                                     if self.secret is not None else "", epoch=self.service.epoch)
            self._waker.start()
        self._server.start()
        self.control.start()
        self._housekeeper.start()
        serving(self.health)
        self._metrics = serve_metrics(self.registry, self.settings.metrics_port,
                                      self.settings.metrics_host or self.address.rpartition(":")[0],
                                      self.settings.tls_cert, self.settings.tls_key,
                                      self.settings.tls_ca,
                                      require_client_cert=not self.settings.metrics_without_client_cert)
        log.info("manager serving on %s, state in %s", self.address, self.catalog.db_path)
        if not self.tls.cert:
            log.warning("no TLS (tls_cert): tokens and data travel in clear to %s", self.address)
        if self.secret is None:
            log.warning("INSECURE: --insecure is set: no token or cluster secret is checked, anyone who reaches "
                        "%s may read, write and delete every namespace", self.address)

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.service.wake.set()
        self.service.watch.close()
        stopped = self._server.stop(grace)
        self.control.stop(grace)  # as gRPC's: calls under way are answered within the grace
        stopped.wait()
        self._housekeeper.join(timeout=5)
        if self.beats is not None:
            self.beats.stop()
        if self._wakes is not None:
            self._waker.join(timeout=5)
            self._wakes.stop()
        if self._metrics is not None:
            self._metrics.shutdown()
        self.service.receipt_checkers.close()
        self.catalog.close()
        log.info("manager stopped")

    def _wake_loop(self) -> None:
        """What the heartbeat process does when there is one: wake benefactors whose work waits."""
        assert self._wakes is not None
        while not self._stop.wait(WAKE_TICK):
            try:
                self.service.acks_arrived(*self._wakes.take_results())
                self._wakes.wake(self.service.wakes_for(self.service.beat_flags()))
            except Exception:  # a bug must not end it: heartbeat replies still tell
                log.exception("waking benefactors failed")

    def _import_pfs(self, pfs: str) -> None:
        """Once per state: what earlier deployments drained to the PFS becomes readable here."""
        if self.catalog.meta("pfs_imported"):
            return
        if not os.path.isdir(pfs):  # nothing drained there yet (the benefactors make it)
            self.catalog.set_meta("pfs_imported", pfs)
            return
        started = time.monotonic()
        count = self.catalog.import_persisted(found_versions(pfs))
        self.catalog.set_meta("pfs_imported", pfs)
        log.info("%d versions drained by earlier deployments found on the PFS %s (%.1fs): readable from there",
                 count, pfs, time.monotonic() - started)

    def _housekeeping(self) -> None:
        """Log deaths and end write sessions whose lease ran out (their chunks are freed)."""
        period = min(1.0, self.settings.heartbeat_interval, self.settings.session_lease / 4)
        while not self._stop.is_set():
            before = self.clock.now()
            self.clock.wait(self.service.wake, period)  # a commit in a replicated namespace wakes it early
            self.service.wake.clear()
            if self._stop.is_set():
                break
            try:
                late = self.clock.now() - before - period
                if late > self.settings.heartbeat_interval:  # this thread did not run: nor did much else
                    self.service.resumed(late + period)
                self.service.sweep()
                self.catalog.sync()
                self.service.note_drains()
                self.service.clear_pfs()
                self.service.write_manifests()
            except Exception:  # a bug must not end housekeeping
                log.exception("housekeeping failed")


def create_server(settings: ManagerSettings) -> ManagerServer:
    return ManagerServer(settings)
