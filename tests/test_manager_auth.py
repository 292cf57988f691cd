"""Every manager RPC against a real secured manager (in process, on loopback), through its server
boundary: refused without a credential and with a wrong one, not refused by auth with the right
one for its role (nor failing inside: mostly empty requests are refused for what they lack); by
gRPC and by the control port alike. The RPCs come from the service's descriptor: a new RPC
without a row here fails."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from memstage import auth, streamwire
from memstage.errors import status_code
from memstage.manager.server import ManagerServer
from memstage.proto import benefactor_pb2, control_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import MAX_CONTROL_MESSAGE_BYTES
from memstage.settings import ManagerSettings

pytestmark = pytest.mark.timeout(120)

NS = "ns"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

# Who may call each RPC: a benefactor (its proof, for its own id), a token writing the namespace,
# one reading it, an admin token, or any valid token (what it sees is then narrowed, or the
# sessions it names are checked).
BENEFACTOR, WRITE, READ, ADMIN, ANY = "benefactor", "write", "read", "admin", "any"
ROLES = {
    "Register": BENEFACTOR, "Heartbeat": BENEFACTOR, "Reconcile": BENEFACTOR, "Orders": BENEFACTOR,
    "Leave": BENEFACTOR, "DrainWork": BENEFACTOR, "DrainDone": BENEFACTOR,
    "OpenSession": WRITE, "GetStripingMap": WRITE, "FindChunks": WRITE, "Delete": WRITE, "Rename": WRITE,
    "Mkdir": WRITE, "Rmdir": WRITE, "SetAttr": WRITE, "Symlink": WRITE, "MakeNode": WRITE, "Link": WRITE,
    "ReleaseChunks": WRITE, "Commit": WRITE, "Prefetch": WRITE, "CollectGarbage": WRITE, "MarkCheckpoint": WRITE,
    "Persist": WRITE, "Free": WRITE,
    "LocateChunks": READ, "Lookup": READ, "Stat": READ, "List": READ, "Versions": READ, "Checkpoints": READ,
    "Policy": READ,
    "CreateToken": ADMIN, "RevokeToken": ADMIN, "ListTokens": ADMIN,
    "Status": ANY, "RenewSessions": ANY, "AbortSession": ANY, "ControlPorts": ANY,
    "Watch": READ, "WatchAck": ANY,
}
METHODS = sorted(manager_pb2.DESCRIPTOR.services_by_name["Manager"].methods_by_name)
BF = "b1"


@dataclass
class Secured:
    stub: manager_pb2_grpc.ManagerStub
    secret: bytes
    tokens: dict[str, str]  # by what they grant: admin, write, read (on NS), other (another namespace)
    control_port: int  # the manager's control port (TCP), which judges callers as gRPC does


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((auth.TOKEN_HEADER, f"Bearer {token}"),)


def proof(secret: bytes, benefactor_id: str) -> tuple[tuple[str, str], ...]:
    return ((auth.CLUSTER_HEADER, auth.role_proof(secret, auth.benefactor_role(benefactor_id))),)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    state = tmp_path_factory.mktemp("manager-auth")
    server = ManagerServer(ManagerSettings(listen="127.0.0.1:0", state=str(state), heartbeat_listen="off"))
    server.start()
    try:
        assert server.secret is not None
        tokens = {"admin": (Path(state) / "secrets" / "admin.token").read_text().strip()}
        for name, grants in {"write": {NS: "rw"}, "read": {NS: "r"}, "other": {"elsewhere": "rw"}}.items():
            token = auth.Token.new()
            server.catalog.add_token(token.id, token.digest(), grants, name)
            tokens[name] = str(token)
        with grpc.insecure_channel(server.address) as channel:
            yield Secured(manager_pb2_grpc.ManagerStub(channel), server.secret, tokens, server.control.reply.tcp_port)
    finally:
        server.stop(grace=0)


def request_for(method: str) -> Any:
    """A mostly empty request of the method's type, naming the namespace and benefactor it is for."""
    kind = manager_pb2.DESCRIPTOR.services_by_name["Manager"].methods_by_name[method].input_type
    request = message_factory.GetMessageClass(kind)()
    fields = request.DESCRIPTOR.fields_by_name
    if "namespace" in fields:
        request.namespace = NS
    if "benefactor_id" in fields:
        request.benefactor_id = BF
    return request


def credentials(role: str, secured: Secured) -> tuple[Any, Any]:
    """(a wrong credential, the right one) for a role."""
    tokens = secured.tokens
    if role == BENEFACTOR:  # another benefactor's proof speaks for it alone
        return proof(secured.secret, "b2"), proof(secured.secret, BF)
    if role == WRITE:
        return bearer(tokens["read"]), bearer(tokens["write"])
    if role == READ:
        return bearer(tokens["other"]), bearer(tokens["read"])
    if role == ADMIN:
        return bearer(tokens["write"]), bearer(tokens["admin"])
    forged = auth.Token.new()  # never added: unknown to the manager
    return bearer(str(forged)), bearer(tokens["read"])


def status_of(secured: Secured, method: str, metadata: Any, via: str = "grpc") -> grpc.StatusCode:
    if via == "control":
        return control_status(secured, method, metadata)
    try:
        reply = getattr(secured.stub, method)(request_for(method), metadata=metadata, timeout=10)
        if isinstance(reply, grpc.Call) and hasattr(reply, "__next__"):  # replies stream: the first one
            next(reply)
            reply.cancel()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def control_status(secured: Secured, method: str, metadata: Any) -> grpc.StatusCode:
    """The status of the call made on the control port."""
    head = control_pb2.ControlRequest(method=method, call=1, metadata=[
        benefactor_pb2.MetadataEntry(key=k, value=v) for k, v in metadata])
    with socket.create_connection(("127.0.0.1", secured.control_port), timeout=10) as sock:
        streamwire.send_frame(sock, head.SerializeToString(), request_for(method).SerializeToString())
        got = streamwire.Reader(sock, MAX_CONTROL_MESSAGE_BYTES).read(time.monotonic() + 10)
    assert got is not None
    return status_code(control_pb2.ControlReply.FromString(got[0]).code)


def unary(method: str) -> bool:
    m = manager_pb2.DESCRIPTOR.services_by_name["Manager"].methods_by_name[method]
    return not m.client_streaming and not m.server_streaming


def test_every_rpc_has_a_row() -> None:
    assert set(METHODS) == set(ROLES), f"rows missing: {set(METHODS) - set(ROLES)}, extra: {set(ROLES) - set(METHODS)}"


@pytest.mark.parametrize("via", ["grpc", "control"])
@pytest.mark.parametrize("method", METHODS)
def test_each_rpc_needs_the_credential_of_its_role(secured: Secured, method: str, via: str) -> None:
    role = ROLES.get(method)
    assert role is not None, f"{method}: no row in ROLES (who may call it?)"
    if via == "control" and not unary(method):
        pytest.skip("the control port serves unary calls only")
    wrong, right = credentials(role, secured)
    assert status_of(secured, method, (), via) == grpc.StatusCode.UNAUTHENTICATED
    assert status_of(secured, method, wrong, via) in REFUSED
    assert status_of(secured, method, right, via) not in (*REFUSED, grpc.StatusCode.INTERNAL)
