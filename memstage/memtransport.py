"""An in-memory ChunkTransport: benefactors as dictionaries in this process.

It keeps the contract every transport keeps (see `ChunkTransport`): acknowledgements with
receipts on the transport's own thread, one end per stream and last, a stream refused for lack of
space (FULL) or for bytes that do not match their hash (REJECTED), and unreadable chunks as
`ChunkUnavailable`. State machines above the transport (the writer, the reader, copies between
benefactors) can so be exercised without sockets or processes.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from memstage import receipts
from memstage.chunks import ChunkKey
from memstage.frames import decode_put_frame
from memstage.placement import Placement, StreamEnd
from memstage.transport import ChunkStream, ChunkUnavailable, OnAck, OnEnd, encode_chunk


@dataclass
class MemoryBenefactor:
    """What one benefactor holds: chunks by (namespace, key), within `capacity` bytes; drained
    chunk files by name."""

    capacity: int
    receipt_key: bytes = field(default_factory=receipts.new_key)
    chunks: dict[tuple[str, ChunkKey], bytes] = field(default_factory=dict)
    drained: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def used(self) -> int:
        return sum(k.length for _, k in self.chunks)


class MemoryStream:
    """One stream to one in-memory benefactor; a thread of its own works through what is sent."""

    def __init__(self, benefactor: MemoryBenefactor | None, placement: Placement, on_ack: OnAck,
                 on_end: OnEnd) -> None:
        self.placement = placement
        self._benefactor = benefactor
        self._on_ack, self._on_end = on_ack, on_end
        self._queue: queue.SimpleQueue[tuple[int, tuple[bytes, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = False
        self._unacked: list[int] = []
        threading.Thread(target=self._run, name=f"memput-{placement.id}", daemon=True).start()

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, seq: int, frames: tuple[bytes, ...]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._unacked.append(seq)
            self._queue.put((seq, frames))
            return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)

    def cancel(self) -> None:
        with self._lock:
            self._closed = self._cancelled = True
            self._queue.put(None)

    def _run(self) -> None:
        reason, detail = StreamEnd.DONE, ""
        if self._benefactor is None:
            reason, detail = StreamEnd.FAILED, f"{self.placement.address}: no benefactor there"
        while reason is StreamEnd.DONE and (item := self._queue.get()) is not None:
            if self._cancelled:
                reason, detail = StreamEnd.FAILED, "cancelled"
                break
            seq, frames = item
            reason, detail = self._store(seq, frames)
        if self._cancelled and reason is StreamEnd.DONE:
            reason, detail = StreamEnd.FAILED, "cancelled"
        with self._lock:
            self._closed = True
            leftover, self._unacked = sorted(self._unacked), []
        self._on_end(reason, detail, leftover)

    def _store(self, seq: int, frames: tuple[bytes, ...]) -> tuple[StreamEnd, str]:
        assert self._benefactor is not None
        views = [decode_put_frame(f) for f in frames]
        header = views[0].header
        if header is None:
            return StreamEnd.REJECTED, "data frame without a chunk header"
        key = ChunkKey.from_pb(header.key)
        data = b"".join(v.data for v in views)
        if not key.matches(data):
            return StreamEnd.REJECTED, f"chunk {key}: bytes do not match the hash"
        bf = self._benefactor
        with bf.lock:
            ident = (header.namespace, key)
            if ident not in bf.chunks:
                if bf.used + key.length > bf.capacity:
                    return StreamEnd.FULL, f"{self.placement.id}: no room for chunk {key}"
                bf.chunks[ident] = data
        with self._lock:
            self._unacked.remove(seq)
        self._on_ack(seq, receipts.make(bf.receipt_key, header.session, header.namespace, key))
        return StreamEnd.DONE, ""


class MemoryTransport:
    """A ChunkTransport over in-memory benefactors, by address."""

    def __init__(self, benefactors: dict[str, MemoryBenefactor] | None = None) -> None:
        self.benefactors: dict[str, MemoryBenefactor] = benefactors if benefactors is not None else {}

    def encode(self, namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
        return encode_chunk(namespace, session, seq, key, data)

    def open_stream(self, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> ChunkStream:
        return MemoryStream(self.benefactors.get(placement.address), placement, on_ack, on_end)

    def get(self, address: str, namespace: str, key: ChunkKey) -> bytes | memoryview:
        bf = self.benefactors.get(address)
        if bf is None:
            raise ChunkUnavailable(f"{address}: no benefactor there")
        with bf.lock:
            data = bf.chunks.get((namespace, key))
        if data is None:
            raise ChunkUnavailable(f"{address} does not hold chunk {key}")
        return data

    def get_drained(self, address: str, drained: str, key: ChunkKey) -> bytes | memoryview:
        bf = self.benefactors.get(address)
        data = None if bf is None else bf.drained.get(drained)
        if data is None:
            raise ChunkUnavailable(f"{drained}: not on the PFS")
        return data

    def hold(self, address: str, namespace: str, key: ChunkKey, gen: int, data: bytes | memoryview) -> None:
        bf = self.benefactors.get(address)
        if bf is None:
            raise ChunkUnavailable(f"{address}: no benefactor there")
        if not key.matches(data):
            raise ChunkUnavailable(f"{address}: bytes do not match the hash")
        with bf.lock:
            if bf.used + key.length > bf.capacity:
                raise ChunkUnavailable(f"{address}: full")
            bf.chunks[(namespace, key)] = bytes(data)

    def close(self) -> None:
        pass
