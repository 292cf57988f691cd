"""Faults with real processes: SIGKILLed benefactors and managers, corrupt chunks."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from conftest import HEARTBEAT, MiB, random_bytes, wait_for

from memstage.chunks import ChunkKey
from memstage.client import DataLost, MemstageError
from memstage.frames import encode_put_frame, identity
from memstage.proto import benefactor_pb2, benefactor_pb2_grpc
from memstage.rpc import channel

pytestmark = pytest.mark.timeout(120)


def test_benefactor_killed_mid_write_fails_cleanly_previous_version_intact(local_cluster):
    # The survivor has room for the whole write: the outcome depends on what the victim held, not
    # on running out of space (how far the write got before the death was noticed varies with load).
    cluster = local_cluster(benefactors=1, memory=256 * MiB)
    c = cluster.client(buffer_size="8MiB")  # a small buffer keeps the write going while we kill
    previous = random_bytes(4 * MiB)
    c.pipe("/ckpt", previous)  # wholly on the survivor: without replicas a dead benefactor's data is gone
    victim = cluster.add_benefactor(128 * MiB)
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            with c.open("/ckpt", "wb") as f:
                for i in range(200):
                    f.write(random_bytes(MiB))
                    if i == 10:
                        started.set()
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=write)
    t.start()
    assert started.wait(30)
    victim.kill()
    t.join(90)
    assert not t.is_alive()
    error = outcome[0]
    # Either the write re-planned every chunk the dead benefactor had not acknowledged and lost
    # nothing, or it failed clearly; in both cases no version points at the dead benefactor's data.
    if error is None:
        assert [v["version"] for v in c.versions("/ckpt")] == [1, 2]
    else:
        assert isinstance(error, DataLost), repr(error)
        assert victim.id in str(error)
        assert [v["version"] for v in c.versions("/ckpt")] == [1]
    assert c.open("/ckpt", "rb", version=1).read() == previous


def test_manager_sigkill_and_restart_keeps_versions_readable(local_cluster):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    files = {f"/run/step{i}": random_bytes(3 * MiB + i) for i in range(3)}
    for path, data in files.items():
        c.pipe(path, data)
    c.pipe("/run/step0", b"second version")
    cluster.restart_manager()
    c2 = cluster.client()
    # Listed at once (from SQLite) and readable at once (addresses are durable too).
    assert sorted(c2.ls("/run", detail=False)) == sorted(files)
    assert [v["version"] for v in c2.versions("/run/step0")] == [1, 2]
    assert c2.cat("/run/step0") == b"second version"
    assert c2.open("/run/step0", "rb", version=1).read() == files["/run/step0"]
    for path in ("/run/step1", "/run/step2"):
        assert c2.cat(path) == files[path]
    # The benefactors re-register on their next heartbeat, and new writes work.
    wait_for(lambda: len(cluster.alive_ids()) == 2, what="benefactors to re-register")
    c2.pipe("/run/step3", b"new")
    assert c2.cat("/run/step3") == b"new"


def test_chunk_with_wrong_hash_is_rejected(local_cluster):
    cluster = local_cluster(benefactors=1, memory=16 * MiB)
    bf = cluster.benefactors[0]
    data = random_bytes(MiB)
    key = ChunkKey.of(random_bytes(MiB))  # the hash of other bytes of the same length
    header = benefactor_pb2.PutHeader(namespace="default", key=key.to_pb(), seq=7, session=1)
    with channel(bf.address) as ch:
        put = ch.stream_stream("/memstage.v1.Benefactor/Put", request_serializer=identity,
                               response_deserializer=benefactor_pb2.PutAck.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(put(iter([encode_put_frame(header, data)]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "do not match hash" in info.value.details()
        has = benefactor_pb2_grpc.BenefactorStub(ch).Has(
            benefactor_pb2.ChunkList(namespace="default", keys=[key.to_pb()]), timeout=10)
        assert list(has.present) == [False]
    # Nothing was stored: the reservation was released.
    wait_for(lambda: cluster.status()["benefactors"][0]["memory_used"] == 0, what="heartbeat with used == 0")


def test_over_capacity_chunk_refused_with_resource_exhausted(local_cluster):
    cluster = local_cluster(benefactors=1, memory=1 * MiB)
    data = random_bytes(2 * MiB)
    header = benefactor_pb2.PutHeader(namespace="default", key=ChunkKey.of(data).to_pb(), seq=1, session=1)
    with channel(cluster.benefactors[0].address) as ch:
        put = ch.stream_stream("/memstage.v1.Benefactor/Put", request_serializer=identity,
                               response_deserializer=benefactor_pb2.PutAck.FromString)
        with pytest.raises(grpc.RpcError) as info:
            list(put(iter([encode_put_frame(header, data)]), timeout=10))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_with_no_manager_gets_a_clear_error(tmp_path):
    from memstage.client import Client

    c = Client(manager="127.0.0.1:1", rpc_timeout="2s")
    with pytest.raises(MemstageError, match="manager 127.0.0.1:1: unreachable"):
        c.ls("/")


def test_a_stalled_manager_does_not_declare_live_benefactors_dead(local_cluster):
    """A manager that could not run for longer than the TTL (paused, swapped out, starved of CPU by a
    commit storm) judges benefactors by heartbeats that arrived, not by how long it was away itself:
    the benefactors kept beating all along, so nothing they hold may be voided."""
    import signal

    cluster = local_cluster(benefactors=3, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1000, keep_versions=10)  # version 1 stays in memory only: a false death loses it
    data = random_bytes(6 * MiB)
    c.pipe("/f", data)
    alive = cluster.alive_ids()
    cluster.manager.proc.send_signal(signal.SIGSTOP)
    time.sleep(3 * 3 * HEARTBEAT)  # three TTLs away
    resumed = time.monotonic()
    cluster.manager.proc.send_signal(signal.SIGCONT)
    # Its first sweeps after resuming come before any new beat: the danger is over once every
    # benefactor has beaten again since.
    wait_for(lambda: all(b["last_heartbeat_age_seconds"] < time.monotonic() - resumed
                         for b in cluster.status()["benefactors"]), timeout=15, what="a beat from each since")
    assert cluster.alive_ids() == alive
    assert not cluster.status()["lost"]
    assert not c.versions("/f")[0]["lost"]
    assert c.cat("/f") == data


def test_benefactors_come_back_in_time_after_a_long_manager_outage(local_cluster):
    """A manager down for many seconds, then restarted: the benefactors must register again within
    the grace it gives them (one TTL), or what only they hold is declared lost. A channel's default
    reconnect backoff grows to minutes; the benefactors' stays below a second."""
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1000, keep_versions=10)  # in memory only: a benefactor voided loses it
    data = random_bytes(2 * MiB)
    c.pipe("/f", data)
    alive = cluster.alive_ids()
    cluster.manager.kill()
    time.sleep(12 * HEARTBEAT)  # the outage itself, long enough for a channel's backoff to grow
    cluster.start_manager(cluster.manager_address)
    wait_for(lambda: cluster.alive_ids() == alive, timeout=30, what="the benefactors to register again")
    c = cluster.client()
    assert not c.versions("/f")[0]["lost"]
    assert c.cat("/f") == data
    assert not cluster.status()["lost"]
