"""Connections: the client's channels to the manager and to benefactors, and typed manager calls.

Channels are created on first use and shared by every file of a Client (grpc channels are
thread-safe); close() drops them, and the next call opens new ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from memstage.auth import CLUSTER_HEADER, GRANT_HEADER, grant_namespace
from memstage.errors import Unavailable, from_rpc_error
from memstage.frames import decode_get_frame, identity
from memstage.paths import split_drained
from memstage.proto import benefactor_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import channel, control_channel
from memstage.tls import Tls


class Connections:
    def __init__(self, manager: str, timeout: float, token: str = "", cluster_proof: str | Callable[[], str] = "",
                 namespace: str = "", tls: Tls | None = None) -> None:
        """token: a client's (sent to the manager); cluster_proof: a benefactor's (sent to other
        benefactors, which then serve any namespace); namespace: the one whose grant a Put carries."""
        self.manager_address = manager
        self.timeout = timeout
        self.tls = tls
        self.namespace = namespace
        self._manager_metadata = (("authorization", f"Bearer {token.strip()}"),) if token.strip() else ()
        # A benefactor's proof to its peers (it changes with time: asked at each call).
        self._peer_proof: Callable[[], str] | None = (
            cluster_proof if callable(cluster_proof) else (lambda: cluster_proof)) if cluster_proof else None
        # The manager's grants for benefactor calls, by namespace: read, and read-write.
        self._grants: dict[tuple[str, bool], str] = {}
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._manager: manager_pb2_grpc.ManagerStub | None = None

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = channel(address, self.tls)
            return ch

    def note_grant(self, namespace: str, grant: str, write: bool) -> None:
        """Keep a grant the manager handed out (a session's, a version map's) for benefactor calls."""
        if grant:
            with self._lock:
                self._grants[(namespace, write)] = grant

    def _benefactor_metadata(self, namespace: str, write: bool) -> tuple[tuple[str, str], ...]:
        if self._peer_proof is not None:
            return ((CLUSTER_HEADER, self._peer_proof()),)
        with self._lock:
            grant = self._grants.get((namespace, True)) or ("" if write else self._grants.get((namespace, False), ""))
        return ((GRANT_HEADER, grant),) if grant else ()

    def call_manager(self, method: str, request: Any, what: str) -> Any:
        """Call a Manager RPC; a failure becomes the matching MemstageError, naming `what`."""
        with self._lock:
            if self._manager is None:
                self._manager = manager_pb2_grpc.ManagerStub(self._channels.setdefault(
                    self.manager_address, control_channel(self.manager_address, self.tls)))
            stub = self._manager
        try:
            reply = getattr(stub, method)(request, timeout=self.timeout, metadata=self._manager_metadata)
        except ValueError:  # grpc's word for a channel closed under the call
            raise Unavailable(f"manager {self.manager_address}: the client's connections were closed") from None
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() in (grpc.StatusCode.UNAVAILABLE,
                                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                raise from_rpc_error(e, f"manager {self.manager_address}") from None
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
        call = self._channel(address).stream_stream(
            "/memstage.v1.Benefactor/Put",
            request_serializer=identity,
            response_deserializer=benefactor_pb2.PutAck.FromString,
        )
        return call(frames, metadata=self._benefactor_metadata(self.namespace, True))

    def get_chunk(self, address: str, request: benefactor_pb2.GetRequest) -> list[memoryview]:
        call = self._channel(address).unary_stream(
            "/memstage.v1.Benefactor/Get",
            request_serializer=benefactor_pb2.GetRequest.SerializeToString,
            response_deserializer=decode_get_frame,
        )
        return list(call(request, timeout=self.timeout,
                         metadata=self._benefactor_metadata(request.namespace, False)))

    def read_drained(self, address: str, request: benefactor_pb2.ReadDrainedRequest) -> list[memoryview]:
        """A drained chunk, read from the PFS by the benefactor at `address`."""
        call = self._channel(address).unary_stream(
            "/memstage.v1.Benefactor/ReadDrained",
            request_serializer=benefactor_pb2.ReadDrainedRequest.SerializeToString,
            response_deserializer=decode_get_frame,
        )
        namespace, _ = split_drained(request.drained)  # drained chunk files live under <namespace>/
        return list(call(request, timeout=self.timeout, metadata=self._benefactor_metadata(namespace, False)))

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._manager = self._channels, {}, None
        for ch in channels.values():
            ch.close()
