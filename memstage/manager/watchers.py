"""Mounts that cache attributes and names, and the changes they must hear of before a change is done.

A mount watches its namespace (a stream of events) and pings the manager every so often; each
pong is queued behind every event sent before it, and keeps the mount's cache valid for
`lease / 2` from the moment the ping left the mount. So a mount that stopped acknowledging can only
use its cache for up to `lease / 2` after its last ping reached here, and the kernel keeps what
it was told for at most `lease / 2` more: a change that waits for every watcher's acknowledgement,
or until `lease` after that watcher's last ping, is seen by every mount when it returns.

Watchers is the bookkeeping (no sockets, no threads): events in, what to send and whom to wait
for out. WatchDesk adds the blocking waits the servers need.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from memstage.proto import manager_pb2


@dataclass
class Watcher:
    mount: str
    namespace: str
    last_ping: float  # when its last ping arrived (manager clock)
    events: deque[manager_pb2.WatchEvent] = field(default_factory=deque)
    acked: int = 0
    ended: bool = False


class Watchers:
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.seq = 0
        self._by_mount: dict[str, Watcher] = {}

    def watch(self, mount: str, namespace: str, now: float) -> Watcher:
        """A mount (re)starts watching: an older watcher of it ends (its stream closes)."""
        old = self._by_mount.get(mount)
        if old is not None:
            old.ended = True
        watcher = Watcher(mount, namespace, now, acked=self.seq)
        self._by_mount[mount] = watcher
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        watcher.ended = True
        if self._by_mount.get(watcher.mount) is watcher:
            del self._by_mount[watcher.mount]

    def changed(self, origin: str, namespace: str, paths: Iterable[str]) -> tuple[int, list[Watcher]]:
        """Paths of `namespace` changed by the mount `origin` ("" for none): the event's number and
        the watchers it was queued for (the origin knows already)."""
        paths = list(paths)
        self.seq += 1
        told = []
        for w in self._by_mount.values():
            if w.namespace == namespace and w.mount != origin and not w.ended:
                w.events.append(manager_pb2.WatchEvent(seq=self.seq, paths=paths))
                told.append(w)
        return self.seq, told

    def owing(self, seq: int, told: list[Watcher], now: float) -> list[Watcher]:
        """Watchers that still owe the acknowledgement of event `seq`: a watcher whose last ping is
        more than a lease old cannot be caching any more, and one that ended owes nothing."""
        return [w for w in told if not w.ended and w.acked < seq and now - w.last_ping < self.lease]

    def ack(self, mount: str, seq: int, ping: int, now: float) -> bool:
        """A mount applied every event up to `seq`; a ping is answered behind what was sent so far."""
        w = self._by_mount.get(mount)
        if w is None or w.ended:
            return False
        w.acked = max(w.acked, seq)
        if ping:
            w.last_ping = now
            w.events.append(manager_pb2.WatchEvent(pong=ping, lease=self.lease))
        return True

    def watching(self) -> int:
        return len(self._by_mount)

    def end_all(self) -> None:
        for w in self._by_mount.values():
            w.ended = True
        self._by_mount.clear()


class WatchDesk:
    """Watchers behind a lock, with the waits: a change waits for its acknowledgements, a watch
    stream for its next event."""

    def __init__(self, lease: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._table = Watchers(lease)
        self._clock = clock
        self._cond = threading.Condition()

    @property
    def lease(self) -> float:
        return self._table.lease

    def watch(self, mount: str, namespace: str) -> Watcher:
        with self._cond:
            w = self._table.watch(mount, namespace, self._clock())
            self._cond.notify_all()
            return w

    def watching(self) -> int:
        with self._cond:
            return self._table.watching()

    def unwatch(self, watcher: Watcher) -> None:
        with self._cond:
            self._table.unwatch(watcher)
            self._cond.notify_all()

    def close(self) -> None:
        """The manager stops: every watch stream ends now (mounts stop caching until they watch again)."""
        with self._cond:
            self._table.end_all()
            self._cond.notify_all()

    def next_events(self, watcher: Watcher, timeout: float) -> list[manager_pb2.WatchEvent] | None:
        """What is queued for `watcher` (empty after `timeout`); None once it ended."""
        with self._cond:
            self._cond.wait_for(lambda: watcher.events or watcher.ended, timeout)
            if watcher.ended:
                return None
            out = list(watcher.events)
            watcher.events.clear()
            return out

    def ack(self, mount: str, seq: int, ping: int) -> bool:
        with self._cond:
            known = self._table.ack(mount, seq, ping, self._clock())
            self._cond.notify_all()
            return known

    def changed(self, origin: str, namespace: str, paths: Iterable[str]) -> None:
        """Tell every other watcher of `namespace`, and return once each applied it or can no
        longer be caching (at most a lease)."""
        with self._cond:
            if not self._table.watching():
                return
            seq, told = self._table.changed(origin, namespace, paths)
            if not told:
                return
            self._cond.notify_all()
            deadline = self._clock() + self._table.lease
            while True:
                now = self._clock()
                if not self._table.owing(seq, told, now) or now >= deadline:
                    return
                self._cond.wait(min(deadline - now, 0.05))
