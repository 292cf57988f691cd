"""Incremental checkpoints: chunks a namespace already holds are not sent again."""

from __future__ import annotations

import pytest
from conftest import MiB, random_bytes, wait_for

from memstage.client import DataLost

pytestmark = pytest.mark.timeout(120)


def write(client, path, data):
    with client.open(path, "wb") as f:
        f.write(data)
    return f.result.stats


def test_identical_rewrite_sends_zero_chunk_bytes(local_cluster):
    c = local_cluster(benefactors=2).client()
    data = random_bytes(10 * MiB + 77)
    first = write(c, "/ckpt", data)
    assert first.bytes_sent == len(data) and first.bytes_deduplicated == 0
    again = write(c, "/ckpt", data)
    assert again.bytes_sent == 0 and again.bytes_deduplicated == len(data)
    assert [v["version"] for v in c.versions("/ckpt")] == [1, 2]
    assert c.cat("/ckpt") == data


def test_one_changed_chunk_sends_exactly_that_chunk(local_cluster):
    c = local_cluster(benefactors=2).client()
    data = bytearray(random_bytes(16 * MiB))
    write(c, "/ckpt", bytes(data))
    data[5 * MiB + 100 : 5 * MiB + 200] = random_bytes(100)  # inside chunk 5
    stats = write(c, "/ckpt", bytes(data))
    assert stats.bytes_sent == MiB and stats.bytes_deduplicated == 15 * MiB
    assert c.cat("/ckpt") == data
    assert c.open("/ckpt", "rb", version=1).read() != data


def test_two_files_share_chunks_and_deleting_one_keeps_the_other(local_cluster):
    cluster = local_cluster(benefactors=2, memory=32 * MiB)
    c = cluster.client()
    data = random_bytes(12 * MiB)
    write(c, "/a", data)
    stats = write(c, "/b", data)  # another file, same content: found by the batched query
    assert stats.bytes_sent == 0
    stored = {n["namespace"]: n for n in cluster.status()["namespaces"]}["default"]
    assert stored["bytes_committed"] == 24 * MiB and stored["bytes_stored"] == 12 * MiB
    c.rm("/a")
    assert c.cat("/b") == data
    wait_for(lambda: sum(b["memory_used"] for b in cluster.status()["benefactors"]) == 12 * MiB,
             what="heartbeats after the delete")  # nothing /b needs was freed


def test_chunk_repeated_within_a_file_is_sent_once(local_cluster):
    c = local_cluster(benefactors=2).client()
    block = random_bytes(MiB)
    data = block * 6 + random_bytes(MiB)
    stats = write(c, "/rep", data)
    assert stats.bytes_sent == 2 * MiB and stats.bytes_deduplicated == 5 * MiB
    assert c.cat("/rep") == data


def test_no_dedup_across_namespaces(local_cluster):
    cluster = local_cluster(benefactors=2)
    data = random_bytes(6 * MiB)
    write(cluster.client(namespace="alpha"), "/x", data)
    beta = cluster.client(namespace="beta")
    stats = write(beta, "/x", data)
    assert stats.bytes_sent == len(data) and stats.bytes_deduplicated == 0
    cluster.client(namespace="alpha").rm("/x")
    assert beta.cat("/x") == data  # beta's copy is its own


def test_held_chunk_freed_before_commit_fails_cleanly(local_cluster):
    cluster = local_cluster(benefactors=2)
    c = cluster.client()
    data = random_bytes(8 * MiB)
    write(c, "/ckpt", data)
    f = c.open("/ckpt", "wb")  # learns at open that all of data is held
    other = cluster.client()
    other.rm("/ckpt")  # ... and then it is freed before the commit
    f.write(data)
    with pytest.raises(DataLost, match="no longer held"):
        f.close()
    assert c.ls("/", detail=False) == []  # no version points at missing data
    write(c, "/ckpt", data)  # writing again works, and sends everything
    assert c.last_commit.stats.bytes_sent == len(data) and c.cat("/ckpt") == data


def test_held_chunk_on_a_killed_benefactor_is_sent_again(local_cluster):
    cluster = local_cluster(benefactors=1, memory=32 * MiB)
    c = cluster.client()
    c.policy(persist_every=0)  # memory only: a drained copy would still count as held
    data = random_bytes(4 * MiB)
    write(c, "/ckpt", data)
    cluster.add_benefactor(32 * MiB)
    cluster.benefactors[0].kill()
    wait_for(lambda: cluster.benefactors[0].id not in cluster.alive_ids(), what="the first benefactor to be dead")
    stats = write(c, "/ckpt", data)  # its chunks are no longer readable: not counted as held
    assert stats.bytes_sent == len(data)
    assert c.cat("/ckpt") == data


def test_client_counters(local_cluster):
    c = local_cluster(benefactors=1).client()
    data = random_bytes(3 * MiB)
    write(c, "/m", data)
    write(c, "/m", data)
    value = lambda name: c.metrics_registry.get_sample_value(name, {"namespace": "default"})  # noqa: E731
    assert value("memstage_client_bytes_written_total") == 6 * MiB
    assert value("memstage_client_bytes_sent_total") == 3 * MiB
    assert value("memstage_client_bytes_deduplicated_total") == 3 * MiB
