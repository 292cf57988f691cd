"""The manager's control port: its unary calls on long-lived sockets, for clients whose every
metadata call (a stat, a create, a rename) would otherwise cost a gRPC round trip.

The wire is memstage.streamwire's framing: a ControlRequest (method, call id, the credentials a
gRPC call carries as metadata) with the serialized request as its raw bytes, answered by a
ControlReply (status code and detail) with the serialized reply. Served on a TCP port (TLS when
the gRPC port has it) and a Unix socket when a socket directory is set (see memstage.sockport),
one thread per connection, each call run on that thread. Calls go through the same boundary
function as gRPC's (authentication, call metrics, domain errors into status codes) to the same
servicer methods; the context they get does what they use of gRPC's.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from memstage import streamwire
from memstage.boundary import Boundary, Metadata
from memstage.proto import control_pb2, manager_pb2_grpc
from memstage.rpc import MAX_CONTROL_MESSAGE_BYTES
from memstage.sockport import SocketPort

log = logging.getLogger(__name__)

_OK = control_pb2.ControlReply()


class ControlAbort(Exception):
    """A call ended with a status (ControlContext.abort), as grpc's abort ends one."""


class ControlContext:
    """What servicer methods and the boundary use of a grpc.ServicerContext, for one call on the
    control port: its metadata, its peer, its deadline, and abort() raising."""

    __slots__ = ("_metadata", "_peer", "_deadline", "_code", "_details")

    def __init__(self, metadata: Metadata, peer: str, deadline: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details
        raise ControlAbort(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


class _Recorder:
    """Stands in for a grpc.Server to collect the method handlers generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


Method = tuple[Callable[[Any, Any], Any], Callable[[bytes], Any], Callable[[Any], bytes]]


def unary_methods(servicer: manager_pb2_grpc.ManagerServicer, boundary: Boundary) -> dict[str, Method]:
    """The Manager's unary-unary methods as gRPC serves them: the servicer's method behind the
    boundary, the request's decoder and the reply's encoder (the generated registration's own)."""
    recorder = _Recorder()
    manager_pb2_grpc.add_ManagerServicer_to_server(servicer, recorder)
    return {name: (boundary.unary(name, h.unary_unary), h.request_deserializer, h.response_serializer)
            for name, h in recorder.handlers.items()
            if h.unary_unary is not None and not h.request_streaming and not h.response_streaming}


class ControlPort:
    def __init__(self, servicer: manager_pb2_grpc.ManagerServicer, boundary: Boundary, listen: str,
                 tls: ssl.SSLContext | None, socket_dir: str, socket_name: str,
                 refused: Callable[[str], None]) -> None:
        self._methods = unary_methods(servicer, boundary)
        self._port = SocketPort("control", self._serve, listen, "control_listen", tls, socket_dir, socket_name,
                                refused)
        self.reply = control_pb2.ControlPortsReply(tcp_port=self._port.tcp_port, tls=tls is not None,
                                                   unix_path=self._port.unix_path, host_id=streamwire.host_id())

    def start(self) -> None:
        self._port.start()

    def stop(self, grace: float = 0.0) -> None:
        self._port.stop(grace)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        reader = streamwire.Reader(conn, MAX_CONTROL_MESSAGE_BYTES)
        while (got := reader.read()) is not None:
            head, body = got
            try:
                request = control_pb2.ControlRequest.FromString(head)
            except DecodeError:
                raise streamwire.WireError("not a ControlRequest") from None
            reply, out = self.call(request, body, peer)
            streamwire.send_frame(conn, reply.SerializeToString(), out)

    def call(self, request: control_pb2.ControlRequest, body: bytes, peer: str
             ) -> tuple[control_pb2.ControlReply, bytes]:
        """One call: its reply's header, and the serialized reply (empty unless the status is OK)."""
        method = self._methods.get(request.method)
        if method is None:
            return _status(request, grpc.StatusCode.UNIMPLEMENTED, "Method not found!"), b""
        behaviour, decode, encode = method
        try:
            message = decode(body)
        except DecodeError:
            return _status(request, grpc.StatusCode.INTERNAL, "Exception deserializing request!"), b""
        deadline = time.monotonic() + request.timeout_ms / 1000 if request.timeout_ms else None
        context = ControlContext(tuple((m.key, m.value) for m in request.metadata), peer, deadline)
        try:
            out = encode(behaviour(message, context))
        except ControlAbort:
            return _status(request, context.code() or grpc.StatusCode.UNKNOWN, context.details()), b""
        except Exception:  # the boundary turns every error into an abort: this is a bug of the port
            log.exception("control port: %s failed", request.method)
            return _status(request, grpc.StatusCode.INTERNAL, f"{request.method}: internal error"), b""
        if len(out) > MAX_CONTROL_MESSAGE_BYTES:  # as gRPC's own limit refuses it
            return _status(request, grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"Sent message larger than max ({len(out)} vs. {MAX_CONTROL_MESSAGE_BYTES})"), b""
        if not request.call:
            return _OK, out
        return control_pb2.ControlReply(call=request.call), out


def _status(request: control_pb2.ControlRequest, code: grpc.StatusCode, detail: str) -> control_pb2.ControlReply:
    return control_pb2.ControlReply(call=request.call, code=code.value[0], detail=detail)
