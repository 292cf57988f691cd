"""Who may call what, as a table: every RPC of the benefactor and of the manager's heartbeat
process, called on a real secure deployment with no credential, a wrong one and the right one.
The benefactor's RPCs are read from its service description, so an RPC without a row fails here;
on the heartbeat port, every Manager RPC without a row must be UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port, wait_for

from memstage import auth
from memstage.benefactor.service import SERVICE, BenefactorService
from memstage.chunks import ChunkKey
from memstage.frames import encode_put_frame
from memstage.proto import benefactor_pb2, manager_pb2
from memstage.rpc import channel, control_channel

pytestmark = pytest.mark.timeout(120)

Creds = tuple[tuple[str, str], ...]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
OK, NOT_FOUND, INVALID = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
OTHER_SECRET = bytes(32)
DATA = b"chunk" * 100


@dataclass(frozen=True)
class Row:
    request: Callable[[], bytes]  # serialized (a Put: one encoded frame)
    right: Callable[[bytes, str], list[Creds]]  # (cluster secret, benefactor id) -> credentials that must pass
    wrong: Callable[[bytes, str], Creds]  # one that must be refused
    passed: grpc.StatusCode  # how the call ends past the boundary, with the right credential
    wrong_code: tuple[grpc.StatusCode, ...] = REFUSED


def grant(secret: bytes, namespace: str, mode: str) -> Creds:
    return ((auth.GRANT_HEADER, auth.sign_grant(secret, namespace, mode)),)


def proof(secret: bytes, who: str) -> Creds:
    return ((auth.CLUSTER_HEADER, auth.role_proof(secret, who)),)


def put_frame() -> bytes:
    header = benefactor_pb2.PutHeader(namespace="ns", key=ChunkKey.of(DATA).to_pb(), seq=1, session=7)
    return encode_put_frame(header, memoryview(DATA))


def reading(mode: str = "r") -> Callable[[bytes, str], list[Creds]]:
    """A client's grant for namespace ns, or another benefactor's proof."""
    return lambda secret, bf: [grant(secret, "ns", mode), proof(secret, auth.benefactor_role("bf-peer"))]


# A grant signed with another secret; for Get, also one for another namespace.
FORGED = lambda secret, bf: grant(OTHER_SECRET, "ns", "rw")  # noqa: E731

BENEFACTOR: dict[str, Row] = {
    "Put": Row(put_frame, reading("rw"), lambda secret, bf: grant(secret, "ns", "r"), OK),
    # A chunk nobody put: past the boundary it is NOT_FOUND.
    "Get": Row(lambda: benefactor_pb2.GetRequest(namespace="ns", key=ChunkKey.of(b"x").to_pb()).SerializeToString(),
               reading(), lambda secret, bf: grant(secret, "other", "rw"), NOT_FOUND),
    "Has": Row(lambda: benefactor_pb2.ChunkList(namespace="ns", keys=[ChunkKey.of(DATA).to_pb()]).SerializeToString(),
               reading(), FORGED, OK),
    "ReadDrained": Row(lambda: benefactor_pb2.ReadDrainedRequest(
        drained="ns/f/x.chunk", key=ChunkKey.of(DATA).to_pb()).SerializeToString(), reading(), FORGED, NOT_FOUND),
    "DataPorts": Row(lambda: benefactor_pb2.DataPortsRequest(namespace="ns").SerializeToString(), reading(),
                     lambda secret, bf: grant(secret, "other", "rw"), OK),
    # Benefactors' alone: a client's grant does not do, even for read-write. A member whose bytes do
    # not match its key is refused past the boundary.
    "Hold": Row(lambda: benefactor_pb2.HoldRequest(namespace="ns", key=ChunkKey.of(DATA).to_pb(), gen=1,
                                                   data=b"not it").SerializeToString(),
                lambda secret, bf: [proof(secret, auth.benefactor_role("bf-peer"))],
                lambda secret, bf: grant(secret, "ns", "rw"), INVALID, (UNAUTHENTICATED,)),
    # The manager's alone: neither a client's grant nor another benefactor's proof.
    "Wake": Row(lambda: benefactor_pb2.WakeRequest(benefactor_id="someone-else").SerializeToString(),
                lambda secret, bf: [proof(secret, auth.MANAGER)],
                lambda secret, bf: proof(secret, auth.benefactor_role(bf)), OK, (UNAUTHENTICATED,)),
}

HEARTBEAT: dict[str, Row] = {
    # A beat for an id the process does not know: past the boundary it is NOT_FOUND.
    "Heartbeat": Row(lambda: manager_pb2.HeartbeatRequest(benefactor_id="nobody").SerializeToString(),
                     lambda secret, bf: [proof(secret, auth.benefactor_role("nobody"))],
                     # A real benefactor's proof does not speak for another id.
                     lambda secret, bf: proof(secret, auth.benefactor_role(bf)), NOT_FOUND, (UNAUTHENTICATED,)),
}


def call(ch: grpc.Channel, service: str, method: Any, body: bytes, metadata: Creds) -> grpc.StatusCode:
    """The status a raw call of `method` (a MethodDescriptor) ends with."""
    path = f"/{service}/{method.name}"
    kind = {(False, False): ch.unary_unary, (False, True): ch.unary_stream, (True, False): ch.stream_unary,
            (True, True): ch.stream_stream}[(method.client_streaming, method.server_streaming)]
    stub = kind(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        reply = stub(iter([body]) if method.client_streaming else body, metadata=metadata, timeout=10)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def check_table(ch: grpc.Channel, service: Any, rows: dict[str, Row], secret: bytes, bf: str) -> None:
    for method in service.methods:
        if method.name not in rows:
            # Only the heartbeat port serves a subset: what has no row is not served there at all.
            assert call(ch, service.full_name, method, b"", ()) == grpc.StatusCode.UNIMPLEMENTED, method.name
            continue
        row = rows[method.name]
        body = row.request()
        got = call(ch, service.full_name, method, body, ())
        assert got == UNAUTHENTICATED, (method.name, "no credential", got)
        got = call(ch, service.full_name, method, body, row.wrong(secret, bf))
        assert got in row.wrong_code, (method.name, "wrong credential", got)
        for creds in row.right(secret, bf):
            got = call(ch, service.full_name, method, body, creds)
            assert got == row.passed, (method.name, "right credential", creds, got)


def test_every_benefactor_rpc_has_a_row():
    described = {m.name for m in benefactor_pb2.DESCRIPTOR.services_by_name["Benefactor"].methods}
    assert described == set(BENEFACTOR)

    class Details:
        def __init__(self, name: str) -> None:
            self.method = f"/{SERVICE}/{name}"

    handler = BenefactorService.__new__(BenefactorService).handler()
    assert all(handler.service(Details(name)) is not None for name in described)


def test_each_rpc_refuses_no_and_wrong_credentials_and_takes_the_right_one(local_cluster):
    beat_port = free_port()
    cluster = local_cluster(benefactors=1, secure=True,
                            manager_args=("--heartbeat-listen", f"127.0.0.1:{beat_port}"))
    secret = bytes.fromhex(Path(cluster.secret_file).read_text().strip())
    bf = cluster.benefactors[0]
    ch = channel(bf.address)
    beats = control_channel(f"127.0.0.1:{beat_port}")
    try:
        check_table(ch, benefactor_pb2.DESCRIPTOR.services_by_name["Benefactor"], BENEFACTOR, secret, bf.id)
        manager = manager_pb2.DESCRIPTOR.services_by_name["Manager"]
        heartbeat = manager.methods_by_name["Heartbeat"]
        wait_for(lambda: call(beats, manager.full_name, heartbeat, b"", ()) != grpc.StatusCode.UNAVAILABLE,
                 what="the heartbeat process to listen")
        check_table(beats, manager, HEARTBEAT, secret, bf.id)
    finally:
        ch.close()
        beats.close()

