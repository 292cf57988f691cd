"""DrainLoop: the benefactor writes the chunks it holds to the PFS, FIFO in commit order.

It runs in its own thread, decoupled from ingest: it pulls tasks from the manager, copies each
chunk out of the arena into a durable chunk file (or hard-links an identical drained one), and
reports what it wrote. A PFS that is full, read-only or unreachable leaves the chunk in memory:
the loop retries with backoff, logs the condition once, and shows it in heartbeats until it clears.
`drain_bandwidth` (bytes/s, 0 = unlimited) throttles it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import grpc

from memstage.benefactor.store import ChunkStore
from memstage.chunks import ChunkKey
from memstage.drainer.layout import chunk_name, version_dir, write_chunk
from memstage.proto import manager_pb2, manager_pb2_grpc
from memstage.rpc import CONTROL_TIMEOUT_S
from memstage.settings import BenefactorSettings

log = logging.getLogger(__name__)

BATCH = 16  # tasks pulled per call
IDLE_POLL = 0.2  # seconds between polls when there is nothing to drain
MAX_BACKOFF = 8.0


class DrainLoop:
    def __init__(self, settings: BenefactorSettings, store: ChunkStore, benefactor_id: str,
                 stub: manager_pb2_grpc.ManagerStub) -> None:
        self.root = Path(settings.pfs).resolve()
        self.bandwidth = settings.drain_bandwidth
        self.store = store
        self.id = benefactor_id
        self._stub = stub
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
        self.error = ""  # the current PFS problem, for heartbeats and status
        self.drained_bytes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        backoff = IDLE_POLL
        while not self._stop.is_set():
            try:
                reply = self._stub.DrainWork(manager_pb2.DrainWorkRequest(benefactor_id=self.id, limit=BATCH),
                                             timeout=CONTROL_TIMEOUT_S)
            except grpc.RpcError:
                self._stop.wait(1.0)  # the heartbeat logs manager outages
                continue
            if not reply.tasks:
                self._stop.wait(IDLE_POLL)
                continue
            done: list[manager_pb2.DrainResult] = []
            try:
                for task in reply.tasks:
                    done.append(manager_pb2.DrainResult(task_id=task.id, drained=self._drain(task)))
            except OSError as e:
                self._report(done)
                self._failed(e)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._report(done)
            if self.error:
                log.warning("draining to %s resumed", self.root)
                self.error = ""
            backoff = IDLE_POLL

    def _drain(self, task: manager_pb2.DrainTask) -> str:
        """Write one chunk file; returns it relative to the PFS root."""
        key = ChunkKey.from_pb(task.key)
        directory = version_dir(self.root, task.namespace, task.path)
        name = chunk_name(task.version, task.index, task.count, task.offset, key)
        link = self.root / task.link_from if task.link_from else None
        data = None
        if not task.count:
            data = b""
        elif link is None or not link.exists():
            data = self.store.read((task.namespace, key))
            if data is None:
                raise FileNotFoundError(f"chunk {key} of {task.namespace}:{task.path} is neither held nor drained")
        started = time.monotonic()
        final = write_chunk(directory, name, None if data is None else [data], link_from=link)
        if data:
            self.drained_bytes += len(data)
            self._throttle(len(data), started)
        return str(final.relative_to(self.root))

    def _throttle(self, nbytes: int, started: float) -> None:
        if self.bandwidth:
            self._stop.wait(max(0.0, nbytes / self.bandwidth - (time.monotonic() - started)))

    def _report(self, done: list[manager_pb2.DrainResult]) -> None:
        if not done:
            return
        try:
            self._stub.DrainDone(manager_pb2.DrainDoneRequest(benefactor_id=self.id, results=done),
                                 timeout=CONTROL_TIMEOUT_S)
        except grpc.RpcError as e:
            # Not lost: the tasks stay queued at the manager, and draining a chunk twice is harmless.
            log.info("could not report %d drained chunks (%s); they will be drained again", len(done),
                     e.code() if isinstance(e, grpc.Call) else e)

    def _failed(self, error: OSError) -> None:
        condition = f"{error.strerror or error} ({error.filename or self.root})"
        if condition != self.error:
            log.error("draining to %s failed: %s; chunks stay in memory, retrying", self.root, condition)
            self.error = condition

    def read_drained(self, drained: str, key: ChunkKey) -> bytes:
        """A drained chunk read back from the PFS, verified; ValueError if it is damaged."""
        path = (self.root / drained).resolve()
        if not path.is_relative_to(self.root):
            raise PermissionError(f"{drained}: outside the PFS root")
        data = path.read_bytes()
        if not key.matches(data):
            raise ValueError(f"{path}: bytes do not match the hash in its name")
        return data
