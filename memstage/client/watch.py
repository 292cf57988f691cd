"""A mount's watch on its namespace: the stream of changes others make, and the pings that keep its
cache's lease (see memstage.client.attrcache and memstage.manager.watchers).

Two threads: one reads the stream (applies each change to the cache and the kernel, then
acknowledges it), one pings every quarter lease. Either failing ends the lease: the cache is
dropped and the kernel told to keep nothing, until a new watch has its first pong.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

import grpc

from memstage.client.attrcache import AttrCache
from memstage.client.connections import Connections
from memstage.errors import MemstageError
from memstage.proto import manager_pb2

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between watches when the manager cannot be reached


class Watch:
    def __init__(self, connections: Connections, namespace: str, mount: str, cache: AttrCache,
                 lock: threading.Lock, kernel: Callable[[list[str]], None],
                 leased: Callable[[float], None]) -> None:
        """lock guards `cache` (the mount's); kernel(paths): drop the kernel's copies of those paths;
        leased(seconds): how long the kernel may keep what it is told from now on (0: nothing)."""
        self._conn = connections
        self._namespace = namespace
        self._mount = mount
        self._cache = cache
        self._lock = lock
        self._kernel = kernel
        self._leased = leased
        self._pings = itertools.count(1)
        self._applied = 0
        self._lease = 0.0
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._reader = threading.Thread(target=self._read_loop, name="watch", daemon=True)
        self._pinger = threading.Thread(target=self._ping_loop, name="watch-ping", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._pinger.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._reader.join(timeout=5)
        self._pinger.join(timeout=5)

    def _lost(self) -> None:
        with self._lock:
            told = self._cache.lost()
        if self._stop.is_set():  # the mount is going: nothing to tell the kernel
            return
        if self._lease:
            self._leased(0.0)
            self._lease = 0.0
        self._kernel(told)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                call = self._conn.manager_stream(
                    "Watch", manager_pb2.WatchRequest(namespace=self._namespace, mount=self._mount))
                self._call = call
                for event in call:
                    self._event(event)
            except grpc.RpcError as e:
                if not self._stop.is_set() and e.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                    log.debug("watch of namespace %s ended: %s", self._namespace, e)
            except MemstageError as e:
                log.debug("watch of namespace %s: %s", self._namespace, e)
            self._call = None
            self._lost()
            self._stop.wait(RETRY_S)

    def _event(self, event: manager_pb2.WatchEvent) -> None:
        if not (event.seq or event.pong or event.paths):  # the manager watches for this mount now
            self._ping()  # its pong starts the lease
            return
        if event.paths:
            with self._lock:
                told = self._cache.changed(event.paths)
            self._kernel(told)  # before the acknowledgement: the change returns after it
        if event.seq:
            self._applied = max(self._applied, event.seq)
            self._ack(0)
        if event.pong:
            with self._lock:
                self._cache.pong(event.pong, event.lease)
            if event.lease != self._lease:
                self._lease = event.lease
                self._leased(event.lease / 2)

    def _ack(self, ping: int) -> None:
        try:
            known = self._conn.call_manager(
                "WatchAck", manager_pb2.WatchAckRequest(mount=self._mount, seq=self._applied, ping=ping),
                "watch").known
        except MemstageError as e:
            log.debug("watch acknowledgement: %s", e)
            return
        if not known:  # the manager forgot this mount (it restarted): watch again
            call = self._call
            if call is not None:
                call.cancel()

    def _ping(self) -> None:
        ping = next(self._pings)
        with self._lock:
            self._cache.ping_sent(ping, time.monotonic())
        self._ack(ping)

    def _ping_loop(self) -> None:
        while not self._stop.wait(self._lease / 4 if self._lease else RETRY_S / 4):
            if self._call is not None:
                self._ping()
