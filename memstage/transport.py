"""ChunkTransport: how chunks move between a client (or a benefactor copying from its peers) and
benefactors, behind one small interface.

The writer's state machine and the reader speak only of placements, sequence numbers, receipts,
StreamEnd reasons and ChunkUnavailable; GrpcTransport maps them to the Benefactor service (Put
streams with the hand-written frame codec, Get, ReadDrained) and its status codes. A faster
transport or one that adds redundancy implements the same methods.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import grpc

from memstage.chunks import MAX_FRAME_DATA, ChunkKey
from memstage.frames import encode_put_frame
from memstage.peers import BenefactorCalls
from memstage.placement import Placement, StreamEnd
from memstage.proto import benefactor_pb2, common_pb2

OnAck = Callable[[int, bytes], None]  # seq, receipt
OnEnd = Callable[[StreamEnd, str, list[int]], None]  # reason, detail, unacknowledged seqs


class ChunkUnavailable(Exception):
    """A chunk could not be read from that place (not held there, unreachable, damaged)."""


class ChunkStream(Protocol):
    placement: Placement

    @property
    def closed(self) -> bool: ...

    def send(self, seq: int, frames: tuple[bytes, ...]) -> bool:
        """Queue a chunk; False if the stream is closed (nothing queues behind its end)."""
        ...

    def close(self) -> None:
        """No more chunks: the stream ends once what was sent is acknowledged."""
        ...

    def cancel(self) -> None: ...


class ChunkTransport(Protocol):
    def encode(self, namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
        """The chunk as it travels (its only copy while in flight)."""
        ...

    def open_stream(self, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> ChunkStream:
        """A stream of chunks to one benefactor. Callbacks come on the transport's own thread;
        on_end comes once, last."""
        ...

    def get(self, address: str, namespace: str, key: ChunkKey) -> bytes | memoryview: ...

    def get_drained(self, address: str, drained: str, key: ChunkKey) -> bytes | memoryview:
        """A drained chunk read from the PFS by the benefactor at `address`."""
        ...

    def hold(self, address: str, namespace: str, key: ChunkKey, gen: int, data: bytes | memoryview) -> None:
        """Hand a stripe member made here to the benefactor at `address`, to be held there at `gen`
        (between benefactors only); ChunkUnavailable if it did not take it."""
        ...

    def close(self) -> None:
        """Drop kept connections (new ones open on next use)."""
        ...


def encode_chunk(namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
    header = benefactor_pb2.PutHeader(namespace=namespace, key=key.to_pb(), seq=seq, session=session)
    frames = [encode_put_frame(header, data[:MAX_FRAME_DATA])]
    for start in range(MAX_FRAME_DATA, len(data), MAX_FRAME_DATA):
        frames.append(encode_put_frame(None, data[start : start + MAX_FRAME_DATA]))
    return tuple(frames)


_END_BY_CODE = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: StreamEnd.FULL,
    grpc.StatusCode.INVALID_ARGUMENT: StreamEnd.REJECTED,
}


class GrpcChunkStream:
    """One Put call to one benefactor; chunks queue up and are acknowledged one by one."""

    def __init__(self, conn: BenefactorCalls, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> None:
        self.placement = placement
        self._closed = False
        self._on_ack = on_ack
        self._on_end = on_end
        self._queue: queue.SimpleQueue[tuple[bytes, ...] | None] = queue.SimpleQueue()
        self._unacked: set[int] = set()
        self._lock = threading.Lock()
        self._responses = conn.put_stream(placement.address, self._frames())
        self._reader = threading.Thread(target=self._read_acks, name=f"put-{placement.id}", daemon=True)
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def _frames(self) -> Iterator[bytes]:
        while (frames := self._queue.get()) is not None:
            yield from frames

    def send(self, seq: int, frames: tuple[bytes, ...]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._unacked.add(seq)
            self._queue.put(frames)
            return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)

    def cancel(self) -> None:
        with self._lock:
            self._closed = True
            self._queue.put(None)
        self._responses.cancel()

    def _read_acks(self) -> None:
        reason, detail = StreamEnd.DONE, ""
        try:
            for ack in self._responses:
                with self._lock:
                    mine = ack.seq in self._unacked
                    self._unacked.discard(ack.seq)
                if mine:
                    self._on_ack(ack.seq, ack.receipt)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            reason = _END_BY_CODE.get(code, StreamEnd.FAILED) if code is not None else StreamEnd.FAILED
            detail = f"{code}: {e.details()}" if isinstance(e, grpc.Call) else str(e)
        with self._lock:
            self._closed = True
            self._queue.put(None)  # unblock the request iterator if the call ended early
            leftover, self._unacked = sorted(self._unacked), set()
        self._on_end(reason, detail, leftover)


class GrpcTransport:
    def __init__(self, conn: BenefactorCalls) -> None:
        self.conn = conn

    def encode(self, namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
        return encode_chunk(namespace, session, seq, key, data)

    def open_stream(self, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> ChunkStream:
        return GrpcChunkStream(self.conn, placement, on_ack, on_end)

    def get(self, address: str, namespace: str, key: ChunkKey) -> bytes | memoryview:
        try:
            frames = self.conn.get_chunk(address, benefactor_pb2.GetRequest(namespace=namespace, key=key.to_pb()))
        except grpc.RpcError as e:
            raise ChunkUnavailable(str(e.code() if isinstance(e, grpc.Call) else e)) from None
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def get_drained(self, address: str, drained: str, key: ChunkKey) -> bytes | memoryview:
        try:
            frames = self.conn.read_drained(address, benefactor_pb2.ReadDrainedRequest(drained=drained,
                                                                                       key=key.to_pb()))
        except grpc.RpcError as e:
            raise ChunkUnavailable(e.details() if isinstance(e, grpc.Call) else str(e)) from None
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def hold(self, address: str, namespace: str, key: ChunkKey, gen: int, data: bytes | memoryview) -> None:
        try:
            self.conn.hold(address, benefactor_pb2.HoldRequest(namespace=namespace, key=key.to_pb(), gen=gen,
                                                               data=bytes(data)))
        except grpc.RpcError as e:
            raise ChunkUnavailable(f"{e.code()}: {e.details()}" if isinstance(e, grpc.Call) else str(e)) from None

    def close(self) -> None:
        pass  # the channels belong to the caller's connections


def read_from_memory(transport: ChunkTransport, namespace: str, key: ChunkKey, locations: Sequence[common_pb2.Location],
                     failures: list[str]) -> bytes | memoryview | None:
    """The chunk from the first benefactor listed that has it intact (hash-verified), else None
    (each failure noted)."""
    for loc in locations:
        try:
            data = transport.get(loc.address, namespace, key)
        except ChunkUnavailable as e:
            failures.append(f"{loc.benefactor_id}: {e}")
            continue
        if key.matches(data):
            return data
        failures.append(f"{loc.benefactor_id}: bytes do not match the hash")
    return None


def read_from_pfs(transport: ChunkTransport, key: ChunkKey, drained: str, readers: Sequence[common_pb2.Location],
                  failures: list[str]) -> bytes | memoryview | None:
    """The chunk's PFS copy, read by the first live benefactor that can (hash-verified), else None."""
    if not drained:
        return None
    if not readers:
        failures.append(f"its PFS copy {drained}: no live benefactor to read it")
    for reader in readers:
        try:
            data = transport.get_drained(reader.address, drained, key)
        except ChunkUnavailable as e:
            failures.append(f"PFS via {reader.benefactor_id}: {e}")
            continue
        if key.matches(data):
            return data
        failures.append(f"PFS via {reader.benefactor_id}: bytes do not match the hash")
    return None
