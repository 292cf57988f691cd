"""DrainLoop: the benefactor writes the chunks it holds to the PFS, FIFO in commit order.

It runs in its own thread, decoupled from ingest: it pulls tasks from the manager, copies each
chunk out of the arena into a durable chunk file (or hard-links an identical drained one), and
reports what it wrote. A PFS that is full, read-only or unreachable leaves the chunk in memory:
the loop retries with backoff, logs the condition once, and shows it in heartbeats until it clears.
`drain_bandwidth` (bytes/s, 0 = unlimited) throttles it.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from memstage.benefactor.store import ChunkStore
from memstage.benefactor.waker import Waker
from memstage.chunks import ChunkKey
from memstage.clock import SYSTEM_CLOCK, Clock
from memstage.drainer.layout import Dirs, Pending, PfsDir, chunk_name, located, version_dir, write_batch
from memstage.errors import InvalidPath
from memstage.paths import split_drained
from memstage.proto import manager_pb2, manager_pb2_grpc
from memstage.rpc import CONTROL_TIMEOUT_S
from memstage.settings import BenefactorSettings

log = logging.getLogger(__name__)

BATCH = 64  # tasks pulled per call, published with one durability wait
IDLE_POLL = 0.2  # seconds between looks while drain work is likely (Waker backs off from it when idle)
MAX_BACKOFF = 8.0
MINE_LIMIT = 100_000


class DrainLoop:
    def __init__(self, settings: BenefactorSettings, store: ChunkStore, benefactor_id: str,
                 stub: manager_pb2_grpc.ManagerStub, incarnation: int = 0,
                 ceiling: Callable[[], float] = lambda: IDLE_POLL, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.root = Path(settings.pfs).resolve()
        self.bandwidth = settings.drain_bandwidth
        self.store = store
        self.id = benefactor_id
        self.incarnation = incarnation
        self._stub = stub
        self._stop = threading.Event()
        # Idle, it waits to be told (heartbeat replies, hold orders) rather than polling the manager.
        self.waker = Waker(IDLE_POLL, ceiling, clock)
        self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
        self.error = ""  # the current PFS problem, for heartbeats and status
        self.drained_bytes = 0
        self._last_bytes, self._last_started = 0, 0.0  # the last batch, for the throttle
        # What this benefactor drained itself: a batch can hold a chunk's later copies before the
        # manager knows the first is on the PFS (every copy of a chunk is queued to the same holder).
        self._mine: dict[tuple[str, ChunkKey], Path] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.waker.wake()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = IDLE_POLL
        while not self._stop.is_set():
            try:
                reply = self._stub.DrainWork(manager_pb2.DrainWorkRequest(benefactor_id=self.id, limit=BATCH,
                                                                             incarnation=self.incarnation),
                                             timeout=CONTROL_TIMEOUT_S)
            except grpc.RpcError:
                self.waker.pause(1.0)  # the heartbeat logs manager outages
                continue
            if not reply.tasks:
                self.waker.idle()
                continue
            self.waker.worked()
            try:
                done = self._drain(list(reply.tasks))
            except Exception as e:  # OSError from the PFS, or anything else: the loop must go on
                self._failed(e)
                self.clock.wait(self._stop, backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._report(done)  # before the throttle's pause: a stop during it loses no report
            if self.error:
                log.warning("draining to %s resumed", self.root)
                self.error = ""
            backoff = IDLE_POLL
            self._throttle(self._last_bytes, self._last_started)

    def _drain(self, tasks: list[manager_pb2.DrainTask]) -> list[manager_pb2.DrainResult]:
        """Write a batch of chunk files (links to what is already drained); returns them for the manager.
        Each directory the batch touches is walked from the root once (Dirs), not once per chunk."""
        with Dirs() as dirs:
            return self._drain_into(tasks, dirs)

    def _drain_into(self, tasks: list[manager_pb2.DrainTask], dirs: Dirs) -> list[manager_pb2.DrainResult]:
        started = self.clock.now()
        items: list[Pending] = []
        planned: dict[tuple[str, ChunkKey], Path] = {}  # first copy of a chunk in this batch
        unwritten: list[manager_pb2.DrainResult] = []  # missing chunks, refused paths
        present: list[manager_pb2.DrainTask] = []
        for task in tasks:
            key = ChunkKey.from_pb(task.key)
            try:
                directory = version_dir(self.root, task.namespace, task.path)
                dirs.find(directory)  # refuses a link on the way (the directory may not exist yet)
            except InvalidPath as e:  # e.g. a symlink planted in the PFS: this path only, for good
                unwritten.append(manager_pb2.DrainResult(task_id=task.id, error=str(e)))
                continue
            name = chunk_name(task.version, task.index, task.count, task.offset, key, task.deployment,
                              task.committed_ms)
            ident = (task.namespace, key)
            link = self.root / task.link_from if task.link_from else self._mine.get(ident)
            data = None
            if not task.count or key.is_hole:
                data = b""  # an empty file, or a hole: its name says how long it is, no bytes stored
            elif ident in planned:
                link = planned[ident]  # written earlier in this batch: renamed before this link is made
            elif link is None or not self._exists(dirs, link):
                data = self.store.read(ident)
                if data is None:
                    if _intact(dirs, directory, name, key):
                        # Written already (by a benefactor that died before reporting it): report it.
                        present.append(task)
                        items.append(Pending(directory, name, None, None))
                        continue
                    # Freed (the file was deleted meanwhile) or never here: the manager decides
                    # which, and the tasks behind it go on.
                    unwritten.append(manager_pb2.DrainResult(task_id=task.id, missing=True))
                    continue
                planned[ident] = directory / name
            present.append(task)
            items.append(Pending(directory, name, data, link))
        tasks = present
        written = self._publish(items, dirs)
        nbytes = sum(len(i.data) for i in items if i.data)
        if len(self._mine) >= MINE_LIMIT:
            self._mine.clear()  # only an optimisation: forgetting costs a copy, never correctness
        for task, final in zip(tasks, written, strict=True):
            if task.count and not ChunkKey.from_pb(task.key).is_hole:
                self._mine[(task.namespace, ChunkKey.from_pb(task.key))] = final
        self.drained_bytes += nbytes
        self._last_bytes, self._last_started = nbytes, started
        return unwritten + [manager_pb2.DrainResult(task_id=t.id, drained=str(f.relative_to(self.root)),
                                                    written=len(i.data) if i.data else 0)
                            for t, f, i in zip(tasks, written, items, strict=True)]

    def _exists(self, dirs: Dirs, path: Path) -> bool:
        """Whether a drained chunk file is there (False for one that is not a plain name below the root)."""
        try:
            return dirs.exists(path, self.root)
        except (InvalidPath, NotADirectoryError):
            return False

    def _publish(self, items: list[Pending], dirs: Dirs) -> list[Path]:
        # Links to a chunk written in the same batch need it renamed first: publish in two passes.
        ready = [i.link_from is None or self._exists(dirs, i.link_from) for i in items]
        firsts = [i for i, r in zip(items, ready, strict=True) if r]
        rest = [i for i, r in zip(items, ready, strict=True) if not r]
        by_item = dict(zip(map(id, firsts), write_batch(firsts, dirs), strict=True))
        by_item.update(zip(map(id, rest), write_batch(rest, dirs), strict=True))
        return [by_item[id(i)] for i in items]

    def _throttle(self, nbytes: int, started: float) -> None:
        if self.bandwidth:
            self.clock.wait(self._stop, max(0.0, nbytes / self.bandwidth - (self.clock.now() - started)))

    def _report(self, done: list[manager_pb2.DrainResult]) -> None:
        if not done:
            return
        try:
            self._stub.DrainDone(manager_pb2.DrainDoneRequest(benefactor_id=self.id, results=done,
                                                                 incarnation=self.incarnation),
                                 timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as e:
            # Not lost: the tasks stay queued at the manager, and draining a chunk twice is harmless.
            log.info("could not report %d drained chunks (%s); they will be drained again", len(done),
                     e.code() if isinstance(e, grpc.Call) else e)

    def _failed(self, error: Exception) -> None:
        if isinstance(error, OSError):
            condition = f"{error.strerror or error} ({error.filename or self.root})"
        else:
            condition = f"{type(error).__name__}: {error}"
        if condition != self.error:
            log.error("draining to %s failed: %s; chunks stay in memory, retrying", self.root, condition)
            self.error = condition

    def read_drained(self, drained: str, key: ChunkKey) -> bytes:
        """A drained chunk read back from the PFS, verified; ValueError if it is damaged."""
        split_drained(drained)  # plain components, a valid namespace first
        # Walked from the root refusing links: a symlink inside one namespace's tree cannot lead
        # into another's (nor anywhere else), whatever the name's length.
        try:
            directory, name = located(self.root, Path(drained))
            with Dirs() as dirs:
                data = dirs.read(directory, name)
        except InvalidPath as e:
            raise PermissionError(f"{drained}: outside its namespace's directory of the PFS ({e})") from None
        except OSError as e:
            if e.errno == errno.ELOOP:  # the chunk file itself is a link
                raise PermissionError(f"{drained}: a link, not a chunk file of the PFS") from None
            raise
        if not key.matches(data):
            raise ValueError(f"{self.root / drained}: bytes do not match the hash in its name")
        return data


def _intact(dirs: Dirs, directory: PfsDir, name: str, key: ChunkKey) -> bool:
    """A chunk file already published under its final name, with the bytes its name says."""
    try:
        return key.matches(dirs.read(directory, name))
    except (OSError, InvalidPath):
        return False
