"""StreamTransport: chunk bytes over the benefactors' stream data ports (memstage.streamwire).

Where a benefactor serves one (it says so in DataPorts, asked once over gRPC), chunks travel on
long-lived sockets: a Unix socket when the benefactor runs on this machine's kernel and its socket
can be opened, else TCP (with TLS when the deployment has it). Connections are kept per benefactor
and reused by the next stream or read. A chunk is copied once, into its frames (the writer's only
copy while in flight), sent from there with sendmsg, and read back with recv_into into the
buffer returned. Benefactors without a data port are reached over gRPC.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from memstage import streamwire
from memstage.chunks import ChunkKey
from memstage.peers import Peers
from memstage.placement import Placement, StreamEnd
from memstage.proto import benefactor_pb2
from memstage.rpc import Pairs
from memstage.streamwire import host_id
from memstage.transport import ChunkStream, ChunkTransport, ChunkUnavailable, GrpcTransport, OnAck, OnEnd, encode_chunk

log = logging.getLogger(__name__)

_END_BY_CODE = {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: StreamEnd.FULL,
                grpc.StatusCode.INVALID_ARGUMENT.value[0]: StreamEnd.REJECTED}
_IDLE_PER_BENEFACTOR = 8  # connections kept open per benefactor between uses
_DOWN_FOR_S = 1.0  # a benefactor that could not be asked for its data port is not asked again for this long


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one benefactor's stream data port."""

    host: str
    port: int
    tls: bool
    unix_path: str


def _metadata(pairs: Pairs) -> list[benefactor_pb2.MetadataEntry]:
    return [benefactor_pb2.MetadataEntry(key=k, value=str(v)) for k, v in pairs]


def transport_for(kind: str, peers: Peers, namespace: str = "", unix_sockets: bool = True) -> ChunkTransport:
    """The transport a `transport` setting names, over these benefactor channels."""
    return StreamTransport(peers, namespace, unix_sockets) if kind == "stream" else GrpcTransport(peers)


class StreamTransport:
    def __init__(self, peers: Peers, namespace: str = "", unix_sockets: bool = True) -> None:
        self.peers = peers
        self.namespace = namespace  # the caller's: its grant is checked when DataPorts is asked
        self.grpc = GrpcTransport(peers)
        self._host_id = host_id() if unix_sockets else ""  # "": no benefactor is on this machine
        self._tls_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint | None] = {}
        self._down: dict[str, float] = {}  # address -> until when it is taken as unreachable
        self._idle: dict[str, list[socket.socket]] = {}

    # -- connections --------------------------------------------------------------------------
    def endpoint(self, address: str) -> Endpoint | None:
        """The benefactor's data port (None: it has none); ChunkUnavailable if it cannot be asked."""
        with self._lock:
            if address in self._endpoints:
                return self._endpoints[address]
            if self._down.get(address, 0.0) > time.monotonic():
                raise ChunkUnavailable(f"{address}: unreachable a moment ago")
        try:
            reply = self.peers.data_ports(address, self.namespace)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code == grpc.StatusCode.UNIMPLEMENTED:
                with self._lock:  # a benefactor of an earlier release: gRPC only
                    self._endpoints[address] = None
                return None
            # Gone (a dead benefactor is asked about once per chunk a degraded read needs): the
            # chunks it held are read elsewhere at once for a while, not after a failed call each.
            with self._lock:
                self._down[address] = time.monotonic() + _DOWN_FOR_S
            raise ChunkUnavailable(f"{address}: {code.name if code is not None else e}") from None
        unix = reply.unix_path if reply.unix_path and self._host_id and reply.host_id == self._host_id else ""
        found = Endpoint(address.rpartition(":")[0].strip("[]"), reply.tcp_port, reply.tls, unix) \
            if reply.tcp_port or unix else None
        with self._lock:
            self._endpoints[address] = found
        return found

    def forget(self, address: str) -> None:
        """A connection failed: ask again next time (a benefactor restarted there has new ports)."""
        with self._lock:
            self._endpoints.pop(address, None)
            idle = self._idle.pop(address, [])
        for sock in idle:
            sock.close()

    def connect(self, address: str, endpoint: Endpoint) -> socket.socket:
        if endpoint.unix_path:
            try:
                return streamwire.dial("", 0, endpoint.unix_path, None, "", self.peers.timeout)
            except OSError:  # another machine's file system after all, or not ours to open
                if not endpoint.port:
                    raise
        tls = self.peers.tls
        context = None
        if endpoint.tls:
            if tls is None or not tls.enabled:
                raise ChunkUnavailable(f"{address}: its data port speaks TLS; set tls_ca (and a client certificate)")
            with self._lock:
                if self._tls_context is None:
                    self._tls_context = tls.client_context()
                context = self._tls_context
        return streamwire.dial(endpoint.host, endpoint.port, "", context,
                               tls.server_name if tls is not None else "", self.peers.timeout)

    def take(self, address: str, endpoint: Endpoint) -> tuple[socket.socket, bool]:
        """A connection to the benefactor, and whether it was kept from an earlier use."""
        with self._lock:
            idle = self._idle.get(address)
            if idle:
                return idle.pop(), True
        return self.connect(address, endpoint), False

    def give_back(self, address: str, sock: socket.socket) -> None:
        with self._lock:
            idle = self._idle.setdefault(address, [])
            if len(idle) < _IDLE_PER_BENEFACTOR:
                idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._endpoints = self._idle, {}, {}
        for socks in idle.values():
            for sock in socks:
                sock.close()

    # -- ChunkTransport ---------------------------------------------------------------------------
    def encode(self, namespace: str, session: int, seq: int, key: ChunkKey, data: memoryview) -> tuple[bytes, ...]:
        head = benefactor_pb2.StreamRequest(method="Put", put=benefactor_pb2.PutHeader(
            namespace=namespace, key=key.to_pb(), seq=seq, session=session)).SerializeToString()
        return streamwire.PREFIX.pack(len(head), len(data)) + head, bytes(data)

    def open_stream(self, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> ChunkStream:
        return StreamChunkStream(self, placement, on_ack, on_end)

    def get(self, address: str, namespace: str, key: ChunkKey) -> bytes | memoryview:
        endpoint = self.endpoint(address)
        if endpoint is None:
            return self.grpc.get(address, namespace, key)
        request = benefactor_pb2.GetRequest(namespace=namespace, key=key.to_pb())
        return self._fetch(address, endpoint, benefactor_pb2.StreamRequest(
            method="Get", get=request, metadata=_metadata(self.peers.credentials("Get", request))))

    def get_drained(self, address: str, drained: str, key: ChunkKey) -> bytes | memoryview:
        endpoint = self.endpoint(address)
        if endpoint is None:
            return self.grpc.get_drained(address, drained, key)
        request = benefactor_pb2.ReadDrainedRequest(drained=drained, key=key.to_pb())
        return self._fetch(address, endpoint, benefactor_pb2.StreamRequest(
            method="ReadDrained", read_drained=request,
            metadata=_metadata(self.peers.credentials("ReadDrained", request))))

    def hold(self, address: str, namespace: str, key: ChunkKey, gen: int, data: bytes | memoryview) -> None:
        endpoint = self.endpoint(address)
        if endpoint is None:
            self.grpc.hold(address, namespace, key, gen, data)
            return
        request = benefactor_pb2.StreamRequest(
            method="Hold", hold=benefactor_pb2.HoldRequest(namespace=namespace, key=key.to_pb(), gen=gen),
            metadata=_metadata(self.peers.credentials("Hold", None)))
        self._fetch(address, endpoint, request, [data])

    def _fetch(self, address: str, endpoint: Endpoint, request: benefactor_pb2.StreamRequest,
               data_out: Sequence[bytes | memoryview] = ()) -> memoryview:
        for attempt in range(2):
            try:
                sock, kept = self.take(address, endpoint)
            except (OSError, ssl.SSLError) as e:
                self.forget(address)
                raise ChunkUnavailable(f"{address}: data port unreachable ({e})") from None
            try:
                streamwire.send(sock, request, data_out)
                got = streamwire.recv(sock, benefactor_pb2.StreamReply)
                if got is None:
                    raise streamwire.WireError("the benefactor closed the connection")
                reply, size = got
                data = bytearray(size)
                streamwire.recv_into(sock, memoryview(data))
            except (OSError, ssl.SSLError) as e:
                sock.close()
                if kept and attempt == 0:
                    continue  # a kept connection the benefactor had closed: once more on a fresh one
                self.forget(address)
                raise ChunkUnavailable(f"{address}: {e}") from None
            if reply.code and request.method not in ("Get", "ReadDrained"):
                sock.close()  # the benefactor ends a connection after any other refusal
            else:
                self.give_back(address, sock)
            if reply.code:
                raise ChunkUnavailable(f"{grpc_code_name(reply.code)}: {reply.detail}")
            return memoryview(data)
        raise AssertionError("unreachable")


def grpc_code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return str(status.name)
    return f"code {code}"


class StreamChunkStream:
    """A put stream on one connection, served by one thread that both sends what is queued and
    takes the acknowledgements as they come (a TLS connection may not be read and written by two
    threads at once). The connection goes back to the pool after a clean end."""

    def __init__(self, transport: StreamTransport, placement: Placement, on_ack: OnAck, on_end: OnEnd) -> None:
        self.placement = placement
        self._transport = transport
        self._on_ack, self._on_end = on_ack, on_end
        self._queue: queue.SimpleQueue[tuple[int, tuple[bytes, ...]] | None] = queue.SimpleQueue()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # something was queued, or cancel
        self._lock = threading.Lock()
        self._closed = False
        self._cancelled = False
        self._ended = False
        self._unacked: list[int] = []
        threading.Thread(target=self._run, name=f"stream-put-{placement.id}", daemon=True).start()

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, seq: int, frames: tuple[bytes, ...]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._unacked.append(seq)
            self._queue.put((seq, frames))
            self._poke()
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
            self._poke()

    def cancel(self) -> None:
        with self._lock:
            self._closed = self._cancelled = True
            self._queue.put(None)
            self._poke()

    def _poke(self) -> None:
        """Wake the stream's thread (under the lock: its descriptor is closed when the stream is over)."""
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        address = self.placement.address
        transport = self._transport
        try:
            try:
                endpoint = transport.endpoint(address)
            except ChunkUnavailable as e:
                self._end(StreamEnd.FAILED, str(e))
                return
            if endpoint is None:
                self._relay_to_grpc()
                return
            try:
                sock, _ = transport.take(address, endpoint)
            except (OSError, ssl.SSLError, ChunkUnavailable) as e:
                transport.forget(address)
                self._end(StreamEnd.FAILED, f"{address}: data port unreachable ({e})")
                return
            reason, detail, clean = self._serve(sock)
            if clean:
                transport.give_back(address, sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                if reason is StreamEnd.FAILED:
                    transport.forget(address)
            self._end(reason, detail)
        finally:
            with self._lock:
                os.close(self._wake)
                self._wake = -1

    def _serve(self, sock: socket.socket) -> tuple[StreamEnd, str, bool]:
        """Send and acknowledge until the stream ends: (why, detail, whether the connection is clean)."""
        address = self.placement.address
        try:
            streamwire.send(sock, benefactor_pb2.StreamRequest(
                method="Open", metadata=_metadata(self._transport.peers.credentials("Put", None))))
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ, "socket")
                selector.register(self._wake, selectors.EVENT_READ, "queue")
                end_sent = False
                while True:
                    if self._cancelled:
                        return StreamEnd.FAILED, "cancelled", False
                    ready = {"socket"} if isinstance(sock, ssl.SSLSocket) and sock.pending() else \
                        {key.data for key, _ in selector.select(self._transport.peers.timeout)}
                    if not ready and (self._unacked or end_sent):
                        return StreamEnd.FAILED, f"{address}: no answer in time", False
                    if "queue" in ready:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake)
                        end_sent = self._send_queued(sock) or end_sent
                    if "socket" in ready:
                        outcome = self._take_reply(sock)
                        if outcome is not None:
                            return outcome
        except (OSError, ssl.SSLError) as e:
            return StreamEnd.FAILED, f"{address}: {e}", False

    def _send_queued(self, sock: socket.socket) -> bool:
        """Send what is queued; True once End is sent (nothing follows it)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                if not self._cancelled:
                    streamwire.send(sock, benefactor_pb2.StreamRequest(method="End"))
                return True
            streamwire.send_parts(sock, item[1])

    def _take_reply(self, sock: socket.socket) -> tuple[StreamEnd, str, bool] | None:
        """One reply: an acknowledgement (None: go on), else how the stream ended."""
        got = streamwire.poll(sock, benefactor_pb2.StreamReply)
        if got is False:
            return None  # TLS's own record (a session ticket): no reply yet
        if got is None:
            return StreamEnd.FAILED, f"{self.placement.address}: the benefactor closed the stream", False
        reply, size = got
        if reply.code:
            return (_END_BY_CODE.get(reply.code, StreamEnd.FAILED), f"{grpc_code_name(reply.code)}: {reply.detail}",
                    False)
        if size:
            raise streamwire.WireError("a put stream's reply with bytes")
        if not reply.HasField("ack"):  # the answer to End: every chunk was acknowledged
            return StreamEnd.DONE, "", True
        with self._lock:
            mine = reply.ack.seq in self._unacked
            if mine:
                self._unacked.remove(reply.ack.seq)
        if mine:
            self._on_ack(reply.ack.seq, reply.ack.receipt)
        return None

    def _end(self, reason: StreamEnd, detail: str) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = self._closed = True
            self._queue.put(None)  # a relay to gRPC waits on the queue
            leftover, self._unacked = sorted(self._unacked), []
        self._on_end(reason, detail, leftover)

    def _relay_to_grpc(self) -> None:
        """A benefactor without a data port: the same chunks as a gRPC Put stream."""
        def ack(seq: int, receipt: bytes) -> None:
            with self._lock:
                if seq in self._unacked:
                    self._unacked.remove(seq)
            self._on_ack(seq, receipt)

        def end(reason: StreamEnd, detail: str, leftover: list[int]) -> None:
            self._end(reason, detail)

        inner = self._transport.grpc.open_stream(self.placement, ack, end)
        while (item := self._queue.get()) is not None:
            seq, frames = item
            inner.send(seq, _as_grpc_frames(frames))
        if self._cancelled:
            inner.cancel()
        else:
            inner.close()


def _as_grpc_frames(frames: tuple[bytes, ...]) -> tuple[bytes, ...]:
    head_len, _ = streamwire.PREFIX.unpack_from(frames[0])
    start = streamwire.PREFIX.size
    put = benefactor_pb2.StreamRequest.FromString(frames[0][start : start + head_len]).put
    return encode_chunk(put.namespace, put.session, put.seq, ChunkKey.from_pb(put.key), memoryview(frames[1]))
