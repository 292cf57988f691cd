"""VersionWriter: pushes one new version of a file to benefactors, then commits it.

Chunks are hashed once. A chunk the namespace already holds is not sent at all: the writer starts
with the readable chunks of the path's previous version (asked of the manager in one batch at
open), and asks about the others in batches of QUERY_BATCH before sending them; a chunk repeated
within the file is sent once. The commit references held chunks, and the manager checks, in the
commit's transaction, that they are still readable (else DataLost: no version points at missing data).

A write is a session at the manager (a lease the Client renews for every open writer): what it
stores belongs to the session until the commit turns it into references. Each acknowledgement
carries the benefactor's receipt, and the commit passes them on: the manager records only
locations a benefactor confirmed. abort() ends the session, which frees what it stored at once; a
chunk handed over and then no longer needed (a FUSE file rewritten in place) is released early.

Chunks to send are placed round-robin over a striping map and sent over one long-lived
bidirectional Put stream per benefactor, several chunks in flight on each. A ByteBudget, shared by
every writer of a Client, bounds the bytes not yet acknowledged (the write buffer): write() waits
when it is spent. Acks free budget.

Faults: a benefactor that refuses (full) is excluded and its unacknowledged chunks go to a fresh
map; one that dies is excluded the same way, but if it had acknowledged chunks of this version
their bytes are gone from the buffer, so the write fails with DataLost and nothing is committed.
A hash mismatch reported by a benefactor fails the write (it means corruption, not bad luck).
Ack-reader threads only post events: re-placing chunks (which may ask the manager for a map, or
wait for space) happens on the writing thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from memstage.chunks import MAX_FRAME_DATA, ChunkKey
from memstage.client.connections import Connections
from memstage.errors import ChunkRejected, DataLost, DeploymentFull, MemstageError, from_rpc_error
from memstage.frames import encode_put_frame
from memstage.proto import benefactor_pb2, common_pb2, manager_pb2
from memstage.settings import ClientSettings

log = logging.getLogger(__name__)

QUERY_BATCH = 32  # chunks asked about in one FindChunks call
RELEASE_BATCH = 16  # chunks released in one ReleaseChunks call


@dataclass(frozen=True, slots=True)
class PendingChunk:
    """A chunk on its way, already encoded as Put frames: they hold the only copy of its bytes."""

    seq: int  # numbers the chunk within its write, for the ack
    key: ChunkKey
    frames: tuple[bytes, ...]


def encode_chunk(namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
    header = benefactor_pb2.PutHeader(namespace=namespace, key=key.to_pb(), seq=seq, session=session)
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
    """Bytes the writers of a Client may have unacknowledged together; acquire() waits for acks,
    calling `service` meanwhile (it raises the writer's error, and does work posted by acks)."""

    def __init__(self, limit: int, on_pressure: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()
        # Called when a writer has waited a while: other writers' chunks still waiting for their
        # deduplication batch hold budget too, and an idle writer would never send them.
        self._on_pressure = on_pressure

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, n: int, service: Callable[[], None]) -> None:
        waits = 0
        while True:
            with self._cond:
                if self._used == 0 or self._used + n <= self.limit:
                    self._used += n
                    return
                self._cond.wait(0.5)
            service()
            waits += 1
            if waits % 2 == 0 and self._on_pressure is not None:
                self._on_pressure()

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
                 on_ack: Callable[[PutStream, PendingChunk, bytes], None],
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

    def send(self, chunk: PendingChunk) -> bool:
        """Queue a chunk; False if the stream is closed already (the caller places it elsewhere):
        nothing may queue up behind the end-of-stream marker."""
        with self._lock:
            if self.closed:
                return False
            self._unacked[chunk.seq] = chunk
            self._queue.put(chunk)
            return True

    def close(self) -> None:
        """No more chunks: the stream ends once the benefactor has acknowledged what it got."""
        with self._lock:
            if not self.closed:
                self.closed = True
                self._queue.put(None)

    def cancel(self) -> None:
        with self._lock:
            self.closed = True
            self._queue.put(None)
        self._responses.cancel()

    def _read_acks(self) -> None:
        error: grpc.RpcError | None = None
        try:
            for ack in self._responses:
                with self._lock:
                    chunk = self._unacked.pop(ack.seq, None)
                if chunk is not None:
                    self._on_ack(self, chunk, ack.receipt)
        except grpc.RpcError as e:
            error = e
        with self._lock:
            self.closed = True
            self._queue.put(None)  # unblock the request iterator if the call ended early
            leftover, self._unacked = list(self._unacked.values()), {}
        self._on_end(self, error, leftover)


class VersionWriter:
    def __init__(self, conn: Connections, settings: ClientSettings, path: str, opened_at: float,
                 known: set[ChunkKey] | None = None, budget: ByteBudget | None = None) -> None:
        self.conn = conn
        self.settings = settings
        self.namespace = settings.namespace
        self.path = path
        self.opened_at = opened_at
        reply = conn.call_manager("OpenSession", manager_pb2.OpenSessionRequest(namespace=self.namespace, path=path),
                                  f"write of {path}")
        self.session: int = reply.session
        self.lease: float = reply.lease_seconds
        self._budget = budget if budget is not None else ByteBudget(settings.buffer_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._keys: list[ChunkKey] = []
        # Where this write stored each chunk it sent: benefactor id -> the benefactor's receipt.
        self._locations: dict[ChunkKey, dict[str, bytes]] = {}
        self._addresses: dict[str, str] = {}  # benefactor id -> address, of those that stored chunks
        self._done = False  # committed or aborted: the session is over
        self._seq = 0  # numbers the chunks sent, for their acks
        self._known: set[ChunkKey] = set(known or ())  # held by the namespace, or already sent by this write
        self._needed: dict[ChunkKey, int] = {}  # chunks this write sent -> handovers not released
        self._sending: set[ChunkKey] = set()  # sent, not acknowledged (or found held) yet
        self._release_on_ack: set[ChunkKey] = set()
        self._releases: dict[ChunkKey, list[str]] = {}  # acknowledged chunks no longer needed, to release
        self._unasked: list[PendingChunk] = []  # new chunks waiting for a FindChunks batch
        self._unasked_bytes = 0
        self._unasked_lock = threading.Lock()  # another writer's thread may flush them (budget pressure)
        self._to_place: list[PendingChunk] = []  # chunks of failed or full streams, for the writing thread
        self._in_flight = 0
        self._budgeted: dict[int, int] = {}  # seq -> bytes of the shared budget it holds until acked
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
        fill and lays the version out at commit). Copied before this returns, like add(). Each put
        of a chunk this write sends is matched by a release() once the caller no longer needs it."""
        key = ChunkKey.of(data)
        if len(self._releases) >= RELEASE_BATCH:  # released on acks meanwhile
            self._flush_releases()
        with self._lock:
            self._raise_if_failed()
            if key in self._needed or (key in self._sending and key in self._release_on_ack):
                self._needed[key] = self._needed.get(key, 0) + 1
                self._release_on_ack.discard(key)
                self._bytes_deduplicated += len(data)
                return key
            if key in self._known:  # held by the namespace: not sent, not even copied
                self._bytes_deduplicated += len(data)
                return key
            self._known.add(key)
            self._needed[key] = 1
            self._sending.add(key)
        self._budget.acquire(len(data), self._service)
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._in_flight += 1
            self._budgeted[seq] = len(data)
            failed = self._error is not None
        if failed:
            self._give_back_budget()
            self._raise_if_failed()
        pending = PendingChunk(seq, key, encode_chunk(self.namespace, self.session, seq, key, data))
        with self._unasked_lock:
            self._unasked.append(pending)
            self._unasked_bytes += len(data)
            # Ask at QUERY_BATCH chunks, or once half the buffer waits (the other half keeps streaming).
            due = len(self._unasked) >= QUERY_BATCH or 2 * self._unasked_bytes >= self._budget.limit
        if due:
            self._ask_and_send()
        return key

    def release(self, key: ChunkKey) -> None:
        """The caller no longer needs one put() of this chunk (it was rewritten before the commit).
        Once no put of it is needed, the benefactors holding it for this write free it."""
        with self._lock:
            count = self._needed.get(key, 0)
            if count <= 0:
                return  # not sent by this write (the namespace holds it)
            if count > 1:
                self._needed[key] = count - 1
                return
            del self._needed[key]
            if key in self._sending:
                self._release_on_ack.add(key)  # released when its ack arrives
            else:
                self._release_acked(key)
            full = len(self._releases) >= RELEASE_BATCH
        if full:
            self._flush_releases()

    def _release_acked(self, key: ChunkKey) -> None:
        """(under self._lock) An acknowledged chunk nobody here needs: release it; sent again if put again."""
        holders = self._locations.pop(key, {})
        self._known.discard(key)
        if holders:
            self._releases.setdefault(key, []).extend(holders)

    def _flush_releases(self) -> None:
        with self._lock:
            releases, self._releases = self._releases, {}
        if not releases or self._done:
            return
        chunks = [manager_pb2.ChunkRef(key=k.to_pb(), locations=[common_pb2.Location(benefactor_id=b) for b in bfs])
                  for k, bfs in releases.items()]
        try:
            self.conn.call_manager("ReleaseChunks", manager_pb2.ReleaseRequest(
                session=self.session, namespace=self.namespace, chunks=chunks), f"write of {self.path}")
        except MemstageError as e:  # not fatal: the session's end frees them anyway
            log.info("releasing %d rewritten chunks of %s deferred to its commit (%s)", len(chunks), self.path, e)

    def settle(self) -> None:
        """Wait until every chunk handed over so far is stored (or found held); streams stay open."""
        self._ask_and_send()
        self._wait_acked()
        self._flush_releases()

    def _wait_acked(self) -> None:
        while True:
            self._service()
            with self._idle:
                if not self._in_flight or self._error is not None:
                    break
                if not self._to_place:
                    self._idle.wait(0.5)
        self._raise_if_failed()

    def _service(self) -> None:
        """On the writing thread: raise the write's error, and re-place what failed streams left."""
        self._raise_if_failed()
        while True:
            with self._lock:
                batch, self._to_place = self._to_place, []
            if not batch:
                return
            for chunk in batch:
                self._place(chunk)
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

    def flush(self) -> None:
        """Send what waits for a deduplication batch now (from any thread; errors fail the write)."""
        if self._done or self._error is not None:
            return
        try:
            self._ask_and_send()
        except MemstageError as e:
            self._fail(e)

    def _ask_and_send(self) -> None:
        """Send the batch of new chunks, except those the namespace turns out to hold already."""
        with self._unasked_lock:
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
                returned = sum(self._budgeted.pop(c.seq, 0) for c in held)
                self._bytes_deduplicated += nbytes
                self._in_flight -= len(held)
                for c in held:  # the namespace's, not this write's: nothing to release
                    self._sending.discard(c.key)
                    self._release_on_ack.discard(c.key)
                    self._needed.pop(c.key, None)
                if self._in_flight == 0:
                    self._idle.notify_all()
            self._budget.release(returned)
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
        self._wait_acked()
        self._asb_done = time.perf_counter()
        return WriteStats(self._size, self._bytes_sent, self._bytes_deduplicated, len(self._keys),
                          self._asb_done - self.opened_at)

    def commit(self) -> int:
        """Commit the layout; the session ends either way (what the version does not reference is freed)."""
        with self._lock:
            refs = {key: [common_pb2.Location(benefactor_id=b, receipt=r) for b, r in sorted(locs.items())]
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
                                                    chunks=chunks, stats=stats, session=self.session),
                f"commit of {self.path}")
        finally:
            self._done = True
        return int(reply.version)

    @property
    def done(self) -> bool:
        return self._done

    def expired(self) -> None:
        """The manager says the session is over (lease ran out): what it stored is gone."""
        self._fail(DataLost(f"write of {self.path}: its write session expired (not renewed within "
                            f"{self.lease:.0f}s) and its chunks were freed; nothing was committed, "
                            "write the file again"))

    def abort(self) -> None:
        """Drop the write: nothing is committed, and what it stored is freed now."""
        with self._lock:
            was_done, self._done = self._done, True
            if self._error is None:
                self._error = MemstageError(f"write of {self.path} was aborted")
            streams = list(self._streams.values())
            self._idle.notify_all()
        for s in streams:
            s.cancel()
        self._give_back_budget()
        if not was_done:
            try:
                self.conn.call_manager("AbortSession", manager_pb2.SessionRequest(session=self.session),
                                       f"abort of {self.path}")
            except MemstageError as e:  # the lease ends it anyway
                log.info("abort of %s: the manager will free its chunks when the lease ends (%s)", self.path, e)

    def _give_back_budget(self) -> None:
        """A failed or aborted write gives back what it held of the shared budget (each chunk once:
        an ack arriving later finds nothing to give back)."""
        with self._lock:
            held = sum(self._budgeted.values())
            self._budgeted.clear()
            self._to_place = []
        with self._unasked_lock:
            self._unasked, self._unasked_bytes = [], 0
        if held:
            self._budget.release(held)
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
        self._give_back_budget()

    def _place(self, chunk: PendingChunk) -> None:
        """On the writing thread: send a chunk on the next stream of the map (a fresh map if needed)."""
        while True:
            try:
                stream = self._stream_for_next()
            except MemstageError as e:
                self._fail(e)
                return
            if stream.send(chunk):
                break
            # Closed under us (it failed, or finish() ended it): forget it and take the next one.
            with self._lock:
                if self._streams.get(stream.placement.id) is stream:
                    del self._streams[stream.placement.id]
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
                                                exclude=sorted(self._excluded), chunk_size=self.settings.chunk_size,
                                                session=self.session),
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

    # -- stream callbacks (reader threads: they only record and post, never call out) ----------
    def _on_ack(self, stream: PutStream, chunk: PendingChunk, receipt: bytes) -> None:
        with self._lock:
            bf = stream.placement.id
            self._acked_by[bf] = self._acked_by.get(bf, 0) + 1
            self._addresses[bf] = stream.placement.address
            self._locations.setdefault(chunk.key, {})[bf] = receipt
            self._sending.discard(chunk.key)
            if chunk.key in self._release_on_ack:
                self._release_on_ack.discard(chunk.key)
                self._release_acked(chunk.key)
            self._bytes_sent += chunk.key.length
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()
            returned = self._budgeted.pop(chunk.seq, 0)
        if returned:
            self._budget.release(returned)

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
            self._to_place.extend(leftover)
            self._idle.notify_all()
        self._budget.wake()


class BackgroundCommits:
    """Commits of files closed in buffered mode, on a few threads; sync() waits for them and raises
    the first error."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="memstage-commit")
        self._futures: list[Future[object]] = []
        self._lock = threading.Lock()

    def start(self, job: Callable[[], object]) -> None:
        def run() -> object:
            try:
                return job()
            except BaseException as e:  # surfaced by sync(), never lost
                log.error("background commit failed: %s", e)
                raise

        with self._lock:
            self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
            self._futures.append(self._pool.submit(run))

    def sync(self) -> None:
        with self._lock:
            futures, self._futures = self._futures, []
        errors = [e for f in futures if (e := f.exception()) is not None]
        if errors:
            raise errors[0]
