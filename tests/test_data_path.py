"""The data path end to end: real manager and benefactor processes, the client library."""

from __future__ import annotations

import errno
import hashlib
import threading

import pytest
from conftest import MiB, free_port, random_bytes, rpc_calls, wait_for

from memstage.client import DeploymentFull, InvalidArgument, InvalidPath, NotFound
from memstage.errors import FsError

pytestmark = pytest.mark.timeout(120)


def test_round_trip_300mib_through_4_benefactors(local_cluster):
    cluster = local_cluster(benefactors=4, memory=128 * MiB)
    c = cluster.client()
    data = random_bytes(300 * MiB)
    with c.open("/run42/step100/rank0.bin", "wb") as f:
        for start in range(0, len(data), 7 * MiB + 13):  # writes not aligned to chunks
            f.write(data[start : start + 7 * MiB + 13])
    assert f.result.version == 1 and f.result.size == len(data)
    with c.open("/run42/step100/rank0.bin", "rb") as f:
        back = f.read()
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    # Every benefactor got a share: the stripe spans all four.
    used = [b["memory_used"] for b in cluster.status()["benefactors"]]
    assert len(used) == 4 and all(u > 50 * MiB for u in used), used


def test_a_write_gets_its_first_striping_map_with_its_session(local_cluster):
    """One manager call less per file: the session brings the map, so plain writes make no
    GetStripingMap call (counted by the manager's /metrics)."""
    port = free_port()
    cluster = local_cluster(benefactors=2, manager_args=("--metrics-port", str(port)))
    c = cluster.client()
    files = {f"/step{i}/rank0": random_bytes(3 * MiB + i) for i in range(3)}
    for path, data in files.items():
        c.pipe(path, data)
    assert all(c.cat(path) == data for path, data in files.items())
    calls = rpc_calls(port)
    assert calls.get("OpenSession", 0) >= 3 and calls.get("Commit", 0) >= 3, calls
    assert calls.get("GetStripingMap", 0) == 0, calls


def test_random_reads_and_seek(local_cluster):
    c = local_cluster(benefactors=2).client(chunk_size="64KiB")
    data = random_bytes(1 * MiB + 12345)
    c.pipe("/f.bin", data)
    with c.open("/f.bin", "rb") as f:
        for offset, n in [(0, 10), (65530, 20), (len(data) - 5, 100), (300000, 200000)]:
            f.seek(offset)
            assert f.read(n) == data[offset : offset + n]
    assert c.cat_file("/f.bin", start=100, end=70000) == data[100:70000]


def test_versions_and_previous_version_readable(local_cluster):
    c = local_cluster(benefactors=2).client()
    v1, v2 = random_bytes(3 * MiB), random_bytes(2 * MiB + 1)
    c.pipe("/ckpt", v1)
    c.pipe("/ckpt", v2)
    assert [v["version"] for v in c.versions("/ckpt")] == [1, 2]
    assert c.cat("/ckpt") == v2
    with c.open("/ckpt", "rb", version=1) as f:
        assert f.read() == v1
    assert c.info("/ckpt")["size"] == len(v2)


def test_empty_file(local_cluster):
    c = local_cluster(benefactors=1).client()
    with c.open("/empty", "wb"):
        pass
    assert c.info("/empty")["size"] == 0
    assert c.cat("/empty") == b""


def test_reader_keeps_its_version_while_a_new_one_commits(local_cluster):
    c = local_cluster(benefactors=2).client()
    old = random_bytes(2 * MiB)
    c.pipe("/x", old)
    reader = c.open("/x", "rb")
    c.pipe("/x", random_bytes(2 * MiB))
    assert reader.read() == old
    reader.close()


def test_four_concurrent_clients(local_cluster):
    cluster = local_cluster(benefactors=3, memory=96 * MiB)
    files = {f"/run/rank{i}.bin": random_bytes(20 * MiB + i) for i in range(4)}
    errors: list[BaseException] = []

    def write(path: str, data: bytes) -> None:
        try:
            client = cluster.client()
            with client.open(path, "wb") as f:
                f.write(data)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=write, args=item) for item in files.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    reader = cluster.client()
    assert sorted(reader.ls("/run", detail=False)) == sorted(files)
    for path, data in files.items():
        assert reader.cat(path) == data


def test_file_bigger_than_one_benefactor_spreads(local_cluster):
    cluster = local_cluster(benefactors=3, memory=16 * MiB)
    c = cluster.client(stripe_width=1)  # even a width-1 map must overflow onto the others
    data = random_bytes(40 * MiB)
    c.pipe("/big", data)
    assert c.cat("/big") == data
    holding = [b for b in cluster.status()["benefactors"] if b["memory_used"] > 0]
    assert len(holding) == 3


def test_deployment_full_raises_typed_error_and_keeps_committed(local_cluster):
    cluster = local_cluster(benefactors=2, memory=8 * MiB)
    c = cluster.client()
    kept = random_bytes(6 * MiB)
    c.pipe("/kept", kept)
    with pytest.raises(DeploymentFull) as info, c.open("/kept", "wb") as f:
        f.write(random_bytes(20 * MiB))
    assert "full" in str(info.value)
    assert c.cat("/kept") == kept  # the committed version is untouched
    assert [v["version"] for v in c.versions("/kept")] == [1]


def test_exception_inside_with_block_commits_nothing(local_cluster):
    c = local_cluster(benefactors=1).client()
    c.pipe("/ck", b"first")
    with pytest.raises(RuntimeError), c.open("/ck", "wb") as f:
        f.write(random_bytes(3 * MiB))
        raise RuntimeError("application crashed mid-checkpoint")
    assert c.cat("/ck") == b"first"


@pytest.mark.parametrize("bad, reason", [
    ("/a/../../etc/passwd", "'..'"),
    ("/a\x00b", "NUL"),
    ("/" + "x" * 256, "longer than 255"),
    ("/" + "/".join(["d" * 200] * 330), "longer than 65536"),
])
def test_bad_paths_rejected(local_cluster, bad, reason):
    c = local_cluster(benefactors=1).client()
    with pytest.raises(InvalidPath) as info:
        c.pipe(bad, b"x")
    assert reason in str(info.value)
    with pytest.raises(InvalidPath):
        c.cat(bad)


def test_missing_file_and_version(local_cluster):
    c = local_cluster(benefactors=1).client()
    with pytest.raises(NotFound, match="no such file") as missing:
        c.cat("/nope")
    assert str(missing.value).count("/nope") == 1  # was: "/nope: /nope: no such file ..."
    c.pipe("/one", b"1")
    with pytest.raises(NotFound, match="no version 7"):
        c.open("/one", "rb", version=7)
    c.mkdir("/dir")
    with pytest.raises(FsError, match="is a directory") as directory:  # was: NotFound "no such file"
        c.open("/dir", "rb")
    assert directory.value.errno == errno.EISDIR


def test_rm_frees_benefactor_memory(local_cluster):
    cluster = local_cluster(benefactors=2, memory=32 * MiB)
    c = cluster.client()
    c.pipe("/dir/a", random_bytes(10 * MiB))
    c.pipe("/dir/b", random_bytes(10 * MiB))
    c.rm("/dir", recursive=True)
    assert c.ls("/", detail=False) == []
    wait_for(lambda: all(b["memory_used"] == 0 for b in cluster.status()["benefactors"]), what="chunks freed")


def test_fsspec_url(local_cluster):
    import fsspec

    cluster = local_cluster(benefactors=1)
    url = f"memstage://{cluster.manager_address}/team-a/run1/x.bin"
    with fsspec.open(url, "wb") as f:
        f.write(b"via fsspec")
    with fsspec.open(url, "rb") as f:
        assert f.read() == b"via fsspec"
    assert cluster.client(namespace="team-a").cat("/run1/x.bin") == b"via fsspec"
    with pytest.raises(NotFound):
        cluster.client(namespace="team-b").cat("/run1/x.bin")  # namespaces are separate


def test_chunks_larger_than_a_frame(local_cluster):
    c = local_cluster(benefactors=2, memory=64 * MiB).client(chunk_size="9MiB")  # 3 frames per chunk
    data = random_bytes(20 * MiB + 3)
    c.pipe("/big-chunks", data)
    assert c.cat("/big-chunks") == data


def test_buffered_close_commits_in_background_and_sync_waits(local_cluster):
    cluster = local_cluster(benefactors=2)
    c = cluster.client(close_mode="buffered")
    data = random_bytes(8 * MiB)
    with c.open("/bg", "wb") as f:
        f.write(data)
    c.sync()
    assert f.result is not None and f.result.version == 1
    assert cluster.client().cat("/bg") == data


def test_buffered_commit_error_surfaces_on_sync(local_cluster):
    cluster = local_cluster(benefactors=1, memory=4 * MiB)
    c = cluster.client(close_mode="buffered", buffer_size="64MiB")
    with c.open("/too-big", "wb") as f:
        f.write(random_bytes(16 * MiB))  # buffered: close() does not wait for the failure
    with pytest.raises(DeploymentFull):
        c.sync()
    with pytest.raises(NotFound):
        c.info("/too-big")


def test_a_write_racing_the_free_of_the_same_chunks_keeps_them(local_cluster):
    cluster = local_cluster(benefactors=1)
    c = cluster.client()
    data = random_bytes(4 * MiB)
    with c.open("/b", "wb") as b:
        b.write(data)
        b.flush()
        b.writer.settle()  # /b's chunks are stored; no version references them yet
        c.pipe("/a", data)  # /a stores the same chunks on the same benefactor, and commits them
        c.rm("/a")  # ... and frees them: the benefactor is told to free chunks /b is about to commit
        wait_for(lambda: cluster.memory_used() == 4 * MiB, what="the free order to be carried out")
    assert c.cat("/b") == data


def test_a_write_open_longer_than_its_lease_keeps_its_chunks(local_cluster):
    port = free_port()
    cluster = local_cluster(benefactors=1, manager_args=("--session-lease", "1s", "--metrics-port", str(port)))
    c = cluster.client()
    data = random_bytes(4 * MiB)
    with c.open("/slow", "wb") as f:
        f.write(data[: 2 * MiB])
        f.flush()
        f.writer.settle()  # stored on the benefactor, referenced by no version yet
        renewed = rpc_calls(port).get("RenewSessions", 0)
        # The client renews every third of a lease: seven renewals outlast two leases.
        wait_for(lambda: rpc_calls(port).get("RenewSessions", 0) >= renewed + 7, timeout=30,
                 what="the session to outlive two leases")
        f.write(data[2 * MiB :])
    assert c.cat("/slow") == data


def test_rename_replaces_the_destination_atomically_and_moves_directories(local_cluster):
    c = local_cluster(benefactors=2).client()
    c.pipe("/ck/latest.bin", b"old")
    c.pipe("/ck/.latest.bin.tmp", b"new content")
    c.mv("/ck/.latest.bin.tmp", "/ck/latest.bin")  # the write-tmp-then-rename pattern
    assert c.cat("/ck/latest.bin") == b"new content"
    assert [v["version"] for v in c.versions("/ck/latest.bin")] == [1, 2]  # the old one is still a version
    assert c.ls("/ck", detail=False) == ["/ck/latest.bin"]
    c.mkdir("/empty/sub")
    assert {e["name"]: e["type"] for e in c.ls("/", detail=True)} == {"/ck": "directory", "/empty": "directory"}
    with pytest.raises(InvalidArgument, match="not empty"):
        c.rmdir("/ck")
    c.mv("/ck", "/archive/ck")
    assert c.cat("/archive/ck/latest.bin") == b"new content" and not c.exists("/ck")
    c.rmdir("/empty/sub")
    c.rmdir("/empty")
    assert c.ls("/", detail=False) == ["/archive"]
