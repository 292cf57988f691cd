"""VersionWriter: the I/O layer of one write: drives a WriteState over a ChunkTransport and the manager.

Chunks are hashed once. A chunk the namespace already holds is not sent at all: the writer starts
with the readable chunks of the path's previous version (asked of the manager in one batch at
open), and asks about the others in batches before sending them; a chunk repeated within the file
is sent once. The commit references held chunks, and the manager checks, in the commit's
transaction, that they are still readable (else DataLost: no version points at missing data).

A write is a session at the manager (a lease the Client renews for every open writer): what it
stores belongs to the session until the commit turns it into references. Each acknowledgement
carries the benefactor's receipt, and the commit passes them on: the manager records only
locations a benefactor confirmed. abort() ends the session, which frees what it stored at once; a
chunk handed over and then no longer needed (a FUSE file rewritten in place) is released early.

What to do is decided by the WriteState (pure); this layer carries out its instructions. Chunks go
over one long-lived stream per benefactor, several in flight on each. A ByteBudget, shared by every
writer of a Client, bounds the bytes not yet acknowledged (the write buffer): write() waits when it
is spent. Transport threads only post events; asking the manager (deduplication, maps, releases)
happens on the writing thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from memstage import commitpack
from memstage.chunks import ChunkKey
from memstage.client.chunkcache import ChunkCache
from memstage.client.connections import Connections
from memstage.client.filestat import FileStat
from memstage.client.writestate import (
    Ask,
    CloseStreams,
    Failed,
    Instruction,
    NeedMap,
    Release,
    Resolved,
    Send,
    WriteState,
)
from memstage.errors import Conflict, DataLost, DeploymentFull, MemstageError, Unavailable
from memstage.placement import Placement, StreamEnd
from memstage.proto import common_pb2, manager_pb2
from memstage.settings import ClientSettings
from memstage.transport import ChunkStream, ChunkTransport, GrpcTransport

log = logging.getLogger(__name__)

QUERY_BATCH = 32  # chunks asked about in one FindChunks call
RELEASE_BATCH = 16  # chunks released in one ReleaseChunks call

__all__ = ["ByteBudget", "BackgroundCommits", "CommitResult", "Placement", "VersionWriter", "WriteStats"]


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
    info: FileStat | None = None  # the file as committed, when the writer asked (want_info)

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


class VersionWriter:
    def __init__(self, conn: Connections, settings: ClientSettings, path: str, opened_at: float,
                 known: set[ChunkKey] | None = None, budget: ByteBudget | None = None,
                 transport: ChunkTransport | None = None, closing: threading.Event | None = None,
                 session: manager_pb2.SessionReply | None = None, cache: ChunkCache | None = None) -> None:
        """session: one opened ahead for this namespace (see memstage.client.spares), else one is opened;
        cache: where chunks changed in place (put with ask=False) are kept to be read back."""
        self.conn = conn
        self._closing = closing if closing is not None else threading.Event()  # set: the client is shutting down
        self.settings = settings
        self.namespace = settings.namespace
        self.path = path
        self.opened_at = opened_at
        self._transport: ChunkTransport = transport if transport is not None else GrpcTransport(conn)
        self._cache = cache
        self._budget = budget if budget is not None else ByteBudget(settings.buffer_size)
        # The first striping map comes with the session (an older manager gives none: it is then
        # asked for when the first chunk needs one).
        reply = session or conn.call_manager("OpenSession", manager_pb2.OpenSessionRequest(
            namespace=self.namespace, path=path, striping=manager_pb2.StripingRequest(
                width=settings.stripe_width, chunk_size=settings.chunk_size)), f"write of {path}")
        self.session: int = reply.session
        self.lease: float = reply.lease_seconds
        self._state = WriteState(path, QUERY_BATCH, max(1, self._budget.limit // 2), RELEASE_BATCH,
                                 known=set(known or ()))
        self._mapped_at_open = bool(reply.map.benefactors)  # then some benefactor had room for a chunk
        if self._mapped_at_open:
            self._state.map_received([Placement(b.benefactor_id, b.address) for b in reply.map.benefactors])
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._frames: dict[int, tuple[bytes, ...]] = {}  # seq -> the chunk's only copy while in flight
        self._streams: dict[str, ChunkStream] = {}
        self._addresses: dict[str, str] = {}  # benefactor id -> address
        self._io: list[Ask | NeedMap | Release] = []  # blocking work for the writing thread
        self._done = False  # committed or aborted: the session is over
        self.want_info = False  # the commit's reply brings the file's attributes (a mount caches them)
        self.info: FileStat | None = None
        # The explicit checkpoint (Client.checkpoint) the version belongs to when it is committed.
        self.checkpoint: Callable[[], int | None] = lambda: None
        self._asb_done: float | None = None

    # -- the state machine's instructions ------------------------------------------------------
    def _apply(self, instructions: list[Instruction]) -> int:
        """Carry out what needs no waiting (under self._lock); queue the rest for the writing
        thread. Returns the budget bytes to give back once the lock is released."""
        give = 0
        for ins in instructions:
            if isinstance(ins, Send):
                frames = self._frames.get(ins.seq)
                if frames is None:
                    continue
                self._addresses[ins.placement.id] = ins.placement.address
                stream = self._stream(ins.placement)
                while not stream.send(ins.seq, frames):  # closed under us: a fresh stream
                    stream = self._stream(ins.placement, fresh=True)
                if ins.close_after:
                    stream.close()
            elif isinstance(ins, Resolved):
                for seq in ins.seqs:
                    self._frames.pop(seq, None)
                give += ins.nbytes
            elif isinstance(ins, CloseStreams):
                for s in self._streams.values():
                    s.close()
            elif isinstance(ins, Failed):
                for s in self._streams.values():
                    s.cancel()
                self._budget.wake()
            else:
                self._io.append(ins)
        self._cond.notify_all()
        return give

    def _event(self, handler: Callable[..., list[Instruction]], *args: object) -> None:
        with self._lock:
            give = self._apply(handler(*args))
        if give:
            self._budget.release(give)

    def _stream(self, placement: Placement, fresh: bool = False) -> ChunkStream:
        stream = self._streams.get(placement.id)
        if stream is None or stream.closed or fresh:
            bf = placement.id

            def on_ack(seq: int, receipt: bytes) -> None:
                self._event(self._state.acked, bf, seq, receipt)

            def on_end(reason: StreamEnd, detail: str, leftover: list[int]) -> None:
                # One step: whoever sees the stream gone sees what its end did to the write.
                with self._lock:
                    if self._streams.get(bf) is stream:
                        del self._streams[bf]
                    give = self._apply(self._state.stream_ended(bf, reason, detail, leftover))
                if give:
                    self._budget.release(give)

            stream = self._transport.open_stream(placement, on_ack, on_end)
            self._streams[bf] = stream
        return stream

    def _service(self) -> None:
        """On a writing thread: carry out the blocking instructions, then raise the write's error."""
        while True:
            with self._lock:
                if not self._io or self._state.error is not None:
                    break
                ins = self._io.pop(0)
            try:
                if isinstance(ins, Ask):
                    reply = self.conn.call_manager(
                        "FindChunks", manager_pb2.NamespacedChunks(namespace=self.namespace,
                                                                   keys=[k.to_pb() for k in ins.keys]),
                        f"deduplication query for {self.path}")
                    self._event(self._state.found, ins.seqs, list(reply.present))
                elif isinstance(ins, NeedMap):
                    placements, retried = self._striping_map(ins)
                    self._event(self._state.map_received, placements, retried)
                else:
                    self._release(ins)
            except MemstageError as e:
                self._event(self._state.fail, e)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        error = self._state.error
        if error is not None:
            # The same error is raised on every later call: do not let its traceback grow each time.
            raise error.with_traceback(None)

    def _striping_map(self, need: NeedMap) -> tuple[list[Placement], bool]:
        """A new striping map. When the deployment is full, wait (up to full_wait) for draining or
        retention to free space; benefactors that refused for fullness are asked again then."""
        deadline = time.monotonic() + self.settings.full_wait
        pause = 0.1
        exclude, retried = set(need.exclude), False
        while True:
            try:
                reply = self.conn.call_manager(
                    "GetStripingMap",
                    manager_pb2.StripingRequest(namespace=self.namespace, width=self.settings.stripe_width,
                                                exclude=sorted(exclude), chunk_size=self.settings.chunk_size,
                                                session=self.session),
                    f"striping map for {self.path}")
                return [Placement(b.benefactor_id, b.address) for b in reply.benefactors], retried
            except DeploymentFull as e:
                if time.monotonic() + pause > deadline or self._state.error is not None:
                    raise
                log.info("%s; %s waits up to %.0fs for space", e, self.path, self.settings.full_wait)
                if self._closing.wait(pause):
                    raise Unavailable(f"write of {self.path}: the client is shutting down (it was waiting for "
                                      "space)") from None
                pause = min(1.0, pause * 2)
                exclude, retried = exclude - set(need.full), True

    def _release(self, release: Release) -> None:
        chunks = [manager_pb2.ChunkRef(key=k.to_pb(), locations=[common_pb2.Location(benefactor_id=b) for b in bfs])
                  for k, bfs in release.chunks]
        try:
            self.conn.call_manager("ReleaseChunks", manager_pb2.ReleaseRequest(
                session=self.session, namespace=self.namespace, chunks=chunks), f"write of {self.path}")
        except MemstageError as e:  # not fatal: the session's end frees them anyway
            log.info("releasing %d rewritten chunks of %s deferred to its commit (%s)", len(chunks), self.path, e)

    # -- called by the file object, in file order --------------------------------------------
    def add(self, data: memoryview) -> None:
        """Take the next chunk of the file. Its bytes are hashed and copied into frames before this
        returns, so the caller may reuse `data` at once."""
        self.place(self.put(data))

    def add_held(self, key: ChunkKey) -> None:
        """Reference a chunk the namespace already holds (e.g. unchanged since the previous version),
        without its bytes; the commit fails with DataLost if it is no longer readable by then."""
        with self._lock:
            self._state.add_held(key)

    def place(self, key: ChunkKey) -> None:
        """Append a chunk already handed over with put() (or held) to the version's layout."""
        with self._lock:
            self._state.place_in_layout(key)

    def put(self, data: memoryview, ask: bool = True) -> ChunkKey:
        """Hand a chunk over without placing it in the layout yet (a FUSE file sends chunks as they
        fill and lays the version out at commit). Copied before this returns, like add(). Each put
        of a chunk is matched by a release() once the caller no longer needs it."""
        key = ChunkKey.of(data)
        self._service()
        with self._lock:
            seq = self._state.put(key)
        if seq is None:
            return key
        self._budget.acquire(len(data), self._service)
        frames = self._transport.encode(self.namespace, self.session, seq, key, data)
        if self._cache is not None and not ask:
            # A chunk changed in place is the next update's base: kept (only where the last frame
            # is the chunk's bytes). Chunks of files written in order are not: nothing reads them
            # back soon, and keeping them costs the data path a little.
            self._cache.put(key, frames[-1])
        with self._lock:
            self._frames[seq] = frames
            give = self._apply(self._state.submit(seq, key, ask))
        if give:
            self._budget.release(give)
        self._service()
        return key

    def release(self, key: ChunkKey) -> None:
        """The caller no longer needs one put() of this chunk (it was rewritten before the commit)."""
        self._event(self._state.release, key)
        self._service()

    def flush(self) -> None:
        """Send what waits for a deduplication batch now (from any thread; errors fail the write)."""
        if self._done or self._state.error is not None:
            return
        self._event(self._state.ask)
        with contextlib.suppress(MemstageError):  # the write has failed: its own thread raises it
            self._service()

    def settle(self) -> None:
        """Wait until every chunk handed over so far is stored (or found held); streams stay open."""
        self._event(self._state.ask)
        self._wait_idle()
        self._event(self._state.flush_releases)
        self._service()

    def _wait_idle(self) -> None:
        while True:
            self._service()
            with self._cond:
                if not self._state.in_flight:
                    break
                if not self._io:
                    self._cond.wait(0.5)
        self._raise_if_failed()

    def _wait_streams_ended(self) -> None:
        """Wait (up to rpc_timeout) until the closed streams have ended: a benefactor that died after
        acknowledging chunks ends its stream as failed, and that fails the write here, before its
        receipts are committed, rather than after."""
        deadline = time.monotonic() + self.settings.rpc_timeout
        with self._cond:
            while self._streams and self._state.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        self._raise_if_failed()

    def locate(self, key: ChunkKey) -> manager_pb2.VersionMap:
        """Where a chunk handed over earlier can be read back, as a one-chunk map (call settle() first)."""
        with self._lock:
            locations = [common_pb2.Location(benefactor_id=bf, address=self._addresses[bf])
                         for bf in sorted(self._state.locations.get(key, ()))]
        if locations:
            return manager_pb2.VersionMap(path=self.path, size=key.length,
                                          chunks=[manager_pb2.ChunkRef(key=key.to_pb(), locations=locations)])
        # Not sent by this write: the namespace held it already.
        return self.conn.call_manager(
            "LocateChunks", manager_pb2.NamespacedChunks(namespace=self.namespace, keys=[key.to_pb()]),
            f"reading back a chunk of {self.path}")

    def finish(self) -> WriteStats:
        """Wait until every chunk is acknowledged (the ASB point); raise the write's error if any."""
        with self._lock:
            give = self._apply(self._state.finish())
        if give:
            self._budget.release(give)
        self._wait_idle()
        self._asb_done = time.perf_counter()
        self._wait_streams_ended()
        s = self._state
        return WriteStats(s.size, s.bytes_sent, s.bytes_deduplicated, len(s.layout), self._asb_done - self.opened_at)

    def check_space(self) -> None:
        """Raise DeploymentFull now (after waiting up to full_wait for space) if no benefactor has
        room for a chunk: a FUSE write() reports ENOSPC itself rather than only close()."""
        if not self._mapped_at_open:  # else the session's map has just said there is room
            self._striping_map(NeedMap((), ()))

    def laid_out(self) -> list[ChunkKey]:
        """The chunks of the version as laid out (holes included), in order."""
        with self._lock:
            return list(self._state.layout)

    def relayout(self) -> None:
        """Forget the layout placed so far (chunks handed over stay): it is placed again."""
        with self._lock:
            self._state.relayout()

    def commit(self, attrs: manager_pb2.FileAttrs | None = None, base: int | None = None) -> int:
        """Commit the layout; the session ends either way (what the version does not reference is freed),
        except on Conflict. `attrs`: the file's metadata as the writer set it (mode and owner of a
        new file, mtime). `base`: the version this layout was built on, for a writer that merges
        with others: Conflict if another version was committed since (the session stays open,
        for a commit of the layout merged over that version)."""
        with self._lock:
            refs = self._state.commit_refs()
            s = self._state
            now = time.perf_counter()
            # OAB's end is close() as the application sees it: all but this commit's round trip.
            stats = manager_pb2.ClientStats(bytes_written=s.size, bytes_sent=s.bytes_sent,
                                            bytes_deduplicated=s.bytes_deduplicated, oab_seconds=now - self.opened_at,
                                            asb_seconds=(self._asb_done or now) - self.opened_at)
            size = s.size
        try:
            reply = self.conn.call_manager(
                "Commit", manager_pb2.CommitRequest(namespace=self.namespace, path=self.path, size=size,
                                                    packed=commitpack.pack(refs), stats=stats, session=self.session,
                                                    attrs=attrs, merge=base is not None, base_version=base or 0,
                                                    checkpoint=self.checkpoint(), want_info=self.want_info),
                f"commit of {self.path}")
        except Conflict:
            raise  # the session is still open
        except BaseException:
            self._done = True
            raise
        self._done = True
        self.info = FileStat.from_pb(reply.info) if reply.HasField("info") else None
        return int(reply.version)

    @property
    def done(self) -> bool:
        return self._done

    def expired(self) -> None:
        """The manager says the session is over (lease ran out): what it stored is gone."""
        self._event(self._state.fail, DataLost(
            f"write of {self.path}: its write session expired (not renewed within {self.lease:.0f}s) and its "
            "chunks were freed; nothing was committed, write the file again"))

    def abort(self) -> None:
        """Drop the write: nothing is committed, and what it stored is freed now."""
        was_done, self._done = self._done, True
        self._event(self._state.fail, MemstageError(f"write of {self.path} was aborted"))
        if not was_done:
            try:
                self.conn.call_manager("AbortSession", manager_pb2.SessionRequest(session=self.session),
                                       f"abort of {self.path}")
            except MemstageError as e:  # the lease ends it anyway
                log.info("abort of %s: the manager will free its chunks when the lease ends (%s)", self.path, e)


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
