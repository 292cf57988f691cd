"""VersionWriter: pushes one new version of a file to benefactors, then commits it.

Chunks are hashed once. A chunk the namespace already holds is not sent at all: the writer starts
with the readable chunks of the path's previous version (asked of the manager in one batch at
open), and asks about the others in batches of QUERY_BATCH before sending them; a chunk repeated
within the file is sent once. The commit references held chunks, and the manager checks, in the
commit's transaction, that they are still readable (else DataLost: no version points at missing data).

Chunks to send are placed round-robin over a striping map and sent over one long-lived
bidirectional Put stream per benefactor, several chunks in flight on each. A ByteBudget bounds the
bytes not yet acknowledged (the write buffer): write() waits when it is spent. Acks free budget.

Faults: a benefactor that refuses (full) is excluded and its unacknowledged chunks go to a fresh
map; one that dies is excluded the same way, but if it had acknowledged chunks of this version
their bytes are gone from the buffer, so the write fails with DataLost and nothing is committed.
A hash mismatch reported by a benefactor fails the write (it means corruption, not bad luck).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from memstage.chunks import MAX_FRAME_DATA, MAX_KEYS_PER_CALL, ChunkKey
from memstage.client.connections import Connections
from memstage.errors import ChunkRejected, DataLost, DeploymentFull, MemstageError, from_rpc_error
from memstage.frames import encode_put_frame
from memstage.proto import benefactor_pb2, common_pb2, manager_pb2
from memstage.settings import ClientSettings

log = logging.getLogger(__name__)

QUERY_BATCH = 32  # chunks asked about in one FindChunks call


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk on its way, already encoded as Put frames: they hold the only copy of its bytes."""

    seq: int  # numbers the chunk within its write, for the ack
    key: ChunkKey
    frames: tuple[bytes, ...]


def encode_chunk(namespace: str, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
    header = benefactor_pb2.PutHeader(namespace=namespace, key=key.to_pb(), seq=seq)
    frames = [encode_put_frame(header, data[:MAX_FRAME_DATA])]
    for start in range(MAX_FRAME_DATA, len(data), MAX_FRAME_DATA):
        frames.append(encode_put_frame(None, data[start : start + MAX_FRAME_DATA]))
    return tuple(frames)


@dataclass(frozen=True, slots=True)
class Placement:
    id: str
    address: str


@dataclass(frozen=True, slots=True)
class WriteStats:
    bytes_written: int
    bytes_sent: int
    bytes_deduplicated: int
    chunks: int
    asb_seconds: float  # open .. all data acknowledged


@dataclass(frozen=True, slots=True)
class CommitResult:
    path: str
    version: int
    size: int
    stats: WriteStats
    oab_seconds: float  # open .. commit done (close as the application saw it, in commit mode)

    @property
    def asb(self) -> float:
        return self.size / self.stats.asb_seconds if self.stats.asb_seconds > 0 else float("inf")

    @property
    def oab(self) -> float:
        return self.size / self.oab_seconds if self.oab_seconds > 0 else float("inf")


class ByteBudget:
    """Bytes a writer may have unacknowledged; acquire() waits for acks, or raises the writer's error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, check: Callable[[], None]) -> None:
        with self._cond:
            while self._used > 0 and self._used + n > self.limit:
                check()
                self._cond.wait(0.5)
            check()
            self._used += n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class PutStream:
    """One Put call to one benefactor; chunks queue up and are acknowledged one by one."""

    def __init__(self, conn: Connections, placement: Placement,
                 on_ack: Callable[[PutStream, PendingChunk], None],
                 on_end: Callable[[PutStream, grpc.RpcError | None, list[PendingChunk]], None]) -> None:
        self.placement = placement
        self.closed = False
        self._on_ack = on_ack
        self._on_end = on_end
        self._queue: queue.SimpleQueue[PendingChunk | None] = queue.SimpleQueue()
        self._unacked: dict[int, PendingChunk] = {}
        self._lock = threading.Lock()
        self._responses = conn.put_stream(placement.address, self._frames())
        self._reader = threading.Thread(target=self._read_acks, name=f"put-{placement.id}", daemon=True)
        self._reader.start()

    def _frames(self) -> Iterator[bytes]:
        while (chunk := self._queue.get()) is not None:
            yield from chunk.frames

    def send(self, chunk: PendingChunk) -> None:
        with self._lock:
            self._unacked[chunk.seq] = chunk
        self._queue.put(chunk)

    def close(self) -> None:
        """No more chunks: the stream ends once the benefactor has acknowledged what it got."""
        if not self.closed:
            self.closed = True
            self._queue.put(None)

    def cancel(self) -> None:
        self.closed = True
        self._responses.cancel()
        self._queue.put(None)

    def _read_acks(self) -> None:
        error: grpc.RpcError | None = None
        try:
            for ack in self._responses:
                with self._lock:
                    chunk = self._unacked.pop(ack.seq, None)
                if chunk is not None:
                    self._on_ack(self, chunk)
        except grpc.RpcError as e:
            error = e
        self.closed = True
        self._queue.put(None)  # unblock the request iterator if the call ended early
        with self._lock:
            leftover, self._unacked = list(self._unacked.values()), {}
        self._on_end(self, error, leftover)


class VersionWriter:
    def __init__(self, conn: Connections, settings: ClientSettings, path: str, opened_at: float,
                 known: set[ChunkKey] | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.namespace = settings.namespace
        self.path = path
        self.opened_at = opened_at
        self._budget = ByteBudget(settings.buffer_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._keys: list[ChunkKey] = []
        # Where this write stored each chunk it sent (benefactor id), and when it last knew the chunk
        # held there: a long write keeps them from being taken for orphans (keep_alive).
        self._locations: dict[ChunkKey, dict[str, float]] = {}
        self._addresses: dict[str, str] = {}  # benefactor id -> address, of those that stored chunks
        self._done = False  # committed or aborted: nothing to keep alive any more
        self._seq = 0  # numbers the chunks sent, for their acks
        self._known: set[ChunkKey] = set(known or ())  # held by the namespace, or already sent by this write
        self._unasked: list[PendingChunk] = []  # new chunks waiting for a FindChunks batch
        self._unasked_bytes = 0
        self._in_flight = 0
        self._bytes_sent = 0
        self._bytes_deduplicated = 0
        self._size = 0
        self._error: MemstageError | None = None
        self._map: list[Placement] = []
        self._rr = 0
        self._excluded: set[str] = set()
        # Per benefactor, over all its streams: a benefactor that fails after acknowledging chunks
        # of this version has lost them.
        self._acked_by: dict[str, int] = {}
        self._full: set[str] = set()  # excluded because they refused for lack of space (may free up)
        self._full_logged = False
        self._streams: dict[str, PutStream] = {}
        self._finishing = False
        self._asb_done: float | None = None

    # -- called by the file object, in file order --------------------------------------------
    def add(self, data: memoryview) -> None:
        """Take the next chunk of the file. Its bytes are hashed and copied into frames before this
        returns, so the caller may reuse `data` at once."""
        self.place(self.put(data))

    def add_held(self, key: ChunkKey) -> None:
        """Reference a chunk the namespace already holds (e.g. unchanged since the previous version),
        without its bytes; the commit fails with DataLost if it is no longer readable by then."""
        self.place(key)
        with self._lock:
            self._bytes_deduplicated += key.length

    def place(self, key: ChunkKey) -> None:
        """Append a chunk already handed over with put() (or held) to the version's layout."""
        with self._lock:
            self._raise_if_failed()
            self._keys.append(key)
            self._size += key.length

    def put(self, data: memoryview) -> ChunkKey:
        """Hand a chunk over without placing it in the layout yet (a FUSE file sends chunks as they
        fill and lays the version out at commit). Copied before this returns, like add()."""
        key = ChunkKey.of(data)
        with self._lock:
            self._raise_if_failed()
            if key in self._known:  # not sent, not even copied
                self._bytes_deduplicated += len(data)
                return key
            self._known.add(key)
        self._budget.acquire(len(data), self._raise_if_failed)
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._in_flight += 1
        self._unasked.append(PendingChunk(seq, key, encode_chunk(self.namespace, seq, key, data)))
        self._unasked_bytes += len(data)
        # Ask at QUERY_BATCH chunks, or once half the buffer waits (the other half keeps streaming).
        if len(self._unasked) >= QUERY_BATCH or 2 * self._unasked_bytes >= self.settings.buffer_size:
            self._ask_and_send()
        return key

    def settle(self) -> None:
        """Wait until every chunk handed over so far is stored (or found held); streams stay open."""
        self._ask_and_send()
        with self._idle:
            while self._in_flight and self._error is None:
                self._idle.wait()
            self._raise_if_failed()

    def locate(self, key: ChunkKey) -> manager_pb2.VersionMap:
        """Where a chunk handed over earlier can be read back, as a one-chunk map (call settle() first)."""
        with self._lock:
            locations = [common_pb2.Location(benefactor_id=bf, address=self._addresses[bf])
                         for bf in sorted(self._locations.get(key, ()))]
        if locations:
            return manager_pb2.VersionMap(path=self.path, size=key.length,
                                          chunks=[manager_pb2.ChunkRef(key=key.to_pb(), locations=locations)])
        # Not sent by this write: the namespace held it already.
        return self.conn.call_manager(
            "LocateChunks", manager_pb2.NamespacedChunks(namespace=self.namespace, keys=[key.to_pb()]),
            f"reading back a chunk of {self.path}")

    def _ask_and_send(self) -> None:
        """Send the batch of new chunks, except those the namespace turns out to hold already."""
        batch, self._unasked, self._unasked_bytes = self._unasked, [], 0
        if not batch:
            return
        reply = self.conn.call_manager(
            "FindChunks", manager_pb2.NamespacedChunks(namespace=self.namespace, keys=[c.key.to_pb() for c in batch]),
            f"deduplication query for {self.path}")
        held = [c for c, present in zip(batch, reply.present, strict=True) if present]
        if held:
            nbytes = sum(c.key.length for c in held)
            with self._lock:
                self._bytes_deduplicated += nbytes
                self._in_flight -= len(held)
                if self._in_flight == 0:
                    self._idle.notify_all()
            self._budget.release(nbytes)
        for chunk, present in zip(batch, reply.present, strict=True):
            if not present:
                self._place(chunk)

    def finish(self) -> WriteStats:
        """Wait until every chunk is acknowledged (the ASB point); raise the write's error if any."""
        self._ask_and_send()
        with self._lock:
            self._finishing = True
            streams = list(self._streams.values())
        for s in streams:
            s.close()
        with self._idle:
            while self._in_flight and self._error is None:
                self._idle.wait()
            self._raise_if_failed()
            self._asb_done = time.perf_counter()
        return WriteStats(self._size, self._bytes_sent, self._bytes_deduplicated, len(self._keys),
                          self._asb_done - self.opened_at)

    def commit(self) -> int:
        refs = {key: [common_pb2.Location(benefactor_id=b) for b in sorted(locs)]
                for key, locs in self._locations.items()}
        chunks = [manager_pb2.ChunkRef(key=k.to_pb(), locations=refs.get(k, ())) for k in self._keys]
        now = time.perf_counter()
        # OAB's end is close() as the application sees it: all but this commit's round trip.
        stats = manager_pb2.ClientStats(bytes_written=self._size, bytes_sent=self._bytes_sent,
                                        bytes_deduplicated=self._bytes_deduplicated, oab_seconds=now - self.opened_at,
                                        asb_seconds=(self._asb_done or now) - self.opened_at)
        try:
            reply = self.conn.call_manager(
                "Commit", manager_pb2.CommitRequest(namespace=self.namespace, path=self.path, size=self._size,
                                                    chunks=chunks, stats=stats), f"commit of {self.path}")
        finally:
            self._done = True
        return int(reply.version)

    @property
    def done(self) -> bool:
        return self._done

    def keep_alive(self, age: float) -> None:
        """Tell benefactors that this write still needs the chunks it stored `age` seconds ago or more.
        Until the commit no version references them, and a benefactor takes chunks unconfirmed for
        orphan_grace for orphans. A chunk already gone fails the write (DataLost) now, not at read."""
        now = time.monotonic()
        with self._lock:
            if self._done or self._error is not None:
                return
            due: dict[str, list[ChunkKey]] = {}
            for key, held in self._locations.items():
                for bf, since in held.items():
                    if now - since >= age:
                        due.setdefault(bf, []).append(key)
            addresses = dict(self._addresses)
        for bf, keys in due.items():
            for start in range(0, len(keys), MAX_KEYS_PER_CALL):
                batch = keys[start : start + MAX_KEYS_PER_CALL]
                request = benefactor_pb2.ChunkList(namespace=self.namespace, keys=[k.to_pb() for k in batch], keep=True)
                try:
                    present = self.conn.keep_chunks(addresses[bf], request)
                except grpc.RpcError as e:
                    # A dead benefactor also ends this write's stream to it, which fails the write.
                    log.info("keep-alive of %s on %s deferred (%s)", self.path, bf,
                             e.code() if isinstance(e, grpc.Call) else e)
                    break
                gone = [k for k, held in zip(batch, present, strict=True) if not held]
                if gone:
                    self._fail(DataLost(f"write of {self.path}: benefactor {bf} no longer holds {len(gone)} "
                                        f"chunks it stored earlier; nothing was committed, write the file again"))
                    return
                with self._lock:
                    for k in batch:
                        self._locations[k][bf] = now

    def abort(self) -> None:
        """Drop the write: nothing is committed; chunks already stored are garbage to the benefactors."""
        with self._lock:
            self._done = True
            if self._error is None:
                self._error = MemstageError(f"write of {self.path} was aborted")
            streams = list(self._streams.values())
            self._idle.notify_all()
        for s in streams:
            s.cancel()
        self._budget.wake()

    # -- placement ---------------------------------------------------------------------------
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            # The same error is raised on every later call: do not let its traceback grow each time.
            raise self._error.with_traceback(None)

    def _fail(self, error: MemstageError) -> None:
        with self._lock:
            if self._error is None:
                self._error = error
            streams = list(self._streams.values())
            self._idle.notify_all()
        for s in streams:
            s.cancel()
        self._budget.wake()

    def _place(self, chunk: PendingChunk) -> None:
        try:
            stream = self._stream_for_next()
        except MemstageError as e:
            self._fail(e)
            return
        except Exception as e:  # on a reader thread nothing may escape: the write fails instead
            self._fail(MemstageError(f"write of {self.path}: {e}"))
            return
        stream.send(chunk)
        if self._finishing:
            stream.close()  # a chunk re-placed after finish() began: its stream ends right after it

    def _stream_for_next(self) -> PutStream:
        while True:
            with self._lock:
                self._raise_if_failed()
                # Another thread may empty the map (excluding a failed benefactor) at any time: check here.
                if self._map:
                    placement = self._map[self._rr % len(self._map)]
                    self._rr += 1
                    stream = self._streams.get(placement.id)
                    if stream is None or stream.closed:
                        stream = PutStream(self.conn, placement, self._on_ack, self._on_end)
                        self._streams[placement.id] = stream
                    return stream
            self._refresh_map()

    def _refresh_map(self) -> None:
        """A new striping map. When the deployment is full, wait (up to full_wait) for draining or
        retention to free space; benefactors that refused for fullness are asked again then."""
        deadline = time.monotonic() + self.settings.full_wait
        pause = 0.1
        while True:
            try:
                reply = self.conn.call_manager(
                    "GetStripingMap",
                    manager_pb2.StripingRequest(namespace=self.namespace, width=self.settings.stripe_width,
                                                exclude=sorted(self._excluded), chunk_size=self.settings.chunk_size),
                    f"striping map for {self.path}")
                with self._lock:
                    self._map = [Placement(b.benefactor_id, b.address) for b in reply.benefactors
                                 if b.benefactor_id not in self._excluded]
                    if self._map:
                        return
                # Every entry failed while the call was under way: ask again with the longer exclusion list.
                continue
            except DeploymentFull:
                if time.monotonic() + pause > deadline or self._error is not None:
                    raise
                if not self._full_logged:
                    log.info("deployment full: %s waits up to %.0fs for space", self.path, self.settings.full_wait)
                    self._full_logged = True
                time.sleep(pause)
                pause = min(1.0, pause * 2)
                with self._lock:
                    self._excluded -= self._full
                    self._full.clear()

    # -- stream callbacks (reader threads) ---------------------------------------------------
    def _on_ack(self, stream: PutStream, chunk: PendingChunk) -> None:
        with self._lock:
            bf = stream.placement.id
            self._acked_by[bf] = self._acked_by.get(bf, 0) + 1
            self._addresses[bf] = stream.placement.address
            self._locations.setdefault(chunk.key, {})[bf] = time.monotonic()
            self._bytes_sent += chunk.key.length
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()
        self._budget.release(chunk.key.length)

    def _on_end(self, stream: PutStream, error: grpc.RpcError | None, leftover: list[PendingChunk]) -> None:
        bf = stream.placement.id
        with self._lock:
            if self._streams.get(bf) is stream:
                del self._streams[bf]
            aborted = self._error is not None
            acked = self._acked_by.get(bf, 0)
        if aborted:
            return
        if error is None and not leftover:
            return
        code = error.code() if isinstance(error, grpc.Call) else None
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._fail(ChunkRejected(f"write of {self.path}: benefactor {bf} rejected a chunk: {error.details()}"))
            return
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED and acked:
            reason = from_rpc_error(error, f"benefactor {bf}") if error is not None else "stream ended early"
            self._fail(DataLost(f"write of {self.path}: benefactor {bf} failed after acknowledging "
                                f"{acked} chunks ({reason}); nothing was committed, write the file again"))
            return
        log.info("benefactor %s %s; re-placing %d chunks", bf,
                 "is full" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else f"failed ({code})", len(leftover))
        with self._lock:
            self._excluded.add(bf)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._full.add(bf)
            self._map = [p for p in self._map if p.id not in self._excluded]
        for chunk in leftover:
            if self._error is not None:  # failed meanwhile (another stream, or the application)
                return
            self._place(chunk)


@dataclass(slots=True)
class BackgroundCommits:
    """Commits of files closed in buffered mode; sync() waits for them and raises the first error."""

    _threads: list[threading.Thread] = field(default_factory=list)
    _errors: list[BaseException] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, job: Callable[[], object]) -> None:
        def run() -> None:
            try:
                job()
            except BaseException as e:  # surfaced by sync(), never lost
                log.error("background commit failed: %s", e)
                with self._lock:
                    self._errors.append(e)

        t = threading.Thread(target=run, name="commit", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def sync(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join()
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]
