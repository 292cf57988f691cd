"""The manager's control port: unary manager calls on long-lived sockets. The same calls, answers
and errors as over gRPC (and the same credentials judged the same way), only this user's
processes on its Unix socket, TLS on its TCP port when the deployment has it, and a client that
goes on by gRPC, or fails cleanly, when the manager stops or stops answering."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import free_port, metric, rpc_calls, wait_for

from memstage import auth, streamwire
from memstage.chunks import ChunkKey
from memstage.client.connections import Connections
from memstage.client.control import CallFailed, ControlClient
from memstage.errors import FsError, InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from memstage.proto import benefactor_pb2, control_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import MAX_CONTROL_MESSAGE_BYTES, control_channel, with_metadata
from memstage.tls import load as load_tls

pytestmark = pytest.mark.timeout(120)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return ((auth.TOKEN_HEADER, f"Bearer {token}"),) if token else ()


def connections(cluster: Any, transport: str, token: str | None = None, timeout: float = 10.0,
                **kwargs: Any) -> Connections:
    tls = load_tls(**{k.removeprefix("tls_"): v for k, v in cluster.client_tls.items()})
    return Connections(cluster.manager_address, timeout, token=cluster.admin_token if token is None else token,
                       tls=tls, transport=transport, **kwargs)


@contextlib.contextmanager
def opened(cluster: Any, transport: str, **kwargs: Any) -> Iterator[Connections]:
    conn = connections(cluster, transport, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def ports(cluster: Any) -> control_pb2.ControlPortsReply:
    tls = load_tls(**{k.removeprefix("tls_"): v for k, v in cluster.client_tls.items()})
    with control_channel(cluster.manager_address, tls) as ch:
        stub = manager_pb2_grpc.ManagerStub(with_metadata(ch, bearer(cluster.admin_token)))
        reply: control_pb2.ControlPortsReply = stub.ControlPorts(control_pb2.ControlPortsRequest(), timeout=10)
        return reply


def raw_call(sock: socket.socket, method: str, request: Any, metadata: Any = (), call: int = 7
             ) -> tuple[int, str, bytes]:
    """One call on a connection, by hand: (status code, detail, serialized reply)."""
    head = control_pb2.ControlRequest(method=method, call=call, metadata=[
        benefactor_pb2.MetadataEntry(key=k, value=v) for k, v in metadata])
    streamwire.send_frame(sock, head.SerializeToString(), request.SerializeToString())
    got = streamwire.Reader(sock, MAX_CONTROL_MESSAGE_BYTES).read(time.monotonic() + 10)
    assert got is not None, "the connection closed without an answer"
    reply = control_pb2.ControlReply.FromString(got[0])
    assert reply.call == call
    return reply.code, reply.detail, got[1]


def stat(path: str, namespace: str = "default") -> manager_pb2.PathRequest:
    return manager_pb2.PathRequest(namespace=namespace, path=path)


def test_calls_answer_over_the_port_as_over_grpc(local_cluster, tmp_path):
    metrics = free_port()
    cluster = local_cluster(benefactors=1, secure=True, manager_args=("--socket-dir", str(tmp_path / "sockets"),
                                                                      "--metrics-port", str(metrics)))
    via_port, via_grpc = connections(cluster, "stream"), connections(cluster, "grpc")
    try:
        assert via_grpc.control is None
        via_port.call_manager("Mkdir", stat("/d"), "/d")
        endpoint = via_port.control.endpoint  # type: ignore[union-attr]
        assert endpoint is not None and endpoint.unix_path.startswith(str(tmp_path / "sockets"))
        via_grpc.call_manager("Mkdir", stat("/d/e"), "/d/e")
        via_port.call_manager("Symlink", manager_pb2.SymlinkRequest(namespace="default", path="/d/l", target="e"),
                              "/d/l")
        via_port.call_manager("Rename", manager_pb2.RenameRequest(namespace="default", path="/d/l",
                                                                  destination="/d/m"), "/d/l")
        # A request far larger than a small call's (the port reads it as it comes).
        keys = manager_pb2.NamespacedChunks(namespace="default", keys=[
            ChunkKey.of(i.to_bytes(4, "big")).to_pb() for i in range(20000)])
        assert keys.ByteSize() > 256 * 1024
        for method, request in [("FindChunks", keys), ("Stat", stat("/d")), ("Stat", stat("/d/m")),
                                ("List", stat("/d")), ("Policy", manager_pb2.PolicyRequest(namespace="default")),
                                ("ListTokens", manager_pb2.TokenRequest())]:
            assert via_port.call_manager(method, request, "x") == via_grpc.call_manager(method, request, "x"), method
        # current_caller() is the port's caller: the admin sees every benefactor, a namespace token none.
        assert len(via_port.call_manager("Status", manager_pb2.StatusRequest(), "status").benefactors) == 1
        token = via_port.call_manager("CreateToken", manager_pb2.TokenRequest(
            grants=[manager_pb2.TokenGrant(namespace="mine", mode="rw")]), "token").token
        tenant = connections(cluster, "stream", token=token)
        try:
            seen = tenant.call_manager("Status", manager_pb2.StatusRequest(), "status")
            assert tenant.control.endpoint is not None  # type: ignore[union-attr]
            assert not seen.benefactors and seen.benefactors_alive == 1
        finally:
            tenant.close()
        # Counted as gRPC's calls are, errors too.
        before = rpc_calls(metrics)
        assert via_port.control.call("Stat", stat("/d")) is not None  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            via_port.call_manager("Stat", stat("/nothing"), "/nothing")
        assert rpc_calls(metrics)["Stat"] == before["Stat"] + 2
        assert metric(metrics, "memstage_rpc_errors_total", method="Stat", code="NOT_FOUND") == 1
    finally:
        via_port.close()
        via_grpc.close()


def test_errors_are_the_same_over_the_port_as_over_grpc(local_cluster):
    cluster = local_cluster(benefactors=0, secure=True)
    admin = connections(cluster, "stream")
    token = admin.call_manager("CreateToken", manager_pb2.TokenRequest(
        grants=[manager_pb2.TokenGrant(namespace="mine", mode="rw")]), "token").token
    pairs = [(connections(cluster, t, token=token), connections(cluster, t)) for t in ("stream", "grpc")]
    try:
        admin.call_manager("Mkdir", stat("/full"), "/full")
        admin.call_manager("Mkdir", stat("/full/sub"), "/full/sub")
        cases: list[tuple[str, Any, type[Exception], str]] = [
            ("Stat", stat("/missing"), NotFound, "admin"),
            ("Stat", stat("../up"), InvalidArgument, "admin"),
            ("Rmdir", stat("/full"), FsError, "admin"),  # ENOTEMPTY travels as a tagged detail
            ("Stat", stat("/full"), PermissionDenied, "tenant"),  # another namespace than its grant
            ("ListTokens", manager_pb2.TokenRequest(), PermissionDenied, "tenant"),
        ]
        for method, request, kind, who in cases:
            seen = []
            for tenant, admin_conn in pairs:
                conn = tenant if who == "tenant" else admin_conn
                with pytest.raises(kind) as caught:
                    conn.call_manager(method, request, "the call")
                seen.append((type(caught.value), str(caught.value), getattr(caught.value, "errno", None)))
            assert seen[0] == seen[1], (method, seen)
        for tenant, _ in pairs:  # the tenant's own namespace is its to change
            tenant.call_manager("Mkdir", stat("/x", "mine"), "/x")
        assert pairs[0][0].control.endpoint is not None  # type: ignore[union-attr]
        # The credentials are the connections' as they are at each call, as a gRPC channel's are.
        current = [bearer(cluster.admin_token)]
        client = ControlClient(cluster.manager_address, 10.0, None, lambda: current[0], True, admin._control_ports)
        try:
            assert client.call("Stat", stat("/full")) is not None
            current[0] = bearer(token)
            with pytest.raises(CallFailed) as denied:
                client.call("Stat", stat("/full"))
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            client.close()
        # A revoked token is refused by the port at once, as by gRPC.
        admin.call_manager("RevokeToken", manager_pb2.TokenRequest(id=auth.Token.parse(token).id), "revoke")
        for tenant, _ in pairs:
            with pytest.raises(Unauthenticated, match="unknown or revoked"):
                tenant.call_manager("Stat", stat("/x", "mine"), "/x")
    finally:
        admin.close()
        for tenant, admin_conn in pairs:
            tenant.close()
            admin_conn.close()


def test_the_port_refuses_a_missing_or_wrong_token(local_cluster):
    cluster = local_cluster(benefactors=0, secure=True)
    port = ports(cluster).tcp_port
    assert port
    forged = str(auth.Token.new())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # One connection answers refusal after refusal, and then a call with the right token.
        assert raw_call(sock, "Stat", stat("/"))[0] == grpc.StatusCode.UNAUTHENTICATED.value[0]
        code, detail, _ = raw_call(sock, "Stat", stat("/"), bearer(forged), call=8)
        assert code == grpc.StatusCode.UNAUTHENTICATED.value[0] and "unknown or revoked" in detail
        assert raw_call(sock, "Mkdir", stat("/a"), (("authorization", "Bearer nonsense"),))[0] == \
            grpc.StatusCode.UNAUTHENTICATED.value[0]
        code, _, body = raw_call(sock, "Stat", stat("/"), bearer(cluster.admin_token))
        assert code == 0 and manager_pb2.FileInfo.FromString(body).is_dir
        # What is not a unary Manager call is refused as gRPC refuses an unknown method.
        assert raw_call(sock, "Nonsense", stat("/"), bearer(cluster.admin_token))[0] == \
            grpc.StatusCode.UNIMPLEMENTED.value[0]
        # A benefactor's proof is for benefactor calls only.
        secret = auth.read_secret_file(cluster.secret_file, "--cluster-secret")
        proof = ((auth.CLUSTER_HEADER, auth.role_proof(secret, auth.benefactor_role("b1"))),)
        assert raw_call(sock, "Stat", stat("/"), proof)[0] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # not this wire: the port hangs up
        sock.sendall(streamwire.PREFIX.pack(streamwire.MAX_MESSAGE + 1, 0))
        assert sock.recv(1) == b""


def test_a_process_of_another_user_is_refused_on_the_unix_socket(local_cluster):
    # Not under the test's tmp_path: its parents are closed to other users already.
    outer = Path(tempfile.mkdtemp(prefix="memstage-test-"))
    outer.chmod(0o711)
    try:
        metrics = free_port()
        cluster = local_cluster(benefactors=0, manager_args=("--socket-dir", str(outer / "sockets"),
                                                             "--metrics-port", str(metrics)))
        path = ports(cluster).unix_path
        assert path and Path(path).parent == outer / "sockets"
        assert oct((outer / "sockets").stat().st_mode & 0o777) == "0o700"
        # Opened up by hand, the directory no longer keeps others out: the peer check still does.
        (outer / "sockets").chmod(0o711)
        Path(path).chmod(0o777)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10)
                    sock.connect(path)
                    code, _, _ = raw_call(sock, "Mkdir", stat("/intruder"))
                    os.write(write, f"answered {code}".encode())
            except (OSError, AssertionError) as e:
                os.write(write, f"refused {type(e).__name__}".encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as r:
            said = r.read()
        os.waitpid(child, 0)
        assert said.startswith("refused"), said
        assert metric(metrics, "memstage_control_refused_total", reason="peer_uid") == 1
        with socket.socket(socket.AF_UNIX) as sock:  # this user's processes are served
            sock.settimeout(10)
            sock.connect(path)
            assert raw_call(sock, "Mkdir", stat("/mine"))[0] == 0
        with opened(cluster, "grpc") as conn, pytest.raises(NotFound):
            conn.call_manager("Stat", stat("/intruder"), "/intruder")
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def test_tls_on_the_tcp_port_with_the_deployments_client_certificate(local_cluster):
    cluster = local_cluster(benefactors=0, secure=True, tls=True)
    found = ports(cluster)
    assert found.tls and found.tcp_port and not found.unix_path
    with opened(cluster, "stream") as conn:
        conn.call_manager("Mkdir", stat("/over-tls"), "/over-tls")
        assert conn.control.endpoint is not None and conn.control.endpoint.tls is not None  # type: ignore[union-attr]
        for _ in range(3):  # a kept TLS connection is reused (its session tickets are no reply)
            assert conn.control.call("Stat", stat("/over-tls")) is not None  # type: ignore[union-attr]
    with socket.create_connection(("127.0.0.1", found.tcp_port), timeout=10) as sock:  # plaintext gets nowhere
        head = control_pb2.ControlRequest(method="Stat", call=1, metadata=[
            benefactor_pb2.MetadataEntry(key=k, value=v) for k, v in bearer(cluster.admin_token)])
        streamwire.send_frame(sock, head.SerializeToString(), stat("/").SerializeToString())
        try:
            got = sock.recv(64)
        except OSError:
            got = b""
        assert not got or got[0] == 0x15, got  # nothing, or a TLS alert: never an answer


def test_a_stopped_manager_fails_calls_cleanly_and_a_new_one_is_found(local_cluster):
    cluster = local_cluster(benefactors=0)
    address = cluster.manager_address
    with opened(cluster, "stream", timeout=5.0) as conn:
        conn.call_manager("Mkdir", stat("/before"), "/before")
        first = conn.control.endpoint  # type: ignore[union-attr]
        assert first is not None
        assert cluster.manager is not None
        cluster.manager.stop()  # SIGTERM: the manager closes its connections as it stops
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=f"manager {address}"):
            conn.call_manager("Stat", stat("/before"), "/before")
        assert time.monotonic() - t0 < 5.0, "a closed connection is seen at once, not after the timeout"
        assert conn.control.endpoint is None  # type: ignore[union-attr]
        cluster.start_manager(address)  # on the same address and state, with a new control port
        wait_for(lambda: _answers(conn), timeout=30, what="calls to the new manager")
        wait_for(lambda: conn.control.call("Stat", stat("/before")) is not None,  # type: ignore[union-attr]
                 timeout=30, what="the new manager's control port")
        assert conn.control.endpoint != first  # type: ignore[union-attr]


def _answers(conn: Connections) -> bool:
    try:
        conn.call_manager("Stat", stat("/before"), "/before")
    except Unavailable:
        return False
    return True


def test_a_manager_that_does_not_answer_fails_the_call_after_the_rpc_timeout(local_cluster):
    cluster = local_cluster(benefactors=0)
    assert cluster.manager is not None
    with opened(cluster, "stream", timeout=1.0) as conn:
        conn.call_manager("Mkdir", stat("/slow"), "/slow")
        pid = cluster.manager.proc.pid
        cluster.manager.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: _state(pid) == "T", what="the manager to stop")
            t0 = time.monotonic()
            with pytest.raises(Unavailable, match="Deadline Exceeded"):
                conn.call_manager("Stat", stat("/slow"), "/slow")
            assert 0.9 < time.monotonic() - t0 < 5.0
        finally:
            cluster.manager.proc.send_signal(signal.SIGCONT)
        # The connection that timed out is dropped (its late answer is never taken for another).
        assert conn.call_manager("Stat", stat("/slow"), "/slow").is_dir
        assert conn.control.call("List", stat("/")) is not None  # type: ignore[union-attr]


def _state(pid: int) -> str:
    """A process's state letter (T: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_many_threads_each_get_their_own_answers(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0, manager_args=("--socket-dir", str(tmp_path / "sockets")))
    threads, calls = 12, 100  # and a listing of them larger than a connection's buffer
    errors: list[BaseException] = []
    with opened(cluster, "stream") as conn:
        conn.call_manager("Mkdir", stat("/t"), "/t")

        def work(i: int) -> None:
            try:
                for k in range(calls):
                    path = f"/t/{i}-{k}"
                    conn.call_manager("Mkdir", stat(path), path)
                    info = conn.call_manager("Stat", stat(path), path)
                    assert info.is_dir
                    with pytest.raises(NotFound):
                        conn.call_manager("Stat", stat(path + "x"), path)
            except BaseException as e:  # noqa: BLE001 - reported by the test's thread
                errors.append(e)

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=90)
        assert not any(w.is_alive() for w in workers)
        assert not errors, errors[0]
        listing = conn.call_manager("List", stat("/t"), "/t")
        assert len(listing.entries) == threads * calls
        assert conn.control.endpoint is not None  # type: ignore[union-attr]
        assert 1 <= len(conn.control._idle) <= threads  # type: ignore[union-attr]


def test_a_grpc_client_never_uses_the_port(local_cluster):
    cluster = local_cluster(benefactors=0)
    with opened(cluster, "grpc") as conn:
        conn.call_manager("Mkdir", stat("/g"), "/g")
        assert conn.control is None
    other = local_cluster(benefactors=0, manager_args=("--control-listen", "off"))
    assert not ports(other).tcp_port
    with opened(other, "stream") as conn:  # no port: gRPC
        conn.call_manager("Mkdir", stat("/g"), "/g")
        assert conn.control.endpoint is None  # type: ignore[union-attr]


def test_the_reader_takes_messages_however_they_arrive():
    a, b = socket.socketpair()
    with a, b:
        reader = streamwire.Reader(b, max_data=1 << 20, size=64)
        small = [(b"h%d" % i, os.urandom(i * 7)) for i in range(6)]
        big = (b"head", os.urandom(1000))  # larger than the reader's buffer
        wire = b"".join(streamwire.PREFIX.pack(len(h), len(d)) + h + d for h, d in [*small, big, *small])
        for i in range(0, len(wire), 5):  # dribbled in pieces: parts of several messages at once
            a.sendall(wire[i:i + 5])
        a.shutdown(socket.SHUT_WR)
        got = [reader.read(time.monotonic() + 10) for _ in range(len(small) * 2 + 1)]
        assert got == [*small, big, *small]
        assert reader.read() is None  # closed between messages
    a, b = socket.socketpair()
    with a, b:
        a.sendall(streamwire.PREFIX.pack(3, 10) + b"abc" + b"short")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(streamwire.WireError):  # closed in the middle of one
            streamwire.Reader(b, max_data=100).read()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(streamwire.PREFIX.pack(3, 101))
        with pytest.raises(streamwire.WireError, match="over the limit"):
            streamwire.Reader(b, max_data=100).read()
    a, b = socket.socketpair()
    with a, b:
        a.sendall(streamwire.PREFIX.pack(3, 10))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            streamwire.Reader(b, max_data=100).read(time.monotonic() + 0.2)
        assert time.monotonic() - t0 < 5


def test_a_forked_child_calls_on_connections_of_its_own(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0, manager_args=("--socket-dir", str(tmp_path / "sockets")))
    with opened(cluster, "stream") as conn:
        conn.call_manager("Mkdir", stat("/parent"), "/parent")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.close(read)
            try:
                said = []
                for k in range(50):
                    conn.call_manager("Mkdir", stat(f"/child{k}"), "/child")
                    said.append(conn.call_manager("Stat", stat(f"/child{k}"), "/child").path)
                via_port = conn.control.call("Stat", stat("/parent")) is not None  # type: ignore[union-attr]
                os.write(write, f"ok {len(set(said))} {via_port}".encode())
            except BaseException as e:  # noqa: BLE001
                os.write(write, f"failed {e!r}".encode())
            os._exit(0)
        os.close(write)
        for _ in range(50):  # meanwhile, on the parent's own
            assert conn.call_manager("Stat", stat("/parent"), "/parent").path == "/parent"
        with os.fdopen(read) as r:
            said = r.read()
        os.waitpid(child, 0)
        assert said == "ok 50 True", said
        assert conn.call_manager("Stat", stat("/child49"), "/child49").is_dir
