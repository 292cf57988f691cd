"""Connections: the client's channels to the manager and to benefactors, and typed manager calls.

Channels are created on first use and shared by every file of a Client (grpc channels are
thread-safe); close() drops them, and the next call opens new ones. With the stream transport,
unary manager calls go to the manager's control port (memstage.client.control), by gRPC when it
cannot be used. Credentials travel in each channel's interceptor (the token to the manager, the
manager's grants to benefactors), and with each control port call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from memstage.auth import GRANT_HEADER, TOKEN_HEADER, grant_namespace
from memstage.client.control import CallFailed, ControlClient
from memstage.errors import MemstageError, SettingError, Unavailable, from_rpc_error, from_status
from memstage.paths import split_drained
from memstage.peers import Peers
from memstage.proto import benefactor_pb2, control_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import MOUNT_HEADER, Pairs, control_channel, with_metadata
from memstage.tls import Tls
from memstage.tlsprobe import missing_tls, speaks_tls


class Connections:
    def __init__(self, manager: str, timeout: float, token: str = "", namespace: str = "",
                 tls: Tls | None = None, transport: str = "stream", unix_sockets: bool = True) -> None:
        """token: a client's (sent to the manager); namespace: the one whose grant a Put carries;
        transport "stream": unary manager calls go to its control port where it has one (else gRPC)."""
        self.manager_address = manager
        self.timeout = timeout
        self.tls = tls
        self.namespace = namespace
        self._manager_metadata = ((TOKEN_HEADER, f"Bearer {token.strip()}"),) if token.strip() else ()
        # The manager's grants for benefactor calls, by namespace: read, and read-write.
        self._grants: dict[tuple[str, bool], str] = {}
        self._lock = threading.Lock()
        self._manager_channel: grpc.Channel | None = None
        self._manager: manager_pb2_grpc.ManagerStub | None = None
        self.peers = Peers(timeout, tls, self._benefactor_credentials)
        self.control = ControlClient(manager, timeout, tls, lambda: self._manager_metadata, unix_sockets,
                                     self._control_ports) if transport == "stream" else None

    def note_grant(self, namespace: str, grant: str, write: bool) -> None:
        """Keep a grant the manager handed out (a session's, a version map's) for benefactor calls."""
        if grant:
            with self._lock:
                self._grants[(namespace, write)] = grant

    def _benefactor_credentials(self, method: str, request: Any) -> Pairs:
        """The grant for the namespace a benefactor call reads or writes."""
        if method == "Put":  # its namespace is in its frames: this client's
            namespace, write = self.namespace, True
        elif method == "ReadDrained":  # drained chunk files live under <namespace>/
            namespace, write = split_drained(request.drained)[0], False
        else:
            namespace, write = request.namespace, False
        with self._lock:
            grant = self._grants.get((namespace, True)) or ("" if write else self._grants.get((namespace, False), ""))
        return ((GRANT_HEADER, grant),) if grant else ()

    def speak_for(self, mount: str) -> None:
        """Calls say they come from the mount `mount` (the manager tells it of no change it made)."""
        with self._lock:
            self._manager_metadata = (*self._manager_metadata, (MOUNT_HEADER, mount))
            old, self._manager_channel, self._manager = self._manager_channel, None, None
        if old is not None:  # made before: its calls would not say it
            old.close()

    def _manager_stub(self) -> manager_pb2_grpc.ManagerStub:
        with self._lock:
            if self._manager is None:
                self._manager_channel = control_channel(self.manager_address, self.tls)
                self._manager = manager_pb2_grpc.ManagerStub(with_metadata(self._manager_channel,
                                                                           self._manager_metadata))
            return self._manager

    def manager_stream(self, method: str, request: Any) -> Any:
        """A Manager RPC whose replies stream in (no deadline): iterate it, cancel() it to end it."""
        return getattr(self._manager_stub(), method)(request)

    def _control_ports(self) -> control_pb2.ControlPortsReply:
        reply: control_pb2.ControlPortsReply = self._manager_stub().ControlPorts(control_pb2.ControlPortsRequest(),
                                                                         timeout=self.timeout)
        return reply

    def _error(self, code: grpc.StatusCode, detail: str | None, what: str) -> MemstageError:
        """The error of a call that ended with this status, by either way of calling."""
        if code == grpc.StatusCode.UNAVAILABLE and (self.tls is None or not self.tls.enabled) \
                and speaks_tls(self.manager_address):  # "Socket closed": it wants TLS, not this
            return SettingError(missing_tls("manager", self.manager_address))
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return from_status(code, detail, f"manager {self.manager_address}")
        return from_status(code, detail, what)

    def call_manager(self, method: str, request: Any, what: str) -> Any:
        """Call a Manager RPC; a failure becomes the matching MemstageError, naming `what`."""
        reply = None
        if self.control is not None:
            try:
                reply = self.control.call(method, request)
            except CallFailed as e:
                raise self._error(e.code, e.detail, what) from None
        if reply is None:
            try:
                reply = getattr(self._manager_stub(), method)(request, timeout=self.timeout)
            except ValueError:  # grpc's word for a channel closed under the call
                raise Unavailable(f"manager {self.manager_address}: the client's connections were closed") from None
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call):
                    raise self._error(e.code(), e.details(), what) from None
                raise from_rpc_error(e, what) from None
        grant = getattr(reply, "grant", "")
        if grant:  # a session's (read-write) or a version map's (read)
            self.note_grant(getattr(request, "namespace", ""), grant, isinstance(reply, manager_pb2.SessionReply))
        if isinstance(reply, manager_pb2.RenewSessionsReply):  # fresh session grants: "<namespace>:rw:..."
            for g in reply.grants:
                if g:
                    self.note_grant(grant_namespace(g), g, True)
        return reply

    def put_stream(self, address: str, frames: Iterator[bytes]) -> Any:
        """Open a Put stream: frames are pre-encoded bytes; returns the iterator of PutAcks."""
        return self.peers.put_stream(address, frames)

    def get_chunk(self, address: str, request: benefactor_pb2.GetRequest) -> list[memoryview]:
        return self.peers.get_chunk(address, request)

    def read_drained(self, address: str, request: benefactor_pb2.ReadDrainedRequest) -> list[memoryview]:
        """A drained chunk, read from the PFS by the benefactor at `address`."""
        return self.peers.read_drained(address, request)

    def hold(self, address: str, request: benefactor_pb2.HoldRequest) -> None:
        self.peers.hold(address, request)

    def close(self) -> None:
        with self._lock:
            manager, self._manager_channel, self._manager = self._manager_channel, None, None
        if manager is not None:
            manager.close()
        if self.control is not None:
            self.control.close()
        self.peers.close()
