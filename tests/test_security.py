"""Attacks from a user on the same network, against a secure deployment (real processes; the
manager's tokens and cluster secret, the benefactors' grants). Each attack must fail with
UNAUTHENTICATED or PERMISSION_DENIED and change nothing: every committed file reads back with the
same bytes afterwards. A token for one namespace works there and nowhere else."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from conftest import MiB, free_port, random_bytes, wait_for

from memstage import auth
from memstage.chunks import ChunkKey
from memstage.errors import PermissionDenied, Unauthenticated
from memstage.procs import spawn
from memstage.proto import benefactor_pb2, benefactor_pb2_grpc, manager_pb2, manager_pb2_grpc
from memstage.rpc import channel, control_channel
from memstage.tls import load as load_tls

pytestmark = pytest.mark.timeout(180)

REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def refused(call, *args, **kwargs) -> grpc.StatusCode:
    """The status code of a call that must be refused (fails the test if it is not)."""
    try:
        reply = call(*args, timeout=10, **kwargs)
        if hasattr(reply, "__iter__") and not isinstance(reply, bytes | str):
            list(reply)
    except grpc.RpcError as e:
        assert e.code() in REFUSED, (e.code(), e.details())
        return e.code()
    raise AssertionError(f"{call} was not refused")


def client_tls(cluster):  # type: ignore[no-untyped-def]
    """What every client of the deployment holds: the client certificate (it cannot serve)."""
    return load_tls(**{k.removeprefix("tls_"): v for k, v in cluster.client_tls.items()})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def deployment(local_cluster):
    """Tokens, the cluster secret and mutual TLS. The attacker is a user of the cluster who holds the
    deployment's client certificate (as every client does) and a token for a namespace of its own."""
    cluster = local_cluster(benefactors=2, memory=64 * MiB, secure=True, tls=True)
    admin = cluster.client()
    victim_data = {"/v/a.bin": random_bytes(3 * MiB), "/v/b.bin": random_bytes(2 * MiB)}
    victim = cluster.client(namespace="victim", chunk_size="1MiB")
    for path, data in victim_data.items():
        victim.pipe(path, data)
    mine = admin.connections.call_manager("CreateToken", manager_pb2.TokenRequest(
        grants=[manager_pb2.TokenGrant(namespace="attacker", mode="rw")]), "token").token
    return cluster, admin, victim_data, mine


def checksums(client, paths) -> dict[str, str]:
    return {p: hashlib.sha256(client.cat(p)).hexdigest() for p in paths}


def test_every_attack_is_refused_and_changes_nothing(deployment):
    cluster, admin, victim_data, mine = deployment
    victim = cluster.client(namespace="victim")
    before = checksums(victim, victim_data)
    assert before == {p: hashlib.sha256(d).hexdigest() for p, d in victim_data.items()}
    tls = client_tls(cluster)
    m = manager_pb2_grpc.ManagerStub(control_channel(cluster.manager_address, tls))
    vmap = victim.connections.call_manager("Lookup", manager_pb2.LookupRequest(namespace="victim", path="/v/a.bin"),
                                           "lookup")
    chunk = vmap.chunks[0]
    bf_address = chunk.locations[0].address
    b = benefactor_pb2_grpc.BenefactorStub(channel(bf_address, tls))
    for who in ((), bearer(mine)):  # no credential, then a token for another namespace
        # Listing and reading another namespace's names, versions and chunk keys.
        refused(m.List, manager_pb2.PathRequest(namespace="victim", path="/"), metadata=who)
        refused(m.Lookup, manager_pb2.LookupRequest(namespace="victim", path="/v/a.bin"), metadata=who)
        refused(m.Versions, manager_pb2.PathRequest(namespace="victim", path="/v/a.bin"), metadata=who)
        refused(m.FindChunks, manager_pb2.NamespacedChunks(namespace="victim", keys=[chunk.key]), metadata=who)
        # Overwriting and deleting.
        refused(m.OpenSession, manager_pb2.OpenSessionRequest(namespace="victim", path="/v/a.bin"), metadata=who)
        refused(m.Delete, manager_pb2.PathRequest(namespace="victim", path="/v/a.bin"), metadata=who)
        refused(m.Rename, manager_pb2.RenameRequest(namespace="victim", path="/v/a.bin", destination="/x"),
                metadata=who)
        refused(m.Commit, manager_pb2.CommitRequest(namespace="victim", path="/v/a.bin", size=0), metadata=who)
        # Evicting through the policy, minting tokens.
        refused(m.Policy, manager_pb2.PolicyRequest(namespace="victim", keep_versions=1, persist_every=0),
                metadata=who)
        refused(m.CreateToken, manager_pb2.TokenRequest(grants=[manager_pb2.TokenGrant(namespace="*", mode="admin")]),
                metadata=who)
        # Posing as a benefactor: hijacking an id, forging drain reports, fetching orders.
        bf_id = chunk.locations[0].benefactor_id
        refused(m.Register, manager_pb2.RegisterRequest(benefactor_id=bf_id, address="127.0.0.1:1", incarnation=7),
                metadata=who)
        refused(m.DrainWork, manager_pb2.DrainWorkRequest(benefactor_id=bf_id, limit=10), metadata=who)
        refused(m.DrainDone, manager_pb2.DrainDoneRequest(benefactor_id=bf_id, results=[
            manager_pb2.DrainResult(task_id=1, drained="victim/v/a.bin/x.chunk")]), metadata=who)
        refused(m.Orders, manager_pb2.OrdersRequest(benefactor_id=bf_id, incarnation=1), metadata=who)
        refused(m.Leave, manager_pb2.LeaveRequest(benefactor_id=bf_id, incarnation=1, done=True), metadata=who)
        # The victim's bytes straight from a benefactor.
        refused(b.Get, benefactor_pb2.GetRequest(namespace="victim", key=chunk.key), metadata=())
        refused(b.Has, benefactor_pb2.ChunkList(namespace="victim", keys=[chunk.key]), metadata=())
        refused(b.ReadDrained, benefactor_pb2.ReadDrainedRequest(drained="victim/v/a.bin/x.chunk", key=chunk.key))
    # The attacker's own grant (a session in its namespace) does not open the victim's chunks.
    session = m.OpenSession(manager_pb2.OpenSessionRequest(namespace="attacker", path="/f"), metadata=bearer(mine))
    assert session.grant.startswith("attacker:rw:")
    grant = ((auth.GRANT_HEADER, session.grant),)
    assert refused(b.Get, benefactor_pb2.GetRequest(namespace="victim", key=chunk.key),
                   metadata=grant) == grpc.StatusCode.PERMISSION_DENIED
    ns, mode, expiry, token_id, cap, mac = session.grant.split(":")
    assert mine.startswith(f"mst_{token_id}_")  # a grant names the token it came from
    for forged in (f"victim:rw:{expiry}:{token_id}:{cap}:{mac}",
                   f"victim:rw:{int(expiry) + 10**6}:{token_id}:{cap}:{'0' * 64}",
                   f"attacker:rw:{expiry}::{cap}:{mac}", f"attacker:rw:{expiry}:{token_id}:{int(cap) + 1}:{mac}"):
        refused(b.Get, benefactor_pb2.GetRequest(namespace="victim", key=chunk.key),
                metadata=((auth.GRANT_HEADER, forged),))
    # Writing chunks into the victim's namespace with the attacker's grant.
    from memstage.frames import encode_put_frame

    data = b"evil" * 1024
    header = benefactor_pb2.PutHeader(namespace="victim", key=ChunkKey.of(data).to_pb(), seq=1,
                                      session=session.session)
    put = channel(bf_address, tls).stream_stream("/memstage.v1.Benefactor/Put",
                                                          request_serializer=lambda x: x,
                                                          response_deserializer=benefactor_pb2.PutAck.FromString)
    refused(put, iter([encode_put_frame(header, memoryview(data))]), metadata=grant)
    # Status shows a namespace token its own namespaces only; without a token, nothing.
    refused(m.Status, manager_pb2.StatusRequest())
    seen = m.Status(manager_pb2.StatusRequest(), metadata=bearer(mine), timeout=10)
    assert "victim" not in {n.namespace for n in seen.namespaces} and not seen.insecure
    # ... and of the deployment only the totals it needs: no benefactor, address, path or id.
    assert not seen.benefactors and not seen.state_dir and not seen.deployment
    assert seen.benefactors_alive == len(cluster.benefactors) and seen.memory_capacity > seen.memory_used
    # Nothing changed.
    assert checksums(victim, victim_data) == before
    assert {b["id"] for b in cluster.status()["benefactors"]} == {bf.id for bf in cluster.benefactors}
    assert cluster.status()["lost"] == []


def test_a_drained_name_that_climbs_out_of_the_grants_namespace_is_refused(deployment):
    """ReadDrained with the attacker's own grant and a name that starts in its namespace but climbs
    into the victim's: refused on every benefactor, never the victim's bytes."""
    cluster, admin, victim_data, mine = deployment
    victim = cluster.client(namespace="victim")
    wait_for(lambda: all(v["persisted"] for p in victim_data for v in victim.versions(p)), timeout=30,
             what="the victim's files to drain")
    vmap = victim.connections.call_manager("Lookup", manager_pb2.LookupRequest(namespace="victim", path="/v/a.bin"),
                                           "lookup")
    tls = client_tls(cluster)
    m = manager_pb2_grpc.ManagerStub(control_channel(cluster.manager_address, tls))
    session = m.OpenSession(manager_pb2.OpenSessionRequest(namespace="attacker", path="/mine.bin"),
                            metadata=bearer(mine), timeout=10)
    grant = ((auth.GRANT_HEADER, session.grant),)
    addresses = {loc.address for c in vmap.chunks for loc in c.locations} | {r.address for r in vmap.pfs_readers}
    assert len(addresses) == 2
    tries = 0
    for chunk in vmap.chunks:
        assert chunk.drained.startswith("victim/")
        rest = chunk.drained.split("/", 1)[1]
        for climb in ("attacker/../victim/", "attacker/./../victim/", "attacker//../victim/",
                      "attacker/mine.bin/../../victim/", "attacker/../attacker/../victim/", "./victim/",
                      "/victim/", "victim/./", "victim//"):
            for address in addresses:
                b = benefactor_pb2_grpc.BenefactorStub(channel(address, tls))
                try:
                    got = list(b.ReadDrained(
                        benefactor_pb2.ReadDrainedRequest(drained=climb + rest, key=chunk.key), metadata=grant,
                        timeout=10))
                except grpc.RpcError as e:
                    assert e.code() in (*REFUSED, grpc.StatusCode.INVALID_ARGUMENT), (climb, e.code(), e.details())
                    tries += 1
                    continue
                raise AssertionError(f"{climb + rest} on {address} returned {len(got)} frames of the victim's chunk")
    assert tries == len(vmap.chunks) * 9 * 2
    # The name as the manager gives it still reads, with the victim's grant.
    assert victim.cat("/v/a.bin") == victim_data["/v/a.bin"]


def test_a_namespace_token_reads_and_writes_its_namespace_and_nothing_else(deployment):
    cluster, admin, victim_data, mine = deployment
    own = cluster.client(namespace="attacker", token=mine, chunk_size="1MiB")
    data = random_bytes(3 * MiB)
    own.pipe("/mine.bin", data)  # manager and benefactors accept it: its grant is for this namespace
    assert own.cat("/mine.bin") == data and own.ls("/", detail=False) == ["/mine.bin"]
    other = cluster.client(namespace="victim", token=mine)
    for action in (lambda: other.cat("/v/a.bin"), lambda: other.ls("/"), lambda: other.pipe("/v/a.bin", b"x"),
                   lambda: other.rm("/v/a.bin"), lambda: other.pipe("/new.bin", next(iter(victim_data.values())))):
        with pytest.raises(PermissionDenied, match="token grants read-write on namespace attacker, not"):
            action()
    # Deduplication never crosses namespaces: the same bytes in the attacker's namespace are sent again.
    same = next(iter(victim_data.values()))
    own.pipe("/copy.bin", same)
    assert own.last_commit.stats.bytes_sent == len(same)
    # A read-only token reads and cannot write; a revoked token stops working at once.
    ro = admin.connections.call_manager("CreateToken", manager_pb2.TokenRequest(
        grants=[manager_pb2.TokenGrant(namespace="victim", mode="r")]), "token")
    reader = cluster.client(namespace="victim", token=ro.token)
    assert reader.cat("/v/b.bin") == victim_data["/v/b.bin"]
    reader.setattr("/v/b.bin", atime_ns=1, access=True)  # a read's atime update (relatime) is a read
    with pytest.raises(PermissionDenied, match="not write"):
        reader.setattr("/v/b.bin", mode=0o777, access=True)
    with pytest.raises(PermissionDenied, match="read on namespace victim, not write"):
        reader.pipe("/v/b.bin", b"overwritten")
    admin.connections.call_manager("RevokeToken", manager_pb2.TokenRequest(id=ro.id), "revoke")
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        cluster.client(namespace="victim", token=ro.token).cat("/v/b.bin")
    assert cluster.client(namespace="victim").cat("/v/b.bin") == victim_data["/v/b.bin"]


def test_token_cli_and_clear_errors(deployment, tmp_path):
    import subprocess
    import sys

    cluster, _, _, _ = deployment

    def memstage(*args: str, token: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "memstage", *args, "--manager", cluster.manager_address,
                               *cluster.client_tls_flags, *(["--token", token] if token else [])],
                              capture_output=True, text=True, timeout=30)

    made = memstage("token", "create", "--namespace", "team", "--read-only", token=cluster.admin_token)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("mst_") and "read on team" in made.stderr
    listed = memstage("token", "list", token=cluster.admin_token)
    assert token.split("_")[1] in listed.stdout and "r team" in listed.stdout
    denied = memstage("token", "create", "--namespace", "x", token=token)
    assert denied.returncode == 2 and "Traceback" not in denied.stderr
    assert "needs an admin token; this one grants read on namespace team" in denied.stderr
    anonymous = memstage("status")
    assert anonymous.returncode == 2 and "no token" in anonymous.stderr and "Traceback" not in anonymous.stderr
    wrong = memstage("status", token="mst_deadbeef_" + "0" * 32)
    assert wrong.returncode == 2 and "unknown or revoked" in wrong.stderr
    revoked = memstage("token", "revoke", token.split("_")[1], token=cluster.admin_token)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    # A benefactor without the cluster secret is refused before it can register.
    out = subprocess.run([sys.executable, "-m", "memstage", "benefactor", "--manager", cluster.manager_address,
                          "--memory", "16MiB", "--pfs", str(tmp_path / "pfs")], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "--cluster-secret FILE is needed" in out.stderr
    wrong_secret = tmp_path / "wrong.key"
    wrong_secret.write_text("ab" * 32)
    rogue = subprocess.Popen([sys.executable, "-m", "memstage", "benefactor", "--manager", cluster.manager_address,
                              "--memory", "16MiB", "--pfs", str(tmp_path / "pfs"), "--cluster-secret",
                              str(wrong_secret), "--heartbeat-interval", "0.2s", *cluster.tls_flags],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # It keeps trying (and logging why it is refused); it never registers.
        wait_for(lambda: "cluster secret" in _peek(rogue), timeout=20, what="the rogue's refusal")
        assert len(cluster.status()["benefactors"]) == 2
    finally:
        rogue.terminate()
        rogue.wait(timeout=30)


def test_a_live_benefactor_id_cannot_be_taken_over_even_with_the_secret(deployment, tmp_path):
    """A second process that has the cluster secret (an insider, or two benefactors given one --id)
    cannot register a live benefactor's id: refused and logged, the victim's chunks keep going to the
    real one. Once that one is gone (3 missed heartbeats), the id may be registered again."""
    cluster, _, victim_data, _ = deployment
    victim = cluster.client(namespace="victim")
    before = checksums(victim, victim_data)
    target = cluster.benefactors[0]
    addresses = {b["id"]: b["address"] for b in cluster.status()["benefactors"]}  # type: ignore[index]
    log = tmp_path / "twin.log"
    out = open(log, "w")  # noqa: SIM115 (closed below)
    twin = spawn("benefactor", ["--manager", cluster.manager_address, "--memory", "16MiB", "--pfs",
                                str(tmp_path / "pfs"), "--cluster-secret", cluster.secret_file, "--id", target.id,
                                "--heartbeat-interval", f"{cluster.heartbeat}s", *cluster.tls_flags], stderr=out)
    try:
        wait_for(lambda: "belongs to a live process" in log.read_text(), timeout=20, what="the twin's refusal")
        time.sleep(4 * cluster.heartbeat)  # it keeps trying, and keeps being refused
        assert {b["id"]: b["address"] for b in cluster.status()["benefactors"]} == addresses  # type: ignore[index]
        victim.pipe("/v/new.bin", random_bytes(2 * MiB))
        assert checksums(victim, victim_data) == before and not cluster.status()["lost"]
        target.kill()  # the real one is gone: after its TTL the id is free again
        wait_for(lambda: {b["id"]: b["address"] for b in cluster.status()["benefactors"]  # type: ignore[index]
                          if b["alive"]}.get(target.id) == twin.address, timeout=20, what="the id to be taken over")
    finally:
        twin.kill()
        out.close()


def _peek(proc) -> str:
    """What the process wrote to stderr so far (without blocking)."""
    import os

    os.set_blocking(proc.stderr.fileno(), False)
    try:
        chunk = os.read(proc.stderr.fileno(), 1 << 16).decode(errors="replace")
    except BlockingIOError:
        chunk = ""
    _peek.seen = getattr(_peek, "seen", "") + chunk  # type: ignore[attr-defined]
    return _peek.seen  # type: ignore[attr-defined]


def test_insecure_is_explicit_and_loud(local_cluster):
    cluster = local_cluster(benefactors=1)  # the fixtures' default: --insecure
    assert cluster.status()["benefactors"] and cluster.client().ls("/") == []
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "memstage", "status", "--manager", cluster.manager_address],
                         capture_output=True, text=True, timeout=30)
    assert "INSECURE" in out.stdout



def test_a_mount_without_a_token_is_refused_and_mounts_nothing(deployment, tmp_path):
    import os
    import subprocess
    import sys

    cluster = deployment[0]
    point = tmp_path / "mnt"
    point.mkdir()
    out = subprocess.run([sys.executable, "-m", "memstage", "mount", str(point), "--manager", cluster.manager_address,
                          *cluster.client_tls_flags], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--token: refused by" in out.stderr and "no token" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not os.path.ismount(point)


def test_metrics_are_served_over_mutual_tls_with_the_deployment_certificate(local_cluster, tmp_path):
    """/metrics names namespaces: with the deployment's CA set, it asks for a client certificate as
    every other port does. Plain HTTP, or TLS without a client certificate, reads nothing."""
    import ssl
    import urllib.request

    port = free_port()
    cluster = local_cluster(benefactors=1, secure=True, tls=True, manager_args=("--metrics-port", str(port)))
    context = ssl.create_default_context(cafile=cluster.tls["tls_ca"])
    context.check_hostname = False  # the certificate names the deployment, not this address
    with pytest.raises(Exception):  # noqa: B017 (no client certificate: the handshake or the read fails)
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read()
    context.load_cert_chain(cluster.tls["tls_cert"], cluster.tls["tls_key"])
    body = urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read()
    assert b"memstage_benefactors_alive" in body
    with pytest.raises(Exception):  # noqa: B017 (plain HTTP to a TLS port: any failure will do)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    # Series that name namespaces: for the scrapers' certificate (and the roles'), not for a
    # tenant's client certificate, which sees the deployment's series only.
    cluster.client(namespace="tenant-a").pipe("/x", b"x")
    tls_dir = Path(cluster.tls["tls_ca"]).parent

    def scrape(cert: str, key: str) -> bytes:
        ctx = ssl.create_default_context(cafile=cluster.tls["tls_ca"])
        ctx.check_hostname = False
        ctx.load_cert_chain(str(tls_dir / cert), str(tls_dir / key))
        return urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=10).read()

    assert b'namespace="tenant-a"' in scrape("metrics.pem", "metrics-key.pem")
    tenant_view = scrape("client.pem", "client-key.pem")
    assert b"memstage_benefactors_alive" in tenant_view and b"tenant-a" not in tenant_view


def test_metrics_bind_to_their_own_host_and_may_skip_client_certificates(local_cluster, tmp_path):
    """metrics_host moves /metrics off the --listen host (here another loopback address);
    metrics_without_client_cert lets any scraper that trusts the certificate read it (Prometheus
    annotations in Kubernetes)."""
    import ssl
    import urllib.request

    port = free_port()
    cluster = local_cluster(benefactors=1, secure=True, tls=True,
                            manager_args=("--metrics-port", str(port), "--metrics-host", "127.0.0.2",
                                          "--metrics-without-client-cert"))
    context = ssl.create_default_context(cafile=cluster.tls["tls_ca"])
    context.check_hostname = False
    cluster.client(namespace="tenant-a").pipe("/x", b"x")
    body = urllib.request.urlopen(f"https://127.0.0.2:{port}/metrics", context=context, timeout=10).read()
    assert b"memstage_benefactors_alive" in body
    assert b"tenant-a" not in body  # no certificate: no series that name namespaces
    with pytest.raises(OSError):  # not on the --listen host
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context, timeout=10).read()


def test_tls_on_every_port_and_plaintext_refused(local_cluster, tmp_path):
    """TLS with client certificates (as `memstage up` sets it up): the whole path works over it;
    plaintext, or TLS without the deployment's client certificate, gets nowhere."""
    from memstage.errors import SettingError

    cluster = local_cluster(benefactors=2, secure=True, tls=True)
    c = cluster.client(chunk_size="1MiB")
    data = random_bytes(3 * MiB)
    c.pipe("/tls.bin", data)
    assert c.cat("/tls.bin") == data and cluster.status()["benefactors"]
    vmap = c.connections.call_manager("Lookup", manager_pb2.LookupRequest(namespace="default", path="/tls.bin"), "x")
    bf_address = vmap.chunks[0].locations[0].address
    for address in (cluster.manager_address, bf_address):
        with pytest.raises(grpc.RpcError) as plain:
            manager_pb2_grpc.ManagerStub(grpc.insecure_channel(address)).Status(manager_pb2.StatusRequest(),
                                                                                timeout=5)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        # TLS that trusts the CA but shows no client certificate: the handshake is refused.
        from pathlib import Path

        creds = grpc.ssl_channel_credentials(root_certificates=Path(cluster.tls["tls_ca"]).read_bytes())
        no_cert = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "memstage")])
        with pytest.raises(grpc.RpcError) as refused_tls:
            manager_pb2_grpc.ManagerStub(no_cert).Status(manager_pb2.StatusRequest(), timeout=5)
        assert refused_tls.value.code() == grpc.StatusCode.UNAVAILABLE
    # Without the TLS settings: told which are missing (was: "unreachable (... Socket closed)").
    with pytest.raises(SettingError, match="speaks TLS and this side has no tls_ca"):
        cluster.client(tls_ca="", tls_cert="", tls_key="", tls_server_name="").ls("/")
    status = subprocess.run([sys.executable, "-m", "memstage", "status", "--manager", cluster.manager_address,
                             "--token", cluster.admin_token], capture_output=True, text=True, timeout=60)
    assert status.returncode == 2 and "speaks TLS" in status.stderr and "Traceback" not in status.stderr
    log = tmp_path / "benefactor.log"
    with open(log, "w") as out:  # a benefactor started without them says so too (was: "unreachable")
        bf = subprocess.Popen([sys.executable, "-m", "memstage", "benefactor", "--manager", cluster.manager_address,
                               "--memory", "16MiB", "--pfs", str(tmp_path / "pfs"), "--cluster-secret",
                               cluster.secret_file], stdout=subprocess.DEVNULL, stderr=out)
    try:
        wait_for(lambda: "speaks TLS" in log.read_text(), timeout=30, what="the benefactor's message")
    finally:
        bf.kill()
        bf.wait()


def test_the_pfs_copy_is_private_to_the_user_memstage_runs_as(local_cluster):
    """Namespace directories memstage creates on the PFS are 0700 and chunk files 0600: another user
    of the PFS cannot read a namespace without memstage."""
    import stat as st

    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    c.policy(persist_every=1)
    c.pipe("/deep/dir/secret.bin", random_bytes(MiB))
    pfs = cluster.root / "pfs"
    wait_for(lambda: list((pfs / "default").rglob("*.chunk")), what="the drain")
    made = [p for p in (pfs / "default").rglob("*")] + [pfs / "default"]
    for p in made:
        mode = st.S_IMODE(p.lstat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_revoking_a_token_reaches_the_grants_it_was_given(deployment):
    """A revoked token's grants (taken before the revocation) stop opening chunks on every
    benefactor at once, for reads and for Put; other tokens' grants go on working."""
    from memstage.frames import encode_put_frame

    cluster, admin, _, mine = deployment
    tenant = cluster.client(namespace="attacker", token=mine)
    data = random_bytes(MiB)
    tenant.pipe("/mine.bin", data)
    tls = client_tls(cluster)
    m = manager_pb2_grpc.ManagerStub(control_channel(cluster.manager_address, tls))
    vmap = m.Lookup(manager_pb2.LookupRequest(namespace="attacker", path="/mine.bin"), metadata=bearer(mine),
                    timeout=10)
    session = m.OpenSession(manager_pb2.OpenSessionRequest(namespace="attacker", path="/more"), metadata=bearer(mine),
                            timeout=10)
    read, write = ((auth.GRANT_HEADER, vmap.grant),), ((auth.GRANT_HEADER, session.grant),)
    chunk = vmap.chunks[0]
    b = benefactor_pb2_grpc.BenefactorStub(channel(chunk.locations[0].address, tls))
    assert list(b.Get(benefactor_pb2.GetRequest(namespace="attacker", key=chunk.key), metadata=read,
                      timeout=10))  # the grant works before
    token_id = mine.split("_")[1]
    admin.connections.call_manager("RevokeToken", manager_pb2.TokenRequest(id=token_id), "revoke")

    def refused_now() -> bool:
        try:
            list(b.Get(benefactor_pb2.GetRequest(namespace="attacker", key=chunk.key), metadata=read, timeout=10))
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in (e.details() or "")
        return False

    wait_for(refused_now, timeout=3 * 0.5 * 2, what="the revocation to reach the benefactor (within a heartbeat)")
    for bf in cluster.benefactors:  # every benefactor, for Put too
        stub = channel(bf.address, tls).stream_stream("/memstage.v1.Benefactor/Put", request_serializer=lambda x: x,
                                                      response_deserializer=benefactor_pb2.PutAck.FromString)
        header = benefactor_pb2.PutHeader(namespace="attacker", key=ChunkKey.of(data).to_pb(), seq=1,
                                          session=session.session)
        assert refused(stub, iter([encode_put_frame(header, memoryview(data))]),
                       metadata=write) == grpc.StatusCode.PERMISSION_DENIED
    # Other tokens' grants are untouched.
    assert cluster.client(namespace="victim").cat("/v/a.bin")


def test_a_tenant_at_its_quota_never_blocks_another_tenants_writes(deployment):
    """Quotas (set by the admin): uncommitted chunks Put for sessions that are renewed and never
    committed stop at the namespace's memory quota on each benefactor, open sessions at their
    quota, commits at the memory quota; the victim's writes go on, and status shows the quota."""
    from memstage.errors import QuotaExceeded
    from memstage.frames import encode_put_frame

    cluster, admin, _, mine = deployment
    tenant = cluster.client(namespace="attacker", token=mine, full_wait="0s")
    with pytest.raises(PermissionDenied):  # a tenant cannot raise its own quota
        tenant.policy(quota_memory=1 << 40)
    admin_ns = cluster.client(namespace="attacker")
    admin_ns.policy(quota_memory=6 * MiB, quota_sessions=2, persist_every=0, keep_versions=100)
    tls = client_tls(cluster)
    m = manager_pb2_grpc.ManagerStub(control_channel(cluster.manager_address, tls))
    # The old attack: sessions kept open, chunks Put and never committed, on every benefactor.
    sessions = [m.OpenSession(manager_pb2.OpenSessionRequest(namespace="attacker", path=f"/hog{i}"),
                              metadata=bearer(mine), timeout=10) for i in range(2)]
    with pytest.raises(grpc.RpcError) as third:
        m.OpenSession(manager_pb2.OpenSessionRequest(namespace="attacker", path="/hog3"), metadata=bearer(mine),
                      timeout=10)
    assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota" in third.value.details()
    refused_puts = 0
    for bf in cluster.benefactors:
        put = channel(bf.address, tls).stream_stream("/memstage.v1.Benefactor/Put", request_serializer=lambda x: x,
                                                     response_deserializer=benefactor_pb2.PutAck.FromString)
        for session in sessions:
            frames = []
            for seq in range(1, 9):  # 8 MiB each, beyond the 6 MiB quota
                data = random_bytes(MiB)
                header = benefactor_pb2.PutHeader(namespace="attacker", key=ChunkKey.of(data).to_pb(), seq=seq,
                                                  session=session.session)
                frames.append(encode_put_frame(header, memoryview(data)))
            try:
                acks = list(put(iter(frames), metadata=((auth.GRANT_HEADER, session.grant),), timeout=30))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "EDQUOT" in e.details(), e.details()
                refused_puts += 1
            else:
                raise AssertionError(f"{len(acks)} chunks accepted beyond the quota")
    assert refused_puts == 2 * len(cluster.benefactors)
    # The victim writes on.
    victim = cluster.client(namespace="victim")
    payload = random_bytes(4 * MiB)
    victim.pipe("/v/after.bin", payload)
    assert victim.cat("/v/after.bin") == payload
    for session in sessions:
        m.AbortSession(manager_pb2.SessionRequest(session=session.session), metadata=bearer(mine), timeout=10)
    # Committed data stops at the quota too, with a clear error; what was committed stays.
    tenant.pipe("/a.bin", random_bytes(4 * MiB))
    with pytest.raises(QuotaExceeded, match="quota"):
        tenant.pipe("/b.bin", random_bytes(4 * MiB))
    assert len(tenant.cat("/a.bin")) == 4 * MiB
    row = next(n for n in cluster.status()["namespaces"] if n["namespace"] == "attacker")
    assert row["quota_memory"] == 6 * MiB and 4 * MiB <= row["memory_used"] <= 6 * MiB


def test_a_client_certificate_cannot_pose_as_the_manager(deployment, tmp_path):
    """A tenant holds the client certificate every job holds. A fake manager serving with it is
    refused by a victim's client at the handshake: the victim's token is never sent to it. Only
    the roles' certificate can serve, and it is not given to clients."""
    from concurrent import futures

    cluster, _, _, _ = deployment
    seen: list[object] = []

    def capture(request, context):  # type: ignore[no-untyped-def]
        seen.append(context.invocation_metadata())
        return manager_pb2.ListReply()

    fake = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("memstage.v1.Manager", {
        "List": grpc.unary_unary_rpc_method_handler(capture, request_deserializer=manager_pb2.PathRequest.FromString,
                                                    response_serializer=manager_pb2.ListReply.SerializeToString)}),))
    stolen = cluster.client_tls
    credentials = grpc.ssl_server_credentials([(Path(stolen["tls_key"]).read_bytes(),
                                                Path(stolen["tls_cert"]).read_bytes())])
    port = fake.add_secure_port("127.0.0.1:0", credentials)
    fake.start()
    try:
        from memstage.client import Client

        victim = Client(manager=f"127.0.0.1:{port}", namespace="victim", token=cluster.admin_token, rpc_timeout="3s",
                        **cluster.client_tls)
        with pytest.raises(Exception):  # noqa: B017 (unreachable, as any failed handshake)
            victim.ls("/")
        assert seen == []  # the token never reached the fake manager
        assert "client.pem" in stolen["tls_cert"] and "client.pem" not in cluster.tls["tls_cert"]
        victim.connections.close()
    finally:
        fake.stop(0)
