"""The client's side of the manager's control port (memstage.manager.controlport): unary manager
calls on long-lived sockets, one call at a time on each, without gRPC's per-call cost.

Where the port is comes from ControlPorts, asked once over gRPC: its Unix socket when the manager
runs on this machine's kernel and the socket can be opened, else TCP (TLS when the deployment has
it). Connections are kept and reused: a call takes an idle one or opens one, so concurrent calls
(a mount's threads) each have their own. Whenever the port cannot be used, the caller is told to
use gRPC for that call, and the port is tried again a moment later.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from memstage import streamwire
from memstage.errors import status_code
from memstage.proto import benefactor_pb2, control_pb2, manager_pb2
from memstage.rpc import MAX_CONTROL_MESSAGE_BYTES, Pairs
from memstage.tls import Tls

log = logging.getLogger(__name__)

_IDLE_KEPT = 16  # idle connections kept between calls (more concurrent calls open more)
_RETRY_AFTER_S = 1.0  # a port that failed is not tried again for this long, doubled at each failure in a row
_RETRY_AT_MOST_S = 300.0  # (a port a firewall drops would otherwise hold up a call every few seconds)
_NO_PORT_RETRY_S = 60.0  # a manager without a usable port is asked again after this long
_CONNECT_S = 2.0  # at most this long to connect (gRPC serves the call if it cannot)

# The reply type of every unary Manager method, by name.
REPLY_TYPES: dict[str, type[Message]] = {
    m.name: message_factory.GetMessageClass(m.output_type)
    for m in manager_pb2.DESCRIPTOR.services_by_name["Manager"].methods
    if not m.client_streaming and not m.server_streaming
}


_CLIENTS: weakref.WeakSet[ControlClient] = weakref.WeakSet()


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._forked()


os.register_at_fork(after_in_child=_after_fork)


class CallFailed(Exception):
    """The call ended with a status other than OK, as gRPC would have ended it."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(f"{code.name}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: ssl.SSLContext | None
    server_name: str
    unix_path: str


class _Conn:
    __slots__ = ("sock", "reader", "epoch", "_poll")

    def __init__(self, sock: socket.socket, epoch: int) -> None:
        self.sock = sock
        self.reader = streamwire.Reader(sock, MAX_CONTROL_MESSAGE_BYTES)
        self.epoch = epoch
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def stale(self) -> bool:
        """Whether this idle connection is unusable: the manager closed it (or sent what no call asked)."""
        if not self._poll.poll(0):
            return False
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket):  # perhaps TLS's own records (session tickets): not a reply
            sock.settimeout(0.0)
            try:
                sock.recv(1)
            except (ssl.SSLWantReadError, BlockingIOError):
                return False
            except (OSError, ssl.SSLError):
                return True
        return True

    def close(self) -> None:
        self.sock.close()


class ControlClient:
    """`ask_ports` asks the manager for its ControlPortsReply (over gRPC); `metadata` gives what
    each call carries (the token), as the gRPC channel's calls carry it."""

    def __init__(self, address: str, timeout: float, tls: Tls | None, metadata: Callable[[], Pairs],
                 unix_sockets: bool, ask_ports: Callable[[], control_pb2.ControlPortsReply]) -> None:
        self.address = address
        self.timeout = timeout
        self._tls = tls
        self._unix = unix_sockets
        self._ask_ports = ask_ports
        self._metadata = metadata
        self._common: tuple[Pairs | None, bytes] = (None, b"")  # metadata, and its part of a request
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._asking = threading.Lock()
        self._endpoint: Endpoint | None = None
        self._retry_at = 0.0  # while no endpoint: when to ask again
        self._failures = 0  # of the port, in a row
        self._idle: list[_Conn] = []
        self._epoch = 0  # close() makes connections of earlier epochs unwanted
        _CLIENTS.add(self)

    @property
    def endpoint(self) -> Endpoint | None:
        """Where calls go now (None: by gRPC, until the port is found again)."""
        with self._lock:
            return self._endpoint

    def call(self, method: str, request: Message) -> Message | None:
        """The reply; None when the port cannot be used for this call (use gRPC: nothing was
        carried out); CallFailed with the status the call ended with."""
        reply_type = REPLY_TYPES.get(method)
        if reply_type is None:
            return None
        conn = self._take()
        if conn is None:
            return None
        call = next(self._ids)
        head = self._common_part() + control_pb2.ControlRequest(method=method, call=call).SerializeToString()
        try:
            conn.sock.settimeout(self.timeout)
            streamwire.send_frame(conn.sock, head, request.SerializeToString())
        except (OSError, ssl.SSLError) as e:  # a request cut short is not carried out
            conn.close()
            self._lost(f"sending: {e}")
            return None
        try:
            got = conn.reader.read(time.monotonic() + self.timeout)
            if got is None:
                raise streamwire.WireError("the manager closed the connection")
            reply = control_pb2.ControlReply.FromString(got[0])
            if reply.call != call:
                raise streamwire.WireError(f"the answer to call {reply.call} came to call {call}")
        except TimeoutError:
            conn.close()  # its answer may still come: the connection is out of step
            raise CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except (OSError, ssl.SSLError, DecodeError) as e:
            conn.close()
            self._lost(f"waiting for the answer: {e}")
            raise CallFailed(grpc.StatusCode.UNAVAILABLE,
                             f"the control connection was lost during the call ({e})") from None
        self._give_back(conn)
        if self._failures:
            self._failures = 0
        if reply.code:
            raise CallFailed(status_code(reply.code), reply.detail)
        return reply_type.FromString(got[1])

    def _common_part(self) -> bytes:
        """What every request carries, serialized once for as long as it stays the same (the
        serializations of two parts of a message, concatenated, are the message's)."""
        pairs = self._metadata()
        common = self._common
        if common[0] is not pairs:
            common = (pairs, control_pb2.ControlRequest(
                metadata=[benefactor_pb2.MetadataEntry(key=k, value=str(v() if callable(v) else v))
                          for k, v in pairs],
                timeout_ms=max(1, int(self.timeout * 1000))).SerializeToString())
            if not any(callable(v) for _, v in pairs):  # a value asked at each call is not kept
                self._common = common
        return common[1]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._endpoint, self._retry_at, self._failures = None, 0.0, 0
            self._epoch += 1
        for conn in idle:
            conn.close()

    def _forked(self) -> None:
        """In a forked child: the parent's connections are its own (a call on one from both
        processes would mix their answers); closing the child's copies leaves them open there.
        The port is kept: the child dials it without asking by gRPC, whose channels a fork spoils."""
        self._lock = threading.Lock()
        self._asking = threading.Lock()
        idle, self._idle = self._idle, []
        self._epoch += 1
        for conn in idle:
            conn.close()

    # -- connections -----------------------------------------------------------------------------
    def _take(self) -> _Conn | None:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()
        endpoint = self._find()
        if endpoint is None:
            return None
        with self._lock:
            epoch = self._epoch
        try:
            sock = self._dial(endpoint)
        except (OSError, ssl.SSLError) as e:
            self._lost(f"connecting: {e}")
            return None
        return _Conn(sock, epoch)

    def _dial(self, endpoint: Endpoint) -> socket.socket:
        timeout = min(self.timeout, _CONNECT_S)
        if endpoint.unix_path:
            try:
                return streamwire.dial("", 0, endpoint.unix_path, None, "", timeout)
            except OSError:  # another machine's file system after all, or not ours to open
                if not endpoint.port:
                    raise
        return streamwire.dial(endpoint.host, endpoint.port, "", endpoint.tls, endpoint.server_name, timeout)

    def _give_back(self, conn: _Conn) -> None:
        with self._lock:
            if conn.epoch == self._epoch and len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def _lost(self, what: str) -> None:
        """The port failed: gRPC until it is asked for again (a restarted manager has a new one)."""
        log.info("manager %s: control port unusable (%s); calls go by gRPC for now", self.address, what)
        with self._lock:
            idle, self._idle = self._idle, []
            pause = min(_RETRY_AFTER_S * 2 ** min(self._failures, 16), _RETRY_AT_MOST_S)
            self._endpoint, self._retry_at = None, time.monotonic() + pause
            self._failures += 1
        for conn in idle:
            conn.close()

    def _find(self) -> Endpoint | None:
        """The port, asked for when unknown; None (use gRPC) while it cannot be."""
        with self._lock:
            if self._endpoint is not None:
                return self._endpoint
            if time.monotonic() < self._retry_at:
                return None
        if not self._asking.acquire(blocking=False):
            return None  # another call is asking: this one goes by gRPC rather than wait
        try:
            try:
                reply = self._ask_ports()
            except ValueError:  # grpc's word for a channel closed under the call (close())
                return None
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                no_port = code == grpc.StatusCode.UNIMPLEMENTED  # a manager from before control ports
                with self._lock:
                    self._retry_at = time.monotonic() + (_NO_PORT_RETRY_S if no_port else _RETRY_AFTER_S)
                return None
            endpoint = self._endpoint_of(reply)
            with self._lock:
                if endpoint is None:
                    self._retry_at = time.monotonic() + _NO_PORT_RETRY_S
                self._endpoint = endpoint
            return endpoint
        finally:
            self._asking.release()

    def _endpoint_of(self, reply: control_pb2.ControlPortsReply) -> Endpoint | None:
        unix = reply.unix_path if (self._unix and reply.unix_path and reply.host_id
                                   and reply.host_id == streamwire.host_id()) else ""
        port = reply.tcp_port
        context = None
        if port and reply.tls:
            if self._tls is None or not self._tls.enabled:
                port = 0  # a TLS port this client cannot speak to (gRPC will say why)
            else:
                context = self._tls.client_context()
        if not port and not unix:
            return None
        return Endpoint(self.address.rpartition(":")[0].strip("[]"), port, context,
                        self._tls.server_name if self._tls is not None else "", unix)

