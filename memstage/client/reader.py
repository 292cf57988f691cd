"""VersionReader: byte ranges of one committed version, fetched chunk by chunk from benefactors.

The version map is taken once at open, so a reader keeps seeing the version it opened even while
a newer one is committed. Chunks of a range are fetched in parallel, and a sequential reader's
next ones before it asks (memstage.client.stream says which). Each is verified against its hash,
and a failing location falls back to the next one the map lists, then (rs:K+M) to rebuilding it
from K other members of its stripe, then to the PFS copy (read by any live benefactor, so the
client need not mount the PFS). A version that left memory while being read (retention) is looked
up again once: its chunks are on the PFS by then.
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
from memstage.client.chunkcache import ChunkCache
from memstage.client.connections import Connections
from memstage.client.stream import ReadAhead
from memstage.errors import DataLost, MemstageError
from memstage.proto import common_pb2, manager_pb2
from memstage.stripes import StripeUnavailable, build_member
from memstage.transport import ChunkTransport, read_from_memory, read_from_pfs

_RECENT = 16  # chunks a reader keeps for the stripes it may rebuild


class VersionReader:
    def __init__(self, conn: Connections, transport: ChunkTransport, namespace: str, vmap: manager_pb2.VersionMap,
                 pool: ThreadPoolExecutor, read_ahead: int = 0, on_degraded: Callable[[], object] | None = None,
                 cache: ChunkCache | None = None):
        self.conn = conn
        self._sent = cache  # chunks this client sent lately: read from there first
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
        # Recent and read-ahead chunk fetches: callers that read in pieces smaller than a chunk
        # fetch each chunk once, and a sequential reader finds the next ones already on their way.
        chunk = next((k.length for k in self.keys if not k.is_hole), 1)
        self._ahead = max(1, read_ahead // chunk) if read_ahead else 0
        self._stream = ReadAhead(self._ahead, len(self.keys))
        self._cache: OrderedDict[int, Future[bytes | memoryview]] = OrderedDict()
        self._delivered: dict[int, int] = {}  # bytes of a cached chunk read so far
        self._cache_lock = threading.Lock()  # also guards _stream and _delivered
        # Chunks fetched lately, by key: a stripe rebuilt for a degraded read takes the members the
        # reader has already instead of fetching them again. Kept only once the reader has rebuilt a
        # chunk: a reader of a healthy version holds no more than its read-ahead.
        self._recent: OrderedDict[ChunkKey, bytes | memoryview] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._rebuilding = False
        self._fresh: manager_pb2.VersionMap | None = None  # the map asked again after a failure
        self._fresh_at = 0.0
        self._fresh_lock = threading.Lock()

    def read_range(self, start: int, end: int, ahead: bool = True) -> bytes:
        return b"".join(self.read_parts(start, end, ahead))

    def read_parts(self, start: int, end: int, ahead: bool = True) -> list[bytes | memoryview]:
        """The bytes of [start, end) as pieces of the chunks fetched, for a caller that copies them
        on anyway (the mount, into the kernel's buffer): joining them would copy every byte once more.
        `ahead` False: a read that is no stream (a chunk patched in place) starts no read-ahead."""
        end = min(end, self.size)
        if start >= end:
            return []
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_right(self._starts, end - 1) - 1
        indices = [i for i in range(first, last + 1) if not self.keys[i].is_hole]  # holes are zeros, not fetched
        if self._ahead and ahead:
            # What this read needs is asked for first, then what the stream will need next.
            with self._cache_lock:
                futures = [self._cached(i) for i in indices]
                for i in indices:
                    self._deliver(i, max(start, self._starts[i]), min(end, self._starts[i] + self.keys[i].length))
                for i in self._stream.read(first, last):
                    if not self.keys[i].is_hole:
                        self._cached(i)
            parts = [f.result() for f in futures]
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
        return views

    def _cached(self, index: int) -> Future[bytes | memoryview]:
        """The fetch of chunk `index`, started unless it is under way or done (call with _cache_lock)."""
        future = self._cache.get(index)
        if future is None:
            future = self._cache[index] = self._pool.submit(self.fetch, index)
            while len(self._cache) > 2 * self._ahead + 2:
                self._delivered.pop(self._cache.popitem(last=False)[0], None)  # the least recently asked for
        else:
            self._cache.move_to_end(index)
        return future

    def _deliver(self, index: int, start: int, end: int) -> None:
        """Bytes start..end of chunk `index` are being read (call with _cache_lock). Once all of it
        has been, it leaves the cache: room for the chunks still to come, which out-of-order readers
        (the kernel's) ask for late. Read again, it is fetched again."""
        done = self._delivered.get(index, 0) + end - start
        if done < self.keys[index].length:
            self._delivered[index] = done
        else:
            self._delivered.pop(index, None)
            self._cache.pop(index, None)

    def fetched_ahead(self) -> list[int]:
        """Chunks fetched, or on their way, past the furthest one read: the stream's read-ahead."""
        with self._cache_lock:
            return sorted(i for i in self._cache if i > self._stream.pos)

    def fetch(self, index: int) -> bytes | memoryview:
        key = self.keys[index]
        if self._sent is not None and (kept := self._sent.get(key)) is not None:
            return kept
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
        if self._rebuilding:
            with self._recent_lock:
                self._recent[key] = data
                while len(self._recent) > _RECENT:
                    self._recent.popitem(last=False)
        return data

    def _known(self, key: ChunkKey) -> bytes | memoryview | None:
        with self._recent_lock:
            return self._recent.get(key)

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
                self._rebuilding = True
                data, _ = build_member(self.transport, self.namespace, ref.stripe, readers, self._known)
            except StripeUnavailable as e:
                failures.append(f"rebuilding it: {e}")
            else:
                if key.matches(data):
                    return data
                failures.append("rebuilt from its stripe, it does not match the hash")
        return read_from_pfs(self.transport, key, ref.drained, readers, failures)
