"""Checkpoints survive stops, restarts and shared PFS directories, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import MiB, free_port, random_bytes, wait_for

pytestmark = pytest.mark.timeout(180)


def memstage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memstage", *args], capture_output=True, text=True, timeout=60)


def test_two_deployments_sharing_one_pfs_directory_both_restore(local_cluster, tmp_path):
    shared = tmp_path / "scratch-pfs"
    first, second = local_cluster(benefactors=1, pfs=shared), local_cluster(benefactors=1, pfs=shared)
    data = {}
    for cluster, size in ((first, 3 * MiB + 5), (second, 2 * MiB)):  # the same path, each its version 1
        c = cluster.client()
        data[cluster.status()["deployment"]] = payload = random_bytes(size)
        c.pipe("/job/ckpt.bin", payload)
        wait_for(lambda c=c: c.versions("/job/ckpt.bin")[0]["persisted"], what="the checkpoint to drain")
    a, b = (cl.status()["deployment"] for cl in (first, second))
    assert a != b
    listing = memstage("restore", "--pfs", str(shared), "--list")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines() if "/job/ckpt.bin" in line]
    assert sorted(r[2] for r in rows) == sorted([a, b]) and all(r[-1] == "yes" for r in rows)
    read, write = os.pipe()  # `memstage restore --list | head -0`: the reader is gone before the listing
    os.close(read)
    closed = subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(shared), "--list"],
                            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    os.close(write)
    assert "Traceback" not in closed.stderr and "BrokenPipe" not in closed.stderr, closed.stderr  # was: both
    for deployment, payload in data.items():
        out = tmp_path / f"out-{deployment}"
        done = memstage("restore", "--pfs", str(shared), "/job/ckpt.bin", "--deployment", deployment, "--out",
                        str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == payload
    latest = tmp_path / "latest"
    assert memstage("restore", "--pfs", str(shared), "/job/ckpt.bin", "--out", str(latest)).returncode == 0
    assert latest.read_bytes() == data[b]  # committed last
    ambiguous = memstage("restore", "--pfs", str(shared), "/job/ckpt.bin", "--version", "1", "--out",
                         str(tmp_path / "x"))
    assert ambiguous.returncode != 0 and "--deployment" in ambiguous.stderr and "Traceback" not in ambiguous.stderr


def test_a_version_whose_files_reached_the_pfs_is_not_lost_when_its_benefactor_dies_unreported(local_cluster):
    import signal

    from memstage.chunks import ChunkKey
    from memstage.drainer.layout import chunk_name, version_dir, write_chunk

    cluster = local_cluster(benefactors=0)
    slow = cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "1KiB")
    c = cluster.client()
    c.pipe("/blocker", random_bytes(64 * 1024))  # drained at once, then its drain pauses for a minute
    wait_for(lambda: c.versions("/blocker")[0]["persisted"], what="the blocker to drain")
    data = random_bytes(4 * MiB)
    c.pipe("/f", data)  # queued behind the pause
    slow.proc.send_signal(signal.SIGSTOP)  # it cannot report anything any more ...
    try:
        # ... though its chunk files are on the PFS: written as it would have (same names).
        info = c.versions("/f")[0]
        deployment = cluster.status()["deployment"]
        directory = version_dir(cluster.root / "pfs", "default", "/f")
        for i in range(4):
            piece = data[i * MiB : (i + 1) * MiB]
            write_chunk(directory, chunk_name(1, i, 4, i * MiB, ChunkKey.of(piece), deployment,
                                              int(info["committed_at"] * 1000)), [piece])
        cluster.add_benefactor(64 * MiB)  # a live benefactor to take over its drain tasks
        wait_for(lambda: slow.id not in cluster.alive_ids(), what="the stopped benefactor to be declared dead")
        wait_for(lambda: c.versions("/f")[0]["persisted"], what="the version's drain to be recovered from the PFS")
        assert not c.versions("/f")[0]["lost"] and not cluster.status()["lost"]
        assert c.cat("/f") == data  # read through the deployment, from the PFS
    finally:
        slow.kill()


def test_after_a_crash_and_restart_undrained_versions_are_lost_and_drained_ones_readable(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    bf = cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "64KiB")
    c = cluster.client()
    kept = random_bytes(32 * 1024)
    c.pipe("/kept", kept)
    wait_for(lambda: c.versions("/kept")[0]["persisted"], what="/kept to drain")
    c.pipe("/undrained", random_bytes(4 * MiB))  # a minute of draining at 64 KiB/s
    bf.kill()
    cluster.restart_manager()  # a crash of the whole deployment; the manager comes back on its state
    cluster.add_benefactor(64 * MiB)  # a new benefactor process (another id)
    c2 = cluster.client()
    lost = wait_for(lambda: c2.versions("/undrained")[0]["lost"] and c2.versions("/undrained")[0], timeout=20,
                    what="/undrained to be reported lost")
    assert "gone" in lost["lost_reason"] and "not on the PFS" in lost["lost_reason"]
    assert [(v["path"], v["version"]) for v in cluster.status()["lost"]] == [("/undrained", 1)]
    waited = memstage("wait", "--manager", cluster.manager_address, "--drained", "--timeout", "20s")
    assert waited.returncode == 3 and "/undrained" in waited.stderr
    assert c2.cat("/kept") == kept  # persisted: read from the PFS through the new benefactor


def _up(tmp_path, address: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "memstage", "up", "--benefactors", "1", "--memory", "64MiB",
                             "--state", str(tmp_path / "state"), "--pfs", str(tmp_path / "pfs"), "--listen", address,
                             "--heartbeat-interval", "0.5s", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    def serving() -> bool:
        status = memstage("status", "--manager", address, "--json", "--config", str(tmp_path / "state" / "client.toml"))
        return proc.poll() is not None or (status.returncode == 0 and '"alive": true' in status.stdout)

    wait_for(serving, timeout=30, what="memstage up to serve with a live benefactor")
    assert proc.poll() is None, proc.communicate()[0]
    return proc


def _client(tmp_path) -> dict[str, str]:
    """The admin token and TLS files `memstage up` (secure by default) left in its state directory."""
    from memstage.cli.up import deployment_client

    return deployment_client(str(tmp_path / "state"))


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    import signal

    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out


@pytest.mark.parametrize("stop_timeout", ["60s", "300ms"])
def test_ctrl_c_on_up_drains_before_stopping_or_reports_what_it_could_not(tmp_path, stop_timeout):
    from memstage.client import Client

    address = f"127.0.0.1:{free_port()}"
    up = _up(tmp_path, address, "--drain-bandwidth", "1MiB", "--stop-timeout", stop_timeout)
    try:
        c = Client(manager=address, chunk_size=os.environ.get("CK", "16KiB"), **_client(tmp_path))
        data = random_bytes(3 * MiB)
        c.pipe("/ckpt", data)  # 192 chunks: 3 drain batches, 1 s apart at 1 MiB/s
        c.connections.close()
    finally:
        out = _ctrl_c(up)
    assert "draining" in out and up.returncode == 0, out
    up = _up(tmp_path, address)  # again on the same state and PFS
    try:
        c = Client(manager=address, **_client(tmp_path))  # the same token and certificates after the restart
        version = c.versions("/ckpt")[0]
        if stop_timeout == "60s":  # drained before the stop: persisted and readable
            assert version["persisted"] and not version["lost"], (version, out)
            assert c.cat("/ckpt") == data
        else:  # not drained in time: said at the stop, and reported lost after it, never silently gone
            assert "could not be drained: reported lost" in out, out
            assert version["lost"] and "stopped" in version["lost_reason"], version
            waited = memstage("wait", "--manager", address, "--drained", "--timeout", "10s", "--config",
                              str(tmp_path / "state" / "client.toml"))
            assert waited.returncode == 3 and "/ckpt" in waited.stderr
        c.connections.close()
    finally:
        _ctrl_c(up)


def test_a_planted_symlink_stops_the_drain_of_its_path_only(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    log = tmp_path / "benefactor.log"
    cluster.add_benefactor(64 * MiB, log=log)
    outside = tmp_path / "outside"
    outside.mkdir()
    (cluster.root / "pfs" / "default").mkdir(parents=True)
    (cluster.root / "pfs" / "default" / "evil").symlink_to(outside)  # leads out of the PFS root
    c = cluster.client()
    evil, good = random_bytes(2 * MiB), random_bytes(2 * MiB)
    c.pipe("/evil/ckpt", evil)
    c.pipe("/good/ckpt", good)
    wait_for(lambda: c.versions("/good/ckpt")[0]["persisted"], what="the drain to go on behind the refused path")
    version = wait_for(lambda: c.versions("/evil/ckpt")[0]["drain_error"] and c.versions("/evil/ckpt")[0],
                       what="the refused drain to be reported")
    assert "leave the PFS root" in version["drain_error"] and not version["lost"] and not version["persisted"]
    assert c.cat("/evil/ckpt") == evil  # still in memory
    status = cluster.status()
    assert [(v["path"], v["version"]) for v in status["drain_failed"]] == [("/evil/ckpt", 1)]
    assert list(outside.iterdir()) == []  # nothing escaped
    assert "Traceback" not in log.read_text() and "Exception in thread" not in log.read_text()


def test_status_is_fresh_right_after_a_write_and_wait_shows_drain_progress(local_cluster):
    cluster = local_cluster(benefactors=0, heartbeat=30.0)  # no heartbeat comes in time to help
    cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "1MiB")
    # Chunks of 32 KiB: a benefactor reports a batch of 64 (2 MiB) every 2 s at 1 MiB/s, so wait
    # sees the two reports its rate needs before its second line.
    c = cluster.client(chunk_size="32KiB")
    c.pipe("/f", random_bytes(8 * MiB))
    status = cluster.status()
    assert sum(b["chunk_count"] for b in status["benefactors"]) == 256
    assert sum(b["memory_used"] for b in status["benefactors"]) >= 8 * MiB
    c.pipe("/g", random_bytes(4 * MiB))  # with /f: 12 s of draining, over two of wait's 5 s reports
    waited = memstage("wait", "--manager", cluster.manager_address, "--drained", "--timeout", "60s")
    assert waited.returncode == 0, waited.stderr
    assert "left to drain" in waited.stderr and "draining at" in waited.stderr and "to go" in waited.stderr
    drained = sum(b["drained_bytes"] for b in cluster.status()["benefactors"])
    assert drained == 12 * MiB  # as of now, not as of the next heartbeat


def test_wait_drained_with_a_namespace_token_waits_for_that_namespaces_drain(local_cluster):
    """A job holds a token for its own namespace only: `wait --drained` must still wait for its
    checkpoints to reach the PFS (it saw no benefactors and said 'nothing left' at once)."""
    cluster = local_cluster(benefactors=0, secure=True)
    cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "1MiB")

    def memstage_as(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "memstage", *args, "--manager", cluster.manager_address,
                               *cluster.client_tls_flags, "--token", token], capture_output=True, text=True,
                              timeout=60)

    made = memstage_as(cluster.admin_token, "token", "create", "--namespace", "job")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    c = cluster.client(namespace="job", token=token, chunk_size="64KiB")
    # Two batches of 64 chunks: the second drains about 4 s after the first, at 1 MiB/s.
    c.pipe("/ckpt/rank0.pt", random_bytes(8 * MiB))
    waited = memstage_as(token, "wait", "--drained", "--timeout", "60s")
    assert waited.returncode == 0, waited.stderr
    assert c.versions("/ckpt/rank0.pt")[0]["persisted"]  # was: not yet, wait had returned at once
    assert "left to drain" in waited.stderr, waited.stderr
