"""Channels to benefactors and the data calls made on them (Put, Get, ReadDrained), with the
credential each call needs attached by the channel's interceptor. Shared by clients (the manager's
grants) and by benefactors copying from each other (their cluster proof).

Channels are created on first use and shared (grpc channels are thread-safe); close() drops them,
and the next call opens new ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from memstage.auth import CLUSTER_HEADER
from memstage.frames import decode_get_frame, identity
from memstage.proto import benefactor_pb2
from memstage.rpc import Credentials, Pairs, channel, with_credentials
from memstage.tls import Tls


class BenefactorCalls(Protocol):
    """The calls a chunk transport makes on benefactors."""

    def put_stream(self, address: str, frames: Iterator[bytes]) -> Any: ...

    def get_chunk(self, address: str, request: benefactor_pb2.GetRequest) -> list[memoryview]: ...

    def read_drained(self, address: str, request: benefactor_pb2.ReadDrainedRequest) -> list[memoryview]: ...

    def hold(self, address: str, request: benefactor_pb2.HoldRequest) -> None: ...


def proof_credentials(proof: str | Callable[[], str]) -> Credentials:
    """A benefactor's credentials towards its peers: its cluster proof (it changes with time, so a
    callable is asked at each call); none when it runs --insecure (an empty proof)."""
    if not proof:
        return lambda method, request: ()
    current = proof if callable(proof) else (lambda: proof)
    return lambda method, request: ((CLUSTER_HEADER, current()),)


def no_credentials(method: str, request: Any) -> Pairs:
    return ()


class Peers:
    """Benefactor channels by address; `credentials` gives each call its metadata."""

    def __init__(self, timeout: float, tls: Tls | None = None, credentials: Credentials = no_credentials) -> None:
        self.timeout = timeout
        self.tls = tls
        self.credentials = credentials
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = with_credentials(channel(address, self.tls), self.credentials)
            return ch

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

    def hold(self, address: str, request: benefactor_pb2.HoldRequest) -> None:
        """Hand a stripe member to the benefactor at `address`."""
        call = self._channel(address).unary_unary(
            "/memstage.v1.Benefactor/Hold",
            request_serializer=benefactor_pb2.HoldRequest.SerializeToString,
            response_deserializer=benefactor_pb2.HoldReply.FromString,
        )
        call(request, timeout=self.timeout)

    def data_ports(self, address: str, namespace: str) -> benefactor_pb2.DataPortsReply:
        """Where the benefactor at `address` serves its stream data port."""
        call = self._channel(address).unary_unary(
            "/memstage.v1.Benefactor/DataPorts",
            request_serializer=benefactor_pb2.DataPortsRequest.SerializeToString,
            response_deserializer=benefactor_pb2.DataPortsReply.FromString,
        )
        reply: benefactor_pb2.DataPortsReply = call(benefactor_pb2.DataPortsRequest(namespace=namespace),
                                                    timeout=self.timeout)
        return reply

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, {}
        for ch in channels.values():
            ch.close()
