"""Connections: the client's channels to the manager and to benefactors, and typed manager calls.

Channels are created on first use and shared by every file of a Client (grpc channels are
thread-safe); close() drops them, and the next call opens new ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from memstage.errors import Unavailable, from_rpc_error
from memstage.frames import decode_get_frame, identity
from memstage.proto import benefactor_pb2, manager_pb2_grpc
from memstage.rpc import channel, control_channel


class Connections:
    def __init__(self, manager: str, timeout: float) -> None:
        self.manager_address = manager
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._manager: manager_pb2_grpc.ManagerStub | None = None

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = channel(address)
            return ch

    def call_manager(self, method: str, request: Any, what: str) -> Any:
        """Call a Manager RPC; a failure becomes the matching MemstageError, naming `what`."""
        with self._lock:
            if self._manager is None:
                self._manager = manager_pb2_grpc.ManagerStub(self._channels.setdefault(
                    self.manager_address, control_channel(self.manager_address)))
            stub = self._manager
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except ValueError:  # grpc's word for a channel closed under the call
            raise Unavailable(f"manager {self.manager_address}: the client's connections were closed") from None
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() in (grpc.StatusCode.UNAVAILABLE,
                                                          grpc.StatusCode.DEADLINE_EXCEEDED):
                raise from_rpc_error(e, f"manager {self.manager_address}") from None
            raise from_rpc_error(e, what) from None

    def put_stream(self, address: str, frames: Iterator[bytes]) -> Any:
        """Open a Put stream: frames are pre-encoded bytes; returns the iterator of PutAcks."""
        call = self._channel(address).stream_stream(
            "/memstage.v1.Benefactor/Put",
            request_serializer=identity,
            response_deserializer=benefactor_pb2.PutAck.FromString,
        )
        return call(frames)

    def get_chunk(self, address: str, request: benefactor_pb2.GetRequest) -> list[memoryview]:
        call = self._channel(address).unary_stream(
            "/memstage.v1.Benefactor/Get",
            request_serializer=benefactor_pb2.GetRequest.SerializeToString,
            response_deserializer=decode_get_frame,
        )
        return list(call(request, timeout=self.timeout))

    def read_drained(self, address: str, request: benefactor_pb2.ReadDrainedRequest) -> list[memoryview]:
        """A drained chunk, read from the PFS by the benefactor at `address`."""
        call = self._channel(address).unary_stream(
            "/memstage.v1.Benefactor/ReadDrained",
            request_serializer=benefactor_pb2.ReadDrainedRequest.SerializeToString,
            response_deserializer=decode_get_frame,
        )
        return list(call(request, timeout=self.timeout))

    def close(self) -> None:
        with self._lock:
            channels, self._channels, self._manager = self._channels, {}, None
        for ch in channels.values():
            ch.close()
