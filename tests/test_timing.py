"""Timing rules on an in-process cluster whose time is a ManualClock: leases, TTLs and idle
back-offs are checked by advancing the clock, not by sleeping, so each runs in clock seconds
however loaded the machine is. (Faults that need processes, SIGKILL and SIGSTOP, are in
test_faults.py and test_lifecycle.py.)"""

from __future__ import annotations

import time

import grpc
import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.proto import manager_pb2, manager_pb2_grpc

pytestmark = pytest.mark.timeout(120)


def _expired(cluster) -> float:  # type: ignore[no-untyped-def]
    return cluster.manager.registry.get_sample_value("memstage_write_sessions_expired_total") or 0.0


def test_a_commit_after_the_lease_ran_out_is_refused_and_frees_nothing_committed(inproc_cluster):
    lease = 4.0
    cluster = inproc_cluster(benefactors=1, heartbeat=1.0, session_lease=lease)
    c = cluster.client()
    c.pipe("/v", b"first")
    with grpc.insecure_channel(cluster.address) as ch:
        stub = manager_pb2_grpc.ManagerStub(ch)
        session = stub.OpenSession(manager_pb2.OpenSessionRequest(namespace="default", path="/v")).session
        cluster.advance(lease - 0.5)
        assert cluster.manager.service.sessions.is_open(session) and not _expired(cluster), "ended early"
        cluster.advance(1.5)  # nobody renews it: past the lease and the next sweep, the manager ends it
        assert _expired(cluster) == 1
        with pytest.raises(grpc.RpcError) as e:
            stub.Commit(manager_pb2.CommitRequest(namespace="default", path="/v", size=0, session=session),
                        timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "session has ended" in e.value.details()
    assert c.cat("/v") == b"first"


def test_a_write_open_longer_than_its_lease_keeps_its_chunks_as_its_client_renews_it(inproc_cluster):
    lease = 3.0
    cluster = inproc_cluster(benefactors=1, heartbeat=1.0, session_lease=lease)
    c = cluster.client()
    data = random_bytes(4 * MiB)
    f = c.open("/long", "wb")
    f.write(data)
    f.writer.finish()  # every chunk stored on the benefactor
    cluster.advance(4 * lease)
    assert not _expired(cluster)
    assert cluster.memory_used() == len(data)
    f.close()
    assert c.cat("/long") == data


def test_a_silent_benefactor_is_declared_dead_after_its_ttl_and_not_before(inproc_cluster):
    heartbeat = 1.0
    cluster = inproc_cluster(benefactors=3, heartbeat=heartbeat)
    cluster.advance(5.0)  # past the manager's start-up grace (one TTL)
    victim, *others = cluster.benefactors
    registry = cluster.manager.service.registry
    last_seen = registry.get(victim.id).last_seen
    cluster.stop_benefactor(victim)
    ttl = registry.ttl
    assert ttl == 3 * heartbeat
    cluster.advance(last_seen + ttl - 0.2 - cluster.clock.now())  # sweeps ran up to 0.2 s before the TTL
    assert victim.id in cluster.alive_ids(), "declared dead within its TTL"
    cluster.advance(1.4)  # past the TTL and the next sweep
    assert cluster.alive_ids() == {b.id for b in others}
    c = cluster.client()
    data = random_bytes(6 * MiB)
    c.pipe("/after", data)
    assert c.cat("/after") == data
    status = {b.id: b for b in cluster.manager.service.status.reply().benefactors}
    assert not status[victim.id].alive
    assert all(status[b.id].stats.memory_used > 0 for b in others), "a live benefactor got no new chunks"


def test_a_benefactor_idle_or_holding_an_open_write_does_not_poll_and_a_commit_still_drains_at_once(
        inproc_cluster):
    """Polling every 0.2 s, its order and drain loops would make 80 calls in 8 s; backed off to
    their ceiling (twice the 2 s heartbeat) they make at most three each, and the manager wakes
    them when a commit's work waits: the commit is drained with the clock standing still."""
    cluster = inproc_cluster(benefactors=1, heartbeat=2.0)
    client = cluster.client()
    client.pipe("/warm", random_bytes(MiB))  # the loops have worked once, then go idle
    wait_for(lambda: client.versions("/warm")[0]["persisted"], timeout=10, what="the first drain")
    cluster.advance(10.0)  # backing off to the ceiling
    before = cluster.calls()
    cluster.advance(8.0)
    idle_calls = cluster.calls() - before
    # Still a look now and then (a safety net for a lost wake), and so the count is seen to work.
    assert 0 < idle_calls <= 6, f"an idle benefactor made {idle_calls} order and drain calls in 8 s"

    # A checkpoint's data is on the benefactor and its session open: that is no reason to ask.
    writer = client.new_writer("/ckpt", time.time())
    writer.add(memoryview(random_bytes(2 * MiB)))
    writer.settle()
    cluster.clock.settle()
    before = cluster.calls()
    cluster.advance(8.0)
    open_calls = cluster.calls() - before
    assert open_calls <= 6, f"a benefactor holding an open write made {open_calls} order and drain calls in 8 s"

    # The clock stands still from here: only the manager's wake can bring the drain about. The
    # wake brings the commit's orders and the reply acknowledges them: no fetch of orders.
    fetches = cluster.calls("Orders")
    writer.finish()
    writer.commit()
    wait_for(lambda: client.versions("/ckpt")[0]["persisted"], timeout=10, what="the drain of /ckpt")
    cluster.clock.settle()
    fetches = cluster.calls("Orders") - fetches
    assert fetches == 0, f"the benefactor fetched its orders {fetches} times for one commit"
    wakes = cluster.manager.registry.get_sample_value("memstage_benefactor_wakes_total", {"result": "sent"})
    assert wakes and wakes >= 1
