"""Draining to the PFS with real processes: persistence policy, retention, restore, PFS faults."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.client import DataLost, NotFound
from memstage.drainer.layout import scan, version_dir

pytestmark = pytest.mark.timeout(120)


def persisted(client, path):
    return [v["version"] for v in client.versions(path) if v["persisted"]]


def restore(pfs, path, version, out, namespace="default"):
    return subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(pfs), "--namespace", namespace,
                           path, "--version", str(version), "--out", str(out)], capture_output=True, text=True,
                          timeout=60)


def test_three_versions_restored_from_the_pfs_alone(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_versions=3)
    versions = [random_bytes(5 * MiB + 11), random_bytes(3 * MiB), b""]
    for data in versions:
        c.pipe("/run/ck.bin", data)
    wait_for(lambda: persisted(c, "/run/ck.bin") == [1, 2, 3], what="all three versions to be persisted")
    cluster.stop()  # no manager, no benefactor, no database from here on
    for number, data in enumerate(versions, start=1):
        out = tmp_path / f"v{number}"
        result = restore(cluster.root / "pfs", "/run/ck.bin", number, out)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data


def test_unchanged_chunks_are_hard_links_on_the_pfs(local_cluster):
    cluster = local_cluster(benefactors=2, memory=96 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_versions=3)
    data = bytearray(random_bytes(20 * MiB))
    for step in range(3):
        if step:
            for i in range(step, 20, 10):  # 2 of 20 chunks (10 %) change each time
                data[i * MiB : (i + 1) * MiB] = random_bytes(MiB)
        c.pipe("/ck", bytes(data))
    wait_for(lambda: persisted(c, "/ck") == [1, 2, 3], what="persistence")
    du = subprocess.run(["du", "-sb", str(cluster.root / "pfs")], capture_output=True, text=True, check=True)
    on_disk = int(du.stdout.split()[0])
    assert 1.15 * len(data) < on_disk < 1.25 * len(data), on_disk / len(data)  # ~1.2x, not 3x
    assert len(list(version_dir(cluster.root / "pfs", "default", "/ck").path.iterdir())) == 60


def test_persist_every_2_drains_the_first_and_every_second_version_and_drops_the_rest(local_cluster):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=2, keep_versions=2)
    data = [random_bytes(2 * MiB) for _ in range(5)]
    for d in data[:4]:
        c.pipe("/f", d)
    # The first version is always selected (a job that dies early still has one on the PFS).
    wait_for(lambda: persisted(c, "/f") == [1, 2, 4], what="versions 1, 2 and 4 to be persisted")
    wait_for(lambda: [(v["version"], v["in_memory"]) for v in c.versions("/f")] == [(1, False), (2, False), (3, True),
                                                                                  (4, True)],
             what="retention after persisting")
    assert c.open("/f", "rb", version=3).read() == data[2]  # not selected, still in memory
    c.pipe("/f", data[4])  # v3 falls out of keep_versions: never persisted, so it is gone
    with pytest.raises(NotFound):
        c.open("/f", "rb", version=3)
    assert sorted(v for _, v in scan(version_dir(cluster.root / "pfs", "default", "/f"))) == [1, 2, 4]
    assert c.open("/f", "rb", version=1).read() == data[0]  # from the PFS


def test_keep_versions_1_evicts_and_reads_come_from_the_pfs(local_cluster):
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    c.policy(persist_every=1, keep_versions=1)
    old, new = random_bytes(8 * MiB), random_bytes(4 * MiB)
    c.pipe("/g", old)
    c.pipe("/g", new)
    wait_for(lambda: [(v["version"], v["in_memory"]) for v in c.versions("/g")] == [(1, False), (2, True)],
             what="version 1 to leave memory once persisted")
    used = lambda: sum(b["memory_used"] for b in cluster.status()["benefactors"])  # noqa: E731
    wait_for(lambda: used() == 4 * MiB, what="version 1's chunks freed from memory")
    assert c.open("/g", "rb", version=1).read() == old  # from the PFS, through a benefactor
    assert c.cat("/g") == new


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs the test can make read-only; skipped where this process cannot mount."""
    target = tmp_path / "pfs-mount"
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(target)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield target
    subprocess.run(["umount", "-l", str(target)], check=False)


def test_read_only_pfs_then_writable_loses_nothing(local_cluster, tmpfs):
    from conftest import Cluster

    cluster = Cluster(tmpfs.parent / "c", 0.5)
    try:
        cluster.start_manager()
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        cluster.add_benefactor(32 * MiB, "--pfs", str(tmpfs))
        c = cluster.client()
        data = random_bytes(6 * MiB)
        c.pipe("/h", data)
        wait_for(lambda: "Read-only file system" in cluster.status()["benefactors"][0]["drain_error"],
                 what="the drain error to show in status")
        assert persisted(c, "/h") == [] and c.cat("/h") == data  # the chunks stayed in memory
        assert cluster.status()["benefactors"][0]["drain_backlog"] == 6 * MiB
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
        wait_for(lambda: persisted(c, "/h") == [1], timeout=30, what="the drain to resume")
        assert cluster.status()["benefactors"][0]["drain_backlog"] == 0
        out = tmpfs.parent / "restored"
        assert restore(tmpfs, "/h", 1, out).returncode == 0 and out.read_bytes() == data
    finally:
        cluster.stop()


def test_benefactor_lost_before_drain_marks_the_version_lost(local_cluster, tmp_path):
    cluster = local_cluster(benefactors=0)
    bf = cluster.add_benefactor(64 * MiB, "--drain-bandwidth", "1MiB")
    c = cluster.client(chunk_size="64KiB")  # 256 chunks: four drain batches, 4 s apart
    first = random_bytes(64 * 1024)
    c.pipe("/k", first)
    wait_for(lambda: persisted(c, "/k") == [1], what="version 1 persisted")
    c.pipe("/k", random_bytes(16 * MiB))  # drains at 1 MiB/s: 16 s
    status = wait_for(lambda: (s := cluster.status())["benefactors"][0]["drain_backlog"] > 0 and s,
                      what="a drain backlog")
    wait_for(lambda: cluster.status()["benefactors"][0]["oldest_undrained_age_seconds"] >= 1.0,
             what="the oldest undrained chunk to age")
    assert status["benefactors"][0]["drain_backlog"] <= 16 * MiB
    bf.kill()
    lost = wait_for(lambda: cluster.status()["lost"], what="version 2 to be reported lost")
    assert [(v["path"], v["version"]) for v in lost] == [("/k", 2)] and "died" in lost[0]["reason"]
    assert [v["lost"] for v in c.versions("/k")] == [False, True]
    out = tmp_path / "v1"
    assert restore(cluster.root / "pfs", "/k", 1, out).returncode == 0 and out.read_bytes() == first
    table = subprocess.run([sys.executable, "-m", "memstage", "status", "--manager", cluster.manager_address],
                           capture_output=True, text=True, timeout=30).stdout
    assert "LOST" in table and "default:/k version 2" in table


def test_full_deployment_writer_waits_for_a_drain_to_free_space(local_cluster):
    cluster = local_cluster(benefactors=0)
    for _ in range(2):
        cluster.add_benefactor(16 * MiB, "--drain-bandwidth", "4MiB")  # slow drains: the writer must wait
    c = cluster.client(chunk_size="64KiB")  # a version is several drain batches, a second apart
    c.policy(persist_every=1, keep_versions=1)
    c.pipe("/a", random_bytes(12 * MiB))
    c.pipe("/a", random_bytes(12 * MiB))  # v1 is past keep_versions but undrained: it stays in memory
    assert [v["in_memory"] for v in c.versions("/a")] == [True, True]
    writer = cluster.client(full_wait="60s")
    blob = random_bytes(12 * MiB)
    with writer.open("/b", "wb") as f:  # 36 MiB wanted of 32: waits until /a v1 is drained and evicted
        f.write(blob)
    assert f.result.version == 1 and writer.cat("/b") == blob
    first = c.versions("/a")[0]
    assert first["persisted"] and not first["in_memory"]


def test_full_wait_expires_with_the_typed_error(local_cluster):
    cluster = local_cluster(benefactors=1, memory=4 * MiB)
    c = cluster.client(full_wait="1s")
    c.policy(persist_every=0)
    with pytest.raises(Exception) as info:
        c.pipe("/too-big", random_bytes(8 * MiB))
    assert type(info.value).__name__ == "DeploymentFull"
    assert not isinstance(info.value, DataLost)


def test_a_name_deleted_and_written_again_numbers_on_and_restores_from_the_pfs(local_cluster, tmp_path):
    """Version numbers go on after a delete (or a rename away): the old file's chunk files stay on
    the PFS under the name, and the new file's must not take their numbers."""
    cluster = local_cluster(benefactors=2, memory=64 * MiB)
    c = cluster.client()
    old, new, moved = random_bytes(2 * MiB), random_bytes(MiB + 3), random_bytes(MiB)
    c.pipe("/r.bin", old)
    wait_for(lambda: persisted(c, "/r.bin") == [1], what="the first file to drain")
    c.rm("/r.bin")
    c.pipe("/r.bin", new)
    assert [v["version"] for v in c.versions("/r.bin")] == [2]
    wait_for(lambda: persisted(c, "/r.bin") == [2], what="the second file to drain")
    c.mv("/r.bin", "/elsewhere.bin")
    c.pipe("/r.bin", moved)
    assert [v["version"] for v in c.versions("/r.bin")] == [3]
    wait_for(lambda: persisted(c, "/r.bin") == [3], what="the third file to drain")
    out = tmp_path / "r.bin"
    latest = subprocess.run([sys.executable, "-m", "memstage", "restore", "--pfs", str(cluster.root / "pfs"),
                             "/r.bin", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert latest.returncode == 0, latest.stderr  # before: two files' version 1 made it ambiguous
    assert out.read_bytes() == moved
    for version, data in ((1, old), (2, new), (3, moved)):
        result = restore(cluster.root / "pfs", "/r.bin", version, out)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == data
