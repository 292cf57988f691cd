"""VersionReader: byte ranges of one committed version, fetched chunk by chunk from benefactors.

The version map is taken once at open, so a reader keeps seeing the version it opened even while
a newer one is committed. Chunks of a range are fetched in parallel; each is verified against its
hash, and a failing location falls back to the next one the map lists, then (rs:K+M) to rebuilding
it from K other members of its stripe, then to the PFS copy (read by any live benefactor, so the
client need not mount the PFS). A version that left memory
while being read (retention) is looked up again once: its chunks are on the PFS by then.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from memstage.chunks import ChunkKey
from memstage.client.connections import Connections
from memstage.errors import DataLost, MemstageError
from memstage.proto import common_pb2, manager_pb2
from memstage.stripes import StripeUnavailable, build_member
from memstage.transport import ChunkTransport, read_from_memory, read_from_pfs


class VersionReader:
    def __init__(self, conn: Connections, transport: ChunkTransport, namespace: str, vmap: manager_pb2.VersionMap,
                 pool: ThreadPoolExecutor, read_ahead: int = 0, on_degraded: Callable[[], object] | None = None):
        self.conn = conn
        self._on_degraded = on_degraded  # counts reads that needed another copy or the PFS
        self.transport = transport
        self.namespace = namespace
        self.path = vmap.path
        self.version = vmap.version
        self.size = vmap.size
        self._chunks = list(vmap.chunks)
        self._pfs_readers = list(vmap.pfs_readers)
        self.keys = [ChunkKey.from_pb(c.key) for c in self._chunks]
        self._starts = [0, *itertools.accumulate(k.length for k in self.keys)][:-1]
        self._pool = pool
        # Recent and read-ahead chunk fetches: callers that read in pieces smaller than a chunk (FUSE
        # sends 128 KiB reads) fetch each chunk once, and the next ones are already on their way.
        chunk = next((k.length for k in self.keys if not k.is_hole), 1)
        self._ahead = max(1, read_ahead // chunk) if read_ahead else 0
        self._cache: OrderedDict[int, Future[bytes | memoryview]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._fresh: manager_pb2.VersionMap | None = None  # the map asked again after a failure
        self._fresh_at = 0.0
        self._fresh_lock = threading.Lock()

    def read_range(self, start: int, end: int) -> bytes:
        end = min(end, self.size)
        if start >= end:
            return b""
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, end - 1) - 1
        indices = [i for i in range(first, last + 1) if not self.keys[i].is_hole]  # holes are zeros, not fetched
        if self._ahead:
            parts = [self._cached(i) for i in indices]
            for i in range(last + 1, min(last + 1 + self._ahead, len(self.keys))):
                if not self.keys[i].is_hole:
                    self._cached(i, wait=False)
        else:
            # One chunk is fetched inline; several are fetched in parallel.
            parts = [self.fetch(indices[0])] if len(indices) == 1 else list(self._pool.map(self.fetch, indices))
        fetched = dict(zip(indices, parts, strict=True))
        views: list[bytes | memoryview] = []
        for i in range(first, last + 1):
            lo = max(start - self._starts[i], 0)
            hi = min(end - self._starts[i], self.keys[i].length)
            data = fetched.get(i)
            views.append(bytes(hi - lo) if data is None else memoryview(data)[lo:hi])
        return b"".join(views)

    def _cached(self, index: int, wait: bool = True) -> bytes | memoryview:
        with self._cache_lock:
            future = self._cache.get(index)
            if future is None:
                future = self._cache[index] = self._pool.submit(self.fetch, index)
                while len(self._cache) > 2 * self._ahead + 2:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(index)
        return future.result() if wait else b""

    def fetch(self, index: int) -> bytes | memoryview:
        key = self.keys[index]
        failures: list[str] = []
        data = self._fetch_from(key, self._chunks[index], self._pfs_readers, failures)
        if data is None and self.version:
            # Left memory meanwhile (retention, a benefactor replaced)? The version's current map
            # names its PFS copy, and the stripe that can rebuild it.
            fresh = self._fresh_map(failures)
            if fresh is not None and index < len(fresh.chunks) and ChunkKey.from_pb(fresh.chunks[index].key) == key:
                data = self._fetch_from(key, fresh.chunks[index], list(fresh.pfs_readers), failures)
        if data is None:
            raise DataLost(f"{self.path} version {self.version}: chunk {index} ({key}) is unavailable "
                           f"({'; '.join(failures) or 'no location recorded'})")
        if failures and self._on_degraded is not None:
            self._on_degraded()
        return data

    def _fresh_map(self, failures: list[str]) -> manager_pb2.VersionMap | None:
        """The version's current map with stripes, asked once for every chunk that needs it (again
        after a second: the chunks read since use it first)."""
        with self._fresh_lock:
            if self._fresh is None or time.monotonic() - self._fresh_at > 1.0:
                try:
                    reply = self.conn.call_manager(
                        "Lookup", manager_pb2.LookupRequest(namespace=self.namespace, path=self.path,
                                                            version=self.version, stripes=True),
                        f"{self.path} version {self.version}")
                except MemstageError as e:
                    failures.append(f"looking it up again: {e}")
                    return self._fresh
                self._fresh, self._fresh_at = reply, time.monotonic()
                if len(reply.chunks) == len(self._chunks):
                    self._chunks = list(reply.chunks)
                    self._pfs_readers = list(reply.pfs_readers)
            return self._fresh

    def _fetch_from(self, key: ChunkKey, ref: manager_pb2.ChunkRef, readers: list[common_pb2.Location],
                    failures: list[str]) -> bytes | memoryview | None:
        """Memory first, then its stripe, then the PFS copy; every result hash-verified. None if
        nothing had it."""
        data = read_from_memory(self.transport, self.namespace, key, ref.locations, failures)
        if data is not None:
            return data
        if ref.HasField("stripe"):
            try:
                data, _ = build_member(self.transport, self.namespace, ref.stripe, readers)
            except StripeUnavailable as e:
                failures.append(f"rebuilding it: {e}")
            else:
                if key.matches(data):
                    return data
                failures.append("rebuilt from its stripe, it does not match the hash")
        return read_from_pfs(self.transport, key, ref.drained, readers, failures)
