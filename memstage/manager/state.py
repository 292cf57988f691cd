"""The manager's shared state: the registry, sessions, order queues and what the concern modules
(liveness, writes, commits, namespace, reads, repair, drains, status) all read and change, with the
few steps they share. One lock (`lock`) guards the registry, sessions and order queues."""

from __future__ import annotations

import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from memstage.chunks import ChunkKey
from memstage.errors import DataLost, NotFound
from memstage.manager.access import Access
from memstage.manager.beatlink import BeatLink
from memstage.manager.catalog import Catalog, Freed
from memstage.manager.loads import Loads
from memstage.manager.metrics import ManagerMetrics
from memstage.manager.orders import OrderQueues
from memstage.manager.registry import Registry
from memstage.manager.replication import Replicator
from memstage.manager.sessions import Session, SessionTable
from memstage.manager.stripes import StripeWork
from memstage.proto import manager_pb2
from memstage.settings import ManagerSettings

# (now, live ids, free memory of those taking copies, addresses, failure domains): see live_view.
LiveView = tuple[float, set[str], dict[str, int], dict[str, str], dict[str, str]]


class State:
    def __init__(self, settings: ManagerSettings, catalog: Catalog, registry: CollectorRegistry,
                 status: Callable[[], manager_pb2.StatusReply], clock: Callable[[], float] = time.monotonic,
                 secret: bytes | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        # secret None: --insecure (nothing is checked).
        self.access = Access(secret, catalog.token)
        self.registry = Registry(settings.heartbeat_interval, max_rate=settings.heartbeat_rate)
        self.clock = clock
        self.lock = threading.Lock()  # registry, sessions and order queues
        # Namespace changes (rename, unlink, link, ...) check and change several rows: one at a time.
        self.namespace_lock = threading.RLock()
        self.started_ns = time.time_ns()
        self.sessions = SessionTable(settings.session_lease, on_end=lambda s: self.registry.release(s.reserved))
        self.known_addresses = catalog.benefactor_addresses()  # as last registered (for maps after a restart)
        self.drained: dict[str, int] = {}  # bytes each benefactor reported on the PFS since this manager started
        self.drain_waiting: set[str] = set()  # benefactors with drain tasks they have not asked for yet
        self.drain_changed: set[str] = set()  # ... whose entry changed since the heartbeat process was told
        self.drain_new: set[str] = set()  # ... given new tasks since then (a subset: they are woken)
        self.beats: BeatLink | None = None  # the heartbeat process, when the manager runs one (see attach_beats)
        self.following = False  # changes of flags of work waiting are kept (see Liveness.beat_flags)
        # Order numbers start again with each manager process: acknowledgements of another are void.
        self.epoch = secrets.randbits(63) or 1
        self.orders = OrderQueues(self.epoch)
        self.replicator = Replicator()  # under self.lock
        self.loads = Loads()  # prefetches from the PFS under way; under self.lock
        self.manifests: list[tuple[str, str, int]] = []  # persisted versions whose manifest is to write
        self.unprotected = 0  # chunks short of their copies at the last repair round
        self.stripe_work = StripeWork()  # under self.lock
        self.copied_bytes = 0  # by replica copies since the manager started
        self.wake = threading.Event()  # set: run housekeeping (the repair) now
        # Notified when a version may have become protected (or lost): a stripe or copy recorded,
        # a drain done, a benefactor declared dead. Stat callers waiting for protection wait on it.
        self.protection_moved = threading.Condition()
        self.protection_epoch = 0  # counts those notifications (under protection_moved)
        self.metrics = ManagerMetrics(registry, status, settings.metrics_benefactors)

    def protection_changed(self) -> None:
        with self.protection_moved:
            self.protection_epoch += 1
            self.protection_moved.notify_all()

    def durable(self) -> None:
        """The end of an RPC that changed the catalog: what its reply reports is durable before it
        is sent, and benefactors given drain tasks by it are told."""
        self.catalog.sync()
        self.note_drains()

    def note_drains(self) -> None:
        """Benefactors just given drain tasks are told so in their next heartbeat reply."""
        queued = self.catalog.take_drain_queued()
        if queued:
            with self.lock:
                self.drain_waiting |= queued
                if self.following:
                    self.drain_changed |= queued
                    self.drain_new |= queued

    def drain_flag_changed(self, bf: str) -> None:
        """(under self.lock) The benefactor's drain flag changed: the heartbeat process is told."""
        if self.following:
            self.drain_changed.add(bf)

    def is_alive(self, bf: str) -> bool:
        with self.lock:
            return self.registry.is_alive(bf, self.clock())

    def alive_ids(self) -> frozenset[str]:
        with self.lock:
            return self.registry.live_ids()

    def live_view(self) -> LiveView:
        """(under self.lock) Now, the live benefactors, the free memory of those that may take new
        copies, their addresses and failure domains (an unlabelled one is a domain of its own)."""
        now = self.clock()
        records = self.registry.alive(now)
        return (now, {r.id for r in records}, {r.id: r.stats.free for r in records if not r.leaving},
                {r.id: r.address for r in records}, {r.id: r.domain or r.id for r in records})

    def free(self, freed: Freed) -> None:
        """Order chunks no in-memory version needs freed on the benefactors holding them."""
        if not freed:
            return
        by_bf: dict[str, dict[str, list[tuple[ChunkKey, int]]]] = defaultdict(lambda: defaultdict(list))
        for (ns, key), holders in freed.items():
            for bf, gen in holders.items():
                by_bf[bf][ns].append((key, gen))
        with self.lock:
            for bf, groups in by_bf.items():
                for ns, items in groups.items():
                    self.orders.push(bf, ns, free=items)
                    # Counted as free at once: the benefactor frees it within moments, and one that is
                    # still full simply refuses (the writer re-plans).
                    self.registry.note_used(bf, -sum(k.length for k, _ in items))

    def end_orders(self, session: Session, holds: dict[str, list[tuple[ChunkKey, int]]]) -> None:
        """(under self.lock) Tell every benefactor the session may have stored on that it is over,
        with the holds its commit created there."""
        for bf in session.benefactors | set(holds):
            self.orders.push(bf, session.namespace, session=session.id, hold=holds.get(bf, []), end_session=True)

    def manifest_changed(self, namespace: str, path: str) -> None:
        """A file's metadata or names changed: the manifest of its latest version, if that is on the
        PFS, is written again."""
        if self.settings.pfs:
            version = self.catalog.version(namespace, path).version
            with self.lock:
                self.manifests.append((namespace, path, version))

    def session(self, sid: int, namespace: str) -> Session:
        """(under self.lock) An open session of this namespace, or DataLost naming why not."""
        session = self.sessions.get(sid)
        if session is None or session.namespace != namespace or session.committing:
            raise DataLost(f"the write session has ended (not renewed within {self.sessions.lease:.0f}s, "
                           "aborted, or the manager restarted) and its chunks were freed; nothing was committed, "
                           "write the file again")
        return session

    def registered_as(self, bf: str, incarnation: int, what: str) -> None:
        """Refuse a benefactor call from a process other than the one registered under the id (a
        second process given the same --id must not take or report the first one's drains)."""
        with self.lock:
            rec = self.registry.get(bf)
            if rec is None or rec.incarnation != incarnation:
                raise NotFound(f"{what}: benefactor {bf} is not registered as this process (incarnation "
                               f"{incarnation}); it registers first")

    def session_namespace(self, sid: int) -> str | None:
        with self.lock:
            session = self.sessions.get(sid)
        return session.namespace if session is not None else None
