"""The benefactor's gRPC data service: a thin layer over ChunkStore.

Put and Get use the frame codec of memstage.frames instead of protobuf, so a received chunk is
kept as a view of the received message (no copy) and a sent chunk is copied once. Every chunk is
put for a write session and acknowledged with a receipt for the manager. There is no Delete:
chunks are freed only on the manager's orders (benefactor.orders).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc

from memstage.benefactor.access import Caller
from memstage.benefactor.metrics import BenefactorMetrics
from memstage.benefactor.store import ChunkStore, StoreKey

if TYPE_CHECKING:
    from memstage.benefactor.drain import DrainLoop
from memstage.boundary import current_caller
from memstage.chunks import HASH_BYTES, MAX_CHUNK_SIZE, MAX_FRAME_DATA, ChunkKey
from memstage.errors import (
    DataDamaged,
    DeploymentFull,
    InvalidArgument,
    InvalidPath,
    MemstageError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
)
from memstage.frames import (
    FrameError,
    PutFrameView,
    decode_put_frame,
    encode_get_frame,
    get_frame_prefix,
    identity,
)
from memstage.paths import check_namespace
from memstage.proto import benefactor_pb2
from memstage.receipts import make as make_receipt
from memstage.receipts import orders_signed

log = logging.getLogger(__name__)

SERVICE = "memstage.v1.Benefactor"


class _Incoming:
    """A chunk whose frames are still arriving."""

    __slots__ = ("key", "seq", "session", "parts", "received")

    def __init__(self, key: StoreKey, seq: int, session: int) -> None:
        self.key = key
        self.seq = seq
        self.session = session
        self.parts: list[memoryview] = []
        self.received = 0

    @property
    def length(self) -> int:
        return self.key[1].length

    def data(self) -> memoryview:
        if len(self.parts) == 1:
            return self.parts[0]  # the common case: one frame, kept without a copy
        return memoryview(b"".join(self.parts))


class BenefactorService:
    """The servicer below the benefactor's boundary: the boundary authenticates each call (see
    benefactor.access); Put checks its caller's grant against the namespace of each chunk. Refusals
    are raised as domain errors, which the boundary turns into status codes."""

    def __init__(self, store: ChunkStore, benefactor_id: str, metrics: BenefactorMetrics,
                 receipt_key: bytes) -> None:
        self.store = store
        self.id = benefactor_id
        self.receipt_key = receipt_key
        self.metrics = metrics
        self.drain: DrainLoop | None = None  # set by the server
        self.ports = benefactor_pb2.DataPortsReply()  # set by the server: its stream data port
        self.incarnation = 0  # set by the server: wakes for another process at this address are ignored
        # Set by the server: the manager says work waits here; returns (epoch, last order carried out).
        self.on_wake: Callable[[benefactor_pb2.WakeRequest], tuple[int, int]] = lambda request: (0, 0)

    # -- Put ---------------------------------------------------------------------------------
    def put(self, frames: Iterator[PutFrameView], context: grpc.ServicerContext) -> Iterator[benefactor_pb2.PutAck]:
        caller: Caller | None = current_caller()  # None: --insecure, nothing is checked
        incoming: _Incoming | None = None
        try:
            for frame in frames:
                if frame.header is not None:
                    if incoming is not None:
                        raise _refused(InvalidArgument(
                            f"chunk {incoming.seq} ended after {incoming.received} of {incoming.length} bytes"))
                    incoming = self.admit(frame.header, caller)
                elif incoming is None:
                    raise _refused(InvalidArgument("data frame without a chunk header"))
                incoming.parts.append(frame.data)
                incoming.received += len(frame.data)
                if incoming.received > incoming.length:
                    raise _refused(InvalidArgument(
                        f"chunk {incoming.seq}: more bytes than its length {incoming.length}"))
                if incoming.received == incoming.length:
                    receipt = self.store_received(incoming, incoming.data())
                    seq, incoming = incoming.seq, None
                    yield benefactor_pb2.PutAck(seq=seq, receipt=receipt)
            if incoming is not None:
                raise _refused(InvalidArgument(
                    f"stream ended inside chunk {incoming.seq} ({incoming.received}/{incoming.length} bytes)"))
        finally:
            if incoming is not None:
                self.store.release(incoming.length)

    def store_received(self, incoming: _Incoming, data: memoryview) -> bytes:
        """Keep a chunk received whole in a message (its reservation turns into blocks); its receipt."""
        self.verify(incoming, [data])
        self.store.put_reserved(incoming.key, data, incoming.session)
        return self.stored(incoming)

    def verify(self, incoming: _Incoming, parts: list[memoryview]) -> None:
        ns, key = incoming.key
        if not key.matches_parts(parts):
            self.metrics.refused.labels("hash_mismatch").inc()
            raise _refused(InvalidArgument(f"chunk {incoming.seq}: bytes do not match hash {key} (namespace {ns})"))

    def stored(self, incoming: _Incoming) -> bytes:
        """The receipt of a chunk kept for its session."""
        ns, key = incoming.key
        self.metrics.received.inc(key.length)
        return make_receipt(self.receipt_key, incoming.session, ns, key)

    def admit(self, header: benefactor_pb2.PutHeader, caller: Caller | None) -> _Incoming:
        """The checks of a chunk's header, for the caller (None: --insecure), and room reserved for it."""
        try:
            check_namespace(header.namespace)
        except InvalidPath as e:
            raise _refused(InvalidArgument(str(e))) from None
        granted = caller.require(header.namespace, write=True) if caller is not None else None
        if not header.session:
            raise _refused(InvalidArgument(
                f"chunk {header.seq}: no write session (open one with the manager first)"))
        key = ChunkKey.from_pb(header.key)
        if len(key.hash) != HASH_BYTES or not 0 < key.length <= MAX_CHUNK_SIZE or key.is_hole:
            raise _refused(InvalidArgument(
                f"chunk {header.seq}: needs a {HASH_BYTES}-byte hash and a length of 1..{MAX_CHUNK_SIZE}"))
        if granted is not None and granted.cap and self.store.session_bytes(header.session) + key.length > granted.cap:
            self.metrics.refused.labels("quota").inc()
            # Sent tagged [EDQUOT]: the writer's mount answers EDQUOT, not ENOSPC.
            raise _refused(QuotaExceeded(
                f"namespace {header.namespace} is at its memory quota: a write session may hold "
                f"{granted.cap} bytes uncommitted on benefactor {self.id} (quota_memory)"))
        if not self.store.reserve(key.length):
            self.metrics.refused.labels("full").inc()
            raise _refused(DeploymentFull(
                f"benefactor {self.id} is full ({self.store.used} of {self.store.capacity} bytes used)"))
        return _Incoming((header.namespace, key), header.seq, header.session)

    # -- Get, Has ----------------------------------------------------------------------------
    def get(self, request: benefactor_pb2.GetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        key = (request.namespace, ChunkKey.from_pb(request.key))
        for start in range(0, key[1].length, MAX_FRAME_DATA):
            end = min(start + MAX_FRAME_DATA, key[1].length)
            # Copied out of the arena straight into the encoded frame: one copy, no protobuf.
            frame = self.store.read(key, start, end, prefix=get_frame_prefix(end - start))
            if frame is None:
                raise NotFound(f"benefactor {self.id} does not hold chunk {key[1]}")
            self.metrics.served.inc(end - start)
            yield frame

    def read_drained(self, request: benefactor_pb2.ReadDrainedRequest, context: grpc.ServicerContext
                     ) -> Iterator[bytes]:
        view = memoryview(self.drained(request))
        for start in range(0, max(len(view), 1), MAX_FRAME_DATA):
            yield encode_get_frame(view[start : start + MAX_FRAME_DATA])

    def drained(self, request: benefactor_pb2.ReadDrainedRequest) -> bytes | memoryview:
        """A drained chunk read back from the PFS, verified."""
        assert self.drain is not None
        # The boundary checked the name (and the grant against the namespace it starts with).
        key = ChunkKey.from_pb(request.key)
        try:
            data = self.drain.read_drained(request.drained, key)
        except (PermissionError, InvalidPath) as e:
            raise PermissionDenied(f"benefactor {self.id}: {e}") from None
        except FileNotFoundError:
            raise NotFound(f"{request.drained}: not on the PFS") from None
        except (OSError, ValueError) as e:
            raise DataDamaged(str(e)) from None
        return data

    def has(self, request: benefactor_pb2.ChunkList, context: grpc.ServicerContext) -> benefactor_pb2.HasReply:
        keys = [(request.namespace, ChunkKey.from_pb(k)) for k in request.keys]
        return benefactor_pb2.HasReply(present=[self.store.has(k) for k in keys])

    # -- Wake ----------------------------------------------------------------------------------
    def wake(self, request: benefactor_pb2.WakeRequest, context: grpc.ServicerContext) -> benefactor_pb2.WakeReply:
        """The manager's word that work waits here (the boundary lets only the manager send it)."""
        if request.benefactor_id != self.id or request.incarnation != self.incarnation:
            return benefactor_pb2.WakeReply(known=False)
        if request.orders_reply and not orders_signed(self.receipt_key, request.orders_reply, request.orders_mac):
            log.warning("orders in a wake from %s are not signed by the manager: not carried out", context.peer())
            request = benefactor_pb2.WakeRequest(orders=True, drain=request.drain)  # fetched from the manager
        epoch, acked = self.on_wake(request)
        return benefactor_pb2.WakeReply(known=True, epoch=epoch, acked=acked)

    def hold(self, request: benefactor_pb2.HoldRequest, context: grpc.ServicerContext) -> benefactor_pb2.HoldReply:
        self.keep_member(request.namespace, ChunkKey.from_pb(request.key), request.gen, request.data)
        return benefactor_pb2.HoldReply()

    def keep_member(self, namespace: str, key: ChunkKey, gen: int, data: bytes | memoryview) -> None:
        """A stripe member another benefactor made and hands over: held at `gen` once verified."""
        try:
            check_namespace(namespace)
        except InvalidPath as e:
            raise InvalidArgument(str(e)) from None
        if key.is_hole or not key.matches(data):
            raise InvalidArgument(f"stripe member {key} handed over: bytes do not match its hash")
        if not self.store.store_copy((namespace, key), data, gen):
            raise DeploymentFull(f"benefactor {self.id} is full ({self.store.used} of {self.store.capacity} "
                                 "bytes used)")

    def data_ports(self, request: benefactor_pb2.DataPortsRequest, context: grpc.ServicerContext
                   ) -> benefactor_pb2.DataPortsReply:
        return self.ports

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Put": grpc.stream_stream_rpc_method_handler(
                    self.put,
                    request_deserializer=_decode_put,
                    response_serializer=benefactor_pb2.PutAck.SerializeToString,
                ),
                "Get": grpc.unary_stream_rpc_method_handler(
                    self.get,
                    request_deserializer=benefactor_pb2.GetRequest.FromString,
                    response_serializer=identity,
                ),
                "ReadDrained": grpc.unary_stream_rpc_method_handler(
                    self.read_drained,
                    request_deserializer=benefactor_pb2.ReadDrainedRequest.FromString,
                    response_serializer=identity,
                ),
                "Has": grpc.unary_unary_rpc_method_handler(
                    self.has,
                    request_deserializer=benefactor_pb2.ChunkList.FromString,
                    response_serializer=benefactor_pb2.HasReply.SerializeToString,
                ),
                "DataPorts": grpc.unary_unary_rpc_method_handler(
                    self.data_ports,
                    request_deserializer=benefactor_pb2.DataPortsRequest.FromString,
                    response_serializer=benefactor_pb2.DataPortsReply.SerializeToString,
                ),
                "Hold": grpc.unary_unary_rpc_method_handler(
                    self.hold,
                    request_deserializer=benefactor_pb2.HoldRequest.FromString,
                    response_serializer=benefactor_pb2.HoldReply.SerializeToString,
                ),
                "Wake": grpc.unary_unary_rpc_method_handler(
                    self.wake,
                    request_deserializer=benefactor_pb2.WakeRequest.FromString,
                    response_serializer=benefactor_pb2.WakeReply.SerializeToString,
                ),
            },
        )


def _refused(error: MemstageError) -> MemstageError:
    log.info("put refused: %s", error)
    return error


def _decode_put(raw: bytes) -> PutFrameView:
    try:
        return decode_put_frame(raw)
    except FrameError as e:
        # grpc turns a deserializer error into INTERNAL; keep the reason visible in the log.
        log.warning("malformed Put frame: %s", e)
        raise
