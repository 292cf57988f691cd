"""The manager's heartbeat process, with real processes: heartbeats are answered apart from the
manager's interpreter (even while it cannot run at all), a killed heartbeat process costs no
benefactor its life and comes back on its port, its port checks what the manager's port checks,
and it never outlives the manager."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from conftest import wait_for

from memstage import auth
from memstage.procs import children as _children
from memstage.proto import manager_pb2, manager_pb2_grpc
from memstage.rpc import control_channel
from memstage.tls import load as load_tls

pytestmark = pytest.mark.timeout(120)


def _connections_to(port: int) -> int:
    """Established TCP connections (on this host) whose far end is the local `port`."""
    rows = [r for f in ("tcp", "tcp6") for r in Path(f"/proc/net/{f}").read_text().splitlines()[1:]]
    return sum(1 for r in rows if r.split()[2].endswith(f":{port:04X}") and r.split()[3] == "01")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


class FakeBenefactor:
    """Speaks the benefactor side of the manager's protocol, to see the replies themselves."""

    def __init__(self, cluster, bf: str = "fake-1") -> None:  # type: ignore[no-untyped-def]
        self.tls = load_tls(**{k.removeprefix("tls_"): v for k, v in cluster.tls.items()})
        secret = bytes.fromhex(Path(cluster.secret_file).read_text().strip()) if cluster.secure else b""
        proof = auth.role_proof(secret, auth.benefactor_role(bf)) if cluster.secure else ""
        self.meta = ((auth.CLUSTER_HEADER, proof),) if proof else ()
        self.host = cluster.manager_address.rpartition(":")[0]
        self.channel = control_channel(cluster.manager_address, self.tls)
        self.stub = manager_pb2_grpc.ManagerStub(self.channel)
        self.id, self.incarnation = bf, 4242
        self.beat_channel: grpc.Channel | None = None

    def register(self) -> int:
        reply = self.stub.Register(manager_pb2.RegisterRequest(
            benefactor_id=self.id, address="127.0.0.1:9", incarnation=self.incarnation, receipt_key=os.urandom(32),
            stats=manager_pb2.BenefactorStats(memory_capacity=1 << 30)), metadata=self.meta, timeout=10)
        return reply.heartbeat_port

    def told_port(self) -> int:
        """The heartbeat port, once the manager tells one (its process may still be starting)."""
        return int(wait_for(self.register, what="the manager to tell its heartbeat port"))  # type: ignore[arg-type]

    def beat_stub(self, port: int) -> manager_pb2_grpc.ManagerStub:
        if self.beat_channel is None:
            self.beat_channel = control_channel(f"{self.host}:{port}", self.tls)
        return manager_pb2_grpc.ManagerStub(self.beat_channel)

    def request(self, used: int = 0) -> manager_pb2.HeartbeatRequest:
        return manager_pb2.HeartbeatRequest(benefactor_id=self.id, incarnation=self.incarnation,
                                            stats=manager_pb2.BenefactorStats(memory_capacity=1 << 30,
                                                                              memory_used=used))

    def close(self) -> None:
        self.channel.close()
        if self.beat_channel is not None:
            self.beat_channel.close()


def test_heartbeats_are_answered_while_the_manager_process_cannot_run(local_cluster):
    """SIGSTOP the manager: its own port answers nothing, the heartbeat port answers at once, and
    once the manager runs again it has what those beats reported."""
    cluster = local_cluster(benefactors=0, heartbeat=2.0)
    fake = FakeBenefactor(cluster)
    try:
        port = fake.told_port()
        assert port and str(port) != cluster.manager_address.rpartition(":")[2]
        beat = fake.beat_stub(port)
        wait_for(lambda: _answers(beat, fake), what="the heartbeat port to know the benefactor")
        os.kill(cluster.manager.pid, signal.SIGSTOP)
        try:
            # A stop takes effect as each of the manager's threads next runs: under load, not at once.
            wait_for(lambda: _state(cluster.manager.pid) in ("T", "t"), what="the manager to be stopped")
            try:
                reply = fake.stub.Heartbeat(fake.request(), metadata=fake.meta, timeout=1.0)
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else:  # seldom seen under load; say who answered, to find out why
                pytest.fail(f"the stopped manager's port {cluster.manager_address} answered {reply!r}; "
                            f"{_who_listens(cluster.manager_address, cluster.manager.pid)}")
            started = time.monotonic()
            reply = beat.Heartbeat(fake.request(used=12345 << 10), metadata=fake.meta, timeout=5)
            assert reply.known and reply.heartbeat_port == port
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(cluster.manager.pid, signal.SIGCONT)

        def reported() -> bool:
            mine = [b for b in cluster.status()["benefactors"] if b["id"] == fake.id]
            return bool(mine) and mine[0]["alive"] and mine[0]["memory_used"] == 12345 << 10

        wait_for(reported, what="the manager to apply the beat its heartbeat process answered")
    finally:
        fake.close()


def _state(pid: int) -> str:
    """The process's state letter (R running, S sleeping, T stopped, ...), "gone" if there is none."""
    stat = Path(f"/proc/{pid}/stat")
    return stat.read_text().rpartition(")")[2].split()[0] if stat.exists() else "gone"


def _who_listens(address: str, pid: int) -> str:
    state = _state(pid)
    port = address.rpartition(":")[2]
    listeners = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"manager pid {pid} is in state {state}; listening on port {port}: {listeners.strip() or 'nobody'}"


def _answers(stub: manager_pb2_grpc.ManagerStub, fake: FakeBenefactor) -> bool:
    try:
        return bool(stub.Heartbeat(fake.request(), metadata=fake.meta, timeout=5).known)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e  # not told yet: anything else is a failure
        return False


def test_a_killed_heartbeat_process_costs_no_benefactor_and_comes_back_on_its_port(local_cluster):
    cluster = local_cluster(benefactors=2)
    fake = FakeBenefactor(cluster)
    try:
        port = fake.told_port()
        (child,) = _children(cluster.manager.pid)
        real = {bf.id for bf in cluster.benefactors}
        wait_for(lambda: _connections_to(port) >= 2, what="both benefactors to beat to the heartbeat port")
        os.kill(child, signal.SIGKILL)
        # Several TTLs (1.5 s) pass while the process is away and comes back: every beat that finds
        # its port dead goes to the manager's port, and no benefactor is ever taken for dead (one
        # declared dead would show as not alive until its next beat made it register again).
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            reply = fake.stub.Status(manager_pb2.StatusRequest(), timeout=10)
            assert real <= {b.id for b in reply.benefactors if b.alive}
            time.sleep(0.1)
        wait_for(lambda: [c for c in _children(cluster.manager.pid) if c != child],
                 what="a new heartbeat process")
        assert fake.told_port() == port  # the same port again
        wait_for(lambda: _answers(fake.beat_stub(port), fake), what="the heartbeat port to answer again")
    finally:
        fake.close()


def test_the_heartbeat_port_checks_the_cluster_secret_and_tls(local_cluster, capfd):
    cluster = local_cluster(benefactors=1, secure=True, tls=True)
    fake = FakeBenefactor(cluster)
    try:
        port = fake.told_port()
        assert port
        wait_for(lambda: _answers(fake.beat_stub(port), fake), what="the heartbeat port to know the benefactor")
        with pytest.raises(grpc.RpcError) as refused:
            fake.beat_stub(port).Heartbeat(fake.request(), timeout=5)  # no cluster proof
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong:
            fake.beat_stub(port).Heartbeat(fake.request(), metadata=((auth.CLUSTER_HEADER, "0" * 64),), timeout=5)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
        plain = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            with pytest.raises(grpc.RpcError):
                manager_pb2_grpc.ManagerStub(plain).Heartbeat(fake.request(), metadata=fake.meta, timeout=3)
        finally:
            plain.close()
        # Only Heartbeat is served there.
        with pytest.raises(grpc.RpcError) as other:
            fake.beat_stub(port).Orders(manager_pb2.OrdersRequest(benefactor_id=fake.id), metadata=fake.meta,
                                        timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert cluster.benefactors[0].id in cluster.alive_ids()  # a real benefactor, over TLS with its secret
        # ... without a traceback in the manager's log for each such call.
        logged = capfd.readouterr().err
        assert "Traceback" not in logged and "not implemented" not in logged.lower(), logged
    finally:
        fake.close()


def test_the_heartbeat_process_never_outlives_its_manager(local_cluster):
    cluster = local_cluster(benefactors=0)
    (child,) = _children(cluster.manager.pid)
    cluster.manager.kill()
    wait_for(lambda: not _exists(child), what="the heartbeat process to exit with its manager")


def test_heartbeats_off_are_answered_by_the_manager_itself(local_cluster):
    cluster = local_cluster(benefactors=1, manager_args=("--heartbeat-listen", "off"))
    fake = FakeBenefactor(cluster)
    try:
        assert fake.register() == 0
        assert fake.stub.Heartbeat(fake.request(), metadata=fake.meta, timeout=5).heartbeat_port == 0
        assert _children(cluster.manager.pid) == []
    finally:
        fake.close()


def test_a_benefactors_proof_speaks_for_it_alone_and_not_for_long(local_cluster):
    """Per-benefactor proofs: one seen on the wire does not register, beat or fetch orders for
    another benefactor id, and one of a past minute is refused (socket-free checks of the windows
    follow the real-process ones)."""
    cluster = local_cluster(benefactors=1, secure=True, tls=True)
    fake = FakeBenefactor(cluster, bf="fake-a")
    try:
        assert fake.told_port()  # its own proof registers it
        secret = bytes.fromhex(Path(cluster.secret_file).read_text().strip())
        real = cluster.benefactors[0].id
        for who, code in ((auth.benefactor_role("fake-a"), grpc.StatusCode.PERMISSION_DENIED),  # another's id
                          ("m", grpc.StatusCode.UNAUTHENTICATED)):  # the manager's proof is not a benefactor's
            meta = ((auth.CLUSTER_HEADER, auth.role_proof(secret, who)),)
            with pytest.raises(grpc.RpcError) as refused:
                fake.stub.Orders(manager_pb2.OrdersRequest(benefactor_id=real, incarnation=1), metadata=meta,
                                 timeout=5)
            assert refused.value.code() == code, refused.value.details()
        stale = ((auth.CLUSTER_HEADER, auth.role_proof(secret, auth.benefactor_role("fake-a"),
                                                       now=time.time() - 5 * auth.PROOF_WINDOW_S)),)
        with pytest.raises(grpc.RpcError) as old:
            fake.stub.Register(manager_pb2.RegisterRequest(benefactor_id="fake-a", address="127.0.0.1:9",
                                                           incarnation=fake.incarnation), metadata=stale, timeout=5)
        assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        fake.close()
    now = 1_000_000.0
    proof = auth.role_proof(secret, "b/x", now=now)
    assert auth.proof_holder(secret, proof, now=now + auth.PROOF_WINDOW_S) == "b/x"
    assert auth.proof_holder(secret, proof, now=now + 3 * auth.PROOF_WINDOW_S) == ""
    assert auth.proof_holder(b"\0" * 32, proof, now=now) == ""
    assert auth.proof_holder(secret, proof.replace("b/x", "b/y", 1), now=now) == ""
