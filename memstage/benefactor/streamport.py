"""The benefactor's stream data port: Put, Get and ReadDrained as raw bytes on long-lived sockets.

A TCP port (TLS when the gRPC port is, with the same certificate and client check) and, for
clients on this machine, a Unix socket in a directory only this user can open, whose peers must
run as this user (SO_PEERCRED; see memstage.sockport). Each connection is served by a thread of its own; a chunk's bytes
are received straight into arena blocks and hashed where they lie. Callers are judged by the same
authenticator as the gRPC boundary, with the credentials each request carries, and requests are
carried out by the same service methods (see memstage.streamwire for the wire).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from memstage import streamwire
from memstage.benefactor.service import BenefactorService
from memstage.boundary import Authenticator
from memstage.chunks import ChunkKey
from memstage.errors import (
    InvalidArgument,
    MemstageError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    to_rpc_detail,
)
from memstage.proto import benefactor_pb2
from memstage.sockport import SocketPort
from memstage.streamwire import host_id

log = logging.getLogger(__name__)

_DRAIN_AFTER_REFUSAL_S = 5.0  # how long a refused put stream's bytes in flight are read and dropped


class StreamPort:
    def __init__(self, service: BenefactorService, authenticate: Authenticator | None, listen: str,
                 tls: ssl.SSLContext | None, socket_dir: str, refused: Callable[[str], None]) -> None:
        self._service = service
        self._authenticate = authenticate
        self._port = SocketPort("stream", self._serve, listen, "data_listen", tls, socket_dir, f"{service.id}.sock",
                                refused)
        self.reply = benefactor_pb2.DataPortsReply(tls=tls is not None, host_id=host_id(),
                                                   tcp_port=self._port.tcp_port, unix_path=self._port.unix_path)

    def start(self) -> None:
        self._port.start()

    def stop(self) -> None:
        self._port.stop()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        Connection(self, conn).serve()

    def authenticate(self, method: str, request: benefactor_pb2.StreamRequest, message: Any) -> Any:
        if self._authenticate is None:
            return None
        return self._authenticate(method, tuple((m.key, m.value) for m in request.metadata), message)


_NOT_OPEN = object()


class Connection:
    """One client's connection: requests in order, each answered before the next is read."""

    def __init__(self, port: StreamPort, sock: socket.socket) -> None:
        self.port = port
        self.sock = sock
        self.service = port._service
        self.store = port._service.store
        self.put_caller: Any = _NOT_OPEN  # the open put stream's caller

    def serve(self) -> None:
        while (got := streamwire.recv(self.sock, benefactor_pb2.StreamRequest)) is not None:
            request, size = got
            try:
                self._one(request, size)
            except MemstageError as e:
                if isinstance(e, Unauthenticated | PermissionDenied):
                    log.warning("benefactor %s refused %s on the stream port: %s", self.service.id, request.method, e)
                streamwire.send(self.sock, benefactor_pb2.StreamReply(code=e.code.value[0], detail=to_rpc_detail(e)))
                if request.method in ("Get", "ReadDrained") and not size:
                    continue  # nothing of it left unread: the connection is still in step
                # A put stream ends here; what the client sent after the refused chunk is read and
                # dropped until it sees the refusal and hangs up, so that it does (a reset would lose it).
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(_DRAIN_AFTER_REFUSAL_S)
                while self.sock.recv(1 << 20):
                    pass
                return

    def _one(self, request: benefactor_pb2.StreamRequest, size: int) -> None:
        method = request.method
        if method == "Put":
            self._put(request, size)
            return
        if method == "Hold":
            self.port.authenticate("Hold", request, request.hold)
            member = ChunkKey.from_pb(request.hold.key)
            if size != member.length:
                raise InvalidArgument(f"stripe member {member}: {size} bytes sent for a length of {member.length}")
            data = bytearray(size)
            streamwire.recv_into(self.sock, memoryview(data))
            self.service.keep_member(request.hold.namespace, member, request.hold.gen, memoryview(data))
            streamwire.send(self.sock, benefactor_pb2.StreamReply())
            return
        if size:
            raise InvalidArgument(f"a {method or 'request'} carries no bytes ({size} sent)")
        if method == "Open":
            self.put_caller = self.port.authenticate("Put", request, None)
        elif method == "End":
            self.put_caller = _NOT_OPEN
            streamwire.send(self.sock, benefactor_pb2.StreamReply())
        elif method == "Get":
            self.port.authenticate("Get", request, request.get)
            key = (request.get.namespace, ChunkKey.from_pb(request.get.key))
            with self.store.lend(key) as views:  # sent from the arena, no copy
                if views is None:
                    raise NotFound(f"benefactor {self.service.id} does not hold chunk {key[1]}")
                streamwire.send(self.sock, benefactor_pb2.StreamReply(), views)
            self.service.metrics.served.inc(key[1].length)
        elif method == "ReadDrained":
            self.port.authenticate("ReadDrained", request, request.read_drained)
            streamwire.send(self.sock, benefactor_pb2.StreamReply(), [self.service.drained(request.read_drained)])
        else:
            raise InvalidArgument(f"unknown stream request {method!r}")

    def _put(self, request: benefactor_pb2.StreamRequest, size: int) -> None:
        if self.put_caller is _NOT_OPEN:
            raise InvalidArgument("a chunk outside a put stream (Open first)")
        incoming = self.service.admit(request.put, self.put_caller)
        if size != incoming.length:
            self.store.release(incoming.length)
            raise InvalidArgument(f"chunk {incoming.seq}: {size} bytes sent for a length of {incoming.length}")
        runs, views = self.store.land(size)
        try:
            for view in views:
                streamwire.recv_into(self.sock, view)
            self.service.verify(incoming, views)
        except BaseException:
            self.store.drop_landed(runs)
            raise
        self.store.put_landed(incoming.key, runs, incoming.session)
        ack = benefactor_pb2.PutAck(seq=incoming.seq, receipt=self.service.stored(incoming))
        streamwire.send(self.sock, benefactor_pb2.StreamReply(ack=ack))
