"""The chunk lifecycle with real processes: write sessions and leases, confirmed locations,
benefactor incarnations, frees from the manager only, drains of deleted files, reads across
eviction. Each test is a failure once measured on the deployment."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.chunks import ChunkKey
from memstage.errors import DataLost
from memstage.proto import benefactor_pb2, common_pb2, manager_pb2, manager_pb2_grpc
from memstage.rpc import channel

pytestmark = pytest.mark.timeout(240)


def test_a_benefactor_restarted_with_the_same_id_voids_its_old_locations(local_cluster):
    cluster = local_cluster(benefactors=1, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=0)  # memory only: what the old process held is really gone
    data = random_bytes(4 * MiB)
    c.pipe("/f", data)
    old = cluster.benefactors[0]
    old.kill()
    new = cluster.add_benefactor(64 * MiB, "--id", old.id)
    assert new.id == old.id
    # The version that needed the old process's memory is lost, with the reason: the new process
    # gets the id once the old one missed its heartbeats (a live id is never taken over), and the
    # manager says why whichever it noticed first, the silence or the new incarnation.
    wait_for(lambda: c.versions("/f")[0]["lost"], what="version 1 to be marked lost")
    reason = c.versions("/f")[0]["lost_reason"]
    assert old.id in reason and ("restarted" in reason or "died" in reason), reason
    assert [v["version"] for v in cluster.status()["lost"]] == [1]
    # Once the old process is known gone, the id that is alive is the new process's (add_benefactor
    # may have seen the old one's registration still alive).
    wait_for(lambda: old.id in cluster.alive_ids(), what="the new process to hold the id")
    # Deduplication never matches the void locations: the same bytes are sent again and read back.
    with c.open("/f", "wb") as f:
        f.write(data)
    assert f.result.stats.bytes_sent == len(data)
    assert c.cat("/f") == data


def _manager(cluster) -> manager_pb2_grpc.ManagerStub:
    return manager_pb2_grpc.ManagerStub(channel(cluster.manager_address))


def test_a_commit_naming_a_location_without_a_receipt_is_refused(local_cluster):
    cluster = local_cluster(benefactors=1)
    bf = cluster.benefactors[0]
    stub = _manager(cluster)
    key = ChunkKey.of(b"never stored" * 100)
    session = stub.OpenSession(manager_pb2.OpenSessionRequest(namespace="default", path="/forged")).session
    forged = [manager_pb2.ChunkRef(key=key.to_pb(), locations=[
        common_pb2.Location(benefactor_id=bf.id, receipt=b"\0" * 16)])]
    for sid in (session, 0):  # with a session of its own, and with none
        with pytest.raises(grpc.RpcError) as e:
            stub.Commit(manager_pb2.CommitRequest(namespace="default", path="/forged", size=key.length,
                                                  chunks=forged, session=sid), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"not confirmed by benefactor {bf.id}" in e.value.details()
    c = cluster.client()
    assert not c.exists("/forged")
    # Nothing blocks the benefactor's drain: a real file behind it is persisted.
    c.pipe("/real", random_bytes(2 * MiB))
    wait_for(lambda: c.versions("/real")[0]["persisted"], what="/real to drain")


def test_a_benefactor_frees_nothing_on_anyone_elses_word(local_cluster):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    c.policy(persist_every=0)
    data = random_bytes(3 * MiB)
    c.pipe("/kept", data)
    keys = [ChunkKey.of(data[i : i + MiB]).to_pb() for i in range(0, len(data), MiB)]
    delete = channel(cluster.benefactors[0].address).unary_unary(
        "/memstage.v1.Benefactor/Delete", request_serializer=benefactor_pb2.ChunkList.SerializeToString,
        response_deserializer=benefactor_pb2.HasReply.FromString)
    with pytest.raises(grpc.RpcError) as e:
        delete(benefactor_pb2.ChunkList(namespace="default", keys=keys), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert c.cat("/kept") == data
    assert not c.versions("/kept")[0]["lost"]


def test_aborted_and_discarded_writes_give_their_memory_back_at_once(local_cluster):
    cluster = local_cluster(benefactors=1, memory=128 * MiB)
    c = cluster.client()
    with pytest.raises(RuntimeError), c.open("/raised", "wb") as f:
        f.write(random_bytes(64 * MiB))
        f.writer.finish()  # every chunk stored on the benefactor, then the application fails
        raise RuntimeError("crash before commit")
    f = c.open("/discarded", "wb")
    f.write(random_bytes(48 * MiB))
    f.writer.finish()
    f.discard()
    wait_for(lambda: cluster.memory_used() == 0, timeout=5, what="the aborted writes' memory to be freed")
    c.pipe("/next", random_bytes(120 * MiB))  # the whole donation is usable again, without waiting
    assert not c.exists("/raised") and not c.exists("/discarded")


_WRITER = """
import os, sys, time
from memstage.client import Client
c = Client(manager=sys.argv[1])
f = c.open("/dying", "wb")
f.write(os.urandom(32 * 1024 * 1024))
f.writer.finish()
print("stored", flush=True)
time.sleep(600)
"""


def test_a_killed_writers_chunks_are_freed_when_its_lease_ends(local_cluster):
    """A writer process killed: nobody renews its lease (lease timing itself: test_timing.py)."""
    lease = 2.0
    cluster = local_cluster(benefactors=1, memory=64 * MiB, manager_args=("--session-lease", f"{lease}s"))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, cluster.manager_address], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stored"
        wait_for(lambda: cluster.memory_used() == 32 * MiB, what="the writer's chunks to show")
        proc.kill()
        killed = time.monotonic()
        wait_for(lambda: cluster.memory_used() == 0, timeout=4 * lease, what="the dead writer's chunks to go")
        assert time.monotonic() - killed <= 2 * lease + 1  # + the status polls' own time on a loaded machine
    finally:
        proc.kill()
        proc.wait()


def test_rewriting_one_region_through_a_fuse_handle_keeps_one_copy(mounted):
    point, cluster, _ = mounted(benefactors=2, memory=64 * MiB)
    fd = os.open(point / "rewritten", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for _ in range(300):  # more than twice the memory donated: old copies must go meanwhile
            last = os.urandom(MiB)
            assert os.pwrite(fd, last, 0) == MiB
    finally:
        os.close(fd)
    assert (point / "rewritten").read_bytes() == last
    wait_for(lambda: cluster.memory_used() <= 2 * MiB, what="rewritten chunks to be freed")


def test_random_writes_reads_and_truncates_through_fuse_never_run_out_of_space(mounted):
    import random

    point, cluster, _ = mounted(benefactors=2, memory=256 * MiB)
    rng = random.Random(11)
    size_limit = 16 * MiB
    model = bytearray()
    path = point / "random"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    peak = 0
    try:
        for op in range(int(os.environ.get("MEMSTAGE_FUSE_OPS", "3000"))):  # more with the variable
            kind = rng.random()
            if kind < 0.6:
                offset = rng.randrange(size_limit)
                data = rng.randbytes(rng.randrange(1, min(256 * 1024, size_limit - offset) + 1))
                assert os.pwrite(fd, data, offset) == len(data)
                if offset > len(model):
                    model.extend(bytes(offset - len(model)))
                model[offset : offset + len(data)] = data
            elif kind < 0.95:
                offset = rng.randrange(size_limit)
                n = rng.randrange(1, 512 * 1024)
                assert os.pread(fd, n, offset) == bytes(model[offset : offset + n])
            else:
                length = rng.randrange(size_limit)
                os.ftruncate(fd, length)
                del model[length:]
                model.extend(bytes(length - len(model)))
            if op % 1000 == 999:
                peak = max(peak, cluster.memory_used())
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(model)
    wait_for(lambda: cluster.memory_used() <= 2 * max(len(model), MiB), what="memory back to the live data")
    assert peak <= 2 * size_limit + 64 * MiB, f"peak {peak / MiB:.0f} MiB for a {size_limit // MiB} MiB file"


def test_deleting_a_file_whose_drain_the_benefactor_already_took_logs_no_error(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    log = tmp_path / "benefactor.log"
    cluster.add_benefactor(600 * MiB, "--drain-bandwidth", "128MiB", log=log)
    c = cluster.client(chunk_size="4MiB")
    c.pipe("/a", random_bytes(256 * MiB))  # 64 chunks: one drain batch, about 2 s at 128 MiB/s
    c.pipe("/b", random_bytes(256 * MiB))  # queued behind it
    # The moment /a is persisted the drain loop takes /b's batch and starts reading its 64 chunks
    # out of memory: delete /b then, under its feet.
    wait_for(lambda: c.versions("/a")[0]["persisted"], timeout=60, what="/a to drain")
    c.rm("/b")
    c.pipe("/kept", random_bytes(16 * MiB))
    wait_for(lambda: c.versions("/kept")[0]["persisted"], timeout=60, what="/kept to drain behind it")
    assert not cluster.status()["lost"]
    text = log.read_text()
    assert "ERROR" not in text and "neither held nor drained" not in text, text[-2000:]


def _versioned(rng_bytes: bytes) -> bytes:
    return hashlib.sha256(rng_bytes).digest() + rng_bytes


def test_readers_never_fail_while_versions_leave_memory_under_them(local_cluster):
    rounds = int(os.environ.get("MEMSTAGE_STRESS_ROUNDS", "16"))
    cluster = local_cluster(benefactors=2, memory=256 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_versions=1)  # each new version evicts the previous (once persisted)
    c.pipe("/hot", _versioned(os.urandom(4 * MiB)))
    stop = threading.Event()
    reads, writes, failures = [0], [0], []

    def writer() -> None:
        while not stop.is_set():
            try:
                c.pipe("/hot", _versioned(os.urandom(4 * MiB)))
                writes[0] += 1
            except Exception as e:  # a writer may find the deployment busy; readers must not fail
                failures.append(f"write: {e!r}")

    def reader() -> None:
        while not stop.is_set():
            try:
                with c.open("/hot", "rb") as f:
                    first = f.read(1 * MiB)
                    time.sleep(0.05)  # the version is evicted while it is being read
                    body = first + f.read()
                assert hashlib.sha256(body[32:]).digest() == body[:32], "content does not match its checksum"
                reads[0] += 1
            except Exception as e:
                failures.append(f"read: {e!r}")

    threads = [threading.Thread(target=writer) for _ in range(4)] + [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    # Each write evicts the version before it: this many of both, with readers caught in between.
    wait_for(lambda: failures or (reads[0] >= rounds and writes[0] >= rounds), timeout=120,
             what=f"{rounds} writes and reads")
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures, f"{len(failures)} failures in {reads[0]} reads and {writes[0]} writes: {failures[:3]}"
    assert reads[0] > 0 and writes[0] > 0


def test_after_a_manager_restart_orders_still_reach_benefactors_and_open_writes_fail_cleanly(local_cluster):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    c.pipe("/a", random_bytes(4 * MiB))
    c.rm("/a")  # the benefactor has carried out (and acknowledged) orders of this manager
    wait_for(lambda: cluster.memory_used() == 0, what="/a to be freed")
    c.pipe("/kept", b"kept")
    f = c.open("/open", "wb")
    f.write(random_bytes(4 * MiB))
    f.writer.finish()  # stored for a session the restarted manager will not know
    cluster.restart_manager()
    wait_for(lambda: len(cluster.alive_ids()) == 1, what="the benefactor to register again")
    # The unknown session's chunks are freed on the new manager's orders (numbered from 1 again).
    wait_for(lambda: cluster.memory_used() <= 64 * 1024,
             what="the old session's chunks to be freed")
    # Refused at the commit, or earlier by the renewal (every lease/3) if the waits above took long.
    with pytest.raises(DataLost, match="session (has ended|expired)"):
        f.close()
    c2 = cluster.client()
    c2.pipe("/b", random_bytes(4 * MiB))
    c2.rm("/b")
    wait_for(lambda: cluster.memory_used() <= 64 * 1024, what="/b to be freed by the new manager's orders")
    assert c2.cat("/kept") == b"kept"


def test_one_write_buffer_per_client_bounds_all_its_files_together(local_cluster):
    cluster = local_cluster(benefactors=2, memory=128 * MiB)
    c = cluster.client(buffer_size="8MiB", close_mode="buffered")
    files = [c.open(f"/many/{i}", "wb") for i in range(6)]
    assert len({id(f.writer._budget) for f in files}) == 1  # one budget, not six
    peak = 0
    for _ in range(8):
        for f in files:
            f.write(random_bytes(MiB))
            peak = max(peak, c.budget.used)
    assert peak <= 8 * MiB
    def threads() -> int:  # but the put streams', which start and end as chunks go
        return len([t for t in threading.enumerate() if not t.name.startswith("stream-put-")])

    threads_before = threads()
    for f in files:
        f.close()  # buffered: the commits run on the client's few commit threads, not one each
    assert threads() - threads_before <= 4
    c.sync()
    assert sorted(c.ls("/many", detail=False)) == sorted(f"/many/{i}" for i in range(6))
    assert c.budget.used == 0


def test_a_stream_takes_nothing_after_its_end(local_cluster):
    from memstage.placement import Placement
    from memstage.transport import GrpcTransport, encode_chunk

    cluster = local_cluster(benefactors=1)
    bf = cluster.benefactors[0]
    c = cluster.client()
    ended = threading.Event()
    stream = GrpcTransport(c.connections).open_stream(Placement(bf.id, bf.address), lambda seq, receipt: None,
                                                      lambda reason, detail, leftover: ended.set())
    data = memoryview(random_bytes(MiB))
    frames = encode_chunk("default", 1, 0, ChunkKey.of(data), data)
    stream.close()
    # A chunk re-placed after the stream's end marker would never be sent, and its loss taken for
    # a benefactor failure: the stream refuses it and the writer places it elsewhere.
    assert stream.send(0, frames) is False
    wait_for(ended.is_set, what="the stream to end")
