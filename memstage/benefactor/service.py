"""The benefactor's gRPC data service: a thin layer over ChunkStore.

Put and Get use the frame codec of memstage.frames instead of protobuf, so a received chunk is
kept as a view of the received message (no copy) and a sent chunk is copied once. Every chunk is
put for a write session and acknowledged with a receipt for the manager. There is no Delete:
chunks are freed only on the manager's orders (benefactor.orders).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc

from memstage.benefactor.metrics import BenefactorMetrics
from memstage.benefactor.store import ChunkStore, StoreKey

if TYPE_CHECKING:
    from memstage.benefactor.drain import DrainLoop
from memstage import auth
from memstage.chunks import HASH_BYTES, MAX_CHUNK_SIZE, MAX_FRAME_DATA, ChunkKey
from memstage.errors import InvalidPath, PermissionDenied
from memstage.frames import (
    FrameError,
    PutFrameView,
    decode_put_frame,
    encode_get_frame,
    get_frame_prefix,
    identity,
)
from memstage.paths import check_namespace, split_drained
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
    def __init__(self, store: ChunkStore, benefactor_id: str, metrics: BenefactorMetrics, receipt_key: bytes,
                 secret: bytes | None = None) -> None:
        self.store = store
        self.secret = secret  # the cluster secret; None: --insecure, nothing is checked
        self.id = benefactor_id
        self.receipt_key = receipt_key
        self.metrics = metrics
        self.drain: DrainLoop | None = None  # set by the server
        self.incarnation = 0  # set by the server: wakes for another process at this address are ignored
        # Set by the server: the manager says work waits here; returns (epoch, last order carried out).
        self.on_wake: Callable[[benefactor_pb2.WakeRequest], tuple[int, int]] = lambda request: (0, 0)
        # Tokens the manager revoked -> until when their grants could still be valid (then forgotten).
        self._revoked: dict[str, float] = {}
        self._revoked_lock = threading.Lock()

    def revoke(self, token_ids: Iterable[str]) -> None:
        """The manager revoked these tokens: the grants they were given are refused from now on."""
        ids = list(token_ids)
        now = time.time()
        with self._revoked_lock:  # copied, then swapped: calls read it without the lock
            fresh = {t: u for t, u in self._revoked.items() if u > now}
            fresh.update((t, now + auth.GRANT_SECONDS + 60) for t in ids)
            self._revoked = fresh
        if ids:
            log.info("tokens revoked: %s", ", ".join(ids))

    def _allow(self, context: grpc.ServicerContext, namespace: str, write: bool, since: float | None = None
               ) -> auth.Grant | None:
        """Abort unless the caller holds the manager's grant for this access, or is a benefactor of
        this deployment (copies and rebuilds read from each other)."""
        if self.secret is None:
            return None
        metadata = context.invocation_metadata()
        proof = auth.header(metadata, auth.CLUSTER_HEADER)
        if proof and auth.proof_holder(self.secret, proof):  # a benefactor of this deployment, or the manager
            return None
        grant = auth.header(metadata, auth.GRANT_HEADER)
        if not grant:
            self.metrics.refused.labels("unauthenticated").inc()
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"benefactor {self.id}: no grant (clients get one from the manager with each session "
                          "and version map)")
        try:
            # `since`: a Put stream's grant is judged as of the stream's start (a long write outlives
            # a short grant); its token's revocation ends it at any chunk.
            return auth.verify_grant(self.secret, grant, namespace, write, now=since, revoked=self._revoked)
        except PermissionDenied as e:
            self.metrics.refused.labels("permission_denied").inc()
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"benefactor {self.id}: {e}")

    # -- Put ---------------------------------------------------------------------------------
    def put(self, frames: Iterator[PutFrameView], context: grpc.ServicerContext) -> Iterator[benefactor_pb2.PutAck]:
        incoming: _Incoming | None = None
        started = time.time()
        try:
            for frame in frames:
                if frame.header is not None:
                    if incoming is not None:
                        self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"chunk {incoming.seq} ended after {incoming.received} of {incoming.length} bytes")
                    incoming = self._begin(frame.header, context, started)
                elif incoming is None:
                    self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "data frame without a chunk header")
                assert incoming is not None
                incoming.parts.append(frame.data)
                incoming.received += len(frame.data)
                if incoming.received > incoming.length:
                    self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                f"chunk {incoming.seq}: more bytes than its length {incoming.length}")
                if incoming.received == incoming.length:
                    data = incoming.data()
                    ns, key = incoming.key
                    if not key.matches(data):
                        self.metrics.refused.labels("hash_mismatch").inc()
                        self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"chunk {incoming.seq}: bytes do not match hash {key} (namespace {ns})")
                    self.store.put_reserved(incoming.key, data, incoming.session)
                    self.metrics.received.inc(len(data))
                    receipt = make_receipt(self.receipt_key, incoming.session, ns, key)
                    seq, incoming = incoming.seq, None
                    yield benefactor_pb2.PutAck(seq=seq, receipt=receipt)
            if incoming is not None:
                self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                            f"stream ended inside chunk {incoming.seq} ({incoming.received}/{incoming.length} bytes)")
        finally:
            if incoming is not None:
                self.store.release(incoming.length)

    def _begin(self, header: benefactor_pb2.PutHeader, context: grpc.ServicerContext, started: float) -> _Incoming:
        try:
            check_namespace(header.namespace)
        except InvalidPath as e:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        granted = self._allow(context, header.namespace, write=True, since=started)
        if not header.session:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"chunk {header.seq}: no write session (open one with the manager first)")
        key = ChunkKey.from_pb(header.key)
        if len(key.hash) != HASH_BYTES or not 0 < key.length <= MAX_CHUNK_SIZE or key.is_hole:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"chunk {header.seq}: needs a {HASH_BYTES}-byte hash and a length of 1..{MAX_CHUNK_SIZE}")
        if granted is not None and granted.cap and self.store.session_bytes(header.session) + key.length > granted.cap:
            self.metrics.refused.labels("quota").inc()
            self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"[EDQUOT] namespace {header.namespace} is at its memory quota: a write session may hold "
                        f"{granted.cap} bytes uncommitted on benefactor {self.id} (quota_memory)")
        if not self.store.reserve(key.length):
            self.metrics.refused.labels("full").inc()
            self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"benefactor {self.id} is full ({self.store.used} of {self.store.capacity} bytes used)")
        return _Incoming((header.namespace, key), header.seq, header.session)

    @staticmethod
    def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        log.info("put refused: %s", message)
        context.abort(code, message)

    # -- Get, Has ----------------------------------------------------------------------------
    def get(self, request: benefactor_pb2.GetRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._allow(context, request.namespace, write=False)
        key = (request.namespace, ChunkKey.from_pb(request.key))
        for start in range(0, key[1].length, MAX_FRAME_DATA):
            end = min(start + MAX_FRAME_DATA, key[1].length)
            # Copied out of the arena straight into the encoded frame: one copy, no protobuf.
            frame = self.store.read(key, start, end, prefix=get_frame_prefix(end - start))
            if frame is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"benefactor {self.id} does not hold chunk {key[1]}")
            yield frame

    def read_drained(self, request: benefactor_pb2.ReadDrainedRequest, context: grpc.ServicerContext
                     ) -> Iterator[bytes]:
        assert self.drain is not None
        try:
            # Judged as sent: a name with '..', '.' or an empty component is refused, not resolved, so
            # the namespace the grant is checked against is the directory the file is read from.
            namespace, _ = split_drained(request.drained)
        except InvalidPath as e:
            self.metrics.refused.labels("invalid_path").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"benefactor {self.id}: {e}")
        self._allow(context, namespace, write=False)
        key = ChunkKey.from_pb(request.key)
        try:
            data = self.drain.read_drained(request.drained, key)
        except (PermissionError, InvalidPath) as e:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"benefactor {self.id}: {e}")
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.drained}: not on the PFS")
        except (OSError, ValueError) as e:
            context.abort(grpc.StatusCode.DATA_LOSS, str(e))
        view = memoryview(data)
        for start in range(0, max(len(view), 1), MAX_FRAME_DATA):
            yield encode_get_frame(view[start : start + MAX_FRAME_DATA])

    def has(self, request: benefactor_pb2.ChunkList, context: grpc.ServicerContext) -> benefactor_pb2.HasReply:
        self._allow(context, request.namespace, write=False)
        keys = [(request.namespace, ChunkKey.from_pb(k)) for k in request.keys]
        return benefactor_pb2.HasReply(present=[self.store.has(k) for k in keys])

    # -- Wake ----------------------------------------------------------------------------------
    def wake(self, request: benefactor_pb2.WakeRequest, context: grpc.ServicerContext) -> benefactor_pb2.WakeReply:
        """The manager's word that work waits here. A grant does not do: only the manager sends it."""
        if self.secret is not None:
            proof = auth.header(context.invocation_metadata(), auth.CLUSTER_HEADER)
            if auth.proof_holder(self.secret, proof) != auth.MANAGER:
                log.warning("wake from %s refused: no valid cluster proof", context.peer())
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              f"benefactor {self.id}: Wake is for the manager of this deployment (cluster secret)")
        if request.benefactor_id != self.id or request.incarnation != self.incarnation:
            return benefactor_pb2.WakeReply(known=False)
        if request.orders_reply and not orders_signed(self.receipt_key, request.orders_reply, request.orders_mac):
            log.warning("orders in a wake from %s are not signed by the manager: not carried out", context.peer())
            request = benefactor_pb2.WakeRequest(orders=True, drain=request.drain)  # fetched from the manager
        epoch, acked = self.on_wake(request)
        return benefactor_pb2.WakeReply(known=True, epoch=epoch, acked=acked)

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
                "Wake": grpc.unary_unary_rpc_method_handler(
                    self.wake,
                    request_deserializer=benefactor_pb2.WakeRequest.FromString,
                    response_serializer=benefactor_pb2.WakeReply.SerializeToString,
                ),
            },
        )


def _decode_put(raw: bytes) -> PutFrameView:
    try:
        return decode_put_frame(raw)
    except FrameError as e:
        # grpc turns a deserializer error into INTERNAL; keep the reason visible in the log.
        log.warning("malformed Put frame: %s", e)
        raise
